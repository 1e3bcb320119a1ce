"""A full disk (ENOSPC) or an exhausted quota (EDQUOT) while featbench writes: one `featbench: error:` line naming
the folder and the space still needed, exit 2, what was written so far intact, no stray files, and a rerun once
there is room ends where a run that never failed ends.

The disk is simulated at the lowest write call each writer reaches: `os.write` on files under one folder (a
folder with a byte quota, like a small filesystem), `np.savez`, and h5py's dataset creation and writes (raising
h5py's own wrapped text). `test_real_small_filesystem_*` use a real tmpfs in a user+mount namespace where the
machine allows one (`unshare -rm`), and skip otherwise.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from featbench.cache import Cache
from featbench.cli import app
from featbench.diskspace import DiskFull, disk_full_as_error, is_disk_full
from featbench.results import read_rows, row_key

from test_merge import _assert_same, _data, _write
from test_protocol import make_cache, test_heads  # noqa: F401  (fixture)

H5_TEXT = ("Can't write data (file write failed: time = Sun Dec  6 06:50:00 2026, filename = 'x.h5', file descriptor = 5, "
           "errno = 28, error message = 'No space left on device', buf = 0x1, total write size = 4096)")
QUOTA_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # the subprocesses below run with one thread too


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(res, folder) -> str:
    """The run failed as a full disk should: exit 2, one line naming the folder and the space, no traceback."""
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("featbench: error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    line = errors[0]
    assert f"no space left in {folder}" in line and " free" in line, line
    return line


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# -- the fake small disk: a byte quota on the files under one folder -------------------------------------------
class FakeDisk:
    """`os.write` to a file under `folder` writes until `quota` bytes are used (the last write cut short, as a
    real disk does), then fails with `err`."""

    def __init__(self, folder: Path, quota: int, err: int = errno.ENOSPC):
        self.folder, self.quota, self.err, self.used = str(Path(folder).resolve()), quota, err, 0

    def install(self, monkeypatch):
        real = os.write

        def write(fd, data):
            if not self._under(fd):
                return real(fd, data)
            room = self.quota - self.used
            if room <= 0:
                raise OSError(self.err, os.strerror(self.err))
            n = real(fd, bytes(memoryview(data)[:room]))
            self.used += n
            return n

        monkeypatch.setattr(os, "write", write)

    def _under(self, fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(self.folder + os.sep)
        except OSError:
            return False


def fail_after(monkeypatch, owner, name: str, calls: int, error):
    """Make `owner.name` raise `error` from its `calls`-th call on (0: the first call fails)."""
    real = getattr(owner, name)
    count = [0]

    def patched(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, patched)
    return count


def pretend_free(monkeypatch, free: int):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10 * free + 1, 0, free))


# -- recognising a full disk -------------------------------------------------------------------------------------
@pytest.mark.parametrize("err", [
    OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EDQUOT, "Disk quota exceeded"),
    RuntimeError(H5_TEXT), OSError(H5_TEXT), OSError("Unable to synchronously create file (errno = 122)"),
    RuntimeError("Can't decrement id ref count (unable to extend file properly, errno = 28)"),
])
def test_full_disk_in_every_disguise_is_recognised(err):
    assert is_disk_full(err)
    wrapped = ValueError("while closing")
    wrapped.__context__ = err
    assert is_disk_full(wrapped)


@pytest.mark.parametrize("err", [OSError(errno.EACCES, "Permission denied"), RuntimeError("errno = 280"),
                                 ValueError("No space left on device"), KeyError("errno 28")])
def test_other_errors_are_not_a_full_disk(err):
    assert not is_disk_full(err)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60), st.text(max_size=60), st.sampled_from(["No space left on device", "errno = 28",
                                                                     "[Errno 122]", "DISK QUOTA EXCEEDED"]))
def test_the_marker_anywhere_in_h5py_text_is_recognised(before, after, marker):
    assert is_disk_full(RuntimeError(f"{before} {marker} {after}"))
    text = f"{before}{after}".lower()
    if not any(m in text for m in ("no space", "errno", "quota")):
        assert not is_disk_full(RuntimeError(text))


def test_the_error_names_folder_and_space(tmp_path):
    with pytest.raises(DiskFull, match=rf"no space left in {tmp_path} .* about 2.0 KiB still to write, .* free"):
        with disk_full_as_error(tmp_path, "x.bin", lambda: 2048):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError, match="Permission"):  # anything else goes through untouched
        with disk_full_as_error(tmp_path, "x.bin", 1):
            raise OSError(errno.EACCES, "Permission denied")


# -- fit --out: the results file -------------------------------------------------------------------------------
FIT = ["--heads", "test-ncm", "--shots", "1,2,4", "--seeds", "1,2", "--no-progress"]


def _fit(cache, out, *extra):
    return invoke("fit", cache, *FIT, "--out", out, *extra)


def _comparable(rows):
    return sorted((json.dumps({k: v for k, v in r.items() if k not in ("timestamp", "fit_seconds")}, sort_keys=True)
                   for r in rows))


@pytest.fixture
def fit_setup(tmp_path, test_heads):
    cache, _ = make_cache(tmp_path / "c.h5")
    clean = tmp_path / "clean" / "r.jsonl"
    assert _fit(cache, clean).exit_code == 0
    return cache, clean


@pytest.mark.parametrize("err", QUOTA_ERRNOS)
def test_fit_on_a_full_disk_keeps_whole_rows_and_resumes(tmp_path, fit_setup, monkeypatch, err):
    cache, clean = fit_setup
    lines = clean.read_bytes().splitlines(keepends=True)
    assert len(lines) == 6
    first, second = len(lines[0]), len(lines[1])
    for quota in (0, 1, first - 1, first, first + 7, first + second - 1, first + second + 3):
        folder = tmp_path / f"out-{err}-{quota}"
        out = folder / "r.jsonl"
        with monkeypatch.context() as m:
            FakeDisk(folder, quota, err).install(m)
            res = _fit(cache, out)
        line = one_error_line(res, folder)
        assert "r.jsonl" in line and "still to write" in line
        data = out.read_bytes() if out.exists() else b""
        kept = [json.loads(ln) for ln in data.splitlines()]  # whole rows only: each one parses
        assert data.endswith(b"\n") or not data
        assert len(data) <= quota and quota - len(data) < max(map(len, lines)) + 40  # stopped at the row that did not fit
        assert {row_key(r) for r in kept} <= {row_key(r) for r in read_rows(clean)}
        assert files_in(folder) <= {"r.jsonl"}
        res = _fit(cache, out)  # room again: the same command resumes
        assert res.exit_code == 0, res.output
        assert _comparable(read_rows(out)) == _comparable(read_rows(clean))
        assert out.read_bytes().startswith(data)


def test_fit_save_predictions_on_a_full_disk(tmp_path, fit_setup, monkeypatch):
    cache, clean = fit_setup
    clean_preds = tmp_path / "clean-preds"
    assert _fit(cache, tmp_path / "clean2" / "r.jsonl", "--save-predictions", clean_preds).exit_code == 0
    real_savez = np.savez
    for calls in (0, 1, 3):
        preds = tmp_path / f"preds-{calls}"
        out = tmp_path / f"out-{calls}" / "r.jsonl"
        count = [0]

        def savez(fh, **arrays):
            count[0] += 1
            if count[0] > calls:
                fh.write(b"PK\x03\x04 half a zip")
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_savez(fh, **arrays)

        with monkeypatch.context() as m:
            m.setattr(np, "savez", savez)
            res = _fit(cache, out, "--save-predictions", preds)
        line = one_error_line(res, preds)
        assert "--save-predictions" in line
        assert not any(name.endswith(".tmp") for name in files_in(preds)), files_in(preds)
        kept = read_rows(out)  # rows whose predictions were saved (cells may come in batches)
        assert len(kept) <= calls and all((preds / r["predictions"]).is_file() for r in kept)
        res = _fit(cache, out, "--save-predictions", preds)
        assert res.exit_code == 0, res.output
        assert _comparable(read_rows(out)) == _comparable(read_rows(tmp_path / "clean2" / "r.jsonl"))
        assert files_in(preds) == files_in(clean_preds)


# -- import ------------------------------------------------------------------------------------------------------
def _npz(path, scale=1.0):
    rng = np.random.default_rng(0)
    arrays = {f"{s}_features": scale * rng.standard_normal((n, 8)).astype(np.float32) for s, n in
              (("train", 12), ("val", 4), ("test", 6))}
    arrays.update({f"{s}_labels": np.arange(n) % 3 for s, n in (("train", 12), ("val", 4), ("test", 6))})
    arrays["text_raw"] = rng.standard_normal((2, 3, 8)).astype(np.float32)
    np.savez(path, **arrays)
    return path


def _import(npz, out):
    return invoke("import", npz, "--out", out, "--dataset", "toy", "--model", "m", "--pretrained", "p")


H5_FAILURES = [("create_dataset", OSError(errno.ENOSPC, "No space left on device")),
               ("create_dataset", RuntimeError(H5_TEXT)), ("create_dataset", OSError(H5_TEXT)),
               ("create_dataset", OSError(errno.EDQUOT, "Disk quota exceeded"))]


@pytest.mark.parametrize("calls", [0, 2, 5])
@pytest.mark.parametrize("method,error", H5_FAILURES)
def test_import_on_a_full_disk_leaves_nothing_and_reruns(tmp_path, monkeypatch, calls, method, error):
    npz = _npz(tmp_path / "f.npz")
    clean = tmp_path / "clean" / "c.h5"
    assert _import(npz, clean).exit_code == 0
    folder = tmp_path / "out"
    with monkeypatch.context() as m:
        fail_after(m, h5py.Group, method, calls, error)
        res = _import(npz, folder / "c.h5")
    assert "c.h5" in one_error_line(res, folder)
    assert files_in(folder) == set()
    assert _import(npz, folder / "c.h5").exit_code == 0
    _assert_caches_equal(clean, folder / "c.h5")


def test_import_refuses_before_writing_when_the_arrays_cannot_fit(tmp_path, monkeypatch):
    npz = _npz(tmp_path / "f.npz")
    folder = tmp_path / "out"
    pretend_free(monkeypatch, 100)
    line = one_error_line(_import(npz, folder / "c.h5"), folder)
    assert "100 B free" in line and "nothing was written" in line
    assert not folder.exists() or files_in(folder) == set()


def _assert_caches_equal(a, b):
    with Cache(a) as x, Cache(b) as y:
        assert {k: v for k, v in x.attrs.items() if k != "created"} == {k: v for k, v in y.attrs.items() if k != "created"}
        for s in ("train", "val", "test"):
            if x.has_split(s):
                np.testing.assert_array_equal(x.features(s), y.features(s))
        np.testing.assert_array_equal(x.text_features(), y.text_features())


# -- merge -------------------------------------------------------------------------------------------------------
def _parts(folder):
    data = _data()
    folder.mkdir(exist_ok=True)
    whole = _write(folder / "whole.h5", data)
    parts = [_write(folder / f"p{rank}.h5", data, rows={s: np.arange(n)[rank::2] for s, n in
                                                        {"train": 12, "val": 6, "test": 7}.items()},
                    view_rows=np.arange(12)[rank::2]) for rank in range(2)]
    return whole, parts


@pytest.mark.parametrize("owner,method,calls", [(h5py.Group, "create_dataset", 0), (h5py.Group, "create_dataset", 4),
                                                (h5py.Dataset, "__setitem__", 0), (h5py.Dataset, "__setitem__", 3)])
@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), RuntimeError(H5_TEXT)])
def test_merge_on_a_full_disk_leaves_nothing_and_reruns(tmp_path, monkeypatch, owner, method, calls, error):
    whole, parts = _parts(tmp_path / "in")
    folder = tmp_path / "out"
    folder.mkdir()
    with monkeypatch.context() as m:
        fail_after(m, owner, method, calls, error)
        res = invoke("merge", *parts, "--out", folder / "m.h5")
    assert "m.h5" in one_error_line(res, folder)
    assert files_in(folder) == set()
    assert invoke("merge", *parts, "--out", folder / "m.h5").exit_code == 0
    _assert_same(whole, folder / "m.h5")


def test_merge_refuses_before_writing_without_room_for_the_largest_part(tmp_path, monkeypatch):
    _, parts = _parts(tmp_path / "in")
    pretend_free(monkeypatch, 1000)
    line = one_error_line(invoke("merge", *parts, "--out", tmp_path / "out" / "m.h5"), tmp_path / "out")
    assert "1000 B free" in line
    assert not (tmp_path / "out").exists() or files_in(tmp_path / "out") == set()


# -- extract -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from featbench.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data"), "caltech101", n_classes=3, per_split=(6, 3, 3), size=40)


def _extract(root, out, *extra):
    return invoke("extract", "--dataset", "caltech101", "--root", root, "--model", "tiny-vit", "--pretrained", "none",
                  "--views", "2", "--view-shots", "1,2,4", "--seeds", "1,2", "--batch-size", "4", "--device", "cpu",
                  "--workers", "0", "--no-progress", "--out", out, *extra)


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    res = _extract(data_root, out)
    assert res.exit_code == 0, res.output
    return out


def _same_cache(a, b):
    from test_extract import _contents

    ca, cb = _contents(a), _contents(b)
    ca["attrs:/"].pop("featbench_version", None), cb["attrs:/"].pop("featbench_version", None)
    assert ca == cb


EXTRACT_FAILURES = [  # (what fails, after how many calls, the error): laying out the partial, then filling blocks
    (h5py.Group, "create_dataset", 0, OSError(errno.ENOSPC, "No space left on device")),
    (h5py.Group, "create_dataset", 4, RuntimeError(H5_TEXT)),
    (h5py.Group, "create_dataset", 12, OSError(errno.EDQUOT, "Disk quota exceeded")),
    (h5py.AttributeManager, "__setitem__", 30, OSError(errno.ENOSPC, "No space left on device")),  # view scales
    (h5py.Dataset, "__setitem__", 0, OSError(H5_TEXT)),
    (h5py.Dataset, "__setitem__", 5, OSError(errno.ENOSPC, "No space left on device")),
    (h5py.Dataset, "__setitem__", 17, RuntimeError(H5_TEXT)),
    (h5py.Dataset, "__setitem__", 30, OSError(errno.EDQUOT, "Disk quota exceeded")),
]


@pytest.mark.parametrize("owner,method,calls,error", EXTRACT_FAILURES)
def test_extract_on_a_full_disk_is_resumable_or_gone(data_root, reference, tmp_path, monkeypatch, owner, method, calls,
                                                     error):
    folder = tmp_path / "cache"
    out = folder / "x.h5"
    with monkeypatch.context() as m:
        count = fail_after(m, owner, method, calls, error)
        res = _extract(data_root, out)
    assert count[0] > calls, "the simulated disk never filled up"
    line = one_error_line(res, folder)
    assert "x.h5" in line and "still to write" in line
    left = files_in(folder)
    assert left in (set(), {"x.h5.partial"}), left  # never a stray x.h5.partial.init (or .tmp)
    if owner is h5py.Dataset:
        assert left == {"x.h5.partial"}  # the blocks written so far are kept
        assert "MiB still to write" not in line  # only the pending blocks, not the 6 MiB already in the partial
    res = _extract(data_root, out)
    assert res.exit_code == 0, res.output
    assert ("resuming" in res.output) == (left == {"x.h5.partial"})
    assert files_in(folder) == {"x.h5"}
    _same_cache(reference, out)


def test_extract_refuses_before_writing_when_the_cache_cannot_fit(data_root, tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    pretend_free(monkeypatch, 2000)
    line = one_error_line(_extract(data_root, folder / "x.h5"), folder)
    assert "2.0 KiB free" in line and "nothing was written" in line
    assert not folder.exists() or files_in(folder) == set()


def test_extract_dropping_bad_images_refuses_the_copy_without_room(data_root, tmp_path, monkeypatch):
    from featbench.datasets import load_dataset
    from featbench.synthetic import corrupt_image

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    corrupt_image(load_dataset("caltech101", root).abspath(load_dataset("caltech101", root).splits["test"][1][0]),
                  kind="garbage")
    folder = tmp_path / "cache"
    from featbench import diskspace

    real_free = diskspace.free_bytes
    with monkeypatch.context() as m:  # room for the partial, not for the compacted copy
        m.setattr(diskspace, "free_bytes", lambda f: 10 if (Path(f) / "x.h5.partial").exists() else real_free(f))
        line = one_error_line(_extract(root, folder / "x.h5", "--skip-bad-images"), folder)
    assert "dropping unreadable images" in line and "kept" in line
    assert files_in(folder) == {"x.h5.partial"}
    res = _extract(root, folder / "x.h5", "--skip-bad-images")
    assert res.exit_code == 0 and files_in(folder) == {"x.h5"}
    with Cache(folder / "x.h5") as c:
        assert len(c.skipped) == 1


# -- extract --dtype float16: features beyond float16's range ------------------------------------------------------
def _scale_encoder(monkeypatch, what: str, factor: float = 1e6):
    """Make the tiny encoder's `what` outputs ("image", "pre", "text" or "views") exceed float16's range."""
    from featbench import extract as X
    from featbench.encoders import Encoder

    real_images, real_text, real_item = Encoder.encode_images, Encoder.encode_text, X._Blocks.__getitem__
    task = [""]

    def item(self, i):
        task[0] = self.name
        return real_item(self, i)

    def images(self, x, pre_projection=False):
        feats, pre = real_images(self, x, pre_projection=pre_projection)
        if what == "image" or (what == "views" and task[0].startswith("train/views")):
            feats = feats * factor
        if what == "pre" and pre is not None:
            pre = pre * factor
        return feats, pre

    def text(self, *args, **kwargs):
        feats, pre = real_text(self, *args, **kwargs)
        return (feats * factor if what == "text" else feats), pre

    monkeypatch.setattr(X._Blocks, "__getitem__", item)
    monkeypatch.setattr(Encoder, "encode_images", images)
    monkeypatch.setattr(Encoder, "encode_text", text)


@pytest.mark.parametrize("what,names", [("image", "image features of train/features"), ("views", "train/views"),
                                        ("text", "text features"), ("pre", "pre-projection image features")])
def test_extract_refuses_float16_overflow_naming_the_flag(data_root, tmp_path, monkeypatch, what, names):
    folder = tmp_path / "cache"
    extra = ("--pre-projection",) if what == "pre" else ()
    with monkeypatch.context() as m:
        _scale_encoder(m, what)
        res = _extract(data_root, folder / "x.h5", *extra)
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("featbench: error:")]
        assert len(lines) == 1 and "Traceback" not in res.output
        assert names in lines[0] and "beyond float16's range" in lines[0] and "--dtype float32" in lines[0], lines[0]
        assert not folder.exists() or files_in(folder) == set()  # nothing that a float32 rerun would trip over
        res = _extract(data_root, folder / "x.h5", "--dtype", "float32", *extra)
        assert res.exit_code == 0, res.output
    with Cache(folder / "x.h5") as c:
        big = c.text_features() if what == "text" else c.views() if what == "views" else c.features("train")
        if what == "pre":
            big = c._f["splits"]["train"]["features_pre"][()]
        assert np.isfinite(big).all() and np.abs(big).max() > 65504


def test_float16_check_is_shared_with_import(tmp_path):
    npz = _npz(tmp_path / "big.npz", scale=1e6)
    res = _import(npz, tmp_path / "c.h5")
    assert res.exit_code == 2 and "beyond float16's range" in res.stderr and "--dtype float32" in res.stderr
    from featbench import importer

    assert not hasattr(importer, "_fits_dtype")  # one check, in featbench.cache


# -- a real small filesystem: tmpfs in a user+mount namespace (`unshare -rm`), where the machine allows one --------
def _real_disk_run(tmp_path, size: str, commands: list[list[str]]) -> list[dict]:
    """Mount a `size` tmpfs at tmp_path/disk, run each featbench command (each after growing the disk to 64m if it
    is not the first), and after each record its exit code, stderr and the files on the disk (copied out)."""
    disk, saved = tmp_path / "disk", tmp_path / "saved"
    disk.mkdir()
    saved.mkdir()
    steps = []
    for i, cmd in enumerate(commands):
        if i:
            steps.append(f"mount -o remount,size=64m tmpfs {disk}")
        args = " ".join(f"'{a}'" for a in cmd)
        steps.append(f"rc=0; {sys.executable} -m featbench {args} > {saved}/{i}.out 2> {saved}/{i}.err || rc=$?")
        steps.append(f"echo $rc > {saved}/{i}.rc")
        steps.append(f"mkdir {saved}/{i} && cp -a {disk}/. {saved}/{i}/")
    script = f"set -e\nmount -t tmpfs -o size={size} tmpfs {disk}\n" + "\n".join(steps) + "\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, capture_output=True, text=True,
                              timeout=600, cwd=Path(__file__).parent.parent)
    except (FileNotFoundError, PermissionError):
        pytest.skip("no unshare here: cannot mount a small filesystem without root")
    if proc.returncode != 0 and not (saved / "0.rc").exists():
        pytest.skip(f"cannot mount a tmpfs in a user namespace here ({proc.stderr.strip()[-300:]})")
    return [{"rc": int((saved / f"{i}.rc").read_text()), "err": (saved / f"{i}.err").read_text(),
             "out": (saved / f"{i}.out").read_text(), "files": saved / str(i)} for i in range(len(commands))]


def _assert_one_line(step, folder):
    assert step["rc"] == 2, step
    lines = [ln for ln in step["err"].splitlines() if ln.startswith("featbench: error:")]
    assert len(lines) == 1 and "Traceback" not in step["err"], step["err"]
    assert lines[0].startswith(f"featbench: error: no space left in {folder}"), lines[0]


def test_real_small_filesystem_fit(tmp_path, fit_setup):
    cache, clean = fit_setup
    disk = tmp_path / "disk"
    cmd = ["fit", str(cache), "--heads", "test_protocol:NCMHead", "--shots", "1,2,4", "--seeds", "1,2,3",
           "--no-progress", "--out", str(disk / "r.jsonl")]
    first, again = _real_disk_run(tmp_path, "4k", [cmd, cmd])  # 4 KiB: room for some of the 9 rows (~670 B each)
    _assert_one_line(first, disk)
    assert files_in(first["files"]) == {"r.jsonl"}
    data = (first["files"] / "r.jsonl").read_bytes()
    assert data.endswith(b"\n") and 0 < len(data.splitlines()) < 9
    assert [json.loads(ln) for ln in data.splitlines()]
    assert again["rc"] == 0, again
    rows = read_rows(again["files"] / "r.jsonl")
    assert len(rows) == 9 and (again["files"] / "r.jsonl").read_bytes().startswith(data)
    assert {(r["shots"], r["seed"], r["acc"]) for r in rows if r["seed"] < 3} == \
        {(r["shots"], r["seed"], r["acc"]) for r in read_rows(clean)}


@pytest.mark.slow  # ~13 s: starts loky workers inside a user namespace; the simulated cases cover the logic
def test_real_small_filesystem_save_predictions_from_workers(tmp_path, fit_setup):
    cache, clean = fit_setup
    disk, out = tmp_path / "disk", tmp_path / "out" / "r.jsonl"
    cmd = ["fit", str(cache), "--heads", "test_protocol:NCMHead", "--shots", "1,2,4", "--seeds", "1,2", "--jobs", "2",
           "--no-progress", "--out", str(out), "--save-predictions", str(disk)]
    first, again = _real_disk_run(tmp_path, "8k", [cmd, cmd])  # one 4 KiB page per .npz: two fit
    _assert_one_line(first, disk)
    assert "--save-predictions" in first["err"]
    saved = files_in(first["files"])
    assert len(saved) == 2 and all(n.endswith(".npz") for n in saved), saved  # no temporary file left behind
    assert again["rc"] == 0, again
    rows = read_rows(out)
    assert len(rows) == 6 and {r["predictions"] for r in rows} == files_in(again["files"])
    assert {(r["shots"], r["seed"], r["acc"]) for r in rows} == {(r["shots"], r["seed"], r["acc"]) for r in read_rows(clean)}


# the cache takes 6.15 MiB (mostly the random text tower's weights); 6000k is refused up front, 6260k passes that
# check (the arrays fit) and fills up half-way through HDF5's own bytes
@pytest.mark.parametrize("size,up_front", [pytest.param("6000k", True, marks=pytest.mark.slow), ("6260k", False)])
def test_real_small_filesystem_extract(data_root, reference, tmp_path, size, up_front):
    disk = tmp_path / "disk"
    cmd = ["extract", "--dataset", "caltech101", "--root", str(data_root), "--model", "tiny-vit", "--pretrained", "none",
           "--views", "2", "--view-shots", "1,2,4", "--seeds", "1,2", "--batch-size", "4", "--device", "cpu",
           "--workers", "0", "--no-progress", "--out", str(disk / "x.h5")]
    first, again = _real_disk_run(tmp_path, size, [cmd, cmd])
    _assert_one_line(first, disk)
    assert ("nothing was written" in first["err"]) == up_front, first["err"]
    assert files_in(first["files"]) <= {"x.h5.partial"}, files_in(first["files"])
    assert again["rc"] == 0, again
    assert files_in(again["files"]) == {"x.h5"}
    _same_cache(reference, again["files"] / "x.h5")
