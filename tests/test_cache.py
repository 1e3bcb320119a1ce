"""The incremental cache writer: preallocation, block progress, resume, bad-row compaction, refusal."""

from __future__ import annotations

import numpy as np
import pytest

from featbench import cache as C
from featbench.errors import FingerprintMismatch

D = 4
PATHS = [f"c{i % 2}/img{i}.jpg" for i in range(7)]
LABELS = [i % 2 for i in range(7)]


def _feat(pos):  # the "encoder": a pure function of the position
    return np.stack([np.full(D, p + 0.5, dtype=np.float32) for p in pos])


def _start(path, job=None):
    w = C.CacheWriter(path, fingerprint="f" * 64, job=job or {"views": 2})
    if w.try_resume():
        return w
    attrs = C.base_attrs(model="m", pretrained="none", dataset="d", embed_dim=D, logit_scale=100.0, fingerprint="f" * 64)
    tasks = [C.BlockTask("train/features", n=7, block=3, targets=("/splits/train/features",)),
             C.BlockTask("train/views", n=3, block=2, targets=("/splits/train/views",), axis=1)]
    w.create(
        attrs=attrs, classnames=["a", "b"], splits={"train": {"paths": PATHS, "labels": LABELS}},
        text_features=np.ones((1, 2, D), np.float32), templates=["{}"],
        arrays={"/splits/train/features": ((7, D), np.float16), "/splits/train/views": ((2, 3, D), np.float16)},
        extra={"/splits/train/view_rows": np.array([1, 3, 5])}, tasks=tasks,
    )
    return w


def _fill(w, stop_after=None, bad=()):
    done = 0
    for name in ("train/features", "train/views"):
        t = w.tasks[name]
        for b in w.pending_blocks(name):
            lo, hi = t.bounds(b)
            arr = _feat(range(lo, hi))
            if t.axis == 1:
                arr = np.stack([arr, arr + 100])
            w.write_block(name, b, [arr], bad=[p for p in bad if lo <= p < hi and name == "train/features"])
            done += 1
            if stop_after is not None and done >= stop_after:
                return False
    return True


def test_blocks_resume_and_finalize(tmp_path):
    out = tmp_path / "x.h5"
    w = _start(out)
    assert not _fill(w, stop_after=2)
    w.close()  # "crash"
    assert C.partial_path(out).exists() and not out.exists()
    w = _start(out)
    assert w.pending_blocks("train/features") == [2] and w.pending_blocks("train/views") == [0, 1]
    assert _fill(w)
    path, skipped = w.finalize(row_sets={"train/features": ("/splits/train/rows", "train"),
                                         "train/views": ("/splits/train/view_rows", "train")})
    assert path == out and skipped == [] and not C.partial_path(out).exists()
    with C.Cache(out) as c:
        np.testing.assert_allclose(c.features("train"), _feat(range(7)), rtol=1e-3)
        assert c.views().shape == (2, 3, D) and list(c.view_rows()) == [1, 3, 5]
        assert "created" in c.attrs and c.fingerprint == "f" * 64
        assert not c.has_dataset("/_progress") and not c.has_dataset("/splits/train/rows")


def test_bad_rows_are_dropped_and_listed(tmp_path):
    out = tmp_path / "x.h5"
    w = _start(out)
    _fill(w, bad=[0, 4])
    _, skipped = w.finalize(row_sets={"train/features": ("/splits/train/rows", "train"),
                                      "train/views": ("/splits/train/view_rows", "train")})
    assert skipped == [PATHS[0], PATHS[4]]
    with C.Cache(out) as c:
        assert list(c.feature_rows("train")) == [1, 2, 3, 5, 6]
        np.testing.assert_allclose(c.features("train", rows=[3, 6]), _feat([3, 6]), rtol=1e-3)
        assert c.skipped == skipped and len(c.paths("train")) == 7


def test_partial_of_another_job_is_refused(tmp_path):
    out = tmp_path / "x.h5"
    w = _start(out)
    _fill(w, stop_after=1)
    w.close()
    with pytest.raises(FingerprintMismatch, match="views"):
        _start(out, job={"views": 3})
    other = C.CacheWriter(out, fingerprint="0" * 64, job={"views": 2})
    with pytest.raises(FingerprintMismatch, match="fingerprint"):
        other.try_resume()
    assert other.try_resume(overwrite=True) is False and not C.partial_path(out).exists()


def test_unreadable_partial_is_restarted(tmp_path):
    out = tmp_path / "x.h5"
    C.partial_path(out).write_bytes(b"half-written garbage")
    w = _start(out)
    assert w.pending_blocks("train/features") == [0, 1, 2]
    w.close()


def test_partial_locked_by_a_running_extraction_is_kept(tmp_path):
    import subprocess
    import sys

    from featbench.errors import FeatbenchError

    out = tmp_path / "x.h5"
    w = _start(out)
    _fill(w, stop_after=1)
    w.close()
    holder = subprocess.Popen(  # another "extraction" holding the partial open for writing
        [sys.executable, "-c", f"import h5py, sys, time\nf = h5py.File({str(C.partial_path(out))!r}, 'r+')\n"
         "print('open', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        for overwrite in (False, True):
            with pytest.raises(FeatbenchError, match="locked"):
                C.CacheWriter(out, fingerprint="f" * 64, job={"views": 2}).try_resume(overwrite=overwrite)
        assert C.partial_path(out).exists()
    finally:
        holder.kill()
        holder.wait()


ROW_SETS = {"train/features": ("/splits/train/rows", "train"), "train/views": ("/splits/train/view_rows", "train")}


def test_partial_left_mid_compaction_by_an_older_version_is_recovered(tmp_path):
    """Older featbench compacted in place: a kill could leave `<name>__compact` scratch datasets (partial
    otherwise intact: resumed and finalised) or an already shrunk dataset (unusable: started again)."""
    import h5py

    out = tmp_path / "x.h5"
    w = _start(out)
    _fill(w, bad=[0, 4])
    w.close()
    with h5py.File(C.partial_path(out), "r+") as f:
        f["splits/train"].create_dataset("features__compact", shape=(5, D), dtype=np.float16)
    w = _start(out)
    assert w.pending_blocks("train/features") == []
    _, skipped = w.finalize(row_sets=ROW_SETS)
    assert skipped == [PATHS[0], PATHS[4]]
    with h5py.File(out, "r") as f:
        assert "features__compact" not in f["splits/train"] and f["splits/train/features"].shape == (5, D)

    out = tmp_path / "y.h5"
    w = _start(out)
    _fill(w, bad=[0, 4])
    w.close()
    with h5py.File(C.partial_path(out), "r+") as f:
        del f["splits/train/features"]
        f["splits/train"].create_dataset("features", shape=(5, D), dtype=np.float16)
    w = _start(out)
    assert w.pending_blocks("train/features") == [0, 1, 2]  # started over instead of a KeyError
    w.close()


def test_finalize_with_bad_rows_reads_the_partial_only(tmp_path, monkeypatch):
    """The compacted cache is a new file renamed into place; until then the partial is untouched."""
    out = tmp_path / "x.h5"
    w = _start(out)
    _fill(w, bad=[2])
    w.close()
    before = C.partial_path(out).read_bytes()
    w = _start(out)

    def fail(*a, **kw):
        raise OSError("disk full")

    from featbench.cache import _compact  # fault injection: the step that makes the new file durable

    monkeypatch.setattr(_compact, "_fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        w.finalize(row_sets=ROW_SETS)
    w.close()
    monkeypatch.undo()
    assert C.partial_path(out).read_bytes() == before and not out.exists()
    assert not out.with_name(out.name + ".tmp").exists()
    w = _start(out)
    _, skipped = w.finalize(row_sets=ROW_SETS)
    assert skipped == [PATHS[2]] and not C.partial_path(out).exists()
    with C.Cache(out) as c:
        assert list(c.feature_rows("train")) == [0, 1, 3, 4, 5, 6]
