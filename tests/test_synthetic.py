"""The synthetic dataset generator: real images, the right files, deterministic, fast, separable."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featbench.datasets import list_datasets
from featbench.synthetic import class_image, class_name, corrupt_image, layouts, make_dataset


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layouts_cover_the_catalog():
    assert layouts() == list_datasets()
    assert len(layouts()) == 18  # 11 CoOp + 4 ImageNet variants + ObjectNet + folder + csv


def test_caltech_layout_files(tmp_path):
    root = make_dataset(tmp_path, "caltech101", n_classes=3, per_split=(2, 1, 1))
    assert root == tmp_path
    split = json.loads((tmp_path / "caltech-101" / "split_zhou_Caltech101.json").read_text())
    assert sorted(split) == ["test", "train", "val"]
    assert len(split["train"]) == 6 and len(split["val"]) == 3 and len(split["test"]) == 3
    for rel, label, cname in split["train"]:
        assert cname == class_name(label)
        with Image.open(tmp_path / "caltech-101" / "101_ObjectCategories" / rel) as im:
            assert im.format == "JPEG" and im.size == (48, 48) and im.mode == "RGB"


def test_imagenet_and_variant_files(tmp_path):
    make_dataset(tmp_path, "imagenet", n_classes=3, per_split=(2, 5, 1))
    inet = tmp_path / "imagenet"
    assert len((inet / "classnames.txt").read_text().splitlines()) == 3
    assert len(list((inet / "images" / "train").rglob("*.JPEG"))) == 6
    assert len(list((inet / "images" / "val").rglob("*.JPEG"))) == 3  # val folder = test split
    make_dataset(tmp_path, "imagenet_a", n_classes=3, per_split=(0, 0, 2))
    ia = tmp_path / "imagenet-adversarial"
    assert len((ia / "classnames.txt").read_text().splitlines()) == 6  # more wnids listed than present
    assert (ia / "imagenet-a" / "README.txt").is_file()
    assert len([p for p in (ia / "imagenet-a").iterdir() if p.is_dir()]) == 3
    make_dataset(tmp_path, "fgvc_aircraft", n_classes=2, per_split=(1, 1, 1))
    fg = tmp_path / "fgvc_aircraft"
    for name in ("variants.txt", "images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt"):
        assert (fg / name).is_file()
    assert len(list((fg / "images").glob("*.jpg"))) == 6


def test_folder_and_csv_layouts(tmp_path):
    root = make_dataset(tmp_path / "f", "folder", n_classes=2, per_split=(3, 0, 1))
    assert sorted(p.name for p in root.iterdir()) == ["test", "train"]
    assert len(list((root / "train").rglob("*.jpg"))) == 6
    root = make_dataset(tmp_path / "c", "csv", n_classes=2, per_split=(1, 1, 1))
    lines = (root / "manifest.csv").read_text().splitlines()
    assert lines[0] == "path,label,split" and len(lines) == 7


def test_deterministic_and_seeded(tmp_path):
    a = _files(make_dataset(tmp_path / "a", "dtd", n_classes=2, per_split=(2, 1, 1), seed=3))
    b = _files(make_dataset(tmp_path / "b", "dtd", n_classes=2, per_split=(2, 1, 1), seed=3))
    c = _files(make_dataset(tmp_path / "c", "dtd", n_classes=2, per_split=(2, 1, 1), seed=4))
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_fast(tmp_path):
    start = time.perf_counter()
    make_dataset(tmp_path, "caltech101", n_classes=4, per_split=(8, 4, 4))
    assert time.perf_counter() - start < 1.0


def test_classes_are_separable_by_a_random_projection():
    """A fixed random projection of raw pixels + nearest class mean: the kind of signal a random encoder keeps."""
    n_classes, size = 8, 32
    proj = np.random.default_rng(0).normal(size=(size * size * 3, 16))

    def feats(split, n):
        x = np.stack([np.asarray(class_image(y, i, size, split=split), np.float32).ravel()
                      for y in range(n_classes) for i in range(n)])
        return x @ proj, np.repeat(np.arange(n_classes), n)

    xtr, ytr = feats("train", 8)
    xte, yte = feats("test", 8)
    means = np.stack([xtr[ytr == k].mean(0) for k in range(n_classes)])
    pred = ((xte[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == yte).mean() >= 0.9
    # images within a class still differ
    assert not np.array_equal(np.asarray(class_image(0, 0, size)), np.asarray(class_image(0, 1, size)))


def test_class_names_unique_with_underscores():
    names = [class_name(y) for y in range(200)]
    assert len(set(names)) == 200
    assert all("_" in n for n in names)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_image(tmp_path, kind):
    path = corrupt_image(tmp_path / "sub" / "bad.jpg", kind=kind)
    assert path.is_file()
    with pytest.raises(Exception):
        with Image.open(path) as im:
            im.convert("RGB").load()
