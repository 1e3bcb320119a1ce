"""Dataset adapters: (relative path, label) lists per split, class names and prompt templates.

    >>> ds = load_dataset("caltech101", "DATA")          # the CoOp DATA root, or DATA/caltech-101 itself
    >>> ds.classnames[:2], ds.templates, len(ds.splits["train"])

Per-dataset facts (folder, split file, templates, splits) live in `catalog.yaml`; the few layouts they
use are read by `readers.py`. `list_datasets()` names them all, `dataset_info(name)` returns one entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from featbench.datasets.base import CLASSNAME_STYLES, IMAGE_EXTENSIONS, Dataset, clean_classname
from featbench.datasets.catalog import DatasetInfo, dataset_info, list_datasets, resolve_name
from featbench.errors import FeatbenchError

__all__ = [
    "Dataset",
    "DatasetInfo",
    "IMAGE_EXTENSIONS",
    "dataset_info",
    "list_datasets",
    "load_dataset",
    "locate_dataset_dir",
    "resolve_name",
]


def load_dataset(
    name: str,
    root: str | Path | None,
    *,
    manifest: str | Path | None = None,
    classname_style: str = "clean",
    templates: Sequence[str] | str | None = None,
) -> Dataset:
    """Read dataset `name` from `root` into a `Dataset` (no image is opened).

    root: for the CoOp datasets, the DATA root holding e.g. `caltech-101/`, or that dataset folder itself;
      for `folder`, the image folder; for `csv`, the folder manifest paths are relative to (default: the
      manifest's folder).
    manifest: `csv` only; default `root/manifest.csv`. A relative path is tried from the working directory,
      then from `root`.
    classname_style: "clean" turns "_" into " " (CoOp, Tip-Adapter); "raw" keeps names as stored (TaskRes).
    templates: prompt templates overriding the catalog's (each must contain "{}").
    """
    from featbench.datasets.readers import READERS  # the readers import csv/json/random: only when loading

    info = dataset_info(name)
    if classname_style not in CLASSNAME_STYLES:
        raise FeatbenchError(f"classname_style must be one of {', '.join(CLASSNAME_STYLES)}, not {classname_style!r}")
    chosen_templates = _check_templates(templates) if templates is not None else list(info.templates)

    if info.reader == "csv":
        base, mpath = _manifest_paths(root, manifest)
        layout = READERS["csv"](info, base, manifest=mpath)
    else:
        if manifest is not None:
            raise FeatbenchError(f"--manifest only applies to --dataset csv, not {info.name}")
        base = _existing_root(root, info)
        ddir = locate_dataset_dir(info, base) if info.folder else base
        layout = READERS[info.reader](info, ddir)

    return Dataset(
        name=info.name,
        root=layout.root,
        classnames=[clean_classname(c, classname_style) for c in layout.classnames],
        templates=chosen_templates,
        splits=layout.splits,
        info=info,
        class_ids=list(layout.class_ids),
        class_map=None if layout.class_map is None else [
            [clean_classname(c, classname_style) for c in group] for group in layout.class_map],
    )


def locate_dataset_dir(info: DatasetInfo | str, root: str | Path) -> Path:
    """The dataset folder: `root/<folder>` when root is the CoOp DATA root, else root itself when it is
    that folder (named like it, or holding one of the layout's files)."""
    if isinstance(info, str):
        info = dataset_info(info)
    root = Path(root)
    if not info.folder:
        return root
    candidate = root / info.folder
    if candidate.is_dir():
        return candidate
    markers = [
        m.format(split="train") if m else m
        for m in (info.split_file, info.classnames_file, info.image_dir, *info.markers)
        if m and m != "."
    ]
    if root.name == info.folder or any((root / m).exists() for m in markers):
        return root
    raise FeatbenchError(
        f"dataset folder {candidate} not found and {root} is not a {info.name} folder itself (it has none of "
        f"{', '.join(markers)}); pass the CoOp DATA root that contains {info.folder}/, or that folder, with --root"
    )


def _existing_root(root: str | Path | None, info: DatasetInfo) -> Path:
    if root is None or str(root) == "":
        raise FeatbenchError(f"dataset {info.name} needs --root (the folder that holds the images)")
    path = Path(root).expanduser()
    if not path.exists():
        raise FeatbenchError(f"dataset root {path} does not exist; pass the folder that holds the data with --root")
    if not path.is_dir():
        raise FeatbenchError(f"dataset root {path} is not a folder; pass the folder that holds the data with --root")
    return path


def _manifest_paths(root: str | Path | None, manifest: str | Path | None) -> tuple[Path, Path]:
    base = _existing_root(root, dataset_info("csv")) if root not in (None, "") else None
    if manifest in (None, ""):
        if base is None:
            raise FeatbenchError("dataset csv needs --manifest FILE (or --root holding manifest.csv)")
        mpath = base / "manifest.csv"
    else:
        mpath = Path(manifest).expanduser()
        if not mpath.is_absolute() and not mpath.exists() and base is not None and (base / mpath).exists():
            mpath = base / mpath
    if not mpath.is_file():
        raise FeatbenchError(
            f"manifest {mpath} not found; pass a CSV with header 'path,label[,split]' via --manifest"
        )
    return (base if base is not None else mpath.parent), mpath


def _check_templates(templates: Sequence[str] | str) -> list[str]:
    out = [templates] if isinstance(templates, str) else list(templates)
    if not out:
        raise FeatbenchError("templates must list at least one prompt such as 'a photo of a {}.'")
    for t in out:
        if not isinstance(t, str) or "{}" not in t:
            raise FeatbenchError(f"template {t!r} has no '{{}}' for the class name, e.g. 'a photo of a {{}}.'")
    return out
