"""featbench.distributed: shards, torchrun environment, and sharded extraction merged by rank 0.

The end-to-end cases launch real torchrun jobs (2 CPU processes, gloo backend) and compare the merged cache
with a single-process cache of the same data, row for row.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from featbench.distributed import DistEnv, dist_env, run_sharded, shard_bounds, shard_rows
from featbench.errors import FeatbenchError
from featbench.merge import part_path

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------
# pure functions
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 5, 17, 64, 100])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
@pytest.mark.parametrize("align", [1, 4, 64])
def test_shards_are_disjoint_complete_contiguous_and_unpadded(n, world, align):
    rows = np.arange(10, 10 + n) * 3  # any canonical row list
    shards = [shard_rows(rows, r, world, align) for r in range(world)]
    np.testing.assert_array_equal(np.concatenate(shards), rows)  # in order, each row once, no padding
    sizes = [s.size for s in shards]
    groups = [-(-sz // align) for sz in sizes]
    assert max(groups) - min(groups) <= 1
    for r in range(world):
        start, stop = shard_bounds(n, r, world, align)
        assert start % align == 0 or start == n  # every shard starts on a batch boundary
        np.testing.assert_array_equal(shards[r], rows[start:stop])
        np.testing.assert_array_equal(shard_rows(rows, r, world, align), shards[r])  # deterministic


def test_bad_shard_is_refused():
    with pytest.raises(FeatbenchError):
        shard_rows([1, 2], 2, 2)


def test_dist_env_reads_torchrun_variables():
    assert dist_env({}) == DistEnv()
    env = dist_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                    "MASTER_ADDR": "node0", "MASTER_PORT": "29500"})
    assert (env.rank, env.world, env.local_rank, env.local_world, env.distributed, env.is_main) == (3, 4, 1, 2, True, False)
    with pytest.raises(FeatbenchError, match="MASTER_ADDR"):
        dist_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(FeatbenchError, match="RANK"):
        dist_env({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"})
    with pytest.raises(FeatbenchError, match="WORLD_SIZE"):
        dist_env({"WORLD_SIZE": "two"})


def test_run_sharded_outside_torchrun_is_a_plain_call(tmp_path):
    calls = []

    def fake(**kw):
        calls.append(kw)
        return kw["out"]

    out = run_sharded(fake, tmp_path / "c.h5", device="cpu", env=DistEnv(), views=3)
    assert out == tmp_path / "c.h5"
    assert calls == [{"out": tmp_path / "c.h5", "device": "cpu", "overwrite": False, "views": 3}]


# ----------------------------------------------------------------------------------------------------
# torchrun: barrier + rank-0 merge with a stand-in extraction (independent of the encoder)
# ----------------------------------------------------------------------------------------------------
def _torchrun() -> list[str]:
    exe = shutil.which("torchrun")
    if exe:
        return [exe]
    return [sys.executable, "-m", "torch.distributed.run"]


def _env():
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


FAKE = textwrap.dedent('''
    import sys
    import numpy as np
    from pathlib import Path
    from featbench.cache import base_attrs, write_cache
    from featbench.distributed import dist_env, run_sharded, shard_rows

    N, D = 11, 4
    FEATS = np.arange(N * D, dtype=np.float32).reshape(N, D)

    def fake_extract(*, out, shard=None, device, overwrite):
        rank, world = shard or (0, 1)
        rows = shard_rows(np.arange(N), rank, world, align=2)
        if rank == 1:
            raise RuntimeError("rank 1 fails")
        attrs = base_attrs(model="m", pretrained="none", dataset="toy", embed_dim=D, logit_scale=100.0,
                           fingerprint="f" * 64)
        split = {"paths": [f"i{k}.jpg" for k in range(N)], "labels": np.zeros(N, dtype=np.int64),
                 "features": FEATS[rows], "rows": None if world == 1 else rows}
        return write_cache(out, attrs=attrs, classnames=["a"], splits={"test": split})

    out = run_sharded(fake_extract, Path(sys.argv[1]), device="cpu")
    print("RANK", dist_env().rank, "DONE", out)
''')


@pytest.mark.timeout(120)
def test_torchrun_failing_rank_stops_everyone_and_keeps_parts(tmp_path):
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    out = tmp_path / "merged.h5"
    cmd = _torchrun() + ["--standalone", "--nproc-per-node", "2", str(script), str(out)]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=110)
    assert res.returncode != 0
    assert "rank 1 fails" in res.stdout + res.stderr
    assert not out.exists()
    assert part_path(out, 0, 2).exists()  # rank 0's finished part stays for the resumed run


# ----------------------------------------------------------------------------------------------------
# torchrun -m featbench extract: the merged cache equals a single-process cache, with a resumed rank
# ----------------------------------------------------------------------------------------------------
def _dump(path):
    """Every dataset (dtype, values, attrs) and group/root attribute of an HDF5 file, `created` aside."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        out["/@attrs"] = {k: v for k, v in f.attrs.items() if k != "created"}

        def visit(name, obj):
            if hasattr(obj, "dtype"):
                out["/" + name] = (obj.dtype.str, obj[()], dict(obj.attrs))
            else:
                out["/" + name + "@attrs"] = dict(obj.attrs)

        f.visititems(visit)
    return out


def _assert_identical_files(a, b, float_atol=0.0):
    """Same datasets, attrs and values; float_atol > 0 allows the last-bit noise of another batch size (CPU
    kernels pick their blocking by batch shape, so a batch of 8 and one of 4 may round differently)."""
    da, db = _dump(a), _dump(b)
    assert sorted(da) == sorted(db)
    for k in da:
        if k.endswith("@attrs"):
            assert {n: str(v) for n, v in da[k].items()} == {n: str(v) for n, v in db[k].items()}, k
            continue
        (ta, va, aa), (tb, vb, ab) = da[k], db[k]
        assert ta == tb, k
        assert va.shape == vb.shape, k
        if float_atol and va.dtype.kind == "f":
            np.testing.assert_allclose(va.astype(np.float64), vb.astype(np.float64), rtol=0, atol=float_atol, err_msg=k)
        else:
            assert np.array_equal(va, vb), f"{k} differs"
        assert {n: str(v) for n, v in aa.items()} == {n: str(v) for n, v in ab.items()}, k


OPTS = dict(model="tiny-vit", pretrained="none", views=3, view_shots=(2,), seeds=(1, 2), batch_size=4,
            device="cpu", progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A generated CoOp-layout dataset and its single-process cache (the reference every merge must equal)."""
    from featbench.extract import extract
    from featbench.synthetic import make_dataset

    base = tmp_path_factory.mktemp("tiny")
    root = make_dataset(base / "data", layout="caltech101", n_classes=3, per_split=(5, 2, 3), size=40, seed=0)
    return root, extract("caltech101", root, out=base / "single.h5", **OPTS)


def test_three_shards_in_process_merge_to_the_single_process_cache(tmp_path, tiny):
    """world 3 with a batch of 8: some ranks get no rows of a split (or no views) at all."""
    from featbench.extract import extract
    from featbench.merge import merge_parts

    root, single = tiny
    out = tmp_path / "m.h5"
    parts = [extract("caltech101", root, out=part_path(out, r, 3), shard=(r, 3), **{**OPTS, "batch_size": 8})
             for r in range(3)]
    _assert_identical_files(merge_parts(parts, out), single, float_atol=2e-3)  # batch 8 here, 4 in `single`


@pytest.mark.timeout(180)
def test_torchrun_extract_equals_single_process_and_resumes_a_rank(tmp_path, tiny):
    from featbench.extract import extract

    root, single = tiny
    opts = OPTS

    # rank 1 of an earlier run died after its first block: its partial part file is on disk
    merged = tmp_path / "dist.h5"
    rank1 = part_path(merged, 1, 2)

    class Died(Exception):
        pass

    def die(task, block):
        raise Died

    with pytest.raises(Died):
        extract("caltech101", root, out=rank1, shard=(1, 2), _after_block=die, **opts)
    assert Path(str(rank1) + ".partial").exists() and not rank1.exists()

    cmd = _torchrun() + ["--standalone", "--nproc-per-node", "2", "-m", "featbench", "extract",
                         "--dataset", "caltech101", "--root", str(root), "--model", "tiny-vit", "--pretrained", "none",
                         "--views", "3", "--view-shots", "2", "--seeds", "1,2", "--batch-size", "4", "--device", "cpu",
                         "--no-progress", "--out", str(merged)]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=170, cwd=tmp_path)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log
    assert "resuming" in log  # rank 1 continued its own part instead of starting over
    assert res.stdout.strip().splitlines()[-1] == str(merged)  # printed once, by rank 0
    assert not list(tmp_path.glob("dist.h5.part-*"))  # parts (and partials) are gone
    _assert_identical_files(merged, single)


# ----------------------------------------------------------------------------------------------------
# a failing rank stops the others within seconds (they do not encode on, or wait, until the slowest ends)
# ----------------------------------------------------------------------------------------------------
def test_failure_watch_sees_another_ranks_marker(tmp_path):
    import time

    from featbench.distributed import FailureWatch, failure_marker

    out = tmp_path / "c.h5"
    stopped = []
    failure_marker(out, 0).write_text("my own old failure")  # a rank never stops on its own marker
    with FailureWatch(out, 0, interval=0.05, stop=lambda r, m: stopped.append((r, m))):
        time.sleep(0.2)
        assert stopped == []
        failure_marker(out, 3).write_text("CUDA error: out of memory")
        deadline = time.monotonic() + 5
        while not stopped and time.monotonic() < deadline:
            time.sleep(0.05)
    assert stopped == [(3, "CUDA error: out of memory")]


SLOW_RANK = FAKE.replace('''    if rank == 1:
        raise RuntimeError("rank 1 fails")''', '''    if rank == 1:
        raise RuntimeError("rank 1 fails")
    import time
    time.sleep(90)  # rank 0 is slow: it must be stopped long before it ends''')


@pytest.mark.timeout(120)
def test_torchrun_failing_rank_stops_a_slow_rank_within_seconds(tmp_path):
    import time

    assert SLOW_RANK != FAKE
    script = tmp_path / "slow.py"
    script.write_text(SLOW_RANK)
    out = tmp_path / "merged.h5"
    cmd = _torchrun() + ["--standalone", "--nproc-per-node", "2", str(script), str(out)]
    t0 = time.monotonic()
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=110)
    assert res.returncode != 0 and "rank 1 fails" in res.stdout + res.stderr
    assert time.monotonic() - t0 < 60, "rank 0 ran on after rank 1 failed"
    assert not out.exists() and "DONE" not in res.stdout
