"""Domain generalisation end to end on generated data: extract ImageNet + ImageNet-A, fit on one, test on both."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from featbench.cli import app


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_imagenet_to_imagenet_a(tmp_path):
    from featbench.extract import extract
    from featbench.synthetic import make_dataset

    data = tmp_path / "data"
    make_dataset(data, "imagenet", n_classes=6, per_split=(6, 0, 3), size=32, seed=0)
    make_dataset(data, "imagenet_a", n_classes=3, per_split=(0, 0, 3), size=32, seed=1)
    common = dict(model="tiny-vit", pretrained="none", views=2, view_shots=(1, 2), seeds=(1,), progress=False,
                  cache_dir=tmp_path / "cache")
    src = extract("imagenet", data, **common)
    tgt = extract("imagenet_a", data, **common)
    out = tmp_path / "r.jsonl"
    res = CliRunner().invoke(app, ["fit", str(src), "--heads", "zeroshot,taskres", "--shots", "2", "--seeds", "1",
                                   "--set", "taskres.epochs=3", "--eval-on", str(tgt), "--out", str(out),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["head"], r["dataset"], r["source_dataset"]) for r in rows} == {
        ("zeroshot", "imagenet_a", "imagenet"), ("taskres", "imagenet_a", "imagenet")}
    assert all(r["n_test"] == 9 for r in rows)  # 3 classes x 3 images, predicted among those 3 classes only
