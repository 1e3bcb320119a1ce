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
