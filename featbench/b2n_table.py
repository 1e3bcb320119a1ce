"""The Base / New / H table of CoCoOp's base-to-new protocol: a pure function of ``"classes": base/new`` rows.

Kept apart from featbench.tables (which builds every other table) because only these rows have two halves
and an H column; the class arithmetic that produces the rows lives in featbench.base_to_new.
"""

from __future__ import annotations

from featbench.errors import FeatbenchError
from featbench.table_model import AVERAGE, OVERRIDES_NOTE, Table, order_datasets, order_heads
from featbench.table_published import attach_published
from featbench.tables import filter_rows, prepare

# ----------------------------------------------------------------------------------------------------
# the Base / New / H table (pure function of result rows; pandas imported lazily)
# ----------------------------------------------------------------------------------------------------
B2N_COLUMNS = ("Base", "New", "H")
H_NOTE = ("H = 2BN/(B+N) of the mean Base and mean New accuracy (CoCoOp's convention), per dataset and for the "
          "Average; no std.")


def is_base_to_new(df) -> bool:
    """Whether the rows are base-to-new rows only (then ``featbench table`` shows B / N / H)."""
    if "classes" not in df.columns:
        return False
    classes = set(df["classes"].where(df["classes"].notna(), "all"))
    return bool(classes) and classes <= {"base", "new"}


def aggregate_base_to_new(df, metric: str = "acc", protocol: str | None = None, *, heads=None, shots=None,
                          datasets=None, names: str = "registry", published: bool = False):
    """Base / New / H table: one block per head (and shot count), rows = datasets + Average; every format
    shows the head as a leading column.

    A New cell from the zero-shot fallback (the head cannot score unseen classes), and the H built on it, is
    marked ‡ and never bold: zero-shot CLIP's own New must not make a head look better than zero-shot.

    Base and New are mean ± population std over seeds of the base and new rows; H = 2BN/(B+N) is computed from
    those means (CoCoOp reports H of the averaged accuracies, also for the dataset Average), so it has no std.
    The Average of Base (New) is the mean over datasets of the per-dataset means, shown only where every
    dataset has both; its std is that of the per-seed averages when every dataset has the same seeds.
    ``published=True`` puts the Base / New / H a paper publishes beside each cell that has one.
    """
    import numpy as np  # lazy: `featbench --help` must not pay for numpy/pandas
    import pandas as pd

    prepared = prepare(df, metric=metric, protocol=protocol, names=names)
    prepared = prepared[prepared["classes"].isin(["base", "new"])]
    prepared = filter_rows(prepared, heads=heads, shots=shots, datasets=datasets)
    if prepared.empty:
        raise FeatbenchError("no base-to-new rows (\"classes\": base/new) left; run `featbench fit --base-to-new`")
    prepared = prepared.reset_index(drop=True)
    many_shots = prepared["shots"].nunique() > 1
    prepared["block"] = [f"{h} ({k}-shot)" if many_shots else h for h, k in zip(prepared["head_label"], prepared["shots"])]
    head_order = order_heads(prepared)
    blocks = [f"{h} ({k}-shot)" if many_shots else h for h in head_order
              for k in sorted(set(prepared["shots"]))]
    blocks = [b for b in blocks if b in set(prepared["block"])]
    ds_order = order_datasets(prepared["dataset_label"])
    with_avg = [AVERAGE] if len(ds_order) > 1 else []
    index = pd.MultiIndex.from_tuples([(b, d) for b in blocks for d in ds_order + with_avg], names=["head", "dataset"])
    mean = pd.DataFrame(np.nan, index=index, columns=list(B2N_COLUMNS))
    std, n = mean.copy(), pd.DataFrame(0.0, index=index, columns=list(B2N_COLUMNS))
    for block, sub in prepared.groupby("block", sort=False):
        per = {c: sub[sub["classes"] == c].pivot_table(index="seed", columns="dataset_label", values="value",
                                                        aggfunc="last") for c in ("base", "new")}
        for ds in ds_order:
            for col, c in (("Base", "base"), ("New", "new")):
                if ds in per[c].columns:
                    v = per[c][ds].dropna().to_numpy()
                    mean.loc[(block, ds), col] = float(v.mean())
                    std.loc[(block, ds), col] = float(np.std(v, ddof=0))
                    n.loc[(block, ds), col] = len(v)
        for col, c in (("Base", "base"), ("New", "new")):
            p = per[c]
            if not with_avg or set(p.columns) != set(ds_order):
                continue
            mean.loc[(block, AVERAGE), col] = float(p.mean(axis=0).mean())
            complete = p.dropna(axis=0, how="any")
            if len(complete) == len(p):
                std.loc[(block, AVERAGE), col] = float(np.std(complete.mean(axis=1).to_numpy(), ddof=0))
                n.loc[(block, AVERAGE), col] = len(complete)
            else:
                n.loc[(block, AVERAGE), col] = int(p.notna().sum(axis=0).min())
    b, nw = mean["Base"], mean["New"]
    mean["H"] = (2 * b * nw / (b + nw)).where((b + nw) > 0, 0.0).where(b.notna() & nw.notna())
    n["H"] = np.minimum(n["Base"], n["New"])
    keep = mean.notna().any(axis=1) | (mean.index.get_level_values(-1) == AVERAGE)
    mean, std, n = mean[keep], std[keep], n[keep]
    oracle = pd.DataFrame(False, index=mean.index, columns=mean.columns)
    for block in set(prepared.loc[prepared["is_oracle"], "block"]):
        oracle.loc[block] = True
    table = Table(mean=mean, std=std, n=n, oracle=oracle, rows="dataset", cols="classes", block_dim="head",
                  metric=metric, protocol=protocol, fallback=_fallback_cells(prepared, mean.index),
                  overrides=bool(prepared["has_overrides"].any()), block_column=True)
    table.notes.append(H_NOTE)
    if prepared["has_overrides"].any():
        table.notes.append(OVERRIDES_NOTE)
    table.notes.append(f"{AVERAGE}: mean over the {len(ds_order)} datasets, shown only where every dataset has the cell."
                       if with_avg else f"Dataset: {ds_order[0]}.")
    if published:
        blocks = {b: (h, int(k)) for b, h, k in zip(prepared["block"], prepared["head_label"], prepared["shots"])}
        attach_published(table, prepared, blocks=blocks)
    return table


def _fallback_cells(prepared, index):
    """New and H cells built on a zero-shot fallback: per dataset, and the Average where any dataset is."""
    import pandas as pd

    flags = pd.DataFrame(False, index=index, columns=list(B2N_COLUMNS))
    fb = prepared[prepared["is_fallback"]]
    for block, ds in set(zip(fb["block"], fb["dataset_label"])):
        for key in ((block, ds), (block, AVERAGE)):
            if key in flags.index:
                flags.loc[key, ["New", "H"]] = True
    return flags


aggregate_table = aggregate_base_to_new  # the name earlier releases exported

__all__ = ["B2N_COLUMNS", "H_NOTE", "is_base_to_new", "aggregate_base_to_new"]
