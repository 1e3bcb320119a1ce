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

Transductive heads (``Head.transductive``: TransCLIP) adapt to the unlabeled features of the split they are
scored on, passed as ``X_transductive``: the source's test split (base-to-new: its base-class images), or under
``eval_on`` each target's, with a fit per target. Their rows say ``"transductive": true``.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from featbench import base_to_new as b2n
from featbench.cache import check_same_encoder
from featbench.cell_inputs import Split, close_cached, extra_arrays, has_val, labelled, memo, open_cached
from featbench.classmatch import class_map, target_columns, target_mapping  # noqa: F401  (re-exported)
from featbench.devices import bounded_threads, fit_device_fields
from featbench.errors import FeatbenchError
from featbench.fewshot import fewshot_rows, holdout_rows, shortfall_notes  # noqa: F401  (holdout_rows re-exported)
from featbench.fitspec import PROTOCOLS, check_protocol
from featbench.fitting import drive
from featbench.heads import get_head, get_head_class, register_head
from featbench.metrics import accuracy, mean_per_class_recall, per_class_counts, predict, save_predictions
from featbench.paper_setup import (FULL_VAL_NOTE, HOLDOUT_NOTE, KSHOT_VAL_NOTE, paper_inputs,  # noqa: F401
                                   selection_kind, selection_rows)
from featbench.results import ROW_FIELDS, jsonable, now_iso
from featbench.version import __version__

SEARCHED = "searched"
ORACLE_NOTE = "oracle protocol: hyperparameters selected on the test split (not a valid few-shot result)"
NO_VIEWS_NOTE = "no augmented views in cache for these rows: trained on plain features"


@dataclass
class Cell:
    """One unit of work: everything a worker (this process, a joblib worker, a Ray task) needs.

    A cell is a FitSpec's run-wide options plus one (cache, head, fixed parameters, shots, seed); build it
    with :meth:`from_spec` (tests and single fits may spell the fields out).
    """

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

    def __post_init__(self) -> None:
        check_protocol(self.protocol)

    @classmethod
    def from_spec(cls, spec, cache: str, head: str, overrides: Mapping, shots: int, seed: int) -> "Cell":
        """The cell of ``spec`` (a featbench.fitspec.FitSpec) for one cache, head setting, shot count and seed."""
        return cls(cache=cache, head=head, head_target=head_target(head), overrides=dict(overrides),
                   protocol=spec.protocol, shots=int(shots), seed=int(seed), device=str(spec.device),
                   eval_on=tuple(spec.eval_on), base_to_new=bool(spec.base_to_new),
                   save_predictions=spec.save_predictions)


# ----------------------------------------------------------------------------------------------------
# searches
# ----------------------------------------------------------------------------------------------------
def effective_search_space(head_cls, protocol: str, fixed: Mapping) -> dict[str, list]:
    """The protocol search grid: the head's search_space minus params fixed by --set/--grid (under paper only
    for heads whose paper itself searches that grid, ``paper_search``)."""
    if protocol == "paper" and not head_cls.paper_search:
        return {}
    space = dict(head_cls.search_space or {})
    return {k: list(v) for k, v in space.items() if k not in fixed and len(list(v)) > 0}


def searches_internally(head_cls, fixed: Mapping) -> bool:
    """Whether the head's own (paper-defined) search wants the selection split, given the fixed params."""
    return bool(head_cls.uses_selection_split(dict(fixed)))


def needs_selection_split(head_cls, protocol: str, fixed: Mapping) -> bool:
    space = effective_search_space(head_cls, protocol, fixed)
    return searches_internally(head_cls, fixed) or any(len(v) > 1 for v in space.values())


# ----------------------------------------------------------------------------------------------------
# heads
# ----------------------------------------------------------------------------------------------------
def head_target(name: str) -> str:
    """"module:Class" of a registered head: what a worker in another process imports to find it."""
    cls = get_head_class(name)
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_head_class(cell: Cell):
    register_head(cell.head, cell.head_target)  # idempotent here; makes test/plugin heads known in workers
    return get_head_class(cell.head)


def build_head(cell: Cell, dataset: str, extra_params: Mapping | None = None):
    """get_head with paper defaults + the cell's fixed params (+ a search point); seed and device set."""
    cls = resolve_head_class(cell)
    params = dict(cell.overrides)
    params.update(extra_params or {})
    names = set(cls.param_names())
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
# one cell, step by step
# ----------------------------------------------------------------------------------------------------
@dataclass
class FitRequest:
    """The fits a cell needs (one head per search point, all on the same data): what `cell_steps` yields."""

    heads: list
    X: np.ndarray
    y: np.ndarray
    context: dict


@dataclass
class _Training:
    """A cell's training side: the few-shot rows, their features and what the paper set-up applied."""

    sub: Any  # featbench.fewshot.FewShotRows
    X: np.ndarray
    y: np.ndarray
    train_labels: np.ndarray
    val_labels: np.ndarray | None
    halves: Any  # featbench.base_to_new.Halves or None
    text: Any
    extra: dict
    views: Any
    view_scale: Any
    setup_notes: list
    notes: list


def _load_training(cell: Cell, src, cls, kind: str) -> _Training:
    """The K-shot subset (base-to-new: sampled over all classes, then cut to the base half) with the paper's
    templates, view set and class-name style applied or noted."""
    text = memo(src, ("text",), src.text_features) if src.has_text else None
    if cls.needs_text and text is None:
        raise FeatbenchError(f"head '{cell.head}' needs class-prompt text features but cache {src.path} has no "
                             "/text/features; re-extract with text or drop the head")
    if cell.base_to_new and (text is None or cell.eval_on):
        raise FeatbenchError(f"--base-to-new needs a cache with text features and no --eval-on ({src.path})")
    train_labels = src.labels("train")
    val_labels = src.labels("val") if has_val(src) else None
    sub = fewshot_rows(train_labels, val_labels, int(cell.shots), int(cell.seed))
    X, y = labelled(src, "train", kind, sub.train)
    notes = shortfall_notes(train_labels, int(cell.shots), src.classnames)
    halves = None
    if cell.base_to_new:
        halves = b2n.class_halves(y)
        X, y, _ = b2n.restrict(X, y, halves.base)
    text, extra, views, view_scale, setup = paper_inputs(cls, src, src.dataset, text, extra_arrays(src), sub.train, kind)
    if halves is not None and views is not None:
        views = views[:, np.isin(train_labels[np.asarray(sub.train)], halves.base)]
    return _Training(sub, X, y, train_labels, val_labels, halves, text, extra, views, view_scale, setup, notes)


def _check_holdout(cell: Cell, src, rows) -> None:
    if not rows:
        raise FeatbenchError(f"{src.path}: no train rows outside the {cell.shots}-shot subset to hold out for "
                             "selection (dataset has no val split)")
    stored = set(int(r) for r in src.feature_rows("train"))
    if not all(r in stored for r in rows):
        raise FeatbenchError(
            f"{src.path} has no val split and lacks features for the held-out train rows used for selection "
            f"(shots {cell.shots}, seed {cell.seed}); re-extract with --train-rows all, or use --protocol paper "
            f"with heads that do not search"
        )


def _selection_split(cell: Cell, src, cls, kind: str, tr: _Training) -> Split | None:
    """The split searches score on: never test, except under oracle where that is the point. Notes go on ``tr``."""
    if not needs_selection_split(cls, cell.protocol, cell.overrides):
        return None
    dataset = src.dataset
    how = selection_kind(cls, cell.protocol)
    split, rows, snote = selection_rows(how, tr.train_labels, tr.val_labels, int(cell.shots), int(cell.seed), tr.sub)
    if how == "test":
        tr.notes.append(ORACLE_NOTE if not cell.eval_on else ORACLE_NOTE.replace("the test split", "the source's test split"))
        if dataset in cls.reference_selects_on_test:
            tr.notes.append(f"oracle reproduces the reference, which selects on the test split for {dataset}")
    if split == "train":
        _check_holdout(cell, src, rows)
        if dataset in cls.reference_selects_on_test and cell.protocol == "paper":
            snote += f"; the reference selects on test for {dataset} (--protocol oracle reproduces that)"
    elif split == "val" and rows is None and len(src.feature_rows("val")) != len(src.labels("val")):
        raise FeatbenchError(f"{src.path}: head {cell.head}'s paper selects on the full val split, but only "
                             f"{len(src.feature_rows('val'))} of {len(src.labels('val'))} val images have features; "
                             f"re-extract the val split, or use --protocol val")
    Xs, ys = labelled(src, split, kind, rows)
    if snote:
        tr.notes.append(snote)
    if tr.halves is not None:
        Xs, ys, _ = b2n.restrict(Xs, ys, tr.halves.base)
    return Split(Xs, ys, "holdout" if split == "train" else split)


def _transductive_set(cell: Cell, src, cls, tr: _Training):
    """The test features a transductive head adapts to, unlabeled: the source's (base-to-new: its base classes'
    images); under --eval-on None, and each target's own at scoring time (``_refit_on``)."""
    if cell.eval_on:
        return None
    Xt, yt = labelled(src, "test", cls.feature_kind or "features", None)
    return Xt if tr.halves is None else b2n.restrict(Xt, yt, tr.halves.base)[0]


def _refit_on(cell: Cell, src, tr: _Training, context: dict, combo: dict):
    """--eval-on with a transductive head: a fresh fit per target, whose test features are its transductive set."""
    return lambda Xt: build_head(cell, src.dataset, combo).fit(tr.X, tr.y, **{**context, "X_transductive": Xt})


def _context(cell: Cell, src, cls, tr: _Training, selection: Split | None) -> tuple[dict, dict]:
    """(the fit context, the full-class context base-to-new scores the new classes with)."""
    context: dict[str, Any] = {"text": tr.text, "views": tr.views, "logit_scale": src.logit_scale,
                               "classnames": src.classnames, "extra": tr.extra}
    if cls.needs_text_tower:  # prompt learners: the tower that made the cache (memoised)
        from featbench.texttower import load_for_cache  # lazy: torch and open_clip only for prompt learners

        context["text_tower"] = load_for_cache(src, cell.device)
    full_context = context
    if tr.halves is not None:
        context = b2n.restrict_context(context, tr.halves.base)
    if cls.transductive:  # the unlabeled features of the split its rows score (None: set per --eval-on target)
        context["X_transductive"] = _transductive_set(cell, src, cls, tr)
    if searches_internally(cls, cell.overrides) and selection is not None:
        context["X_val"], context["y_val"] = selection.X, selection.y
    return context, full_context


def _choose(combos: list[dict], heads: list, selection: Split | None) -> tuple[Any, dict, float]:
    """The best (head, search point, selection accuracy); the first best wins ties."""
    if len(combos) == 1:
        return heads[0], combos[0], -1.0
    best_head, best_combo, best_score = None, {}, -1.0
    for combo, head in zip(combos, heads):
        score = accuracy(predict(head, selection.X), selection.y)
        if score > best_score:  # strict: the first best wins ties
            best_head, best_combo, best_score = head, combo, score
    return best_head, best_combo, best_score


def _base_row(cell: Cell, src, cls, tr: _Training, head, combo: dict, fit_seconds: float) -> dict:
    """The fields every row of the cell shares (its identity, what was chosen, notes, timing)."""
    info = dict(head.fit_info_ or {}) if hasattr(head, "fit_info_") else {}
    selected = dict(jsonable(info.get("selected") or {}))
    selected.update(jsonable(combo))
    head_notes = [str(n) for n in (info.get("notes") or [])]
    if cls.uses_views and tr.views is None and not any("view" in n for n in head_notes):
        head_notes.append(NO_VIEWS_NOTE)
    views_used = info.get("views_used")
    if views_used is None:
        views_used = int(tr.views.shape[0]) if tr.views is not None else 0
    view_scale = tr.view_scale if views_used else None
    # what the user set (--set/--grid/the API) and what came from the paper's per-dataset/per-shot defaults:
    # tables label a row by its overrides only, so a head's paper runs form one row across shots and datasets
    paper_keys = sorted(k for k in cls.paper_defaults(src.dataset, int(cell.shots)) if k not in cell.overrides)
    return {
        "source_dataset": src.dataset,
        "model": src.model,
        "pretrained": src.pretrained,
        "fingerprint": src.fingerprint,
        "content": src.content_id,
        "head": cell.head,
        "params": planned_params(cell, src.dataset),
        "overrides": jsonable(dict(cell.overrides)),
        "paper_defaults": paper_keys,
        "selected": selected,
        "protocol": cell.protocol,
        "test_selection": needs_selection_split(cls, cell.protocol, cell.overrides) and cell.protocol == "oracle",
        "classes": "all",
        "shots": int(cell.shots),
        "seed": int(cell.seed),
        "fit_seconds": round(fit_seconds, 4),
        "trainable_params": trainable_params(head),
        **fit_device_fields(cell.device),
        "views_used": jsonable(views_used),
        "views_scale": list(view_scale) if view_scale else None,
        "notes": tr.setup_notes + head_notes + tr.notes,
        "featbench_version": __version__,
    }


def trainable_params(head) -> int | None:
    """The fitted head's trained parameter count for the row; None (unknown) for a head that does not say."""
    count = head.trainable_params()
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise FeatbenchError(f"head '{head.head_name()}': trainable_params() gave {count!r}; return an int >= 0 or None")
    return int(count)


def _target_rows(cell: Cell, src, kind: str, head, base_row: dict, refit=None) -> list[dict]:
    """One row per evaluated test split: the source's, or each --eval-on target's (classes matched by name).

    ``refit(Xt)`` (transductive heads under --eval-on) gives the head fitted for that target; its time is added."""
    rows = []
    targets = [(src, None)] if not cell.eval_on else [(open_cached(p), p) for p in cell.eval_on]
    for tgt, tpath in targets:
        columns = column_labels = None
        if tpath is not None:
            check_same_encoder(src, tgt)
            columns, column_labels = target_mapping(src, tgt, str(src.path), str(tgt.path))
            if column_labels is None and len(columns) == src.num_classes and np.array_equal(columns, np.arange(src.num_classes)):
                columns = None
        Xt, yt = labelled(tgt, "test", kind, None)
        if Xt.shape[0] == 0:
            raise FeatbenchError(f"{tgt.path}: the test split has no features to evaluate on")
        scorer, refit_seconds = head, 0.0
        if refit is not None:
            t0 = time.perf_counter()
            scorer = refit(Xt)
            refit_seconds = time.perf_counter() - t0
        pred = predict(scorer, Xt, columns)
        if column_labels is not None:  # many-to-one (ObjectNet): the predicted source class's target class
            pred = column_labels[pred]
        row = {
            "dataset": tgt.dataset,
            **base_row,
            "cache": str(tgt.path),
            "acc": accuracy(pred, yt),
            "mean_per_class_recall": mean_per_class_recall(pred, yt),
            "n_test": int(yt.shape[0]),
            "notes": list(base_row["notes"]),
            "timestamp": now_iso(),
            "per_class": per_class_counts(pred, yt, int(tgt.num_classes)),
        }
        if refit_seconds:
            row["fit_seconds"] = round(base_row["fit_seconds"] + refit_seconds, 4)
        if cell.save_predictions:
            row["predictions"] = save_predictions(cell.save_predictions, row, pred, yt)
        rows.append({**{k: row[k] for k in ROW_FIELDS if k in row}, **row})  # schema order first
    return rows


def cell_steps(cell: Cell):
    """run_cell as a generator: yields one FitRequest, receives (fitted heads, seconds), returns the rows.

    The split lets featbench.fitting fit the requests of several cells (seeds, search points) together.
    """
    src = open_cached(cell.cache)
    cls = resolve_head_class(cell)
    kind = cls.feature_kind or "features"
    tr = _load_training(cell, src, cls, kind)
    selection = _selection_split(cell, src, cls, kind, tr)
    context, full_context = _context(cell, src, cls, tr, selection)
    space = effective_search_space(cls, cell.protocol, cell.overrides)
    combos = [dict(zip(space, values)) for values in itertools.product(*space.values())] if space else [{}]
    heads, fit_seconds = yield FitRequest([build_head(cell, src.dataset, combo) for combo in combos], tr.X, tr.y, context)
    t0 = time.perf_counter()
    best_head, best_combo, best_score = _choose(combos, heads, selection)
    fit_seconds += time.perf_counter() - t0
    if len(combos) > 1:
        tr.notes.append(f"{cell.protocol} search over {len(combos)} settings on the {selection.name} split: best {best_score:.2f}%")
    base_row = _base_row(cell, src, cls, tr, best_head, best_combo, fit_seconds)
    if cls.transductive:  # it read the unlabeled test features: tables footnote it and never rank it with the rest
        base_row["transductive"] = True
    if tr.halves is not None:
        return b2n.cell_rows(cell, cls, src, kind, best_head, tr.halves, full_context, base_row)
    refit = _refit_on(cell, src, tr, context, best_combo) if cls.transductive and cell.eval_on else None
    return _target_rows(cell, src, kind, best_head, base_row, refit)


def run_cell(cell: Cell) -> list[dict]:
    """Fit one cell and return its rows: one for the source test split, or one per --eval-on target."""
    return drive([cell_steps(cell)])[0]


def run_cell_bounded(cell: Cell, threads: int | None) -> list[dict]:
    """run_cell with torch and BLAS limited to `threads` (parallel workers must not oversubscribe cores)."""
    with bounded_threads(threads):
        return run_cell(cell)


__all__ = [
    "PROTOCOLS", "Cell", "FitRequest", "run_cell", "cell_steps", "run_cell_bounded", "holdout_rows",
    "effective_search_space", "selection_kind", "selection_rows", "FULL_VAL_NOTE", "KSHOT_VAL_NOTE",
    "needs_selection_split", "planned_params", "target_columns", "accuracy", "mean_per_class_recall",
    "open_cached", "close_cached", "head_target", "HOLDOUT_NOTE", "ORACLE_NOTE", "has_val", "labelled",
    "bounded_threads", "trainable_params",
]
