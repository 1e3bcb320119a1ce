"""How one grid cell — (cache, head, fixed params, protocol, shots, seed) — becomes result rows.

Protocols (recorded on every row):

- ``paper``  — the head with its paper's defaults for this dataset and shot count (``get_head``), no
  protocol search. Heads whose paper *defines* a search on the validation split (``searches_internally``:
  lpclip's C sweep, Tip-Adapter's alpha/beta grid, GDA's alpha, LP++'s best step) receive, as
  ``X_val``/``y_val``, the split their reference searches on (``Head.paper_selection``, see
  featbench.heads.paper): CoOp's few-shot val (lpclip), the full val split (Tip-Adapter, GDA), K val images
  per class (LP++, ProLIP). A head whose paper searches its ``search_space`` (``paper_search``: ProLIP's
  lr x lambda grid) gets that search on that split. The paper's templates (``paper_templates``), view set
  (``paper_view_scale``) and class-name style are applied or noted on the row.
- ``val``    — additionally grid-search the head's ``search_space`` (minus parameters the user fixed with
  ``--set``/``--grid``) on the few-shot val split (min(K, 4) images per class), keep the best val accuracy
  (the *first* best in ``itertools.product`` order of the search space on ties), report test accuracy of
  that choice. Test features are read only after the choice is made.
- ``oracle`` — the same searches scored on the (source) test split. It exists only to reproduce papers that
  selected on test (Tip-Adapter's ImageNet); rows say ``"protocol": "oracle"`` and carry a note.

Selection split for datasets without a val split (ImageNet in CoOp): min(K, 4) (K for ``kshot_val``) images
per class drawn from the train rows *not* in the K-shot subset, classes in first-appearance order, with a private generator
``random.Random(f"featbench-val-holdout:{seed}")`` (``holdout_rows``). It is deterministic, disjoint from the
training images, never touches test, and the row notes it. `featbench.fewshot.holdout_rows` draws them and
extraction with `--train-rows fewshot` covers them.

Under ``val``/``oracle`` the row's ``params`` show each searched hyperparameter as ``"searched"`` and
``selected`` holds the chosen values (plus whatever the head's own search chose), so the configuration that
identifies a row is known before it runs (resume) and is honest about what was tuned.

Domain generalisation (``eval_on``): fit on the source cache, evaluate on each target cache's test split with
the logit columns restricted to the target's classes, matched by class *name* to the source's classnames
(ImageNet-A/-R keep 200 of the 1000). Under ``oracle`` the selection split is the *source* test split.

Base-to-new (``base_to_new``, CoCoOp; see ``featbench.base_to_new``): the few-shot subset is sampled over all
classes, then train, selection split and text are restricted to the base half (relabelled from 0); the cell
writes a ``"classes": "base"`` row (base test images, base classes) and a ``"classes": "new"`` row (new test
images, new classes; zero-shot fallback, flagged, for heads that cannot score unseen classes). Other rows have
``"classes": "all"``.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from featbench.version import __version__
from featbench.errors import FeatbenchError
from featbench.fewshot import fewshot_rows, holdout_rows, shortfall_notes
from featbench.paper_setup import (FULL_VAL_NOTE, HOLDOUT_NOTE, KSHOT_VAL_NOTE, paper_inputs, selection_kind,
                                   selection_rows)
from featbench.results import ROW_FIELDS, jsonable, now_iso

PROTOCOLS = ("paper", "val", "oracle")
SEARCHED = "searched"
ORACLE_NOTE = "oracle protocol: hyperparameters selected on the test split (not a valid few-shot result)"
NO_VIEWS_NOTE = "no augmented views in cache for these rows: trained on plain features"
EVAL_CHUNK = 8192


@dataclass
class Cell:
    """One unit of work: everything a worker (this process, a joblib worker, a Ray task) needs."""

    cache: str
    head: str
    head_target: str  # "module:Class", so workers in other processes resolve plugin/test heads too
    overrides: dict = field(default_factory=dict)  # params fixed by --set / --grid
    protocol: str = "paper"
    shots: int = 1
    seed: int = 1
    device: str = "cpu"
    eval_on: tuple = ()
    base_to_new: bool = False  # CoCoOp's base-to-new protocol: rows "classes": "base" and "new"
    save_predictions: str | None = None  # a folder: write each row's test predictions there (fit --save-predictions)


# ----------------------------------------------------------------------------------------------------
# per-process reuse of open caches and big arrays (a worker runs many cells on the same cache)
# ----------------------------------------------------------------------------------------------------
_OPEN: "OrderedDict[tuple, Any]" = OrderedDict()
_ARRAYS: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
_MAX_OPEN = 16
_MAX_ARRAYS = 6


def _file_id(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.abspath(path), st.st_ino, st.st_mtime_ns, st.st_size)


def open_cached(path: str):
    """A `Cache` for path, reused across cells in this process while the file is unchanged."""
    from featbench.cache import Cache

    if not os.path.exists(path):
        raise FeatbenchError(f"cache file {path} does not exist; run `featbench extract` first or check the path")
    key = _file_id(path)
    cache = _OPEN.get(key)
    if cache is None:
        cache = Cache(path)
        _OPEN[key] = cache
        while len(_OPEN) > _MAX_OPEN:
            _, old = _OPEN.popitem(last=False)
            old.close()
    else:
        _OPEN.move_to_end(key)
    return cache


def _memo(cache, what: tuple, load):
    key = (_file_id(str(cache.path)),) + what
    arr = _ARRAYS.get(key)
    if arr is None:
        arr = load()
        _ARRAYS[key] = arr
        while len(_ARRAYS) > _MAX_ARRAYS:
            _ARRAYS.popitem(last=False)
    else:
        _ARRAYS.move_to_end(key)
    return arr


def close_cached() -> None:
    """Close every cache this process holds open and drop memoised arrays."""
    while _OPEN:
        _, c = _OPEN.popitem()
        c.close()
    _ARRAYS.clear()


# ----------------------------------------------------------------------------------------------------
# splits
# ----------------------------------------------------------------------------------------------------
def has_val(cache) -> bool:
    return cache.has_split("val") and len(cache.labels("val")) > 0


def effective_search_space(head_cls, protocol: str, fixed: Mapping) -> dict[str, list]:
    """The protocol search grid: the head's search_space minus params fixed by --set/--grid (under paper only
    for heads whose paper itself searches that grid, ``paper_search``)."""
    if protocol == "paper" and not getattr(head_cls, "paper_search", False):
        return {}
    space = dict(getattr(head_cls, "search_space", {}) or {})
    return {k: list(v) for k, v in space.items() if k not in fixed and len(list(v)) > 0}


def searches_internally(head_cls, fixed: Mapping) -> bool:
    """Whether the head's own (paper-defined) search wants the selection split, given the fixed params."""
    probe = getattr(head_cls, "uses_selection_split", None)
    if probe is not None:
        return bool(probe(dict(fixed)))
    return bool(getattr(head_cls, "searches_internally", False))


def needs_selection_split(head_cls, protocol: str, fixed: Mapping) -> bool:
    space = effective_search_space(head_cls, protocol, fixed)
    return searches_internally(head_cls, fixed) or any(len(v) > 1 for v in space.values())


# ----------------------------------------------------------------------------------------------------
# heads
# ----------------------------------------------------------------------------------------------------
def head_target(name: str) -> str:
    from featbench.heads import get_head_class

    cls = get_head_class(name)
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_head_class(cell: Cell):
    from featbench.heads import get_head_class, register_head

    register_head(cell.head, cell.head_target)  # idempotent here; makes test/plugin heads known in workers
    return get_head_class(cell.head)


def build_head(cell: Cell, dataset: str, extra_params: Mapping | None = None):
    """get_head with paper defaults + the cell's fixed params (+ a search point); seed and device set."""
    from featbench.heads import get_head

    cls = resolve_head_class(cell)
    params = dict(cell.overrides)
    params.update(extra_params or {})
    names = set(cls._param_names())
    if "random_state" in names:
        params["random_state"] = int(cell.seed)
    if "device" in names:
        params["device"] = cell.device
    if "paper_context" in names:  # a head that builds another head (TaskRes*) passes on its paper defaults
        params["paper_context"] = (dataset, int(cell.shots))
    return get_head(cell.head, dataset=dataset, shots=int(cell.shots), **params)


def planned_params(cell: Cell, dataset: str) -> dict:
    """The `params` a cell's rows will record (known before running: the resume key)."""
    cls = resolve_head_class(cell)
    head = build_head(cell, dataset)
    params = jsonable(head.hyperparameters())
    for k in effective_search_space(cls, cell.protocol, cell.overrides):
        if k in params:
            params[k] = SEARCHED
    return params


# ----------------------------------------------------------------------------------------------------
# class matching (domain generalisation)
# ----------------------------------------------------------------------------------------------------
def _norm_name(name: str) -> str:
    return " ".join(str(name).replace("_", " ").lower().split())


def target_columns(source_classnames: Sequence[str], target_classnames: Sequence[str], source: str, target: str) -> np.ndarray:
    """For each target class, the source logit column with the same class name (exact, then normalised)."""
    exact = {n: i for i, n in enumerate(source_classnames)}
    loose: dict[str, int] = {}
    for i, n in enumerate(source_classnames):
        loose.setdefault(_norm_name(n), i)
    cols, missing = [], []
    for n in target_classnames:
        if n in exact:
            cols.append(exact[n])
        elif _norm_name(n) in loose:
            cols.append(loose[_norm_name(n)])
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
    import json

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


# ----------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------
def predict(head, X: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """argmax of the head's logits (restricted to `columns`), in chunks so test sets of any size fit."""
    preds = []
    for start in range(0, X.shape[0], EVAL_CHUNK):
        logits = np.asarray(head.decision_function(X[start:start + EVAL_CHUNK]))
        if columns is not None:
            logits = logits[:, columns]
        preds.append(logits.argmax(axis=1))
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(pred) == np.asarray(y)).mean() * 100.0)


def mean_per_class_recall(pred: np.ndarray, y: np.ndarray) -> float:
    y = np.asarray(y)
    pred = np.asarray(pred)
    recalls = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    return float(np.mean(recalls) * 100.0)


def per_class_counts(pred: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    """Per class (label order): test images and how many were right — compact (two int lists) even for 1000
    classes, and enough to recompute per-class accuracy and pool seeds exactly (`featbench compare`)."""
    y = np.asarray(y, dtype=np.int64)
    hit = y[np.asarray(pred) == y]
    return {"correct": np.bincount(hit, minlength=n_classes).astype(int).tolist(),
            "total": np.bincount(y, minlength=n_classes).astype(int).tolist()}


def save_predictions(folder: str, row: dict, pred: np.ndarray, y: np.ndarray) -> str:
    """Write the row's test predictions and labels to ``folder/<row hash>.npz`` (atomically); return the name."""
    import hashlib
    from pathlib import Path

    from featbench.results import canonical_json, row_key

    name = hashlib.sha256(canonical_json(list(row_key(row))).encode()).hexdigest()[:20] + ".npz"
    target = Path(folder) / name
    tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, pred=np.asarray(pred, dtype=np.int32), label=np.asarray(y, dtype=np.int32))
    os.replace(tmp, target)
    return name


# ----------------------------------------------------------------------------------------------------
# one cell
# ----------------------------------------------------------------------------------------------------
@dataclass
class _Split:
    X: np.ndarray
    y: np.ndarray
    name: str


def _labelled(cache, split: str, kind: str, rows: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    labels = cache.labels(split)
    if rows is None:
        stored = cache.feature_rows(split)
        X = _memo(cache, (split, kind), lambda: cache.features(split, None, kind=kind))
        return X, labels[stored]
    rows = np.asarray(rows, dtype=np.int64)
    return cache.features(split, rows, kind=kind), labels[rows]


def _extra_arrays(cache) -> dict:
    """Optional model tensors for heads that work before the projection (ProLIP, text-projection)."""
    out = {}
    for name in ("/model/image_projection", "/model/image_projection_bias", "/model/text_projection", "/text/features_pre"):
        if cache.has_dataset(name):
            out[name.strip("/").split("/", 1)[1] if name.startswith("/model/") else "text_features_pre"] = \
                _memo(cache, ("extra", name), lambda n=name: cache.array(n))
    return out


@dataclass
class FitRequest:
    """The fits a cell needs (one head per search point, all on the same data): what `cell_steps` yields."""

    heads: list
    X: np.ndarray
    y: np.ndarray
    context: dict


def run_cell(cell: Cell) -> list[dict]:
    """Fit one cell and return its rows: one for the source test split, or one per --eval-on target."""
    from featbench.batching import drive

    return drive([cell_steps(cell)])[0]


def cell_steps(cell: Cell):
    """run_cell as a generator: yields one FitRequest, receives (fitted heads, seconds), returns the rows.

    The split lets featbench.batching fit the requests of several cells (seeds, search points) together.
    """
    if cell.protocol not in PROTOCOLS:
        raise FeatbenchError(f"--protocol {cell.protocol}: choose one of {', '.join(PROTOCOLS)}")
    src = open_cached(cell.cache)
    cls = resolve_head_class(cell)
    kind = getattr(cls, "feature_kind", "features") or "features"
    dataset = src.dataset

    text = None
    if src.has_text:
        text = _memo(src, ("text",), src.text_features)
    if getattr(cls, "needs_text", False) and text is None:
        raise FeatbenchError(f"head '{cell.head}' needs class-prompt text features but cache {src.path} has no /text/features; re-extract with text or drop the head")
    if cell.base_to_new and (text is None or cell.eval_on):
        raise FeatbenchError(f"--base-to-new needs a cache with text features and no --eval-on ({src.path})")

    train_labels = src.labels("train")
    val_labels = src.labels("val") if has_val(src) else None
    sub = fewshot_rows(train_labels, val_labels, int(cell.shots), int(cell.seed))
    X, y = _labelled(src, "train", kind, sub.train)
    notes: list[str] = shortfall_notes(train_labels, int(cell.shots), src.classnames)
    halves = None
    if cell.base_to_new:  # sampled over all classes first (above), then cut to the base half
        from featbench import base_to_new as b2n

        halves = b2n.class_halves(y)
        X, y, _ = b2n.restrict(X, y, halves.base)

    # the paper's templates, view set and class-name style (applied, or noted on the row)
    text, extra, views, view_scale, head_setup = paper_inputs(cls, src, dataset, text, _extra_arrays(src), sub.train, kind)
    if halves is not None and views is not None:
        views = views[:, np.isin(train_labels[np.asarray(sub.train)], halves.base)]

    # the selection split (never test, except under oracle where that is the point)
    space = effective_search_space(cls, cell.protocol, cell.overrides)
    selection: _Split | None = None
    if needs_selection_split(cls, cell.protocol, cell.overrides):
        how = selection_kind(cls, cell.protocol)
        split, rows, snote = selection_rows(how, train_labels, val_labels, int(cell.shots), int(cell.seed), sub)
        if how == "test":
            notes.append(ORACLE_NOTE if not cell.eval_on else ORACLE_NOTE.replace("the test split", "the source's test split"))
            if dataset in getattr(cls, "reference_selects_on_test", ()):
                notes.append(f"oracle reproduces the reference, which selects on the test split for {dataset}")
        if split == "train":
            if not rows:
                raise FeatbenchError(f"{src.path}: no train rows outside the {cell.shots}-shot subset to hold out for selection (dataset has no val split)")
            stored = set(int(r) for r in src.feature_rows("train"))
            if not all(r in stored for r in rows):
                raise FeatbenchError(
                    f"{src.path} has no val split and lacks features for the held-out train rows used for selection "
                    f"(shots {cell.shots}, seed {cell.seed}); re-extract with --train-rows all, or use --protocol paper "
                    f"with heads that do not search"
                )
            if dataset in getattr(cls, "reference_selects_on_test", ()) and cell.protocol == "paper":
                snote += f"; the reference selects on test for {dataset} (--protocol oracle reproduces that)"
        elif split == "val" and rows is None and len(src.feature_rows("val")) != len(src.labels("val")):
            raise FeatbenchError(f"{src.path}: head {cell.head}'s paper selects on the full val split, but only "
                                 f"{len(src.feature_rows('val'))} of {len(src.labels('val'))} val images have features; "
                                 f"re-extract the val split, or use --protocol val")
        Xs, ys = _labelled(src, split, kind, rows)
        selection = _Split(Xs, ys, "holdout" if split == "train" else split)
        if snote:
            notes.append(snote)

    if halves is not None and selection is not None:
        Xs, ys, _ = b2n.restrict(selection.X, selection.y, halves.base)
        selection = _Split(Xs, ys, selection.name)
    context: dict[str, Any] = {
        "text": text,
        "views": views,
        "logit_scale": src.logit_scale,
        "classnames": src.classnames,
        "extra": extra,
    }
    if getattr(cls, "needs_text_tower", False):  # prompt learners: the tower that made the cache (memoised)
        from featbench.texttower import load_for_cache

        context["text_tower"] = load_for_cache(src, cell.device)
    full_context = context
    if halves is not None:
        context = b2n.restrict_context(context, halves.base)
    if searches_internally(cls, cell.overrides) and selection is not None:
        context["X_val"], context["y_val"] = selection.X, selection.y

    combos = [dict(zip(space, values)) for values in itertools.product(*space.values())] if space else [{}]
    heads, fit_seconds = yield FitRequest([build_head(cell, dataset, combo) for combo in combos], X, y, context)
    t0 = time.perf_counter()
    best_head, best_combo, best_score = None, {}, -1.0
    for combo, head in zip(combos, heads):
        if len(combos) == 1:
            best_head, best_combo = head, combo
            break
        score = accuracy(predict(head, selection.X), selection.y)
        if score > best_score:  # strict: the first best wins ties
            best_head, best_combo, best_score = head, combo, score
    fit_seconds += time.perf_counter() - t0
    if len(combos) > 1:
        notes.append(f"{cell.protocol} search over {len(combos)} settings on the {selection.name} split: best {best_score:.2f}%")

    info = dict(getattr(best_head, "fit_info_", {}) or {})
    selected = dict(jsonable(info.get("selected") or {}))
    selected.update(jsonable(best_combo))
    head_notes = [str(n) for n in (info.get("notes") or [])]
    if getattr(cls, "uses_views", False) and views is None and not any("view" in n for n in head_notes):
        head_notes.append(NO_VIEWS_NOTE)
    views_used = info.get("views_used")
    if views_used is None:
        views_used = int(views.shape[0]) if views is not None else 0
    if not views_used:
        view_scale = None
    head_notes = head_setup + head_notes
    params = planned_params(cell, dataset)

    base_row = {
        "source_dataset": dataset,
        "model": src.model,
        "pretrained": src.pretrained,
        "fingerprint": src.fingerprint,
        "content": src.content_id,
        "head": cell.head,
        "params": params,
        "selected": selected,
        "protocol": cell.protocol,
        "classes": "all",
        "shots": int(cell.shots),
        "seed": int(cell.seed),
        "fit_seconds": round(fit_seconds, 4),
        "views_used": jsonable(views_used),
        "views_scale": list(view_scale) if view_scale else None,
        "notes": head_notes + notes,
        "featbench_version": __version__,
    }
    if halves is not None:
        return b2n.cell_rows(cell, cls, src, kind, best_head, halves, full_context, base_row)
    rows = []
    targets = [(src, None)] if not cell.eval_on else [(open_cached(p), p) for p in cell.eval_on]
    for tgt, tpath in targets:
        columns = column_labels = None
        if tpath is not None:
            from featbench.cache import check_same_encoder

            check_same_encoder(src, tgt)
            columns, column_labels = target_mapping(src, tgt, str(src.path), str(tgt.path))
            if column_labels is None and len(columns) == src.num_classes and np.array_equal(columns, np.arange(src.num_classes)):
                columns = None
        Xt, yt = _labelled(tgt, "test", kind, None)
        if Xt.shape[0] == 0:
            raise FeatbenchError(f"{tgt.path}: the test split has no features to evaluate on")
        pred = predict(best_head, Xt, columns)
        if column_labels is not None:  # many-to-one (ObjectNet): the predicted source class's target class
            pred = column_labels[pred]
        n_classes = int(tgt.num_classes)
        row = {
            "dataset": tgt.dataset,
            **base_row,
            "cache": str(tgt.path),
            "acc": accuracy(pred, yt),
            "mean_per_class_recall": mean_per_class_recall(pred, yt),
            "n_test": int(yt.shape[0]),
            "notes": list(base_row["notes"]),
            "timestamp": now_iso(),
            "per_class": per_class_counts(pred, yt, n_classes),
        }
        if cell.save_predictions:
            row["predictions"] = save_predictions(cell.save_predictions, row, pred, yt)
        rows.append({**{k: row[k] for k in ROW_FIELDS if k in row}, **row})  # schema order first
    return rows


def run_cell_bounded(cell: Cell, threads: int | None) -> list[dict]:
    """run_cell with torch and BLAS limited to `threads` (parallel workers must not oversubscribe cores)."""
    with bounded_threads(threads):
        return run_cell(cell)


@contextmanager
def bounded_threads(threads: int | None):
    """Limit torch and BLAS to `threads` inside the block (no limit when threads is falsy)."""
    if not threads:
        yield
        return
    from threadpoolctl import threadpool_limits

    import sys

    if "torch" in sys.modules:  # otherwise torch reads OMP_NUM_THREADS (set by loky/Ray) when a head imports it
        sys.modules["torch"].set_num_threads(int(threads))
    else:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(int(threads))
    with threadpool_limits(limits=int(threads)):
        yield


__all__ = [
    "PROTOCOLS", "Cell", "FitRequest", "run_cell", "cell_steps", "run_cell_bounded", "holdout_rows",
    "effective_search_space", "selection_kind", "selection_rows", "FULL_VAL_NOTE", "KSHOT_VAL_NOTE",
    "needs_selection_split", "planned_params", "target_columns", "accuracy", "mean_per_class_recall",
    "open_cached", "close_cached", "head_target", "HOLDOUT_NOTE", "ORACLE_NOTE",
]
