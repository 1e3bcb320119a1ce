"""Domain generalisation: which source logit columns score a target dataset's classes.

Targets are matched by class *name* (ImageNet-A/-R keep 200 of ImageNet's 1000); a target with a many-to-one
``class_map`` (ObjectNet) is scored by max-projection over the source classes each of its classes stands for.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from featbench.errors import FeatbenchError


def norm_name(name: str) -> str:
    """A class name compared loosely: underscores as spaces, lower case, single spaces."""
    return " ".join(str(name).replace("_", " ").lower().split())


def target_columns(source_classnames: Sequence[str], target_classnames: Sequence[str], source: str, target: str) -> np.ndarray:
    """For each target class, the source logit column with the same class name (exact, then normalised)."""
    exact = {n: i for i, n in enumerate(source_classnames)}
    loose: dict[str, int] = {}
    for i, n in enumerate(source_classnames):
        loose.setdefault(norm_name(n), i)
    cols, missing = [], []
    for n in target_classnames:
        if n in exact:
            cols.append(exact[n])
        elif norm_name(n) in loose:
            cols.append(loose[norm_name(n)])
        else:
            missing.append(n)
    if missing:
        raise FeatbenchError(
            f"--eval-on {target}: {len(missing)} of its classes are not classes of the source {source} "
            f"(e.g. {missing[0]!r}); domain-generalisation targets must use a subset of the source's class names"
        )
    if len(set(cols)) != len(cols):
        raise FeatbenchError(f"--eval-on {target}: several of its class names map to the same source class of {source}")
    return np.asarray(cols, dtype=np.int64)


def class_map(cache) -> list[list[str]] | None:
    """A target cache's many-to-one class map (ObjectNet: per class, the ImageNet class names it stands for)."""
    raw = cache.attrs.get("class_map")
    if raw is None:
        return None
    groups = json.loads(raw)
    if not isinstance(groups, list) or len(groups) != cache.num_classes or not all(isinstance(g, list) and g for g in groups):
        raise FeatbenchError(f"{cache.path}: attribute class_map must list, per class, the source class names it maps to")
    return groups


def target_mapping(src, tgt, source: str, target: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(source logit columns, target label of each column or None) for evaluating a source head on a target.

    Plain targets: one column per target class (``target_columns``), labels = position. A target with a
    ``class_map`` (ObjectNet): the union of the source columns of every target class's mapped names, each
    labelled with its target class, so a prediction of any mapped ImageNet class counts as that class. This is
    argmax over the max-projected logits (WiSE-FT's ObjectNet ``project_logits``); an ImageNet class listed by
    two target classes counts for the first of them.
    """
    groups = class_map(tgt)
    if groups is None:
        return target_columns(src.classnames, tgt.classnames, source, target), None
    cols: list[int] = []
    labels: list[int] = []
    seen: set[int] = set()
    for k, group in enumerate(groups):
        for c in target_columns(src.classnames, group, source, target):
            if int(c) not in seen:
                seen.add(int(c))
                cols.append(int(c))
                labels.append(k)
    return np.asarray(cols, dtype=np.int64), np.asarray(labels, dtype=np.int64)
