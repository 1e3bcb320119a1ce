"""Real CLIP ViT-B/32 features through the whole cache path: `featbench import` -> `featbench fit` -> rows.

Skips where ../shared/fixtures is absent. ImageNet fixture: ~3 train images per class, 3989 test rows,
single-prompt text weights; zero-shot on these rows is ~61%.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from featbench.cli import app

pytestmark = pytest.mark.real


@pytest.fixture
def imagenet_cache(real_fixtures, tmp_path):
    out = tmp_path / "imagenet.h5"
    res = CliRunner().invoke(app, ["import", str(real_fixtures / "imagenet.npz"), "--out", str(out), "--dataset",
                                   "imagenet", "--model", "ViT-B-32", "--pretrained", "openai"])
    assert res.exit_code == 0, res.output
    return out


def test_imported_fixture_follows_the_contract(imagenet_cache):
    from featbench.cache import Cache

    with Cache(imagenet_cache) as c:
        assert c.num_classes == 1000 and c.text_features().shape == (1, 1000, 512)
        assert c.splits == ["train", "test"] and c.labels("test").shape == (3989,)


def test_taskres_and_tip_adapter_beat_zeroshot_at_one_shot_from_a_cache(imagenet_cache, tmp_path):
    results = tmp_path / "r.jsonl"
    res = CliRunner().invoke(app, ["fit", str(imagenet_cache), "--heads", "zeroshot,tip-adapter,taskres",
                                   "--shots", "1", "--seeds", "1", "--out", str(results), "--no-progress"])
    assert res.exit_code == 0, res.output
    acc = {r["head"]: r["acc"] for r in map(json.loads, results.read_text().splitlines())}
    assert 55.0 < acc["zeroshot"] < 66.0
    assert acc["taskres"] > acc["zeroshot"] + 0.5
    assert acc["tip-adapter"] > acc["zeroshot"]
    # resume: the same command adds nothing
    again = CliRunner().invoke(app, ["fit", str(imagenet_cache), "--heads", "zeroshot,tip-adapter,taskres",
                                     "--shots", "1", "--seeds", "1", "--out", str(results), "--no-progress"])
    assert again.exit_code == 0 and len(results.read_text().splitlines()) == 3


def test_import_errors_are_one_line(tmp_path):
    res = CliRunner().invoke(app, ["import", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "x.h5"),
                                   "--dataset", "imagenet", "--model", "m", "--pretrained", "p"])
    assert res.exit_code == 2
    assert "missing.npz not found" in res.output and "Traceback" not in res.output
