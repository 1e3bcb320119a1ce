"""What an extraction encodes: the plan of rows, and whether an existing cache already serves a request.

The plan (which rows get plain features, which train rows get augmented views) is a pure function of the dataset
index and the arguments, so the same command plans the same rows; a torchrun rank takes a disjoint share of them
(:func:`apply_shard`). :func:`unserved` says what a finished cache lacks for a new request (nothing: reuse it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

from featbench.distributed import shard_rows
from featbench.errors import FeatbenchError
from featbench.fewshot import union_rows


# ----------------------------------------------------------------------------------------------------
# the plan
# ----------------------------------------------------------------------------------------------------
def apply_shard(plan: "Plan", rank: int, world: int, feat_block: int, view_block: int) -> "Plan":
    """Restrict a plan to rank's disjoint, non-padded share of every row list, cut on block boundaries so
    the rank forms exactly the batches a single process forms (same numbers, bit for bit)."""
    plan.feature_rows = {s: [int(r) for r in shard_rows(plan.feature_row_list(s), rank, world, feat_block)] for s in plan.splits}
    plan.view_rows = [int(r) for r in shard_rows(plan.view_rows, rank, world, view_block)]
    return plan


@dataclass
class Plan:
    """Which rows get what: split -> feature rows (None = all), train view rows, the job identity."""

    splits: dict[str, list[tuple[str, int]]]
    feature_rows: dict[str, list[int] | None]
    view_rows: list[int]
    views: int
    notes: list[str] = field(default_factory=list)

    def n_features(self, split: str) -> int:
        r = self.feature_rows[split]
        return len(self.splits[split]) if r is None else len(r)

    def feature_row_list(self, split: str) -> list[int]:
        r = self.feature_rows[split]
        return list(range(len(self.splits[split]))) if r is None else r


def make_plan(ds, *, splits, views, view_shots, seeds, train_rows, all_views) -> Plan:
    chosen: dict[str, list[tuple[str, int]]] = {}
    notes = []
    for s in splits:
        if s in ds.splits:
            chosen[s] = list(ds.splits[s])
        else:
            notes.append(f"dataset {ds.name} has no {s} split; skipped")
    if not chosen:
        raise FeatbenchError(f"--splits {','.join(splits)}: dataset {ds.name} has none of these (it has {', '.join(ds.splits)})")
    feature_rows: dict[str, list[int] | None] = {s: None for s in chosen}
    view_rows: list[int] = []
    if "train" in chosen:
        train_labels = [y for _, y in chosen["train"]]
        val_labels = [y for _, y in ds.splits["val"]] if "val" in ds.splits else None
        union, _ = union_rows(train_labels, val_labels, view_shots, seeds)
        union = [int(r) for r in union]
        if train_rows == "fewshot":
            # plain features also for the held-out selection rows of datasets without a val split (ImageNet)
            with_sel, _ = union_rows(train_labels, val_labels, view_shots, seeds, with_holdout=True)
            feature_rows["train"] = [int(r) for r in with_sel]
        if views > 0:
            view_rows = list(range(len(train_labels))) if all_views else union
    return Plan(splits=chosen, feature_rows=feature_rows, view_rows=view_rows, views=int(views) if view_rows else 0, notes=notes)


def restrict_plan(plan: Plan, ds, splits) -> Plan:
    """The plan's index over `splits` (as an older cache with those splits recorded it)."""
    return Plan(splits={s: list(ds.splits[s]) for s in splits if s in ds.splits}, feature_rows={}, view_rows=[], views=0)


def unserved(old: dict | None, new: dict, index_sha_for: Callable[[list[str]], str] | None = None) -> list[str]:
    """Why an existing cache extracted as `old` cannot serve the request `new` ([] = it can).

    A cache serves a request when it holds at least what the request asks for, computed the same way: the
    same dataset index, class names and dtype; a superset of the splits; every train row (``train_rows all``)
    or the same selection; pre-projection features if asked; and the same number of views for a superset of
    the (shots, seeds) subsets (or of every train row). A request without views for a training split is not
    served by a cache with views, since heads would train on them.
    """
    old = dict(old or {})
    out = []
    for key in ("dataset", "classnames_sha256", "dtype"):
        if old.get(key) != new.get(key):
            out.append(f"{key} {old.get(key)!r} vs {new.get(key)!r}")
    old_splits, new_splits = list(old.get("splits") or []), list(new.get("splits") or [])
    if not set(new_splits) <= set(old_splits):
        out.append(f"splits {','.join(old_splits)} lack {','.join(sorted(set(new_splits) - set(old_splits)))}")
    elif old.get("index_sha256") != new.get("index_sha256"):
        same = set(new_splits) != set(old_splits) and index_sha_for is not None and \
            index_sha_for(sorted(old_splits)) == old.get("index_sha256")
        if not same:
            out.append("the dataset's image index changed")
    if old.get("train_rows") != new.get("train_rows") and old.get("train_rows") != "all" and "train" in new_splits:
        out.append(f"train_rows {old.get('train_rows')} vs {new.get('train_rows')}")
    if new.get("pre_projection") and not old.get("pre_projection"):
        out.append("no pre-projection features")
    training = "train" in new_splits
    if int(new.get("views") or 0) == 0:
        if training and int(old.get("views") or 0) > 0:
            out.append(f"it has {old.get('views')} views, the request none")
    elif int(old.get("views") or 0) != int(new["views"]):
        out.append(f"views {old.get('views')} vs {new['views']}")
    elif not old.get("all_views"):
        if new.get("all_views"):
            out.append("views only for the few-shot rows, not all_views")
        else:
            out += _lacks(old, new)
    if training and old.get("train_rows") == "fewshot" and not any(m.startswith(("view_shots", "seeds")) for m in out):
        out += _lacks(old, new)  # its plain train features cover only the (shots, seeds) subsets it was made for
    return out


def _lacks(old: dict, new: dict) -> list[str]:
    out = []
    for key in ("view_shots", "seeds"):
        lack = sorted(set(new.get(key) or []) - set(old.get(key) or []))
        if lack:
            out.append(f"{key} lack {','.join(map(str, lack))}")
    return out


def index_sha(plan: Plan) -> str:
    h = hashlib.sha256()
    for s in sorted(plan.splits):
        h.update(s.encode())
        for p, y in plan.splits[s]:
            h.update(f"{p}\x00{int(y)}\n".encode())
    return h.hexdigest()


__all__ = ["Plan", "make_plan", "apply_shard", "restrict_plan", "unserved", "index_sha"]
