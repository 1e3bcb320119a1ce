"""ObjectNet: the release layout and mapping chain, the 1-pixel border crop, and ImageNet -> ObjectNet via --eval-on."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from featbench.cli import app
from featbench.datasets import dataset_info, load_dataset
from featbench.errors import FeatbenchError
from featbench.synthetic import class_name, make_dataset, objectnet_folder

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_reader_keeps_mapped_classes_and_resolves_the_chain(tmp_path):
    make_dataset(tmp_path, "objectnet", n_classes=3, per_split=(0, 0, 2), size=24)
    ds = load_dataset("objectnet", tmp_path)
    assert ds.class_ids == [objectnet_folder(j) for j in range(3)]  # "unmapped_thing" dropped
    assert len(ds.splits["test"]) == 3 * 2 and set(ds.splits) == {"test"}
    # ObjectNet class j -> ImageNet classes 2j, 2j+1 by their CoOp names, through 2012 ids in reverse order
    assert ds.class_map == [[class_name(2 * j).replace("_", " "), class_name(2 * j + 1).replace("_", " ")]
                            for j in range(3)]
    assert all(p.startswith("objectnet-1.0/images/") and p.endswith(".png") for p, _ in ds.splits["test"])
    assert dataset_info("objectnet").border_crop == 1 and dataset_info("objectnet").templates == dataset_info("imagenet").templates
    # the dataset folder itself works as --root too
    assert load_dataset("objectnet", tmp_path / "objectnet").class_ids == ds.class_ids


def test_missing_mapping_is_one_clear_error(tmp_path):
    make_dataset(tmp_path, "objectnet", n_classes=2, per_split=(0, 0, 1), size=24)
    (tmp_path / "objectnet" / "objectnet-1.0" / "mappings" / "objectnet_to_imagenet_1k.json").unlink()
    with pytest.raises(FeatbenchError, match="objectnet_to_imagenet_1k.json"):
        load_dataset("objectnet", tmp_path)


def test_border_is_cropped_before_the_transforms(tmp_path):
    from featbench.extract import _Blocks, crop_border

    make_dataset(tmp_path, "objectnet", n_classes=1, per_split=(0, 0, 1), size=24)
    ds = load_dataset("objectnet", tmp_path)
    rel = ds.splits["test"][0][0]
    img = Image.open(ds.abspath(rel)).convert("RGB")
    a = np.asarray(img)
    assert (a[0] == (255, 0, 0)).all() and (a[:, -1] == (255, 0, 0)).all()
    cropped = crop_border(img, 1)
    assert cropped.size == (22, 22) and not (np.asarray(cropped)[0] == (255, 0, 0)).all(axis=-1).all()

    class Task:
        def bounds(self, b):
            return 0, 1

    def transform(im):  # records what the encoder's transform receives
        import torch

        return torch.as_tensor(np.array(im), dtype=torch.float32).permute(2, 0, 1)

    _, _, x, bad = _Blocks(ds.root, [rel], Task(), [0], transform, border=1, image_size=22)[0]
    assert not bad and tuple(x.shape) == (1, 3, 22, 22)
    np.testing.assert_array_equal(x[0].permute(1, 2, 0).numpy(), np.asarray(cropped, dtype=np.float32))


@pytest.mark.slow  # two tiny-vit extractions and a fit: ~15 s on a shared CPU
def test_imagenet_to_objectnet_end_to_end(tmp_path):
    from featbench.cache import Cache
    from featbench.extract import extract

    data = tmp_path / "data"
    make_dataset(data, "imagenet", n_classes=6, per_split=(4, 0, 2), size=32, seed=0)
    make_dataset(data, "objectnet", n_classes=3, per_split=(0, 0, 4), size=32, seed=0)
    common = dict(model="tiny-vit", pretrained="none", views=0, seeds=(1,), progress=False, cache_dir=tmp_path / "cache")
    src = extract("imagenet", data, **common)
    tgt = extract("objectnet", data, splits=("test",), **common)
    with Cache(tgt) as c:
        assert json.loads(c.attrs["class_map"])[1] == ["stripes on yellow", "ring on green"]
        assert c.extraction["border_crop"] == 1
    out = tmp_path / "r.jsonl"
    res = CliRunner().invoke(app, ["fit", str(src), "--heads", "zeroshot", "--shots", "1", "--seeds", "1",
                                   "--eval-on", str(tgt), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (row["dataset"], row["source_dataset"], row["n_test"]) == ("objectnet", "imagenet", 12)
    # by hand: zero-shot over the 6 ImageNet classes; a prediction of either mapped class counts for its class
    with Cache(src) as s, Cache(tgt) as t:
        text = np.asarray(s.text_features(), np.float64)
        X = np.asarray(t.features("test", None), np.float64)
        y = np.asarray(t.labels("test"))
    w = (text / np.linalg.norm(text, axis=-1, keepdims=True)).mean(0)
    w /= np.linalg.norm(w, axis=-1, keepdims=True)
    pred_imagenet = (X @ w.T).argmax(1)  # every ImageNet class is mapped here, so no column is left out
    assert row["acc"] == pytest.approx(100.0 * float((pred_imagenet // 2 == y).mean()))


def test_five_shift_average_table(tmp_path, monkeypatch):
    """dg-imagenet's `table-shifts`: the Average runs over the five shift sets only, not the source ImageNet."""
    import featbench.plots
    from featbench.recipes import write_reports

    monkeypatch.setattr(featbench.plots, "plot_curves", lambda *a, **k: [])  # tables only: no matplotlib here

    accs = {"imagenet": 70.0, "imagenetv2": 60.0, "imagenet_sketch": 40.0, "imagenet_a": 30.0,
            "imagenet_r": 70.0, "objectnet": 50.0}
    out = tmp_path / "r.jsonl"
    with open(out, "w") as fh:
        for ds, acc in accs.items():
            fh.write(json.dumps({"dataset": ds, "source_dataset": "imagenet", "head": "zeroshot", "params": {},
                                 "protocol": "paper", "shots": 16, "seed": 1, "acc": acc, "model": "m",
                                 "pretrained": "p", "fingerprint": "f"}) + "\n")
    shifts = ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r", "objectnet"]
    written = write_reports(out, tmp_path, tables_spec=[{"rows": "head", "cols": "dataset", "name": "table-shifts",
                                                         "datasets": shifts}])
    md = written["markdown"]["table-shifts"]
    assert "objectnet" in md and "| imagenet |" not in md.replace("| imagenet_", "")
    header = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    row = [c.strip() for c in md.splitlines()[2].strip("|").split("|")]
    assert header[-1] == "Average" and row[-1].startswith("50.00")  # (60 + 40 + 30 + 70 + 50) / 5
