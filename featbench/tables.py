"""Result tables: pure functions of result rows (JSON lines) -> mean ± std tables as CSV, LaTeX, Markdown.

The three table dimensions are ``dataset``, ``head`` and ``shots``. Two of them become the rows and columns;
the third is either averaged (``dataset``: the table shows the "Average" over datasets) or, when it has more
than one value, splits the table into blocks (``head`` / ``shots``: one block per value).

Rules (so a table can go into a paper without a notebook in between):
- A cell is the mean and the *population* std (ddof=0, as CoOp's parser prints) over seeds, with the seed count.
- "Average" over datasets exists only where every dataset of the table has the cell; otherwise it is shown as
  missing ("—"), never as an average of a partial set. Its std is the std over seeds of the per-seed average,
  shown only when every dataset has the same seeds.
- A row is labelled by its head (the paper's name with ``names="paper"``, as ``featbench table`` prints it: TaskRes,
  CLIP-Adapter; the registry's otherwise) plus what the user changed: rows that record ``overrides`` show every
  override (``TaskRes (epochs=20)``, even when all rows share it) and never a ``paper_defaults`` key, so a head's
  paper-default runs form one row across shots and datasets whatever their per-shot epochs.
- A head run with several settings (a grid, ``--set`` variants, several models or protocols in the same files) is
  never averaged together: the keys that differ between rows of the same (dataset, shots, seed) are added to its
  label, e.g. ``taskres (alpha=0.25)`` (for rows without ``overrides``, written by older versions, these keys are
  the only label). Keys a protocol search selected are not identity.
- Domain-generalisation rows (trained on ``source_dataset``, evaluated on ``dataset``) are labelled by the
  dataset evaluated on (``imagenetv2 (from imagenet)`` only if that name would collide with in-domain rows).
- Cells from the ``oracle`` protocol or rows with ``test_selection`` (hyperparameters picked on the test set) carry
  a dagger, base-to-new New/H cells from the zero-shot fallback a double dagger, each with a footnote; they are
  never bold and their heads never ranked (honest cells compete only with honest cells).
- Never across encoders: rows of different encoders (model/pretrained) are never averaged together. The CLI
  prints one table per encoder under an "Encoder:" heading (:func:`aggregate_by_encoder`); a single
  :class:`Table` holding several encoders labels every head with its encoder. ``--model``/``--pretrained`` filter.
- Duplicates: the same run (same table cell, seed and cache fingerprint) written twice with the same numbers
  counts once (e.g. a results file passed twice); with *different* numbers it is an error naming both lines
  (never "the later row wins"; two lines of one run, by :func:`featbench.results.row_key`, are reported as soon as
  the second is read). Rows that differ only in the cache (same encoder name, other preprocessing or
  prompts: ``fingerprint=...``; other data or class names: ``content=...``) are labelled apart, never averaged.
- ``acc`` (and ``mean_per_class_recall`` where present) must be finite numbers; anything else is an error naming
  the file and line.
- With heads as rows, a ``rank`` column ranks heads (1 = best, ties share the better rank) by the mean of the
  row over the table's columns (excluding "Average"), i.e. for ``--rows head --cols shots`` the mean over shots
  of the dataset-average accuracy. Heads with a missing cell are not ranked.
- Base-to-new rows (``"classes": "base"``/``"new"``) never mix with ordinary (``"all"``) rows: ``aggregate``
  uses the "all" rows, ``featbench.b2n_table.aggregate_base_to_new`` the others (B / N / H columns, see its docstring).
- Reading streams (:mod:`featbench.result_reader`): :func:`load_results` keeps the fields asked for, each repeated
  value once (``TABLE_FIELDS``: a 200,000-row file needs less memory than its size); ``--published`` cells come
  from :mod:`featbench.table_published`.
- Bold marks the best head: per column when heads are the rows, per row when heads are the columns, per cell
  across blocks when heads are the blocks (ties all bold; compared at the printed precision).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

from featbench.errors import FeatbenchError
from featbench.results import canonical_json
from featbench.table_model import (AVERAGE, DATASET_ORDER, DIMS, FORMATS, MAX_DECIMALS, METRIC_NAMES, METRICS,  # noqa: F401
                                   MISSING, NAMES, ORACLE_NOTE, OVERRIDES_NOTE, PARAMS, PROTOCOLS, PUBLISHED_NOTE,
                                   REQUIRED_KEYS, Table, check_names, display_name, order_datasets, order_heads)
from featbench.result_reader import (  # noqa: F401  (tables' own names before the reader had a module)
    PER_CLASS_FIELDS, TABLE_FIELDS, RowReader, check_result_row, load_results, present, result_files, row_sources,
)
from featbench.table_published import attach_published
from featbench.table_render import check_decimals, latex_escape, render, render_groups

# -- loading ----------------------------------------------------------------------------------------------
def filter_rows(prepared, *, heads=None, shots=None, datasets=None):
    """Keep the rows of the given heads (registry names, paper names or labels), shot counts and datasets (None: all)."""
    if heads is not None:
        wanted = set(heads)
        named = {h for h in set(prepared["head"]) if h in wanted or display_name(h) in wanted}
        prepared = prepared[prepared["head"].isin(named) | prepared["head_label"].isin(wanted)]
    if shots is not None:
        prepared = prepared[prepared["shots"].isin(set(shots))]
    if datasets is not None:
        prepared = prepared[prepared["dataset"].isin(set(datasets))]
    return prepared


#: the fields a table or a plot reads: ``load_results(..., fields=TABLE_FIELDS)`` keeps only these, so a big
#: results file (notes, timestamps, per-class counts) is read in a fraction of its size
def encoder_label(model, pretrained) -> str:
    """How tables name an encoder: ``model/pretrained``."""
    return f"{model}/{pretrained}" if pretrained not in (None, "") else str(model)


def filter_encoder(df, model: str | None = None, pretrained: str | None = None):
    """Keep the rows of one model and/or weights tag (``--model``/``--pretrained``); an error if none match."""
    for key, want in (("model", model), ("pretrained", pretrained)):
        if want is None:
            continue
        have = sorted({str(v) for v in df[key]}) if key in df.columns else []
        df = df[df[key].astype(str) == str(want)] if key in df.columns else df.iloc[0:0]
        if df.empty:
            raise FeatbenchError(f"--{key} {want}: no result rows; the results have {key} {', '.join(have) or 'none'}")
    return df


# -- preparing rows -----------------------------------------------------------------------------------------
def _fmt_param(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


_META_KEYS = ("model", "protocol", "fingerprint", "content")


@dataclass
class _Setting:
    """One distinct head setting of the rows: what identifies it, how it is shown, what is always marked."""

    head: str
    ident: dict  # key -> canonical JSON: what tells two settings of a head apart
    shown: dict  # key -> text for the label
    always: tuple  # the overrides: marked in the label even when every row shares them
    new_style: bool  # the row records its overrides (rows of older featbench versions do not)


def _setting(head, params, selected, overrides, paper_keys, model, pretrained, protocol, fp, content) -> _Setting:
    """A row's setting. Rows that record ``overrides`` are identified by them (and by anything that is neither
    a paper default nor selected); older rows by every parameter the protocol did not select."""
    params = params if isinstance(params, dict) else {}
    selected = selected if isinstance(selected, dict) else {}
    new_style = isinstance(overrides, dict)
    skip = set(selected) | (set(paper_keys) if new_style and isinstance(paper_keys, (list, tuple)) else set())
    ident = {str(k): canonical_json(v) for k, v in params.items() if k not in skip}
    shown = {str(k): _fmt_param(v) for k, v in params.items() if k not in skip}
    always: tuple = ()
    if new_style:
        for k, v in overrides.items():
            ident[str(k)], shown[str(k)] = canonical_json(v), _fmt_param(v)
        always = tuple(str(k) for k in overrides)
    ident["model"] = shown["model"] = encoder_label(model, pretrained)
    ident["protocol"] = shown["protocol"] = str(protocol)
    shown["fingerprint"] = str(fp if isinstance(fp, str) else "")[:8]
    shown["content"] = str(content if isinstance(content, str) else "")[:8]
    return _Setting(str(head), ident, shown, always, new_style)


def _setting_codes(df) -> tuple[list[int], list[_Setting]]:
    """Each row's setting code and the distinct settings (rows sharing stored values are looked at once)."""
    cols = [df[c].tolist() if c in df.columns else [None] * len(df) for c in
            ("head", "params", "selected", "overrides", "paper_defaults", "model", "pretrained", "protocol",
             "fingerprint", "content")]
    index: dict[tuple, int] = {}
    settings: list[_Setting] = []
    by_ident: dict[str, int] = {}
    codes = []
    for values in zip(*cols):
        key = tuple(v if isinstance(v, (str, int, float, type(None))) else id(v) for v in values)
        code = index.get(key)
        if code is None:
            setting = _setting(*values)
            # equal settings held in different objects (a hand-made frame) share one code too
            code = by_ident.setdefault(canonical_json([setting.head, setting.ident, setting.always,
                                                       setting.shown["fingerprint"], setting.shown["content"]]),
                                       len(settings))
            if code == len(settings):
                settings.append(setting)
            index[key] = code
        codes.append(code)
    return codes, settings


def _varying_keys(df, codes: list[int], settings: list[_Setting]) -> dict[str, set[str]]:
    """Per head, the keys that differ between its settings on the same (dataset, shots, seed)."""
    varying: dict[str, set[str]] = {}
    if len({s.ident["model"] for s in settings}) > 1:
        for s in settings:
            varying.setdefault(s.head, set()).add("model")
    keys = ["head", "dataset", "source_dataset", "shots", "seed"]
    cells = df[keys].assign(_code=codes).drop_duplicates()
    many = cells[cells.groupby(keys, sort=False)["_code"].transform("size") > 1]
    for (head, *_), members in many.groupby(keys, sort=False)["_code"]:
        group = [settings[c] for c in members]
        for k in set().union(*(s.ident.keys() for s in group)):
            if len({s.ident.get(k, "None") for s in group}) > 1:
                varying.setdefault(head, set()).add(k)
        # same encoder name and settings, other cache (preprocessing, prompts, data): never merged
        caches: dict[str, set[tuple[str, str]]] = {}
        for s in group:
            caches.setdefault(canonical_json(s.ident), set()).add((s.shown["fingerprint"], s.shown["content"]))
        for pairs in caches.values():
            if len({fp for fp, _ in pairs}) > 1:
                varying.setdefault(head, set()).add("fingerprint")
            elif len(pairs) > 1:
                varying.setdefault(head, set()).add("content")
    return varying


def _label(setting: _Setting, varying: set[str], names: str) -> str:
    if setting.new_style:  # its overrides, and what varies among what it records (never a paper default)
        keys = set(setting.always) | {k for k in varying if k in setting.ident or k in _META_KEYS}
    else:
        keys = set(varying)
    keys = sorted(keys, key=lambda k: (k in _META_KEYS, k))
    name = display_name(setting.head, names)
    if not keys:
        return name
    inner = ", ".join(f"{k}={setting.shown.get(k, 'None')}" for k in keys)
    return f"{name} ({inner})"


def _head_labels(df, names: str = "registry") -> tuple[list[str], list[bool]]:
    """Label each row by its head plus the keys that tell its setting apart (see the module docstring), and
    say whether the row runs with overrides. With more than one encoder every label names its encoder."""
    codes, settings = _setting_codes(df)
    varying = _varying_keys(df, codes, settings)
    labels = [_label(s, varying.get(s.head, set()), names) for s in settings]
    return [labels[c] for c in codes], [bool(settings[c].always) for c in codes]


def _dataset_labels(df) -> list[str]:
    in_domain = set(df.loc[df["source_dataset"] == df["dataset"], "dataset"])
    out = []
    for ds, src in zip(df["dataset"].tolist(), df["source_dataset"].tolist()):
        out.append(ds if ds == src or ds not in in_domain else f"{ds} (from {src})")
    return out


def prepare(df, metric: str = "acc", protocol: str | None = None, *, names: str = "registry"):
    """Filter by protocol, label heads/datasets, keep one row per (head, dataset, shots, seed); conflicting
    copies of a row are an error naming their lines. ``names``: "paper" labels heads by their papers' names.

    Adds ``head_label``, ``dataset_label``, ``value``, ``is_oracle`` (selected on the test set),
    ``is_fallback`` (a base-to-new New from the zero-shot fallback) and ``has_overrides``.
    """
    check_names(names)
    if metric not in METRICS:
        raise FeatbenchError(f"--metric must be one of {', '.join(METRICS)}; got {metric!r}")
    if protocol is not None and protocol not in PROTOCOLS:
        raise FeatbenchError(f"--protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    df = df.copy(deep=False)  # columns are added, never changed in place (copy-on-write keeps the caller's)
    if "_order" not in df.columns:
        df["_order"] = range(len(df))
    for col, default in (("params", None), ("selected", None), ("model", ""), ("pretrained", "")):
        if col not in df.columns:
            df[col] = default
    if "classes" not in df.columns:
        df["classes"] = "all"
    df["classes"] = df["classes"].where(df["classes"].notna(), "all")
    if "source_dataset" not in df.columns:
        df["source_dataset"] = df["dataset"]
    df["source_dataset"] = df["source_dataset"].where(df["source_dataset"].notna(), df["dataset"])
    if protocol is not None:
        df = df[df["protocol"] == protocol]
        if df.empty:
            raise FeatbenchError(f"no result rows with --protocol {protocol}")
    if metric not in df.columns or df[metric].isna().all():
        raise FeatbenchError(f"the result rows have no '{metric}' values; choose another --metric")
    df = keep_rows(df, df[metric].notna())
    df["head_label"], df["has_overrides"] = _head_labels(df, names)
    df["dataset_label"] = _dataset_labels(df)
    df["value"] = df[metric].astype(float)
    df["is_oracle"] = (df["protocol"] == "oracle") | _true(df, "test_selection")
    df["is_fallback"] = (df["classes"] == "new") & present(df, "fallback")
    df["is_transductive"] = _true(df, "transductive")
    if not df["_order"].is_monotonic_increasing:
        df = df.sort_values("_order")
    duplicated = _check_duplicates(df, metric)
    return keep_rows(df, ~duplicated)


def keep_rows(df, mask):
    """``df[mask]`` with a fresh index; the frame itself (no copy of 200,000 rows) when the mask keeps all."""
    if bool(mask.all()):
        return df.reset_index(drop=True)  # copy-on-write: shares the data
    return df[mask].reset_index(drop=True)


def _true(df, col: str):
    """Rows whose ``col`` is JSON true (a missing column or value: false)."""
    if col not in df.columns:
        return False
    return df[col].map(lambda v: v is True or v == True)  # noqa: E712 - numpy bools too


def _check_duplicates(df, metric: str):
    """Rows for the same cell and seed must agree: identical copies count once (the returned mask marks the
    later copies), conflicting ones are an error naming their lines."""
    key = ["head_label", "dataset_label", "shots", "seed"] + (["classes"] if "classes" in df.columns else [])
    repeated = df.duplicated(key, keep=False)
    if not repeated.any():
        return repeated
    dup = df[repeated]
    values = [c for c in dict.fromkeys(("acc", metric)) if c in dup.columns]
    for _, group in dup.groupby(key, sort=False):
        distinct = group[values].astype(float).round(10).drop_duplicates()
        if len(distinct) > 1:
            where = row_sources(group)
            head, ds, shots, seed = (group.iloc[0][k] for k in key[:4])
            shown = ", ".join(f"{w} ({metric} {v:g})" for w, v in zip(where, group[metric].astype(float)))
            raise FeatbenchError(
                f"conflicting result rows for {head} on {ds}, {shots}-shot, seed {seed}: {shown}; "
                "the same run with different numbers: remove the wrong line(s) or keep the files apart")
    return df.duplicated(key, keep="first")


# -- aggregation ----------------------------------------------------------------------------------------------
def cell_stats(df):
    """Long table of per-(head, dataset, shots) stats over seeds, plus the dataset "Average" rows.

    Columns: head, dataset, shots, mean, std, n, oracle, transductive. ``df`` is the output of :func:`prepare`.
    """
    import pandas as pd

    g = df.groupby(["head_label", "dataset_label", "shots"], sort=False)
    cells = g.agg(mean=("value", "mean"), n=("seed", "nunique"), oracle=("is_oracle", "any"),
                  transductive=("is_transductive", "any"))
    cells.insert(1, "std", g["value"].std(ddof=0))  # population std, as CoOp's parser prints
    cells = cells.reset_index()
    cells = cells.rename(columns={"head_label": "head", "dataset_label": "dataset"})
    return pd.concat([cells, _average_cells(df, cells)], ignore_index=True)


def _average_cells(df, cells):
    """The "Average" rows of :func:`cell_stats`, one per (head, shots), in grouped (not per-group) steps.

    The mean of the per-dataset means, only where every dataset has the cell; its std is the std over seeds
    of the per-seed average when every dataset has the same seeds (else no std, and n the fewest seeds).
    """
    n_ds = df["dataset_label"].nunique()
    by_cell = cells.groupby(["head", "shots"], sort=False)
    out = by_cell.agg(have=("dataset", "nunique"), mean=("mean", "mean"), fewest=("n", "min"),
                      oracle=("oracle", "any"), transductive=("transductive", "any"))
    seeds = df.groupby(["head_label", "shots", "seed"], sort=False).agg(avg=("value", "mean"),
                                                                         k=("dataset_label", "nunique"))
    by_seed = seeds.groupby(level=[0, 1], sort=False)
    per_seed = by_seed.agg(k_min=("k", "min"), n_seeds=("k", "size"))
    per_seed["std"] = by_seed["avg"].std(ddof=0)
    per_seed.index = per_seed.index.set_names(["head", "shots"])
    out = out.join(per_seed)
    complete = out["have"] == n_ds
    same_seeds = complete & (out["k_min"] == n_ds)
    out["mean"] = out["mean"].where(complete)
    out["std"] = out["std"].where(same_seeds)
    out["n"] = out["n_seeds"].where(same_seeds, out["fewest"].where(complete, 0)).astype(int)
    out = out.reset_index()
    out["dataset"] = AVERAGE
    return out[["head", "dataset", "shots", "mean", "std", "n", "oracle", "transductive"]]


def aggregate(df, metric: str = "acc", rows: str = "dataset", cols: str = "shots", protocol: str | None = None,
              *, heads: Iterable[str] | None = None, shots: Iterable[int] | None = None,
              datasets: Iterable[str] | None = None, model: str | None = None,
              pretrained: str | None = None, names: str = "registry", published: bool = False) -> Table:
    """Aggregate result rows (the DataFrame from :func:`load_results`) into a :class:`Table`.

    ``heads``/``shots``/``datasets`` optionally restrict the table (heads match the registry name, the paper's
    name or the full label; datasets the dataset evaluated on). ``names="paper"`` labels heads by their
    papers' names (``featbench table`` does), "registry" by their registry names. ``published=True`` puts the
    number a paper publishes beside each cell that has one (:func:`attach_published`).
    """
    import pandas as pd

    if cols == PARAMS:
        return aggregate_params(df, metric, rows, protocol, heads=heads, shots=shots, datasets=datasets, model=model,
                                pretrained=pretrained, names=names)
    if rows not in DIMS:
        raise FeatbenchError(f"--rows must be one of {', '.join(DIMS)}; got {rows!r}")
    if cols not in DIMS:
        raise FeatbenchError(f"--cols must be one of {', '.join(DIMS + (PARAMS,))}; got {cols!r}")
    if rows == cols:
        raise FeatbenchError(f"--rows and --cols must differ (both are {rows!r})")
    prepared = _table_rows(df, metric, protocol, model, pretrained, names, heads=heads, shots=shots, datasets=datasets)
    cells = cell_stats(prepared)
    orders = {
        "head": order_heads(prepared),
        "dataset": _with_average(order_datasets(prepared["dataset_label"]), rows, cols),
        "shots": sorted(set(int(s) for s in prepared["shots"])),
    }
    block = next(d for d in DIMS if d not in (rows, cols))
    if block == "dataset":
        cells = cells[cells["dataset"] == AVERAGE]
        block_dim = None
    else:
        block_dim = block if len(orders[block]) > 1 else None
    row_order, col_order = orders[rows], orders[cols]
    index_keys = [block, rows] if block_dim else [rows]
    if block_dim:
        index = pd.MultiIndex.from_tuples([(b, r) for b in orders[block] for r in row_order], names=index_keys)
    else:
        index = pd.Index(row_order, name=rows)

    def _pivot(value, fill):
        piv = cells.pivot_table(index=index_keys, columns=cols, values=value, aggfunc="first", dropna=False)
        piv = piv.reindex(index=index, columns=col_order)
        return piv.where(piv.notna(), fill) if fill is not None else piv

    mean = _pivot("mean", None).astype(float)
    std = _pivot("std", None).astype(float)
    n = _pivot("n", 0).astype(float)
    def _flag(value):
        flags = cells.assign(**{value: cells[value].astype(int)})
        piv = flags.pivot_table(index=index_keys, columns=cols, values=value, aggfunc="max", dropna=False)
        return piv.reindex(index=index, columns=col_order).fillna(0).astype(bool)

    piv_o, piv_t = _flag("oracle"), _flag("transductive")
    # drop rows that have no cell at all (e.g. a (shots, head) block where a head was not run)
    keep = mean.notna().any(axis=1) | (mean.index.get_level_values(-1) == AVERAGE)
    if block_dim:
        # an Average row belongs in a block only if that block has real rows
        real = mean.notna().any(axis=1) & (mean.index.get_level_values(-1) != AVERAGE)
        blocks_with_rows = set(mean.index[real].get_level_values(0))
        keep = keep & mean.index.get_level_values(0).isin(blocks_with_rows)
    mean, std, n, piv_o, piv_t = mean[keep], std[keep], n[keep], piv_o[keep], piv_t[keep]
    table = Table(mean=mean, std=std, n=n, oracle=piv_o, transductive=piv_t, rows=rows, cols=cols, block_dim=block_dim,
                  metric=metric, protocol=protocol, overrides=bool(prepared["has_overrides"].any()))
    if rows == "head":
        table.rank = _rank(mean, table.flagged())
    table.notes += _notes(prepared, block)
    if published:
        fixed = {"dataset": AVERAGE} if block == "dataset" else ({} if block_dim else {block: orders[block][0]})
        attach_published(table, prepared, fixed=fixed)
    return table


def _table_rows(df, metric, protocol, model, pretrained, names, **picked):
    """The prepared "all" rows of one table: encoder filter, :func:`prepare`, then the --heads/--shots/--datasets
    filters (each step an error when it leaves nothing)."""
    if model is not None or pretrained is not None:
        df = filter_encoder(df, model, pretrained)
    prepared = prepare(df, metric=metric, protocol=protocol, names=names)
    prepared = keep_rows(prepared, prepared["classes"] == "all")
    if prepared.empty:
        raise FeatbenchError("the result rows are all base-to-new rows; use `featbench table --base-to-new`")
    prepared = filter_rows(prepared, **picked)
    if prepared.empty:
        raise FeatbenchError("no result rows left after filtering by --heads/--shots/--datasets")
    return prepared.reset_index(drop=True)


# -- accuracy against trainable parameters (--cols params) -----------------------------------------------------
def param_cells(prepared):
    """Per (head, dataset, shots) cell the lowest and highest ``trainable_params`` of its rows (NaN when a row
    lacks the count: unknown, never 0), plus "Average" rows: the mean over the datasets of each, only where
    every dataset has a known count. Columns: head, dataset, shots, low, high."""
    import numpy as np
    import pandas as pd

    raw = prepared["trainable_params"] if "trainable_params" in prepared.columns else None
    counts = pd.Series(np.nan, index=prepared.index) if raw is None else pd.to_numeric(raw, errors="coerce")
    frame = pd.DataFrame({"head": prepared["head_label"], "dataset": prepared["dataset_label"],
                          "shots": prepared["shots"], "p": counts.astype(float)})
    g = frame.groupby(["head", "dataset", "shots"], sort=False)["p"]
    per = pd.DataFrame({"low": g.min(), "high": g.max()})
    per.loc[(g.count() < g.size()).to_numpy(), ["low", "high"]] = np.nan  # a row without a count: unknown
    per = per.reset_index()
    n_ds = frame["dataset"].nunique()
    avg = per.groupby(["head", "shots"], sort=False).agg(low=("low", "mean"), high=("high", "mean"),
                                                         known=("low", "count"))
    avg.loc[(avg["known"] < n_ds).to_numpy(), ["low", "high"]] = np.nan
    avg = avg.drop(columns="known").reset_index().assign(dataset=AVERAGE)
    return pd.concat([per, avg[per.columns]], ignore_index=True)


def aggregate_params(df, metric: str = "acc", rows: str = "head", protocol: str | None = None, *,
                     heads: Iterable[str] | None = None, shots: Iterable[int] | None = None,
                     datasets: Iterable[str] | None = None, model: str | None = None, pretrained: str | None = None,
                     names: str = "registry") -> Table:
    """Accuracy against trainable parameters, as ELEVATER reports it (``--cols params``): heads as rows, a
    "Trainable params" column (``Table.params``: each row's lowest and highest count over its shot columns)
    and one accuracy column per shot count.

    ``rows="head"``: the dataset Average (or the one dataset); ``rows="dataset"``: a block of heads per dataset
    (their exact counts) and the Average block (the mean of the datasets' counts: class counts differ).
    """
    import pandas as pd

    if rows not in ("head", "dataset"):
        raise FeatbenchError(f"--cols params puts heads in rows and shots in columns; give --rows head (the average) "
                             f"or --rows dataset (a block per dataset), not --rows {rows}")
    prepared = _table_rows(df, metric, protocol, model, pretrained, names, heads=heads, shots=shots, datasets=datasets)
    cells = cell_stats(prepared).merge(param_cells(prepared), on=["head", "dataset", "shots"], how="left")
    found = order_datasets(prepared["dataset_label"])
    blocks = found if len(found) == 1 else ([AVERAGE] if rows == "head" else found + [AVERAGE])
    block_dim = "dataset" if len(blocks) > 1 else None
    head_order, shot_order = order_heads(prepared), sorted(set(int(s) for s in prepared["shots"]))
    cells = cells[cells["dataset"].isin(blocks)]
    keys = ["dataset", "head"] if block_dim else ["head"]
    if block_dim:
        index = pd.MultiIndex.from_tuples([(b, h) for b in blocks for h in head_order], names=keys)
    else:
        index = pd.Index(head_order, name="head")

    def pivot(value, aggfunc="first"):
        piv = cells.pivot_table(index=keys, columns="shots", values=value, aggfunc=aggfunc, dropna=False)
        return piv.reindex(index=index, columns=shot_order)

    mean, std, n = pivot("mean").astype(float), pivot("std").astype(float), pivot("n").fillna(0).astype(float)
    flags = {k: pivot(k, "max").fillna(False).astype(bool) for k in ("oracle", "transductive")}
    present = mean.notna()
    low, high = pivot("low").astype(float).where(present), pivot("high").astype(float).where(present)
    unknown = (present & low.isna()).any(axis=1)
    params = pd.DataFrame({"low": low.min(axis=1), "high": high.max(axis=1)}).where(~unknown).assign(unknown=unknown)
    # a head missing from the Average (not every dataset has it) keeps its row there, its cells shown missing
    only_average = blocks == [AVERAGE]
    in_average = mean.index.get_level_values(0) == AVERAGE if block_dim else [only_average] * len(mean)
    keep = present.any(axis=1) | pd.Series(in_average, index=mean.index)
    table = Table(mean=mean[keep], std=std[keep], n=n[keep], oracle=flags["oracle"][keep],
                  transductive=flags["transductive"][keep], rows="head", cols="shots", block_dim=block_dim,
                  metric=metric, protocol=protocol, overrides=bool(prepared["has_overrides"].any()),
                  params=params[keep])
    table.rank = _rank(table.mean, table.flagged())
    table.notes += _notes(prepared, "dataset" if blocks == [AVERAGE] else "shots")
    table.notes.append(_params_note(AVERAGE in blocks, len(found)))
    return table


def _params_note(has_average: bool, n_datasets: int) -> str:
    note = ("Trainable params: what each head's fit trained (0: training-free; CSV: the exact counts); a range "
            "where the count changes with the shots (Tip-Adapter-F, APE-T: per training image) or the run")
    if has_average:
        note += f"; averaged over datasets: the mean of the {n_datasets} datasets' counts (their class counts differ)"
    return note + "."


def _with_average(datasets: list[str], rows: str, cols: str) -> list[str]:
    """The dataset order plus "Average", which a table with one dataset as rows or columns would only repeat."""
    if len(datasets) == 1 and "dataset" in (rows, cols):
        return datasets
    return datasets + [AVERAGE]


def _notes(prepared, block: str) -> list[str]:
    """The notes under a table: encoders, what the cells average, what a label's (k=v) means."""
    notes = []
    names = sorted(set(prepared["dataset_label"]))
    n_ds = len(names)
    pairs = prepared[["model", "pretrained"]].drop_duplicates()
    encoders = sorted({encoder_label(m, p) for m, p in zip(pairs["model"], pairs["pretrained"])})
    if len(encoders) == 1:
        notes.append(f"Encoder: {encoders[0]}.")
    else:
        notes.append(f"Encoders: {', '.join(encoders)} (each head row names its encoder; never averaged across them).")
    if "fit_device" in prepared.columns:  # outside a row's identity, so said here when the cells mix devices
        devices = prepared["fit_device"].dropna().astype(str).value_counts()
        if len(devices) > 1:
            notes.append("Fit devices: " + ", ".join(f"{d} ({n} rows)" for d, n in sorted(devices.items())) + ".")
    if n_ds == 1:
        notes.append(f"Dataset: {names[0]}.")
    elif block == "dataset":
        notes.append(f"Each cell: mean over the {n_ds} datasets, shown only where every dataset has it.")
    else:
        notes.append(f"{AVERAGE}: mean over the {n_ds} datasets, shown only where every dataset has the cell.")
    if prepared["has_overrides"].any():
        notes.append(OVERRIDES_NOTE)
    return notes


def aggregate_by_encoder(df, **kwargs) -> list[tuple[str, Table]]:
    """One :class:`Table` per encoder (model/pretrained), in name order: what ``featbench table`` prints.

    ``kwargs`` are those of :func:`aggregate` (or of ``build``, e.g. ``featbench.b2n_table.aggregate_base_to_new``). An encoder
    left without rows by the filters is left out.
    """
    build = kwargs.pop("build", None) or aggregate
    if kwargs.get("model") is not None or kwargs.get("pretrained") is not None:
        df = filter_encoder(df, kwargs.pop("model", None), kwargs.pop("pretrained", None))
    kwargs.pop("model", None)
    kwargs.pop("pretrained", None)
    df = df.copy(deep=False)
    for col in ("model", "pretrained"):
        if col not in df.columns:
            df[col] = ""
    pairs = df.groupby(["model", "pretrained"], sort=False, dropna=False).ngroup()
    firsts = pairs.reset_index(drop=True).drop_duplicates()  # index: each pair's first position
    label_of = {code: encoder_label(df["model"].iat[i], df["pretrained"].iat[i]) for i, code in firsts.items()}
    labels = pairs.map(label_of)
    out, first_error = [], None
    for enc in sorted(set(label_of.values())):
        try:
            out.append((enc, build(keep_rows(df, labels == enc), **kwargs)))
        except FeatbenchError as err:
            if not any(m in str(err) for m in ("no result rows", "have no", "base-to-new rows")):
                raise  # a real error, not "this encoder has nothing left to show"
            first_error = first_error or err
    if not out:
        raise first_error
    return out


def _rank(mean, flagged=None):
    """Rank heads by their mean over the table's columns (without "Average"); rows with a gap, or with a cell
    built on test-set selection or a fallback (``flagged``), get no rank: they never compete with honest ones."""
    import pandas as pd

    use = mean[[c for c in mean.columns if c != AVERAGE]]
    honest = use.notna().all(axis=1)
    if flagged is not None:
        honest &= ~flagged.any(axis=1)
    score = use.mean(axis=1).where(honest)
    if isinstance(mean.index, pd.MultiIndex):
        ranks = score.groupby(level=0, sort=False).rank(ascending=False, method="min")
    else:
        ranks = score.rank(ascending=False, method="min")
    return ranks


__all__ = ["load_results", "result_files", "row_sources", "check_result_row", "RowReader", "TABLE_FIELDS",
           "PER_CLASS_FIELDS", "NAMES", "check_names", "display_name", "filter_rows",
           "prepare", "cell_stats", "aggregate", "aggregate_by_encoder", "aggregate_params", "param_cells",
           "render", "render_groups", "latex_escape", "filter_encoder", "encoder_label",
           "check_decimals", "Table", "attach_published"]
