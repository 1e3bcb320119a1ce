"""Small generated datasets in the real on-disk layouts, for tests and `featbench demo`.

`make_dataset(tmp, "caltech101")` writes real JPEGs plus the exact CoOp files (split_zhou JSON, ImageNet
class folders + classnames.txt, FGVCAircraft txt files, the variants' folders) so every adapter and the
extractor run on the same code paths as on the real data. Each class has its own background colour and
foreground shape, and each image its own jitter and noise, so even a random-weight encoder separates the
classes. Output is a pure function of the arguments (seeded per image). Only numpy and pillow.
"""

from __future__ import annotations

import colorsys
import csv
import io
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

COLOURS = {  # name -> hue
    "red": 0.0, "blue": 0.62, "yellow": 0.16, "green": 0.33,
    "purple": 0.76, "cyan": 0.5, "orange": 0.08, "pink": 0.9,
}
SHAPES = ("circle", "square", "stripes", "ring", "diamond", "cross", "checker", "bars")
SPLITS = ("train", "val", "test")
# StanfordCars keeps images in cars_train/ and cars_test/ next to its split file (image_dir ".").
_SPLIT_SUBDIR = {"stanford_cars": {"train": "cars_train", "val": "cars_train", "test": "cars_test"}}


def layouts() -> list[str]:
    """Every layout `make_dataset` writes: the 15 catalog datasets plus "folder" and "csv"."""
    from featbench.datasets import list_datasets

    return list_datasets()


def class_name(label: int) -> str:
    """Deterministic class name with underscores (to exercise clean-up), e.g. 'circle_on_red'."""
    colours = list(COLOURS)
    colour = colours[label % len(colours)]
    shape = SHAPES[(label + label // len(colours)) % len(SHAPES)]
    suffix = f"_{label // (len(colours) * len(SHAPES))}" if label >= len(colours) * len(SHAPES) else ""
    return f"{shape}_on_{colour}{suffix}"


def class_image(label: int, index: int, size: int = 48, seed: int = 0, split: str = "train") -> Image.Image:
    """One RGB image of class `label`: class colour and shape, per-image position/scale/tint jitter and noise."""
    rng = np.random.default_rng([seed, label, SPLITS.index(split) if split in SPLITS else 3, index])
    colours = list(COLOURS.values())
    hue = colours[label % len(colours)] + 0.035 * (label // (len(colours) * len(SHAPES)))
    shape = SHAPES[(label + label // len(colours)) % len(SHAPES)]
    value = rng.uniform(0.7, 1.0)
    bg = np.array(colorsys.hsv_to_rgb((hue + rng.uniform(-0.02, 0.02)) % 1.0, 0.85, value)) * 255
    fg = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.25, 1.0 - 0.8 * value + 0.5)) * 255
    fg = np.clip(fg, 0, 255)
    yy, xx = _grid(size)
    cy, cx = (0.5 + rng.uniform(-0.12, 0.12, size=2)) * size
    r = rng.uniform(0.22, 0.34) * size
    dy, dx = yy - cy, xx - cx
    period = size / rng.uniform(3.5, 5.0)
    masks = {
        "circle": dx**2 + dy**2 < r**2,
        "square": np.maximum(abs(dx), abs(dy)) < r,
        "stripes": np.sin(2 * np.pi * yy / period + rng.uniform(0, 6.28)) > 0,
        "ring": (dx**2 + dy**2 < r**2) & (dx**2 + dy**2 > (0.55 * r) ** 2),
        "diamond": abs(dx) + abs(dy) < 1.3 * r,
        "cross": (np.maximum(abs(dx), abs(dy)) < 1.2 * r) & (np.minimum(abs(dx), abs(dy)) < 0.35 * r),
        "checker": ((xx // (period / 2)).astype(int) + (yy // (period / 2)).astype(int)) % 2 == 0,
        "bars": np.sin(2 * np.pi * xx / period + rng.uniform(0, 6.28)) > 0,
    }
    mask = masks[shape][..., None]
    pixels = np.where(mask, fg, bg) + rng.normal(0.0, 10.0, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=90)


def _wnid(label: int) -> str:
    return f"n{1440764 + 1013 * label:08d}"


def _items(n_classes: int, count: int):
    """(index, label) in the interleaved order split files use (not grouped by class)."""
    return [(i, y) for i in range(count) for y in range(n_classes)]


def make_dataset(
    root: str | Path,
    layout: str = "caltech101",
    n_classes: int = 4,
    per_split: Sequence[int] = (8, 4, 4),
    size: int = 48,
    seed: int = 0,
    first_class: int = 0,
) -> Path:
    """Write a small dataset in `layout`'s real on-disk format under `root`; return the path for `--root`.

    layout: any name of `featbench.datasets.list_datasets()`. CoOp layouts go to `root/<CoOp folder>/`
      (several can share one DATA root) and `root` is returned. "folder" writes
      `root/{train,val,test}/<class>/*.jpg`; "csv" writes `root/images/<class>/*.jpg` and
      `root/manifest.csv` (path,label,split with class-name labels).
    per_split: images per class in (train, val, test). ImageNet has no val split (train and test only);
      the variants are test-only and use the test count. ImageNet-A/-R get a `classnames.txt` with twice
      as many wnids as class folders (every other one present, as in the real 200-of-1000) and a README.txt;
      their images are drawn like those classes of a synthetic ImageNet with 2 x n_classes classes.
      ObjectNet (`write_objectnet`): n_classes mapped classes (+ one unmapped folder) of PNGs with a 1-pixel
      red border, the release's four mapping files and classnames.txt, against a 2 x n_classes ImageNet.
    first_class: class k is drawn and named as the generator's class ``first_class + k`` (other colours and
      shapes), so two datasets written with different values hold different images and class names, as two
      real datasets do (the demo's Caltech101 and DTD). ObjectNet ignores it.
    """
    from featbench.datasets import dataset_info

    info = dataset_info(layout)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    job = _Job(root=root, info=info, n_classes=n_classes, counts=dict(zip(SPLITS, (int(n) for n in per_split))),
               names=[class_name(first_class + y) for y in range(n_classes)], size=size, seed=seed,
               first_class=int(first_class))
    write = _WRITERS.get(info.reader)
    if write is None:  # a catalog reader this generator does not know yet
        raise ValueError(f"make_dataset cannot write layout {layout!r} (reader {info.reader!r})")
    write(job)
    return root


@dataclass(frozen=True)
class _Job:
    """What every layout writer needs: where, which catalog entry, how many images of which classes."""

    root: Path
    info: Any
    n_classes: int
    counts: dict[str, int]
    names: list[str]
    size: int
    seed: int
    first_class: int = 0

    def image(self, y: int, i: int, split: str) -> Image.Image:
        return class_image(self.first_class + y, i, size=self.size, seed=self.seed, split=split)

    def items(self, split: str):
        return _items(self.n_classes, self.counts[split])


def _write_split_json(job: _Job) -> None:
    """CoOp's split_zhou_*.json layouts: images under image_dir, one JSON with every split's entries."""
    info, names = job.info, job.names
    ddir = job.root / info.folder
    image_dir = ddir / info.image_dir
    sub = _SPLIT_SUBDIR.get(info.name, {})
    split_json: dict[str, list] = {}
    for split in info.splits:
        entries = []
        for i, y in job.items(split):
            rel = f"{sub[split]}/{split}_{y:03d}_{i:04d}.jpg" if sub else f"{names[y]}/{split}_{i:04d}.jpg"
            _save(job.image(y, i, split), image_dir / rel)
            entries.append([rel, y, names[y]])
        split_json[split] = entries
    (ddir / info.split_file).write_text(json.dumps(split_json), encoding="utf-8")


def _write_fgvc(job: _Job) -> None:
    """FGVCAircraft: numbered images, a variants file, one "<image id> <variant>" file per split."""
    info = job.info
    ddir = job.root / info.folder
    variants = [n.replace("_", " ") for n in job.names]  # FGVC variant names contain spaces
    (ddir / info.classnames_file).parent.mkdir(parents=True, exist_ok=True)
    (ddir / info.classnames_file).write_text("\n".join(variants) + "\n", encoding="utf-8")
    next_id = 1000000
    for split in info.splits:
        lines = []
        for i, y in job.items(split):
            image_id = f"{next_id:07d}"
            next_id += 1
            _save(job.image(y, i, split), ddir / info.image_dir / f"{image_id}.jpg")
            lines.append(f"{image_id} {variants[y]}")
        (ddir / info.split_file.format(split=split)).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_wnid_folders(job: _Job) -> None:
    """ImageNet and its variants: one folder per wnid and a classnames.txt of "<wnid> <name>" lines.

    ImageNet-A/-R hold a subset of ImageNet's classes (200 of 1000): here the odd ones of 2 x n_classes,
    drawn like those classes, so a head trained on a synthetic ImageNet of 2 x n_classes classes transfers
    to them (domain-generalisation runs on generated data).
    """
    info, n = job.info, job.n_classes
    ddir = job.root / info.folder
    sparse = info.name in ("imagenet_a", "imagenet_r")
    listed = range(2 * n) if sparse else range(n)
    present = [2 * y + 1 for y in range(n)] if sparse else list(range(n))
    ddir.mkdir(parents=True, exist_ok=True)
    (ddir / info.classnames_file).write_text(
        "".join(f"{_wnid(k)} {class_name(job.first_class + k).replace('_', ' ')}\n" for k in listed), encoding="utf-8"
    )
    for split in info.splits:
        split_dir = ddir / info.image_dir / info.split_dirs.get(split, split)
        for i, y in job.items(split):
            k = present[y]
            _save(job.image(k, i, split), split_dir / _wnid(k) / f"{_wnid(k)}_{i:05d}.JPEG")
        if sparse:
            (split_dir / "README.txt").write_text("synthetic stand-in\n", encoding="utf-8")


def _write_int_folders(job: _Job) -> None:
    """ImageNet-V2: test images in numbered class folders, and a classnames.txt."""
    info, names = job.info, job.names
    ddir = job.root / info.folder
    ddir.mkdir(parents=True, exist_ok=True)
    (ddir / info.classnames_file).write_text(
        "".join(f"{_wnid(y)} {names[y].replace('_', ' ')}\n" for y in range(job.n_classes)), encoding="utf-8"
    )
    for i, y in job.items("test"):
        _save(job.image(y, i, "test"), ddir / info.image_dir / str(y) / f"{i:04d}.jpeg")


def _write_objectnet(job: _Job) -> None:
    write_objectnet(job.root, n_classes=job.n_classes, per_class=job.counts["test"], size=job.size, seed=job.seed)


def _write_folder(job: _Job) -> None:
    """A plain image folder: root/<split>/<class>/*.jpg."""
    for split in SPLITS:
        for i, y in job.items(split):
            _save(job.image(y, i, split), job.root / split / job.names[y] / f"{i:04d}.jpg")


def _write_csv(job: _Job) -> None:
    """Images under root/images/<class>/ and a manifest.csv of (path, class name, split)."""
    rows = []
    for split in SPLITS:
        for i, y in job.items(split):
            rel = f"images/{job.names[y]}/{split}_{i:04d}.jpg"
            _save(job.image(y, i, split), job.root / rel)
            rows.append((rel, job.names[y], split))
    with open(job.root / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("path", "label", "split"))
        writer.writerows(rows)


_WRITERS = {
    "split_json": _write_split_json, "fgvc": _write_fgvc, "wnid_folders": _write_wnid_folders,
    "int_folders": _write_int_folders, "objectnet": _write_objectnet, "folder": _write_folder, "csv": _write_csv,
}


def objectnet_folder(j: int) -> str:
    return f"obj_{j:02d}_{class_name(2 * j)}"


def write_objectnet(root: str | Path, n_classes: int = 3, per_class: int = 4, size: int = 48, seed: int = 0) -> Path:
    """ObjectNet 1.0's layout under root/objectnet/ for a synthetic ImageNet of 2 x n_classes classes.

    ObjectNet class j maps to ImageNet classes 2j and 2j+1 (one-to-many, as in the release); its images are
    drawn like ImageNet class 2j + (j % 2), so both mapped classes get predicted somewhere. One extra folder has
    no ImageNet counterpart (the reader must drop it). The ImageNet 2012 ids run in reverse pytorch order, so
    the reader's id -> index chain is exercised. Every PNG carries a 1-pixel pure-red frame.
    """
    root = Path(root)
    ddir = root / "objectnet"
    base = ddir / "objectnet-1.0"
    maps = base / "mappings"
    maps.mkdir(parents=True, exist_ok=True)
    n_in = 2 * n_classes
    names = [class_name(k).replace("_", " ") for k in range(n_in)]
    (ddir / "classnames.txt").write_text("".join(f"{_wnid(k)} {names[k]}\n" for k in range(n_in)), encoding="utf-8")
    v2 = [f"{names[k]}, v2" for k in range(n_in)]  # the release's own ImageNet names differ from CoOp's
    (maps / "imagenet_to_label_2012_v2").write_text("".join(v2[n_in - 1 - i] + "\n" for i in range(n_in)), encoding="utf-8")
    (maps / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(k): n_in - 1 - k for k in range(n_in)}), encoding="utf-8")
    folder_label = {objectnet_folder(j): f"Obj {names[2 * j]}" for j in range(n_classes)}
    folder_label["unmapped_thing"] = "Unmapped thing"
    (maps / "folder_to_objectnet_label.json").write_text(json.dumps(folder_label), encoding="utf-8")
    to_imagenet = {f"Obj {names[2 * j]}": f"{v2[2 * j]}; {v2[2 * j + 1]}" for j in range(n_classes)}
    (maps / "objectnet_to_imagenet_1k.json").write_text(json.dumps(to_imagenet), encoding="utf-8")
    for j, folder in enumerate([*[objectnet_folder(j) for j in range(n_classes)], "unmapped_thing"]):
        like = 2 * j + (j % 2) if j < n_classes else 0
        for i in range(per_class):
            img = np.asarray(class_image(like, i, size=size, seed=seed, split="test")).copy()
            img[0, :], img[-1, :], img[:, 0], img[:, -1] = (255, 0, 0), (255, 0, 0), (255, 0, 0), (255, 0, 0)
            path = base / "images" / folder / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "RGB").save(path, format="PNG")
    return root


def corrupt_image(path: str | Path, kind: str = "garbage") -> Path:
    """Overwrite (or create) `path` with a broken image, for bad-input tests.

    kind="garbage": bytes no decoder recognises (fails at open); kind="truncated": the first third of a
    real JPEG (opens, then fails when decoded).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "garbage":
        data = b"featbench: this is not an image\n" * 8
    elif kind == "truncated":
        buf = io.BytesIO()
        class_image(0, 0, size=64).save(buf, format="JPEG", quality=90)
        data = buf.getvalue()[: len(buf.getvalue()) // 3]
    else:
        raise ValueError(f"kind must be 'garbage' or 'truncated', not {kind!r}")
    path.write_bytes(data)
    return path
