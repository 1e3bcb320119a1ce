"""`featbench extract / info / ls` through typer's CliRunner."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from featbench.cli import app


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from featbench.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data"), "caltech101", n_classes=3, per_split=(4, 2, 2), size=36)


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_extract_info_ls(data_root, tmp_path):
    cache_dir = tmp_path / "cache"
    base = ["extract", "--dataset", "caltech101", "--root", data_root, "--model", "tiny-rn", "--pretrained", "none",
            "--views", "2", "--view-shots", "2", "--seeds", "1", "--batch-size", "8", "--device", "cpu",
            "--cache-dir", cache_dir, "--no-progress", "--workers", "1"]
    res = _run(*base)
    assert res.exit_code == 0, res.output
    path = cache_dir / "tiny-rn--none" / "caltech101.h5"
    assert str(path) in res.output and path.exists()
    res = _run(*base)
    assert res.exit_code == 0 and "up to date" in res.output

    res = _run("info", path, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["model"] == "tiny-rn" and summary["splits"]["train"]["rows"] == 12
    assert summary["views"]["num_views"] == 2
    res = _run("info", path)
    assert res.exit_code == 0 and "tiny-rn" in res.output and "views" in res.output

    res = _run("ls", "--cache-dir", cache_dir)
    assert res.exit_code == 0 and "tiny-rn" in res.output and "caltech101" in res.output


@pytest.mark.parametrize(
    "flag,value",
    [("--splits", "train,bogus"), ("--view-shots", "a,b"), ("--view-scale", "2,1"), ("--train-rows", "some"),
     ("--dtype", "int8"), ("--device", "tpu"), ("--seeds", ""), ("--batch-size", "0")],
)
def test_invalid_flags_name_the_flag(data_root, tmp_path, flag, value):
    res = _run("extract", "--dataset", "caltech101", "--root", data_root, "--model", "tiny-vit", "--pretrained", "none",
               "--cache-dir", tmp_path, flag, value)
    assert res.exit_code == 2
    assert flag in res.output and "Traceback" not in res.output


def test_unavailable_weights_exit_2_one_line(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = _run("extract", "--dataset", "caltech101", "--root", data_root, "--model", "RN50", "--pretrained", "openai",
               "--cache-dir", tmp_path)
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--pretrained" in lines[0]


def test_info_on_missing_file_is_clean(tmp_path):
    res = _run("info", tmp_path / "nope.h5")
    assert res.exit_code == 2 and "does not exist" in res.output
