"""The `Dataset` every adapter returns, and the small helpers the layout readers share."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from featbench.datasets.catalog import DatasetInfo
from featbench.errors import FeatbenchError, short_repr

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
SPLIT_NAMES = ("train", "val", "test")
CLASSNAME_STYLES = ("clean", "raw")


@dataclass
class Dataset:
    """A dataset as lists of (relative path, label) per split, plus class names and prompt templates.

    `root` is the folder every relative path hangs off (for the CoOp layouts, the dataset folder such as
    `DATA/caltech-101`, whether `--root` named the DATA root or the dataset folder), so cached paths do not
    depend on how the user spelled `--root`. `class_ids` are the raw class identifiers (wnids for the
    ImageNet family, raw names otherwise) — the key to map an ImageNet variant's classes onto ImageNet's.
    `class_map` (ObjectNet) lists, per class, the names of the source-dataset (ImageNet) classes it stands for:
    a prediction of any of them counts as this class when a source head is evaluated here (`fit --eval-on`).
    """

    name: str
    root: Path
    classnames: list[str]
    templates: list[str]
    splits: dict[str, list[tuple[str, int]]]
    info: DatasetInfo
    class_ids: list[str] = field(default_factory=list)
    class_map: list[list[str]] | None = None

    def abspath(self, relpath: str) -> Path:
        return self.root / relpath

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def paths(self, split: str) -> list[str]:
        return [p for p, _ in self._split(split)]

    def labels(self, split: str) -> list[int]:
        return [y for _, y in self._split(split)]

    def counts(self) -> dict[str, int]:
        """Images per split, e.g. {"train": 4128, "val": 1649, "test": 2465}."""
        return {s: len(items) for s, items in self.splits.items()}

    def _split(self, split: str) -> list[tuple[str, int]]:
        if split not in self.splits:
            raise FeatbenchError(
                f"dataset {self.name} has no {split!r} split (it has: {', '.join(self.splits) or 'none'})"
            )
        return self.splits[split]

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={n}" for s, n in self.counts().items())
        return f"Dataset({self.name!r}, root={str(self.root)!r}, classes={self.num_classes}, {counts})"


# ----------------------------------------------------------------------------------------------------
# helpers shared by the readers
# ----------------------------------------------------------------------------------------------------
def clean_classname(name: str, style: str) -> str:
    """CoOp and Tip-Adapter turn "_" into " "; TaskRes keeps names raw."""
    name = str(name).strip()
    return name.replace("_", " ") if style == "clean" else name


_EXT_TUPLE = tuple(sorted(IMAGE_EXTENSIONS))


def is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(_EXT_TUPLE)


def subdirs(path: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of `path` (files such as README.txt are ignored)."""
    with os.scandir(path) as it:
        return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())


def images_under(path: Path, recursive: bool = False) -> Iterator[str]:
    """Image paths under `path`, relative to it, "/"-separated, sorted (depth-first, folders sorted)."""
    if not recursive:  # the ImageNet-sized case: one flat folder per class, no per-entry stat
        ext = _EXT_TUPLE
        yield from sorted([n for n in os.listdir(path) if n[:1] != "." and n.lower().endswith(ext)])
        return
    with os.scandir(path) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir():
            for sub in images_under(Path(entry.path), recursive=True):
                yield f"{entry.name}/{sub}"
        elif is_image(entry.name):
            yield entry.name


def join(prefix: str, rel: str) -> str:
    """Join two relative "/" paths, treating "." as empty."""
    if prefix in ("", "."):
        return rel
    if rel in ("", "."):
        return prefix
    return f"{prefix.rstrip('/')}/{rel}"


def require_file(path: Path, what: str, fix: str) -> Path:
    if not path.is_file():
        raise FeatbenchError(f"{what} {path} not found; {fix}")
    return path


def require_dir(path: Path, what: str, fix: str) -> Path:
    if not path.is_dir():
        raise FeatbenchError(f"{what} {path} not found; {fix}")
    return path


def read_wnid_classnames(path: Path) -> dict[str, str]:
    """`classnames.txt` of CoOp's ImageNet family: lines "wnid class name with spaces", in file order."""
    fix = "copy CoOp's imagenet/classnames.txt there (see CoOp DATASETS.md)"
    require_file(path, "class-name file", fix)
    try:
        with open(path, encoding="utf-8") as fh:
            lines = list(fh)
    except UnicodeDecodeError as exc:
        raise FeatbenchError(f"class-name file {path} is not UTF-8 text (byte {exc.start}); {fix}") from None
    names: dict[str, str] = {}
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        wnid, _, cname = line.partition(" ")
        if not cname.strip():
            raise FeatbenchError(f"{path} line {lineno}: expected 'wnid class name', got {short_repr(line)}; {fix}")
        names[wnid] = cname.strip()
    if not names:
        raise FeatbenchError(f"class-name file {path} is empty; {fix}")
    return names
