"""The fit runner: grid expansion, resume after a kill, --set/--grid, jobs=2 == jobs=1, Ray, validation first."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from featbench.errors import CacheContractError, FeatbenchError, FingerprintMismatch
from featbench.results import append_rows, completed_keys, read_rows, row_key
from featbench.runner import parse_grids, parse_sets, run_fit

from test_protocol import make_cache, test_heads  # noqa: F401  (fixture)

VOLATILE = ("timestamp", "fit_seconds")


def stable(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


@pytest.fixture
def caches(tmp_path):
    a, _ = make_cache(tmp_path / "caltech101.h5", dataset="caltech101", seed=0)
    b, _ = make_cache(tmp_path / "dtd.h5", dataset="dtd", n_classes=4, seed=1)
    return [a, b]


def test_grid_rows_and_resume(tmp_path, caches, test_heads):
    out = tmp_path / "r.jsonl"
    rows = run_fit(caches, heads=["test-ncm", "test-text"], shots=[1, 2], seeds=[1, 2], out=out, progress=False)
    assert len(rows) == 2 * 2 * 2 * 2
    assert read_rows(out) == rows
    # order: caches x heads x combos x shots x seeds
    assert [(r["dataset"], r["head"], r["shots"], r["seed"]) for r in rows[:5]] == [
        ("caltech101", "test-ncm", 1, 1), ("caltech101", "test-ncm", 1, 2), ("caltech101", "test-ncm", 2, 1),
        ("caltech101", "test-ncm", 2, 2), ("caltech101", "test-text", 1, 1)]
    before = out.read_bytes()
    assert run_fit(caches, heads=["test-ncm", "test-text"], shots=[1, 2], seeds=[1, 2], out=out, progress=False) == []
    assert out.read_bytes() == before


def test_resume_after_kill_gives_same_rows_no_duplicates(tmp_path, caches, test_heads):
    grid = dict(heads="test-ncm,test-text", shots=[1, 4], seeds=[1, 2, 3], progress=False)
    clean = run_fit(caches, out=tmp_path / "clean.jsonl", **grid)
    # a killed sweep: the first 7 rows plus half of the 8th line
    killed = tmp_path / "killed.jsonl"
    lines = (tmp_path / "clean.jsonl").read_text().splitlines(keepends=True)
    killed.write_text("".join(lines[:7]) + lines[7][: len(lines[7]) // 2])
    assert len(read_rows(killed)) == 7  # partial tail tolerated
    resumed = run_fit(caches, out=killed, **grid)
    assert len(resumed) == len(clean) - 7
    final = read_rows(killed)
    assert len(final) == len(clean) and len({row_key(r) for r in final}) == len(final)
    assert stable(final) == stable(clean)
    assert killed.read_text().endswith("\n")


def test_append_rows_keeps_partial_tail_and_read_rows_rejects_corrupt_middle(tmp_path):
    p = tmp_path / "r.jsonl"
    row = {"dataset": "d", "fingerprint": "f", "head": "h", "protocol": "paper", "shots": 1, "seed": 1, "acc": 1.0}
    p.write_text(json.dumps(row) + '\n{"dataset": "d", "fingerp')
    append_rows(p, [dict(row, seed=2)])
    assert read_rows(p) == [row, dict(row, seed=2)]
    assert '{"dataset": "d", "fingerp\n' in p.read_text()  # existing bytes are never cut
    p.write_text(json.dumps(row) + "\nnot json\n" + json.dumps(row) + "\n")
    with pytest.raises(FeatbenchError, match="line 2"):
        read_rows(p)
    assert completed_keys(tmp_path / "missing.jsonl") == set()


def test_set_and_grid_expand_into_rows(tmp_path, caches, test_heads):
    out = tmp_path / "r.jsonl"
    rows = run_fit(caches[:1], heads=["test-ncm"], shots=[2], seeds=[1], out=out, progress=False,
                   sets={"test-ncm.scale": 5}, grids={"test-ncm.mix": [0, 0.5, 1.0], "test-ncm.dummy": [1, 2]})
    assert [(r["params"]["mix"], r["params"]["dummy"]) for r in rows] == [
        (0, 1), (0, 2), (0.5, 1), (0.5, 2), (1.0, 1), (1.0, 2)]
    assert all(r["params"]["scale"] == 5 for r in rows)
    # 1 and 1.0 are the same value: asking again for mix=1 resumes instead of duplicating
    assert run_fit(caches[:1], heads=["test-ncm"], shots=[2], seeds=[1], out=out, progress=False,
                   sets={"test-ncm.scale": 5.0}, grids={"test-ncm.mix": [1], "test-ncm.dummy": [1]}) == []


def test_parse_sets_and_grids_use_yaml():
    assert parse_sets(["taskres.alpha=0.5", "a.b=true", "a.c=[1,2]", "a.d=x"]) == {
        "taskres.alpha": 0.5, "a.b": True, "a.c": [1, 2], "a.d": "x"}
    assert parse_grids(["taskres.alpha=0.25,0.5,1", "x.y=[1, 2]"]) == {"taskres.alpha": [0.25, 0.5, 1], "x.y": [1, 2]}
    with pytest.raises(FeatbenchError, match="--set"):
        parse_sets(["taskres.alpha"])
    with pytest.raises(FeatbenchError, match="--grid"):
        parse_grids(["alpha=1,2"])


@pytest.mark.parametrize("kw, match", [
    (dict(sets={"nohead.alpha": 1}), r"--set nohead\.alpha: unknown head"),
    (dict(sets={"test-ncm.alpah": 1}), r"--set test-ncm\.alpah: head 'test-ncm' has no parameter 'alpah'"),
    (dict(grids={"test-ncm.random_state": [1, 2]}), r"--grid .*--seeds"),
    (dict(grids={"test-ncm.mix": [0]}, sets={"test-ncm.mix": 1}), "also fixed with --set"),
    (dict(heads=["nope"]), "unknown head"),
    (dict(protocol="best"), "--protocol"),
    (dict(shots=[0]), "--shots"),
    (dict(jobs=0), "--jobs"),
])
def test_bad_arguments_fail_before_running(tmp_path, caches, test_heads, kw, match):
    args = dict(heads=["test-ncm"], shots=[1], seeds=[1], out=tmp_path / "r.jsonl", progress=False)
    args.update(kw)
    with pytest.raises(FeatbenchError, match=match):
        run_fit(caches, **args)
    assert not (tmp_path / "r.jsonl").exists()


def test_validation_happens_before_any_cell(tmp_path, caches, test_heads):
    import h5py

    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f.attrs["featbench_schema"] = 1
    with pytest.raises(CacheContractError, match="bad.h5"):
        run_fit([caches[0], bad], heads=["test-ncm"], shots=[1], seeds=[1], out=tmp_path / "r.jsonl", progress=False)
    assert not (tmp_path / "r.jsonl").exists()  # the good cache's cells did not run either
    notext, _ = make_cache(tmp_path / "notext.h5", with_text=False)
    with pytest.raises(FeatbenchError, match="test-text"):
        run_fit([caches[0], notext], heads=["test-ncm", "test-text"], shots=[1], seeds=[1], out=tmp_path / "r.jsonl", progress=False)
    with pytest.raises(FeatbenchError, match="does not exist"):
        run_fit([tmp_path / "nope.h5"], heads=["test-ncm"], shots=[1], seeds=[1], out=tmp_path / "r.jsonl", progress=False)
    assert not (tmp_path / "r.jsonl").exists()


def test_eval_on_rows_and_fingerprint_refusal(tmp_path, test_heads):
    import numpy as np

    means = np.random.default_rng(3).normal(size=(12, 16)).astype(np.float32)
    src, _ = make_cache(tmp_path / "imagenet.h5", dataset="imagenet", means=means, with_val=False, per_class=(6, 0, 3))
    v2, _ = make_cache(tmp_path / "v2.h5", dataset="imagenetv2", means=means, with_val=False, per_class=(1, 0, 3), n_views=0, seed=4)
    keep = [11, 3, 4]
    a, _ = make_cache(tmp_path / "a.h5", dataset="imagenet_a", means=means[keep], with_val=False, per_class=(1, 0, 5),
                      classnames=[f"class_{i}" for i in keep], n_views=0, seed=5)
    rows = run_fit([src], heads=["test-ncm"], shots=[2], seeds=[1, 2], eval_on=[v2, a], out=tmp_path / "r.jsonl", progress=False)
    assert [(r["dataset"], r["source_dataset"], r["seed"], r["n_test"]) for r in rows] == [
        ("imagenetv2", "imagenet", 1, 36), ("imagenet_a", "imagenet", 1, 15),
        ("imagenetv2", "imagenet", 2, 36), ("imagenet_a", "imagenet", 2, 15)]
    other, _ = make_cache(tmp_path / "other.h5", dataset="imagenet_r", means=means, with_val=False, per_class=(1, 0, 3),
                          fingerprint="fp-other", n_views=0)
    with pytest.raises(FingerprintMismatch, match="different encoders"):
        run_fit([src], heads=["test-ncm"], shots=[1], seeds=[1], eval_on=[v2, other], out=tmp_path / "r2.jsonl", progress=False)
    assert not (tmp_path / "r2.jsonl").exists()


def test_jobs_2_gives_identical_rows(tmp_path, caches, test_heads, monkeypatch):
    # workers are fresh processes: make the test heads' module importable there
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", here + os.pathsep + os.environ.get("PYTHONPATH", ""))
    grid = dict(heads=["test-ncm", "test-text"], shots=[1, 2, 4], seeds=[1, 2], progress=False,
                grids={"test-ncm.mix": [0.0, 0.5]})
    one = run_fit(caches, out=tmp_path / "one.jsonl", jobs=1, **grid)
    two = run_fit(caches, out=tmp_path / "two.jsonl", jobs=2, **grid)
    assert stable(two) == stable(one)
    assert stable(read_rows(tmp_path / "two.jsonl")) == stable(read_rows(tmp_path / "one.jsonl"))


def test_ray_tasks_give_identical_rows(tmp_path, caches, test_heads, monkeypatch):
    ray = pytest.importorskip("ray")
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", here + os.pathsep + os.environ.get("PYTHONPATH", ""))
    grid = dict(heads=["test-ncm"], shots=[1, 2], seeds=[1, 2], progress=False)
    one = run_fit(caches, out=tmp_path / "one.jsonl", **grid)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        via_ray = run_fit(caches, out=tmp_path / "ray.jsonl", ray_address="local", **grid)
        assert ray.is_initialized()  # an instance the caller started is left running
    finally:
        ray.shutdown()
    assert stable(via_ray) == stable(one)


def test_ray_missing_gives_install_hint(tmp_path, caches, test_heads, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("no ray")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(FeatbenchError, match=r'pip install "featbench\[ray\]"'):
        run_fit(caches[:1], heads=["test-ncm"], shots=[1], seeds=[1], out=tmp_path / "r.jsonl", progress=False, ray_address="local")


def test_real_heads_when_available(tmp_path, caches):
    pytest.importorskip("featbench.heads.zeroshot")
    rows = run_fit(caches, heads=["zeroshot"], shots=[1, 2], seeds=[1], out=tmp_path / "r.jsonl", progress=False)
    assert len(rows) == 4 and all(r["head"] == "zeroshot" for r in rows)
    # zero-shot ignores the few-shot data: the same accuracy at every shot count
    assert rows[0]["acc"] == rows[1]["acc"]
    try:
        import featbench.heads.taskres  # noqa: F401
    except ImportError:
        return
    rows = run_fit(caches[:1], heads=["taskres"], shots=[2], seeds=[1], out=tmp_path / "t.jsonl", progress=False,
                   grids={"taskres.alpha": [0.0, 0.5]}, sets={"taskres.epochs": 3})
    assert [r["params"]["alpha"] for r in rows] == [0.0, 0.5]
