"""End-to-end extraction on generated JPEGs and the tiny open_clip models (CPU, offline)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from featbench.cache import Cache, partial_path
from featbench.errors import FeatbenchError, FingerprintMismatch
from featbench.extract import expand_view_shots, extract
from featbench.fewshot import union_rows

N_CLASSES, PER_SPLIT = 3, (6, 3, 3)
FAST = dict(model="tiny-vit", pretrained="none", device="cpu", views=2, view_shots=(1, 2, 4), seeds=(1, 2),
            batch_size=4, progress=False)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from featbench.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data"), "caltech101", n_classes=N_CLASSES, per_split=PER_SPLIT, size=40)


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory) -> Path:
    """One uninterrupted run everyone compares against."""
    return extract("caltech101", data_root, out=tmp_path_factory.mktemp("ref") / "ref.h5", **FAST)


def _contents(path) -> dict:
    """Every dataset and attribute of an HDF5 file except `created`."""
    out = {}
    with h5py.File(path, "r") as f:
        out["attrs:/"] = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in f.attrs.items() if k != "created"}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj.dtype.str, obj[()].tolist())
            out["attrs:" + name] = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in obj.attrs.items()}

        f.visititems(visit)
    return out


def test_schema_shapes_and_view_union(reference, data_root):
    from featbench.datasets import load_dataset

    ds = load_dataset("caltech101", data_root)
    with Cache(reference) as c:
        assert c.model == "tiny-vit" and c.pretrained == "none" and c.dataset == "caltech101"
        assert c.embed_dim == 32 and c.classnames == ds.classnames
        assert c.text_features().shape == (len(ds.templates), N_CLASSES, 32)
        for split, n in zip(("train", "val", "test"), PER_SPLIT):
            assert len(c.paths(split)) == n * N_CLASSES
            assert c.paths(split) == [p for p, _ in ds.splits[split]]
            assert c.features(split).shape == (n * N_CLASSES, 32)
        assert not c.has_dataset("/splits/train/rows")
        train_y = c.labels("train")
        expected, _ = union_rows(train_y, c.labels("val"), (1, 2, 4), (1, 2))
        assert list(c.view_rows()) == list(expected)
        assert c.views().shape == (2, len(expected), 32)
        with h5py.File(reference) as f:
            assert f["splits/train/features"].dtype == np.float16 and f["splits/train/features"].chunks
            assert f.attrs["featbench_schema"] == 1 and len(f.attrs["fingerprint"]) == 64
        assert c.preprocess["view_scale"] == [0.5, 1.0]


def test_view_shots_expansion():
    assert expand_view_shots(16) == (1, 2, 4, 8, 16)
    assert expand_view_shots([5]) == (1, 2, 4, 5)
    assert expand_view_shots((8, 2)) == (2, 8)


def test_same_args_same_file_and_batch_size_independence(reference, data_root, tmp_path):
    again = extract("caltech101", data_root, out=tmp_path / "again.h5", **FAST)
    assert _contents(again) == _contents(reference)
    other = extract("caltech101", data_root, out=tmp_path / "b7.h5", **{**FAST, "batch_size": 7})
    with Cache(reference) as a, Cache(other) as b:
        for split in ("train", "val", "test"):
            np.testing.assert_allclose(a.features(split), b.features(split), atol=2e-3, rtol=2e-3)
        np.testing.assert_allclose(a.views(), b.views(), atol=2e-3, rtol=2e-3)


def test_up_to_date_and_refusals(reference, data_root, tmp_path):
    out = tmp_path / "c.h5"
    out.write_bytes(Path(reference).read_bytes())
    msgs = []
    assert extract("caltech101", data_root, out=out, log=msgs.append, **FAST) == out
    assert any("up to date" in m for m in msgs)
    with pytest.raises(FingerprintMismatch, match="--overwrite"):  # preprocessing differs -> fingerprint
        extract("caltech101", data_root, out=out, view_scale=(0.08, 1.0), **FAST)
    with pytest.raises(FingerprintMismatch, match="views"):  # content-changing argument
        extract("caltech101", data_root, out=out, **{**FAST, "views": 3})
    extract("caltech101", data_root, out=out, overwrite=True, **{**FAST, "views": 3})
    with Cache(out) as c:
        assert c.num_views == 3


def test_resume_after_crash_equals_uninterrupted(reference, data_root, tmp_path):
    out = tmp_path / "r.h5"
    calls = []

    def crash(task, block):
        calls.append((task, block))
        if len(calls) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract("caltech101", data_root, out=out, _after_block=crash, **FAST)
    assert partial_path(out).exists() and not out.exists()
    resumed = []
    extract("caltech101", data_root, out=out, _after_block=lambda t, b: resumed.append((t, b)), **FAST)
    assert not set(calls) & set(resumed)  # nothing encoded twice
    assert _contents(out) == _contents(reference)
    assert not partial_path(out).exists()


@pytest.mark.parametrize("kill_at_flush", [9])
def test_kill_9_then_resume_equals_uninterrupted(reference, data_root, tmp_path, kill_at_flush):
    """SIGKILL in a subprocess mid-block (9th flush: data written, done flag not yet; block ends are the crash test)."""
    out = tmp_path / "k.h5"
    script = textwrap.dedent(f"""
        import os, signal, h5py, torch
        torch.set_num_threads(1)
        from featbench.extract import extract
        flush, n = h5py.File.flush, []
        def killing_flush(self):
            n.append(1)
            if len(n) == {kill_at_flush}:
                os.kill(os.getpid(), signal.SIGKILL)
            flush(self)
        h5py.File.flush = killing_flush
        extract("caltech101", {str(data_root)!r}, out={str(out)!r}, **{FAST!r})
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-500:]
    assert partial_path(out).exists() and not out.exists()
    msgs = []
    extract("caltech101", data_root, out=out, log=msgs.append, **{**FAST, "batch_size": 5})
    assert any("resuming" in m for m in msgs)
    assert _contents(out) == _contents(reference)


def test_bad_images_both_ways(data_root, tmp_path):
    import shutil

    from featbench.datasets import load_dataset
    from featbench.synthetic import corrupt_image

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    ds = load_dataset("caltech101", root)
    bad_test = ds.splits["test"][1][0]
    bad_train = ds.splits["train"][0][0]
    corrupt_image(ds.abspath(bad_test), kind="truncated")
    corrupt_image(ds.abspath(bad_train), kind="garbage")
    with pytest.raises(FeatbenchError) as err:
        extract("caltech101", root, out=tmp_path / "x.h5", **FAST)
    msg = str(err.value)
    assert "--skip-bad-images" in msg and "\n" not in msg and (bad_test in msg or bad_train in msg)
    msgs = []
    out = extract("caltech101", root, out=tmp_path / "x.h5", skip_bad_images=True, log=msgs.append, **FAST)
    assert any("skipped 2" in m for m in msgs)
    with Cache(out) as c:
        assert c.skipped == [bad_train, bad_test]
        assert 1 not in c.feature_rows("test") and len(c.features("test")) == len(c.paths("test")) - 1
        assert 0 not in c.feature_rows("train") and 0 not in set(c.view_rows())
        assert c.features("test", rows=[0, 2]).shape == (2, 32)


def test_missing_root_is_one_line(tmp_path):
    with pytest.raises(FeatbenchError) as err:
        extract("caltech101", tmp_path / "nowhere", out=tmp_path / "x.h5", **FAST)
    assert "\n" not in str(err.value)


def test_fewshot_train_rows_and_all_views(data_root, tmp_path):
    out = extract("caltech101", data_root, out=tmp_path / "f.h5", train_rows="fewshot", splits=("train", "test"),
                  **{**FAST, "view_shots": (1,), "seeds": (1,)})
    with Cache(out) as c:
        expected, _ = union_rows(c.labels("train"), None, (1,), (1,))
        assert list(c.feature_rows("train")) == list(expected) == list(c.view_rows())
        assert c.splits == ["train", "test"] and len(c.paths("train")) == PER_SPLIT[0] * N_CLASSES
    out = extract("caltech101", data_root, out=tmp_path / "a.h5", all_views=True, splits=("train",), **FAST)
    with Cache(out) as c:
        assert list(c.view_rows()) == list(range(PER_SPLIT[0] * N_CLASSES))


@pytest.mark.parametrize("model", ["tiny-vit", "tiny-rn"])
def test_pre_projection_round_trip(data_root, tmp_path, model):
    out = extract("caltech101", data_root, out=tmp_path / "p.h5", pre_projection=True, dtype="float32",
                  splits=("train", "test"), **{**FAST, "model": model})
    with Cache(out) as c:
        w = c.array("/model/image_projection")
        b = c.array("/model/image_projection_bias") if c.has_dataset("/model/image_projection_bias") else 0
        assert (model == "tiny-rn") == c.has_dataset("/model/image_projection_bias")
        for split in ("train", "test"):
            np.testing.assert_allclose(c.features(split, kind="features_pre") @ w + b, c.features(split), atol=1e-4)
        np.testing.assert_allclose(c.views(kind="views_pre") @ w + b, c.views(), atol=1e-4)
        tp = c.array("/model/text_projection")
        np.testing.assert_allclose(c.array("/text/features_pre") @ tp, c.text_features(), atol=1e-4)


def test_shards_cover_the_single_process_rows(reference, data_root, tmp_path):
    parts = [extract("caltech101", data_root, out=tmp_path / f"part{r}.h5", shard=(r, 2), **FAST) for r in range(2)]
    with Cache(reference) as ref, Cache(parts[0]) as a, Cache(parts[1]) as b:
        for split in ("train", "val", "test"):
            rows = np.concatenate([a.feature_rows(split), b.feature_rows(split)])
            assert sorted(rows.tolist()) == list(range(len(ref.paths(split))))
            np.testing.assert_array_equal(np.concatenate([a.features(split), b.features(split)]), ref.features(split))
        assert np.array_equal(np.concatenate([a.view_rows(), b.view_rows()]), ref.view_rows())


def test_part_resume_with_another_batch_size_is_refused(data_root, tmp_path):
    """A shard's rows are cut on batch boundaries: resuming (or reusing) a part with another --batch-size would
    fill it with other rows' features, so it is refused."""
    out = tmp_path / "part1.h5"

    def crash(task, block):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract("caltech101", data_root, out=out, shard=(1, 2), _after_block=crash, **FAST)
    with pytest.raises(FingerprintMismatch, match="--batch-size"):
        extract("caltech101", data_root, out=out, shard=(1, 2), **{**FAST, "batch_size": 5})
    extract("caltech101", data_root, out=out, shard=(1, 2), **FAST)  # resumes and finishes
    with pytest.raises(FingerprintMismatch, match="--batch-size"):
        extract("caltech101", data_root, out=out, shard=(1, 2), **{**FAST, "batch_size": 5})
    msgs = []
    extract("caltech101", data_root, out=out, shard=(1, 2), log=msgs.append, **FAST)
    assert any("up to date" in m for m in msgs)


def test_target_path_matches_where_extract_writes(data_root, tmp_path):
    from featbench.extract import target_path

    opts = {k: v for k, v in FAST.items() if k != "view_shots"}
    path = extract("caltech-101", data_root, cache_dir=tmp_path, splits=("test",), **opts)
    assert path == target_path("caltech-101", FAST["model"], FAST["pretrained"], tmp_path)
    assert path == tmp_path / "tiny-vit--none" / "caltech101.h5"


def test_unwritable_out_is_one_line(data_root, tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(FeatbenchError, match="writable --out") as err:
        extract("caltech101", data_root, out=tmp_path / "afile" / "x.h5", splits=("test",), **FAST)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------------
# dropping unreadable images at finalisation: a new file, renamed into place; the partial stays intact
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_root(data_root, tmp_path_factory) -> Path:
    """The generated dataset with one unreadable train image and one unreadable test image."""
    import shutil

    from featbench.datasets import load_dataset
    from featbench.synthetic import corrupt_image

    root = tmp_path_factory.mktemp("bad") / "data"
    shutil.copytree(data_root, root)
    ds = load_dataset("caltech101", root)
    corrupt_image(ds.abspath(ds.splits["test"][1][0]), kind="truncated")
    corrupt_image(ds.abspath(ds.splits["train"][0][0]), kind="garbage")
    return root


@pytest.fixture(scope="module")
def bad_reference(bad_root, tmp_path_factory) -> Path:
    return extract("caltech101", bad_root, out=tmp_path_factory.mktemp("badref") / "ref.h5", skip_bad_images=True, **FAST)


def _sha(path) -> str:
    """Hash of an HDF5 file's bytes, except the superblock's file-consistency flags (bytes 20-23 of a
    version 0/1 superblock), which HDF5 sets while a writer has the file open and clears on close."""
    import hashlib

    data = bytearray(Path(path).read_bytes())
    assert data[:8] == b"\x89HDF\r\n\x1a\n" and data[8] in (0, 1)
    data[20:24] = b"\0\0\0\0"
    return hashlib.sha256(bytes(data)).hexdigest()


def _kill_in_finalize_script(bad_root, out) -> str:
    """A subprocess that SIGKILLs itself in finalisation, after the first compacted dataset of the new file."""
    return textwrap.dedent(f"""
        import os, signal, torch
        torch.set_num_threads(1)
        from featbench.cache import _compact  # fault injection: the step that copies one dataset
        from featbench.extract import extract
        real = _compact._compact_into
        def killing(*a, **kw):
            real(*a, **kw)
            os.kill(os.getpid(), signal.SIGKILL)
        _compact._compact_into = killing
        extract("caltech101", {str(bad_root)!r}, out={str(out)!r}, skip_bad_images=True, **{FAST!r})
    """)


@pytest.mark.parametrize("crash_at", ["copy", "rename", "kill-9"])
def test_crash_in_finalize_with_bad_rows_keeps_the_partial_and_resumes(bad_root, bad_reference, tmp_path,
                                                                      monkeypatch, crash_at):
    from featbench.cache import _compact  # fault injection: the step that copies one dataset

    out = tmp_path / "b.h5"
    tmp = out.with_name(out.name + ".tmp")
    snapshots = []  # the partial's bytes after each finished block: the last one is the complete partial
    if crash_at == "kill-9":
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-c", _kill_in_finalize_script(bad_root, out)], env=env,
                              capture_output=True, timeout=120)
        assert proc.returncode == -9, proc.stderr.decode()[-500:]
        assert tmp.exists()  # the new file was partly written when the process died
    else:
        class Crash(Exception):
            pass

        if crash_at == "copy":  # dies in the middle of writing the new file (after its first compacted dataset)
            real = _compact._compact_into
            calls = []

            def compact(*a, **kw):
                calls.append(1)
                if len(calls) == 2:
                    assert tmp.exists()
                    raise Crash
                return real(*a, **kw)

            monkeypatch.setattr(_compact, "_compact_into", compact)
        else:  # the new file is complete, the rename fails
            real_replace = os.replace

            def replace(src, dst):
                if str(src) == str(tmp):
                    raise Crash
                return real_replace(src, dst)

            monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(Crash):
            extract("caltech101", bad_root, out=out, skip_bad_images=True,
                    _after_block=lambda t, b: snapshots.append(_sha(partial_path(out))), **FAST)
        monkeypatch.undo()
        assert snapshots and _sha(partial_path(out)) == snapshots[-1]  # not one byte of the partial changed
        tmp.write_bytes(b"half a file")  # what a kill (instead of an exception) would have left behind
    assert partial_path(out).exists() and not out.exists()
    with h5py.File(partial_path(out), "r") as f:  # complete, uncompacted, progress all done
        assert "_progress" in f and "skipped" not in f
        assert f["splits/test/features"].shape[0] == len(f["splits/test/paths"])
        assert all(not k.endswith("__compact") for k in f["splits/train"])

    msgs, encoded = [], []
    extract("caltech101", bad_root, out=out, skip_bad_images=True, log=msgs.append,
            _after_block=lambda t, b: encoded.append((t, b)), **FAST)
    assert any("resuming" in m for m in msgs) and any("skipped 2" in m for m in msgs)
    assert not encoded  # every block was done: the rerun only finalises
    assert _contents(out) == _contents(bad_reference)
    assert not partial_path(out).exists() and not tmp.exists()
    with Cache(out) as c:
        assert len(c.skipped) == 2


def test_dropping_bad_rows_does_not_bloat_the_cache(reference, bad_reference):
    """The compacted cache is a fresh file: no dead space left by the uncompacted datasets."""
    assert os.path.getsize(bad_reference) < 1.3 * os.path.getsize(reference)
    with h5py.File(bad_reference, "r") as f:
        assert "_progress" not in f
        assert f["splits/train/features"].chunks == (17, 32) and f["splits/train/views"].chunks[0] == 1
        assert f["splits/test/features"].dtype == np.float16 and f["splits/test/rows"].dtype == np.int64


def test_leftover_partial_of_a_finished_cache_is_removed(bad_root, bad_reference, tmp_path):
    """Killed after the rename but before the partial was deleted: the rerun finds the cache up to date
    and deletes the redundant partial."""
    out = tmp_path / "l.h5"
    calls = []

    def crash(task, block):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract("caltech101", bad_root, out=out, skip_bad_images=True, _after_block=crash, **FAST)
    leftover = partial_path(out).read_bytes()
    extract("caltech101", bad_root, out=out, skip_bad_images=True, **FAST)
    partial_path(out).write_bytes(leftover)
    msgs = []
    extract("caltech101", bad_root, out=out, skip_bad_images=True, log=msgs.append, **FAST)
    assert any("up to date" in m for m in msgs)
    assert not partial_path(out).exists()
    assert _contents(out) == _contents(bad_reference)
