"""The dataset catalog: per-dataset metadata read from `catalog.yaml` (data, not code).

Adding a dataset whose layout one of the readers already understands is a YAML entry; a new layout is
one reader function in `readers.py` plus its name in the entry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from featbench.errors import FeatbenchError

CATALOG_PATH = Path(__file__).with_name("catalog.yaml")
GROUPS = ("coop", "imagenet_variant", "custom")


@dataclass(frozen=True)
class DatasetInfo:
    """One catalog entry. Attribute access, or `info["folder"]` for code that prefers mappings."""

    name: str
    title: str
    group: str
    reader: str
    templates: tuple[str, ...]
    splits: tuple[str, ...]
    folder: str | None = None
    image_dir: str = "."
    split_file: str | None = None
    split_dirs: dict[str, str] = field(default_factory=dict)
    classnames_file: str | None = None
    markers: tuple[str, ...] = ()
    n_classes: int | None = None
    class_space: str | None = None
    border_crop: int = 0  # pixels cut from every side of each image before the transforms (ObjectNet: 1)
    aliases: tuple[str, ...] = ()

    @property
    def has_val(self) -> bool:
        return "val" in self.splits

    @property
    def template(self) -> str:
        """The single CoOp template for one-template datasets; the last ("a photo of a {}.") otherwise."""
        return self.templates[-1]

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["templates"] = list(self.templates)
        out["splits"] = list(self.splits)
        out["markers"] = list(self.markers)
        out["aliases"] = list(self.aliases)
        out["has_val"] = self.has_val
        return out


@lru_cache(maxsize=1)
def _catalog() -> dict[str, DatasetInfo]:
    import yaml  # lazy: keeps `import featbench.datasets` cheap

    with open(CATALOG_PATH, encoding="utf-8") as fh:
        raw = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    out: dict[str, DatasetInfo] = {}
    for name, entry in raw["datasets"].items():
        entry = dict(entry)
        for key in ("templates", "splits", "markers", "aliases"):
            if key in entry:
                entry[key] = tuple(str(v) for v in entry[key])
        if "image_dir" in entry:
            entry["image_dir"] = str(entry["image_dir"])
        out[name] = DatasetInfo(name=name, **entry)
    return out


@lru_cache(maxsize=1)
def _aliases() -> dict[str, str]:
    table: dict[str, str] = {}
    for name, info in _catalog().items():
        for alias in (name, *info.aliases):
            table[_norm(alias)] = name
    return table


def _norm(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def resolve_name(name: str) -> str:
    """Canonical catalog name for `name` (case-insensitive; '-' == '_'; aliases such as 'caltech-101')."""
    canonical = _aliases().get(_norm(name))
    if canonical is None:
        raise FeatbenchError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}")
    return canonical


def list_datasets(group: str | None = None) -> list[str]:
    """Catalog names in catalog order: the 11 CoOp datasets, the 4 ImageNet variants, then folder and csv.

    `group` filters by "coop", "imagenet_variant" or "custom".
    """
    if group is not None and group not in GROUPS:
        raise FeatbenchError(f"unknown dataset group {group!r}; choose one of: {', '.join(GROUPS)}")
    return [n for n, info in _catalog().items() if group is None or info.group == group]


def dataset_info(name: str) -> DatasetInfo:
    """Catalog metadata of a dataset (folder, image_dir, split file, templates, splits, has_val, ...)."""
    return _catalog()[resolve_name(name)]
