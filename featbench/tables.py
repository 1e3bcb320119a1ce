"""Result tables: pure functions of result rows (JSON lines) -> mean ± std tables as CSV, LaTeX, Markdown.

The three table dimensions are ``dataset``, ``head`` and ``shots``. Two of them become the rows and columns;
the third is either averaged (``dataset``: the table shows the "Average" over datasets) or, when it has more
than one value, splits the table into blocks (``head`` / ``shots``: one block per value).

Rules (so a table can go into a paper without a notebook in between):
- A cell is the mean and the *population* std (ddof=0, as CoOp's parser prints) over seeds, with the seed count.
- "Average" over datasets exists only where every dataset of the table has the cell; otherwise it is shown as
  missing ("—"), never as an average of a partial set. Its std is the std over seeds of the per-seed average,
  shown only when every dataset has the same seeds.
- A head run with several hyperparameter settings (a grid, ``--set`` variants, several models or protocols in the
  same files) is never averaged together: the keys that differ between rows of the same (dataset, shots, seed)
  are added to its label, e.g. ``taskres (alpha=0.25)``. Keys a protocol search selected are not identity.
- Domain-generalisation rows (trained on ``source_dataset``, evaluated on ``dataset``) are labelled by the
  dataset evaluated on (``imagenetv2 (from imagenet)`` only if that name would collide with in-domain rows).
- Cells from the ``oracle`` protocol (hyperparameters picked on the test set) carry a dagger and a footnote.
- Never across encoders: rows of different encoders (model/pretrained) are never averaged together. The CLI
  prints one table per encoder under an "Encoder:" heading (:func:`aggregate_by_encoder`); a single
  :class:`Table` holding several encoders labels every head with its encoder. ``--model``/``--pretrained`` filter.
- Duplicates: the same run (same table cell, seed and cache fingerprint) written twice with the same numbers
  counts once (e.g. a results file passed twice); with *different* numbers it is an error naming both lines
  (never "the later row wins"). Rows that differ only in the cache (same encoder name, other preprocessing or
  prompts: ``fingerprint=...``; other data or class names: ``content=...``) are labelled apart, never averaged.
- ``acc`` (and ``mean_per_class_recall`` where present) must be finite numbers; anything else is an error naming
  the file and line.
- With heads as rows, a ``rank`` column ranks heads (1 = best, ties share the better rank) by the mean of the
  row over the table's columns (excluding "Average"), i.e. for ``--rows head --cols shots`` the mean over shots
  of the dataset-average accuracy. Heads with a missing cell are not ranked.
- Base-to-new rows (``"classes": "base"``/``"new"``) never mix with ordinary (``"all"``) rows: ``aggregate``
  uses the "all" rows, ``featbench.b2n_table.aggregate_base_to_new`` the others (B / N / H columns, see its docstring).
- Bold marks the best head: per column when heads are the rows, per row when heads are the columns, per cell
  across blocks when heads are the blocks (ties all bold; compared at the printed precision).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

from featbench.errors import FeatbenchError
from featbench.results import canonical_json, is_partial_row
from featbench.table_model import (AVERAGE, DATASET_ORDER, DIMS, FORMATS, MAX_DECIMALS, METRIC_NAMES, METRICS,  # noqa: F401
                                   MISSING, ORACLE_NOTE, PROTOCOLS, REQUIRED_KEYS, Table, order_datasets, order_heads)
from featbench.table_render import check_decimals, latex_escape, render, render_groups

# -- loading ----------------------------------------------------------------------------------------------
def filter_rows(prepared, *, heads=None, shots=None, datasets=None):
    """Keep the rows of the given heads (registry names or labels), shot counts and datasets (None: all)."""
    if heads is not None:
        wanted = set(heads)
        prepared = prepared[prepared["head"].isin(wanted) | prepared["head_label"].isin(wanted)]
    if shots is not None:
        prepared = prepared[prepared["shots"].isin(set(shots))]
    if datasets is not None:
        prepared = prepared[prepared["dataset"].isin(set(datasets))]
    return prepared


def load_results(paths: Iterable[str | Path] | str | Path):
    """Read result JSON-lines files (or directories of ``*.jsonl``) into one DataFrame, validating every line."""
    import pandas as pd

    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(p.glob("*.jsonl"))
            if not found:
                raise FeatbenchError(f"{p}: directory holds no *.jsonl result files; pass a results file")
            files.extend(found)
        elif not p.exists():
            raise FeatbenchError(f"{p}: results file not found; pass the .jsonl written by `featbench fit`")
        else:
            files.append(p)
    if not files:
        raise FeatbenchError("no results files given; pass one or more .jsonl files written by `featbench fit`")
    records: list[dict] = []
    for f in files:
        n_before = len(records)
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise FeatbenchError(f"{f}: cannot read results file ({err})") from None
        lines = text.splitlines()
        last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                if (lineno - 1 == last and not text.endswith("\n")) or is_partial_row(line.encode()):
                    continue  # a line an interrupted run cut short (kept: files are append-only); the runner redid it
                raise FeatbenchError(f"{f}:{lineno}: not valid JSON ({err.msg}); is this a featbench results file?") from None
            if not isinstance(row, dict):
                raise FeatbenchError(f"{f}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
            missing = [k for k in REQUIRED_KEYS if k not in row]
            if missing:
                raise FeatbenchError(f"{f}:{lineno}: result row lacks {', '.join(missing)}; is this a featbench results file?")
            for k in ("shots", "seed"):
                if not isinstance(row[k], int) or isinstance(row[k], bool):
                    raise FeatbenchError(f"{f}:{lineno}: '{k}' must be an integer, got {row[k]!r}")
            _check_row(row, f"{f}:{lineno}")
            row["_order"] = len(records)
            row["_source"] = f"{f}:{lineno}"
            records.append(row)
        if len(records) == n_before:
            raise FeatbenchError(f"{f}: results file is empty (no result rows); run `featbench fit` first")
    return pd.DataFrame.from_records(records)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _check_row(row: dict, where: str) -> None:
    """Types and ranges a table relies on; anything else is an error naming the line (never a quiet NaN)."""
    if row["shots"] < 1:
        raise FeatbenchError(f"{where}: 'shots' must be 1 or more, got {row['shots']}; fix or remove that line")
    for k in ("dataset", "head", "protocol", "model", "pretrained", "source_dataset", "fingerprint", "content"):
        if k in row and not (isinstance(row[k], str) or (row[k] is None and k not in REQUIRED_KEYS)):
            raise FeatbenchError(f"{where}: '{k}' must be a string, got {_shown(row[k])}; fix or remove that line")
    for k in ("params", "selected"):
        if row.get(k) is not None and not isinstance(row[k], dict):
            raise FeatbenchError(f"{where}: '{k}' must be an object, got {_shown(row[k])}; fix or remove that line")
    for k in METRICS:
        if k == "acc" or row.get(k) is not None:
            _check_number(row.get(k), where, k)


def _check_number(value, where: str, key: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise FeatbenchError(f"{where}: '{key}' must be a finite number, got {_shown(value)}; fix or remove that line")
    if not 0 <= value <= 100:
        raise FeatbenchError(f"{where}: '{key}' is {value:g}, outside 0-100 (a percentage); fix or remove that line")


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


def _head_labels(df) -> list[str]:
    """Label each row by its head plus the identity keys that distinguish variants of that head.

    With more than one encoder in ``df`` every label names its encoder, so nothing averages across encoders.
    """
    idents: list[dict[str, str]] = []
    shown: list[dict[str, str]] = []
    fps = df["fingerprint"] if "fingerprint" in df.columns else [""] * len(df)
    contents = df["content"] if "content" in df.columns else [""] * len(df)
    for params, selected, model, pretrained, protocol, fp, content in zip(
        df["params"], df["selected"], df["model"], df["pretrained"], df["protocol"], fps, contents
    ):
        params = params if isinstance(params, dict) else {}
        selected = selected if isinstance(selected, dict) else {}
        ident = {f"{k}": canonical_json(v) for k, v in params.items() if k not in selected}
        show = {f"{k}": _fmt_param(v) for k, v in params.items() if k not in selected}
        ident["model"] = show["model"] = encoder_label(model, pretrained)
        ident["protocol"] = show["protocol"] = str(protocol)
        show["fingerprint"] = str(fp or "")[:8]
        show["content"] = str(content if isinstance(content, str) else "")[:8]
        idents.append(ident)
        shown.append(show)
    varying: dict[str, set[str]] = {}
    if len({i["model"] for i in idents}) > 1:
        for head in set(df["head"]):
            varying.setdefault(head, set()).add("model")
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(df["head"], df["dataset"], df["source_dataset"], df["shots"], df["seed"])):
        groups.setdefault(key, []).append(i)
    for key, members in groups.items():
        if len(members) < 2:
            continue
        keys = set().union(*(idents[i].keys() for i in members))
        for k in keys:
            if len({idents[i].get(k, "None") for i in members}) > 1:
                varying.setdefault(key[0], set()).add(k)
        # same encoder name and settings, other cache (preprocessing, prompts, data): never merged
        by_ident: dict[str, set[tuple[str, str]]] = {}
        for i in members:
            by_ident.setdefault(canonical_json(idents[i]), set()).add((shown[i]["fingerprint"], shown[i]["content"]))
        for caches in by_ident.values():
            if len({fp for fp, _ in caches}) > 1:
                varying.setdefault(key[0], set()).add("fingerprint")
            elif len(caches) > 1:
                varying.setdefault(key[0], set()).add("content")
    labels = []
    for i, head in enumerate(df["head"]):
        keys = sorted(varying.get(head, ()), key=lambda k: (k in ("model", "protocol", "fingerprint", "content"), k))
        if not keys:
            labels.append(str(head))
        else:
            inner = ", ".join(f"{k}={shown[i].get(k, 'None')}" for k in keys)
            labels.append(f"{head} ({inner})")
    return labels


def _dataset_labels(df) -> list[str]:
    in_domain = set(df.loc[df["source_dataset"] == df["dataset"], "dataset"])
    out = []
    for ds, src in zip(df["dataset"], df["source_dataset"]):
        out.append(ds if ds == src or ds not in in_domain else f"{ds} (from {src})")
    return out


def prepare(df, metric: str = "acc", protocol: str | None = None):
    """Filter by protocol, label heads/datasets, keep one row per (head, dataset, shots, seed); conflicting
    copies of a row are an error naming their lines."""
    if metric not in METRICS:
        raise FeatbenchError(f"--metric must be one of {', '.join(METRICS)}; got {metric!r}")
    if protocol is not None and protocol not in PROTOCOLS:
        raise FeatbenchError(f"--protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    df = df.copy()
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
    df = df[df[metric].notna()].reset_index(drop=True)
    df["head_label"] = _head_labels(df)
    df["dataset_label"] = _dataset_labels(df)
    df["value"] = df[metric].astype(float)
    df["is_oracle"] = df["protocol"] == "oracle"
    df = df.sort_values("_order")
    _check_duplicates(df, metric)
    df = df.drop_duplicates(["head_label", "dataset_label", "shots", "seed", "classes"], keep="first")
    return df.reset_index(drop=True)


def _check_duplicates(df, metric: str) -> None:
    """Rows for the same cell and seed must agree; identical copies count once, conflicting ones are an error."""
    key = ["head_label", "dataset_label", "shots", "seed"] + (["classes"] if "classes" in df.columns else [])
    dup = df[df.duplicated(key, keep=False)]
    if dup.empty:
        return
    values = [c for c in dict.fromkeys(("acc", metric)) if c in dup.columns]
    for _, group in dup.groupby(key, sort=False):
        distinct = group[values].astype(float).round(10).drop_duplicates()
        if len(distinct) > 1:
            where = [str(s) for s in group.get("_source", group["_order"].map(lambda o: f"row {o + 1}"))]
            head, ds, shots, seed = (group.iloc[0][k] for k in key[:4])
            shown = ", ".join(f"{w} ({metric} {v:g})" for w, v in zip(where, group[metric].astype(float)))
            raise FeatbenchError(
                f"conflicting result rows for {head} on {ds}, {shots}-shot, seed {seed}: {shown}; "
                "the same run with different numbers: remove the wrong line(s) or keep the files apart")


# -- aggregation ----------------------------------------------------------------------------------------------
def cell_stats(df):
    """Long table of per-(head, dataset, shots) stats over seeds, plus the dataset "Average" rows.

    Columns: head, dataset, shots, mean, std, n, oracle. ``df`` is the output of :func:`prepare`.
    """
    import numpy as np
    import pandas as pd

    g = df.groupby(["head_label", "dataset_label", "shots"], sort=False)
    cells = g.agg(mean=("value", "mean"), std=("value", lambda v: float(np.std(v.to_numpy(), ddof=0))),
                  n=("seed", "nunique"), oracle=("is_oracle", "any")).reset_index()
    cells = cells.rename(columns={"head_label": "head", "dataset_label": "dataset"})
    datasets = sorted(set(df["dataset_label"]))
    avg_rows = []
    for (head, shots), sub in df.groupby(["head_label", "shots"], sort=False):
        have = set(sub["dataset_label"])
        oracle = bool(sub["is_oracle"].any())
        if have != set(datasets):
            avg_rows.append(dict(head=head, dataset=AVERAGE, shots=shots, mean=math.nan, std=math.nan, n=0,
                                 oracle=oracle))
            continue
        per = sub.pivot_table(index="seed", columns="dataset_label", values="value", aggfunc="last")
        means = per.mean(axis=0)  # per-dataset mean over that dataset's seeds
        mean = float(means.mean())
        complete = per.dropna(axis=0, how="any")
        if len(complete) == len(per):  # every dataset has the same seeds: std over seeds of the average
            std = float(np.std(complete.mean(axis=1).to_numpy(), ddof=0))
            n = len(complete)
        else:
            std, n = math.nan, int(per.notna().sum(axis=0).min())
        avg_rows.append(dict(head=head, dataset=AVERAGE, shots=shots, mean=mean, std=std, n=n, oracle=oracle))
    if avg_rows:
        cells = pd.concat([cells, pd.DataFrame(avg_rows)], ignore_index=True)
    return cells


def aggregate(df, metric: str = "acc", rows: str = "dataset", cols: str = "shots", protocol: str | None = None,
              *, heads: Iterable[str] | None = None, shots: Iterable[int] | None = None,
              datasets: Iterable[str] | None = None, model: str | None = None,
              pretrained: str | None = None) -> Table:
    """Aggregate result rows (the DataFrame from :func:`load_results`) into a :class:`Table`.

    ``heads``/``shots``/``datasets`` optionally restrict the table (heads match the registry name or the
    full label; datasets the dataset evaluated on).
    """
    import pandas as pd

    if rows not in DIMS:
        raise FeatbenchError(f"--rows must be one of {', '.join(DIMS)}; got {rows!r}")
    if cols not in DIMS:
        raise FeatbenchError(f"--cols must be one of {', '.join(DIMS)}; got {cols!r}")
    if rows == cols:
        raise FeatbenchError(f"--rows and --cols must differ (both are {rows!r})")
    if model is not None or pretrained is not None:
        df = filter_encoder(df, model, pretrained)
    prepared = prepare(df, metric=metric, protocol=protocol)
    prepared = prepared[prepared["classes"] == "all"]
    if prepared.empty:
        raise FeatbenchError("the result rows are all base-to-new rows; use `featbench table --base-to-new`")
    prepared = filter_rows(prepared, heads=heads, shots=shots, datasets=datasets)
    if prepared.empty:
        raise FeatbenchError("no result rows left after filtering by --heads/--shots/--datasets")
    prepared = prepared.reset_index(drop=True)
    cells = cell_stats(prepared)
    orders = {
        "head": order_heads(prepared),
        "dataset": order_datasets(prepared["dataset_label"]) + [AVERAGE],
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
    cells_o = cells.assign(oracle=cells["oracle"].astype(int))
    piv_o = cells_o.pivot_table(index=index_keys, columns=cols, values="oracle", aggfunc="max", dropna=False)
    piv_o = piv_o.reindex(index=index, columns=col_order).fillna(0).astype(bool)
    # drop rows that have no cell at all (e.g. a (shots, head) block where a head was not run)
    keep = mean.notna().any(axis=1) | (mean.index.get_level_values(-1) == AVERAGE)
    if block_dim:
        # an Average row belongs in a block only if that block has real rows
        real = mean.notna().any(axis=1) & (mean.index.get_level_values(-1) != AVERAGE)
        blocks_with_rows = set(mean.index[real].get_level_values(0))
        keep = keep & mean.index.get_level_values(0).isin(blocks_with_rows)
    mean, std, n, piv_o = mean[keep], std[keep], n[keep], piv_o[keep]
    table = Table(mean=mean, std=std, n=n, oracle=piv_o, rows=rows, cols=cols, block_dim=block_dim,
                  metric=metric, protocol=protocol)
    if rows == "head":
        table.rank = _rank(mean)
    names = sorted(set(prepared["dataset_label"]))
    n_ds = len(names)
    encoders = sorted({encoder_label(m, p) for m, p in zip(prepared["model"], prepared["pretrained"])})
    if len(encoders) == 1:
        table.notes.append(f"Encoder: {encoders[0]}.")
    else:
        table.notes.append(f"Encoders: {', '.join(encoders)} (each head row names its encoder; never averaged across them).")
    if block == "dataset" and n_ds == 1:
        table.notes.append(f"Dataset: {names[0]}.")
    elif block == "dataset":
        table.notes.append(f"Each cell: mean over the {n_ds} datasets, shown only where every dataset has it.")
    else:
        table.notes.append(f"{AVERAGE}: mean over the {n_ds} datasets, shown only where every dataset has the cell.")
    return table


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
    df = df.copy()
    for col in ("model", "pretrained"):
        if col not in df.columns:
            df[col] = ""
    labels = [encoder_label(m, p) for m, p in zip(df["model"], df["pretrained"])]
    df["_encoder"] = labels
    out, first_error = [], None
    for enc in sorted(set(labels)):
        try:
            out.append((enc, build(df[df["_encoder"] == enc].drop(columns="_encoder"), **kwargs)))
        except FeatbenchError as err:
            if not any(m in str(err) for m in ("no result rows", "have no", "base-to-new rows")):
                raise  # a real error, not "this encoder has nothing left to show"
            first_error = first_error or err
    if not out:
        raise first_error
    return out


def _rank(mean):
    """Rank heads by their mean over the table's columns (without "Average"); rows with a gap get no rank."""
    import pandas as pd

    use = mean[[c for c in mean.columns if c != AVERAGE]]
    score = use.mean(axis=1).where(use.notna().all(axis=1))
    if isinstance(mean.index, pd.MultiIndex):
        ranks = score.groupby(level=0, sort=False).rank(ascending=False, method="min")
    else:
        ranks = score.rank(ascending=False, method="min")
    return ranks


__all__ = ["load_results", "prepare", "cell_stats", "aggregate", "aggregate_by_encoder",
           "render", "render_groups", "latex_escape", "filter_encoder", "encoder_label",
           "check_decimals", "Table"]
