"""Malformed input files (issue 18): ObjectNet mapping files of the wrong JSON types or encoding, duplicate
targets, NUL bytes in class names, .npy headers that declare more than the file holds, and features beyond
float16's range. Each is one `featbench: error:` line naming the file (and key), exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from featbench.datasets import load_dataset
from featbench.errors import FeatbenchError
from featbench.heads import get_head
from featbench.synthetic import make_dataset, objectnet_folder
from conftest import run_cli as _run, assert_one_line_error as _one_line_error  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# -- ObjectNet mapping files ------------------------------------------------------------------------------------
@pytest.fixture
def objectnet(tmp_path):
    make_dataset(tmp_path, "objectnet", n_classes=2, per_split=(0, 0, 1), size=24)
    return tmp_path


def _maps(root):
    return root / "objectnet" / "objectnet-1.0" / "mappings"


def _edit(root, name, change):
    path = _maps(root) / name
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(change(data)), encoding="utf-8")


FOLDERS = "folder_to_objectnet_label.json"
TO_1K = "objectnet_to_imagenet_1k.json"
PYTORCH = "pytorch_to_imagenet_2012_id.json"


def _set_first(value):
    return lambda d: {**d, next(iter(d)): value}


MAPPING_CASES = [
    (FOLDERS, lambda d: {**d, objectnet_folder(0): ["a", "list"]}, [FOLDERS, objectnet_folder(0), "string"]),
    (FOLDERS, lambda d: {**d, objectnet_folder(0): 7}, [FOLDERS, "expected a string"]),
    (FOLDERS, lambda d: {**d, objectnet_folder(1): d[objectnet_folder(0)]}, [FOLDERS, "both map", "two classes"]),
    (FOLDERS, lambda d: [1, 2], [FOLDERS, "JSON object"]),
    (TO_1K, _set_first({"nested": 1}), [TO_1K, "expected a string"]),
    (TO_1K, _set_first(None), [TO_1K, "expected a string"]),
    (PYTORCH, _set_first(1.5), [PYTORCH, "whole-number"]),
    (PYTORCH, _set_first("3"), [PYTORCH, "whole-number"]),
    (PYTORCH, _set_first(True), [PYTORCH, "whole-number"]),
    (PYTORCH, lambda d: {"x": 0, **d}, [PYTORCH, "'x'"]),
    (PYTORCH, lambda d: {**d, "0": d["1"]}, [PYTORCH, "already the target"]),
]


@pytest.mark.parametrize("name, change, needles", MAPPING_CASES)
def test_objectnet_mapping_of_wrong_types_is_one_error(objectnet, name, change, needles):
    _edit(objectnet, name, change)
    with pytest.raises(FeatbenchError) as err:
        load_dataset("objectnet", objectnet)
    for n in needles:
        assert n in str(err.value), (n, str(err.value))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["imagenet_to_label_2012_v2", FOLDERS])
def test_objectnet_mapping_that_is_not_utf8(objectnet, name):
    path = _maps(objectnet) / name
    path.write_bytes(path.read_bytes().replace(b"e", b"\xe9", 1))
    with pytest.raises(FeatbenchError, match=f"{name}.*UTF-8"):
        load_dataset("objectnet", objectnet)


def test_objectnet_label_with_a_nul_byte(objectnet):
    label = json.loads((_maps(objectnet) / FOLDERS).read_text(encoding="utf-8"))[objectnet_folder(0)]
    _edit(objectnet, FOLDERS, lambda d: {**d, objectnet_folder(0): label + "\x00x"})
    _edit(objectnet, TO_1K, lambda d: {**d, label + "\x00x": d[label]})
    with pytest.raises(FeatbenchError, match=f"{FOLDERS} key '{objectnet_folder(0)}'.*NUL"):
        load_dataset("objectnet", objectnet)


def test_objectnet_bad_mapping_through_extract(objectnet, tmp_path):
    _edit(objectnet, PYTORCH, _set_first(2.7))
    res = _run("extract", "--dataset", "objectnet", "--root", objectnet, "--model", "tiny-vit", "--pretrained",
               "none", "--device", "cpu", "--cache-dir", tmp_path / "cache")
    _one_line_error(res, PYTORCH, "whole-number")
    assert not (tmp_path / "cache").exists()


# -- NUL bytes in class names -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), "caltech101", n_classes=3, per_split=(2, 1, 1), size=32)


@pytest.mark.parametrize("name, text", [("n.txt", "first\nse\x00cond\nthird\n"),
                                        ("n.json", json.dumps(["first", "se\x00cond", "third"]))])
def test_nul_in_classnames_file(data_root, tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    res = _run("extract", "--dataset", "caltech101", "--root", data_root, "--model", "tiny-vit", "--pretrained",
               "none", "--device", "cpu", "--classnames", path, "--cache-dir", tmp_path / "cache")
    _one_line_error(res, "--classnames", str(path), "NUL")
    assert not (tmp_path / "cache").exists()


def _import(tmp_path, dtype=None, **arrays):
    npz = tmp_path / "f.npz"
    np.savez(npz, **arrays)
    out = tmp_path / "i.h5"
    extra = ["--dtype", dtype] if dtype else []
    return _run("import", npz, "--out", out, "--dataset", "x", "--model", "m", "--pretrained", "p", *extra), out


def test_nul_in_imported_classnames(tmp_path):
    res, out = _import(tmp_path, train_features=np.ones((2, 3)), train_labels=np.array([0, 1]),
                       classnames=np.array(["cat", "d\x00og"]))
    _one_line_error(res, "f.npz", "classnames[1]", "NUL")
    assert not out.exists()


# -- float16's range --------------------------------------------------------------------------------------------
def test_import_beyond_float16_is_refused_not_inf(tmp_path):
    feats = np.array([[1.0, 2.0, 7e4], [1.0, -1.0, 0.5]])
    res, out = _import(tmp_path, train_features=feats, train_labels=np.array([0, 1]))
    _one_line_error(res, "train_features", "float16", "--dtype float32")
    assert not out.exists()
    res, out = _import(tmp_path, dtype="float32", train_features=feats, train_labels=np.array([0, 1]))
    assert res.exit_code == 0, res.output
    from featbench.cache import Cache

    with Cache(out) as c:
        stored = c.features("train")
    assert np.isfinite(stored).all() and stored.max() == pytest.approx(7e4)


def test_imported_views_beyond_float16_are_refused(tmp_path):
    views = np.ones((2, 2, 3))
    views[1, 0, 0] = -1e5
    res, out = _import(tmp_path, train_features=np.ones((2, 3)), train_labels=np.array([0, 1]), train_views=views)
    _one_line_error(res, "train_views", "float16")
    assert not out.exists()


# -- .npy headers that declare more than the file holds ---------------------------------------------------------
def _huge_npy(path, shape=(10**7, 10**6)):
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(np.zeros(8, np.float32).tobytes())
    return path


def test_base_weights_with_a_huge_header_are_refused_before_allocating(tmp_path):
    X = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    y = np.array([0, 0, 1, 1, 2, 2])
    path = _huge_npy(tmp_path / "base.npy")
    with pytest.raises(FeatbenchError, match=r"taskres.base=.*base.npy.*declares 40,000,000,000,000 bytes"):
        get_head("taskres", base=str(path), epochs=1).fit(X, y)


def test_import_npz_member_with_a_huge_header_is_refused(tmp_path):
    import zipfile

    member = _huge_npy(tmp_path / "train_features.npy")
    npz = tmp_path / "f.npz"
    with zipfile.ZipFile(npz, "w") as zf:
        zf.write(member, "train_features.npy")
        with zf.open("train_labels.npy", "w") as fh:
            np.lib.format.write_array(fh, np.array([0, 1]))
    res = _run("import", npz, "--out", tmp_path / "i.h5", "--dataset", "x", "--model", "m", "--pretrained", "p")
    _one_line_error(res, "train_features.npy", "declares")
    assert not (tmp_path / "i.h5").exists()


# -- a torch/torchvision pair that does not load together -------------------------------------------------------
class _BrokenTorchvision:
    """A meta-path finder that fails the way a CUDA torchvision next to a CPU torch does."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")
        return None


@pytest.fixture
def broken_torchvision(monkeypatch):
    import importlib.util
    import sys

    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_BrokenTorchvision(), *sys.meta_path])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "torchvision" else None)


@pytest.mark.parametrize("args", [["fit", "no-such.h5", "--out"], ["run", "no-such.yaml", "--out"], ["demo", "--out"],
                                  ["extract", "--dataset", "caltech101", "--root", ".", "--model", "RN50", "--cache-dir"]])
def test_torch_torchvision_mismatch_is_one_line_at_start(broken_torchvision, tmp_path, args):
    from featbench.devices import installed_version

    res = _run(*args, tmp_path / "o")
    _one_line_error(res, f"torch {installed_version('torch')}", f"torchvision {installed_version('torchvision')}",
                    "torchvision::nms does not exist", "pip install --force-reinstall torch torchvision")
    assert not (tmp_path / "o").exists()


def test_help_does_not_check_torch(broken_torchvision):
    assert _run("--help").exit_code == 0
    assert _run("table", "--help").exit_code == 0
