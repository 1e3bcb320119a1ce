"""Layout readers: each turns one on-disk layout into (root, class ids, raw class names, splits).

A catalog entry names its reader; the reader gets the entry and the folder the layout lives in. Readers do
cheap structural checks (files and folders present, split files well-formed) but never open images: an
unreadable image is the extractor's to report.
"""

from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from featbench.datasets.base import (
    SPLIT_NAMES,
    images_under,
    join,
    read_wnid_classnames,
    require_dir,
    require_file,
    subdirs,
)
from featbench.datasets.catalog import DatasetInfo
from featbench.errors import FeatbenchError, short_repr
from featbench.prompts import check_classname

# Layouts without split folders / split column are split per class, seeded and stratified, in CoOp's
# `read_and_split_data` proportions (50% train, 20% val, 30% test).
AUTO_SPLIT_FRACTIONS = (0.5, 0.2, 0.3)
AUTO_SPLIT_SEED = 0
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}
COOP_FIX = "download it as CoOp's DATASETS.md describes or pass the dataset folder with --root"


@dataclass
class Layout:
    root: Path
    class_ids: list[str]
    classnames: list[str]  # raw, before clean-up
    splits: dict[str, list[tuple[str, int]]]
    class_map: list[list[str]] | None = None  # per class, the source (ImageNet) class names it maps to


# ----------------------------------------------------------------------------------------------------
# CoOp layouts
# ----------------------------------------------------------------------------------------------------
def read_split_json(info: DatasetInfo, ddir: Path, **_) -> Layout:
    """split_zhou JSON: {"train"|"val"|"test": [[path relative to image_dir, label, classname], ...]}."""
    path = require_file(ddir / info.split_file, "split file", COOP_FIX)
    splits, names = parse_split_json(path, prefix=info.image_dir)
    return Layout(ddir, list(names), list(names), splits)


def parse_split_json(path: Path, prefix: str = ".") -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """Parse and check a split_zhou JSON; class names come from its entries, in label order."""
    fix = "the expected format is {\"train\": [[relative_path, label, classname], ...], \"val\": ..., \"test\": ...}"
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except json.JSONDecodeError as exc:
        raise FeatbenchError(f"split file {path} is not valid JSON (line {exc.lineno}: {exc.msg}); {fix}") from None
    except UnicodeDecodeError:
        raise FeatbenchError(f"split file {path} is not UTF-8 JSON; {fix}") from None
    if not isinstance(raw, dict) or not raw:
        raise FeatbenchError(f"split file {path} must hold a JSON object with train/val/test lists; {fix}")
    unknown = [k for k in raw if k not in SPLIT_NAMES]
    if unknown:
        raise FeatbenchError(f"split file {path} has unknown split(s) {unknown}; only train/val/test are allowed")
    names: dict[int, str] = {}
    splits: dict[str, list[tuple[str, int]]] = {}
    for split in SPLIT_NAMES:
        if split not in raw:
            continue
        entries = raw[split]
        if not isinstance(entries, list):
            raise FeatbenchError(f"split file {path}: {split!r} must be a list of [path, label, classname]; {fix}")
        items: list[tuple[str, int]] = []
        for i, entry in enumerate(entries):
            ok = (
                isinstance(entry, (list, tuple)) and len(entry) == 3 and isinstance(entry[0], str) and entry[0]
                and isinstance(entry[1], int) and not isinstance(entry[1], bool) and entry[1] >= 0
                and isinstance(entry[2], str)
            )
            if not ok:
                raise FeatbenchError(f"split file {path}: {split}[{i}] = {entry!r} is not [path, label, classname]; {fix}")
            rel, label, cname = entry
            if names.setdefault(label, cname) != cname:
                raise FeatbenchError(
                    f"split file {path}: label {label} is named both {names[label]!r} and {cname!r} ({split}[{i}])"
                )
            items.append((join(prefix, rel), label))
        splits[split] = items
    if not names:
        raise FeatbenchError(f"split file {path} lists no images; {fix}")
    missing = [k for k in range(max(names) + 1) if k not in names]
    if missing:
        raise FeatbenchError(f"split file {path}: labels must be 0..{max(names)} but {missing[:5]} never occur")
    return splits, [names[k] for k in range(len(names))]


def read_fgvc(info: DatasetInfo, ddir: Path, **_) -> Layout:
    """FGVCAircraft: variants.txt (classes in order), images_variant_<split>.txt lines "<id> <variant>"."""
    vpath = require_file(ddir / info.classnames_file, "class list", COOP_FIX)
    with open(vpath, encoding="utf-8") as fh:
        classes = [line.strip() for line in fh if line.strip()]
    if not classes:
        raise FeatbenchError(f"class list {vpath} is empty; {COOP_FIX}")
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[tuple[str, int]]] = {}
    for split in info.splits:
        spath = require_file(ddir / info.split_file.format(split=split), "split file", COOP_FIX)
        items: list[tuple[str, int]] = []
        with open(spath, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                image_id, _, variant = line.partition(" ")
                variant = variant.strip()
                if variant not in index:
                    raise FeatbenchError(
                        f"{spath} line {lineno}: variant {variant!r} is not in {vpath}; "
                        "lines must read '<image id> <variant name>'"
                    )
                items.append((join(info.image_dir, f"{image_id}.jpg"), index[variant]))
        splits[split] = items
    return Layout(ddir, list(classes), list(classes), splits)


def read_wnid_folders(info: DatasetInfo, ddir: Path, **_) -> Layout:
    """ImageNet, -Sketch, -A, -R: one folder per wnid; label = index in the sorted wnid folders present.

    Folders are taken over all split folders (for a complete ImageNet train and val hold the same 1000,
    which is CoOp's per-split sorted order); class names come from `classnames.txt` by wnid.
    """
    image_root = ddir / info.image_dir
    split_paths: dict[str, Path] = {}
    for split in info.splits:
        sub = info.split_dirs.get(split, split)
        split_paths[split] = require_dir(image_root / sub if sub != "." else image_root, "image folder", COOP_FIX)
    folders = {split: subdirs(p) for split, p in split_paths.items()}
    wnids = sorted(set().union(*folders.values()))
    if not wnids:
        where = ", ".join(str(p) for p in split_paths.values())
        raise FeatbenchError(f"no class folders found in {where}; expected one folder per wnid ({COOP_FIX})")
    cpath = ddir / info.classnames_file
    known = read_wnid_classnames(cpath)
    unnamed = [w for w in wnids if w not in known]
    if unnamed:
        raise FeatbenchError(
            f"class-name file {cpath} has no entry for folder(s) {unnamed[:3]}; use CoOp's imagenet/classnames.txt"
        )
    label_of = {w: i for i, w in enumerate(wnids)}
    splits: dict[str, list[tuple[str, int]]] = {}
    for split, path in split_paths.items():
        sub = info.split_dirs.get(split, split)
        prefix = join(info.image_dir, sub)
        items: list[tuple[str, int]] = []
        for wnid in folders[split]:
            label = label_of[wnid]
            folder = f"{prefix}/{wnid}/"
            items.extend([(folder + name, label) for name in images_under(path / wnid)])
        splits[split] = items
    return Layout(ddir, wnids, [known[w] for w in wnids], splits)


def read_int_folders(info: DatasetInfo, ddir: Path, **_) -> Layout:
    """ImageNet-V2: folders named 0..999 = the label; classes are classnames.txt in file order."""
    cpath = ddir / info.classnames_file
    known = read_wnid_classnames(cpath)
    class_ids, names = list(known), list(known.values())
    image_root = require_dir(ddir / info.image_dir, "image folder", COOP_FIX)
    labels: list[tuple[int, str]] = []
    for folder in subdirs(image_root):
        if not folder.isdigit():
            raise FeatbenchError(f"{image_root / folder} is not an integer label folder (expected 0..{len(names) - 1})")
        if int(folder) >= len(names):
            raise FeatbenchError(f"label folder {image_root / folder} has no class in {cpath} ({len(names)} classes)")
        labels.append((int(folder), folder))
    if not labels:
        raise FeatbenchError(f"no label folders 0..{len(names) - 1} found in {image_root}; {COOP_FIX}")
    items: list[tuple[str, int]] = []
    for label, folder in sorted(labels):
        prefix = join(info.image_dir, folder)
        items.extend((f"{prefix}/{name}", label) for name in images_under(image_root / folder))
    return Layout(ddir, class_ids, names, {"test": items})


# ----------------------------------------------------------------------------------------------------
# ObjectNet
# ----------------------------------------------------------------------------------------------------
OBJECTNET_FIX = ("unpack the ObjectNet release (objectnet-1.0/images and objectnet-1.0/mappings) into DATA/objectnet/ "
                 "and copy CoOp's imagenet/classnames.txt next to it")
OBJECTNET_MAPPINGS = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                      "pytorch_to_imagenet_2012_id.json", "imagenet_to_label_2012_v2")


def _load_json_map(path: Path) -> dict:
    require_file(path, "ObjectNet mapping file", OBJECTNET_FIX)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise FeatbenchError(f"ObjectNet mapping file {path} is not valid UTF-8 JSON ({str(exc)[:120]}); "
                             f"{OBJECTNET_FIX}") from None
    if not isinstance(data, dict) or not data:
        raise FeatbenchError(f"ObjectNet mapping file {path} must hold a non-empty JSON object; {OBJECTNET_FIX}")
    return data


def _string_map(path: Path) -> dict[str, str]:
    """A {string: string} mapping file, or one line naming the first key whose value is not a string."""
    data = _load_json_map(path)
    for key, value in data.items():
        if not isinstance(value, str):
            raise FeatbenchError(f"ObjectNet mapping file {path} key {short_repr(key)}: expected a string, got "
                                 f"{type(value).__name__} {short_repr(value)}; {OBJECTNET_FIX}")
    return data


def _pytorch_index_of_2012(path: Path) -> dict[int, int]:
    """{2012 id: pytorch index} from {pytorch index: 2012 id}; whole numbers only, each id once."""
    out: dict[int, int] = {}
    for key, value in _load_json_map(path).items():
        if not re.fullmatch(r"\d+", key) or type(value) is not int or value < 0:
            raise FeatbenchError(f"ObjectNet mapping file {path} key {short_repr(key)}: expected a whole-number "
                                 f"index mapped to a whole-number id, got {short_repr(value)}; {OBJECTNET_FIX}")
        if value in out:
            raise FeatbenchError(f"ObjectNet mapping file {path} key {short_repr(key)}: ImageNet 2012 id {value} is "
                                 f"already the target of index {out[value]}; each id must appear once")
        out[value] = int(key)
    return out


def _names_2012(path: Path) -> list[str]:
    """Line i = the name of ImageNet 2012 id i (UTF-8 text)."""
    require_file(path, "ObjectNet mapping file", OBJECTNET_FIX)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FeatbenchError(f"ObjectNet mapping file {path} is not UTF-8 text (byte {exc.start}); "
                             f"{OBJECTNET_FIX}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _mapped_folders(folders: Sequence[str], folder_label: dict[str, str], label_to_imagenet: dict[str, str],
                    path: Path) -> list[tuple[str, str]]:
    """(folder, ObjectNet label) of the image folders that map to ImageNet; two folders on one label are refused."""
    seen: dict[str, str] = {}
    out = []
    for folder in folders:
        label = folder_label.get(folder)
        if label is None or label not in label_to_imagenet:
            continue  # one of the ~200 ObjectNet classes without an ImageNet counterpart
        check_classname(label, f"ObjectNet mapping file {path} key {short_repr(folder)}")
        if label in seen:
            raise FeatbenchError(f"ObjectNet mapping file {path}: folders {seen[label]!r} and {folder!r} both map "
                                 f"to label {label!r}, which would make two classes of one; fix the mapping")
        seen[label] = folder
        out.append((folder, label))
    return out


def read_objectnet(info: DatasetInfo, ddir: Path, **_) -> Layout:
    """ObjectNet 1.0 (release layout), test only, restricted to the classes that map to ImageNet.

    The release's ``mappings/`` chain an ObjectNet folder to ImageNet classes:
    ``folder_to_objectnet_label.json`` {folder: ObjectNet label}; ``objectnet_to_imagenet_1k.json``
    {ObjectNet label: "ImageNet name; ImageNet name; ..."} (113 labels); ``imagenet_to_label_2012_v2`` (line i =
    the name of ImageNet 2012 id i); ``pytorch_to_imagenet_2012_id.json`` {pytorch index: 2012 id}. The pytorch
    index is the sorted-wnid order, which is the line order of CoOp's ``classnames.txt`` (read here for
    the class names featbench's ImageNet caches use). Classes = the mapped folders, sorted by folder name (as
    WiSE-FT's ObjectNet loader orders them); unmapped folders are dropped. ``class_map[k]`` lists the
    ImageNet class names ObjectNet class k stands for. Each mapping file is checked for its JSON types
    (strings, whole-number ids), and two folders mapping to one label are refused.
    """
    base = ddir / "objectnet-1.0"
    image_root = require_dir(ddir / info.image_dir, "image folder", OBJECTNET_FIX)
    maps = base / "mappings"
    folder_path = maps / "folder_to_objectnet_label.json"
    folder_label = _string_map(folder_path)
    label_to_imagenet = _string_map(maps / "objectnet_to_imagenet_1k.json")
    to_pytorch = _pytorch_index_of_2012(maps / "pytorch_to_imagenet_2012_id.json")
    lines_path = maps / "imagenet_to_label_2012_v2"
    names_2012 = _names_2012(lines_path)
    coop = list(read_wnid_classnames(ddir / info.classnames_file).values())  # pytorch (sorted-wnid) order
    index_2012 = {name: i for i, name in enumerate(names_2012)}
    class_ids: list[str] = []
    classnames: list[str] = []
    class_map: list[list[str]] = []
    splits_items: list[tuple[str, int]] = []
    for folder, label in _mapped_folders(subdirs(image_root), folder_label, label_to_imagenet, folder_path):
        group = []
        for name in label_to_imagenet[label].split("; "):
            i2012 = index_2012.get(name.strip())
            if i2012 is None or i2012 not in to_pytorch or to_pytorch[i2012] >= len(coop):
                raise FeatbenchError(f"ObjectNet class {label!r} maps to ImageNet class {name!r}, which "
                                     f"{lines_path.name}, pytorch_to_imagenet_2012_id.json and {info.classnames_file} "
                                     f"do not resolve; {OBJECTNET_FIX}")
            group.append(coop[to_pytorch[i2012]])
        y = len(class_ids)
        class_ids.append(folder)
        classnames.append(label)
        class_map.append(group)
        prefix = join(info.image_dir, folder)
        splits_items.extend((f"{prefix}/{name}", y) for name in images_under(image_root / folder))
    if not class_ids:
        raise FeatbenchError(f"no ObjectNet folder in {image_root} maps to an ImageNet class; {OBJECTNET_FIX}")
    return Layout(ddir, class_ids, classnames, {"test": splits_items}, class_map=class_map)


# ----------------------------------------------------------------------------------------------------
# bring-your-own layouts
# ----------------------------------------------------------------------------------------------------
def auto_split(class_keys: Sequence[str], labels: Sequence[int], seed: int = AUTO_SPLIT_SEED) -> list[str]:
    """Assign each item a split: per class, a seeded shuffle then 50/20/30% train/val/test.

    Each class is shuffled by its own RNG seeded from (seed, class id), so adding a class or an image of
    another class never moves this class's images. Counts per class of n images: val = round(0.2 n),
    test = round(0.3 n), train = the rest (so 1 image -> train; 2 -> train+test; 3 -> one each).
    """
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    out = [""] * len(labels)
    _, f_val, f_test = AUTO_SPLIT_FRACTIONS
    for y, idx in by_class.items():
        n = len(idx)
        n_val, n_test = int(f_val * n + 0.5), int(f_test * n + 0.5)
        n_train = n - n_val - n_test
        order = list(idx)
        random.Random(f"featbench-split:{seed}:{class_keys[y]}").shuffle(order)
        for k, i in enumerate(order):
            out[i] = "train" if k < n_train else "val" if k < n_train + n_val else "test"
    return out


def _group(items: list[tuple[str, int]], assigned: list[str]) -> dict[str, list[tuple[str, int]]]:
    splits: dict[str, list[tuple[str, int]]] = {}
    for split in SPLIT_NAMES:
        chosen = [it for it, s in zip(items, assigned) if s == split]
        if chosen:
            splits[split] = chosen
    return splits


def read_folder(info: DatasetInfo, root: Path, **_) -> Layout:
    """Generic image folder: `root/<class>/**/*.jpg`, or `root/{train,val,test}/<class>/**/*.jpg`.

    With split folders (train, val, test; also accepted: training, valid, validation, testing) each is
    read as is and classes are the sorted union of their class folders; splits without a folder are
    absent. Without split folders every class folder is split per class, deterministically (seed 0,
    stratified 50/20/30% train/val/test, see `auto_split`), so few-shot training and evaluation work out
    of the box; to evaluate zero-shot on everything, put the class folders inside `root/test/`.
    Images are searched recursively inside each class folder; hidden files are ignored.
    """
    top = subdirs(root)
    split_dirs = {d: SPLIT_ALIASES[d.lower()] for d in top if d.lower() in SPLIT_ALIASES}
    if split_dirs:
        others = [d for d in top if d not in split_dirs]
        if others:
            raise FeatbenchError(
                f"{root} mixes split folders ({', '.join(split_dirs)}) with other folders ({', '.join(others[:3])}); "
                "put every class folder inside train/, val/ or test/"
            )
        if len(set(split_dirs.values())) != len(split_dirs):
            raise FeatbenchError(f"{root} has two folders for the same split ({', '.join(split_dirs)}); keep one")
        per_split = {s: (d, subdirs(root / d)) for d, s in split_dirs.items()}
        classes = sorted(set().union(*(cls for _, cls in per_split.values())))
        label_of = {c: i for i, c in enumerate(classes)}
        splits: dict[str, list[tuple[str, int]]] = {}
        for split in SPLIT_NAMES:
            if split not in per_split:
                continue
            d, cls = per_split[split]
            splits[split] = [
                (f"{d}/{c}/{rel}", label_of[c]) for c in cls for rel in images_under(root / d / c, recursive=True)
            ]
    else:
        classes = top
        items = [(f"{c}/{rel}", y) for y, c in enumerate(classes) for rel in images_under(root / c, recursive=True)]
        splits = _group(items, auto_split(classes, [y for _, y in items]))
    if not classes:
        raise FeatbenchError(f"no class folders found in {root}; expected {root}/<class>/*.jpg or {root}/train/<class>/*.jpg")
    if not any(splits.values()):
        raise FeatbenchError(f"no images (jpg, jpeg, png, bmp, webp, tif) found in the class folders under {root}")
    return Layout(root, list(classes), list(classes), splits)


_INT = re.compile(r"^-?\d+$")


def read_manifest(info: DatasetInfo, root: Path, *, manifest: Path, **_) -> Layout:
    """CSV manifest with a header `path,label[,split][,classname]` (paths relative to root, or absolute).

    Labels: class names (classes = their sorted set) or integers 0..C-1 (names from an optional
    `classname` column, else "class_<i>"). Split: train/val/test per row (also training, valid,
    validation, testing); without a split column rows are split per class as `auto_split` documents.
    Row order is kept within each split. A `.json` manifest is read as a split_zhou JSON instead.
    """
    if manifest.suffix.lower() == ".json":
        splits, names = parse_split_json(manifest)
        return Layout(root, list(names), list(names), splits)
    fix = "the manifest needs a header row 'path,label[,split]' and one image per row"
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            numbered = [(reader.line_num, r) for r in reader if any(cell.strip() for cell in r)]
    except UnicodeDecodeError:
        raise FeatbenchError(f"manifest {manifest} is not a UTF-8 CSV file; {fix}") from None
    except csv.Error as exc:
        raise FeatbenchError(f"manifest {manifest} is not valid CSV ({exc}); {fix}") from None
    if not numbered:
        raise FeatbenchError(f"manifest {manifest} is empty; {fix}")
    rows = [r for _, r in numbered]
    linenos = [n for n, _ in numbered[1:]]
    header = [h.strip().lower() for h in rows[0]]
    if "path" not in header or "label" not in header:
        raise FeatbenchError(f"manifest {manifest} header {rows[0]} lacks 'path' and/or 'label'; {fix}")
    col = {h: i for i, h in enumerate(header)}
    body = rows[1:]
    if not body:
        raise FeatbenchError(f"manifest {manifest} has a header but no rows; {fix}")
    paths: list[str] = []
    raw_labels: list[str] = []
    raw_splits: list[str] = []
    given_names: dict[int, str] = {}
    seen: set[str] = set()
    for lineno, row in zip(linenos, body):
        if len(row) < len(header):
            raise FeatbenchError(f"manifest {manifest} line {lineno}: {len(row)} fields for header {rows[0]}")
        rel, label = row[col["path"]].strip(), row[col["label"]].strip()
        if not rel or not label:
            raise FeatbenchError(f"manifest {manifest} line {lineno}: empty path or label")
        if rel in seen:
            raise FeatbenchError(f"manifest {manifest} line {lineno}: {rel} is listed twice")
        seen.add(rel)
        paths.append(rel)
        raw_labels.append(label)
        if "split" in col:
            s = row[col["split"]].strip().lower()
            if s not in SPLIT_ALIASES:
                raise FeatbenchError(
                    f"manifest {manifest} line {lineno}: split {row[col['split']]!r} is not train, val or test"
                )
            raw_splits.append(SPLIT_ALIASES[s])
    if all(_INT.match(v) for v in raw_labels):
        labels = [int(v) for v in raw_labels]
        if min(labels) < 0:
            raise FeatbenchError(f"manifest {manifest}: integer labels must be 0..C-1, found {min(labels)}")
        if "classname" in col:
            for lineno, row, y in zip(linenos, body, labels):
                name = row[col["classname"]].strip()
                if name and given_names.setdefault(y, name) != name:
                    raise FeatbenchError(
                        f"manifest {manifest} line {lineno}: label {y} named both {given_names[y]!r} and {name!r}"
                    )
        names = [given_names.get(i, f"class_{i}") for i in range(max(labels) + 1)]
        class_ids = [str(i) for i in range(len(names))]
    else:
        names = sorted(set(raw_labels))
        label_of = {c: i for i, c in enumerate(names)}
        labels = [label_of[v] for v in raw_labels]
        class_ids = list(names)
    items = list(zip(paths, labels))
    assigned = raw_splits if raw_splits else auto_split(class_ids, labels)
    return Layout(root, class_ids, names, _group(items, assigned))


READERS: dict[str, Callable[..., Layout]] = {
    "split_json": read_split_json,
    "fgvc": read_fgvc,
    "wnid_folders": read_wnid_folders,
    "int_folders": read_int_folders,
    "objectnet": read_objectnet,
    "folder": read_folder,
    "csv": read_manifest,
}
