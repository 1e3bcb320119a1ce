"""The numbers papers publish, beside the cells of a table (``featbench table --published``).

A cell matches a ledger row (:mod:`featbench.published`) on head, encoder, dataset, shots and protocol; only a
head's plain paper-default label matches (a row the user changed is not the paper's setting).
"""

from __future__ import annotations

from featbench.table_model import AVERAGE, PUBLISHED_NOTE, Table, display_name


_B2N_SPLITS = {"Base": "base", "New": "new", "H": "H"}


def attach_published(table: Table, prepared, *, fixed: dict | None = None, blocks: dict | None = None,
                     ledger=None) -> Table:
    """Fill ``table.published`` / ``published_source`` from the ledger of published numbers and add a note
    naming the sources.

    A cell matches a ledger row on head (a plain label: no overrides, no variant keys), model, pretrained,
    dataset ("Average" = the ledger's "average"; a dataset evaluated away from its training set =
    domain generalisation), shots and protocol (our paper/val/oracle rows are the papers' few-shot protocol;
    Base/New/H columns are base-to-new). ``fixed`` gives the dimension the table does not show (its single
    value); ``blocks`` maps base-to-new block labels to (head label, shots).
    """
    import pandas as pd

    from featbench import published as pub

    index = pub.shipped_index() if ledger is None else pub.Index(ledger)
    encoders = prepared[["model", "pretrained"]].drop_duplicates()
    values = pd.DataFrame(float("nan"), index=table.mean.index, columns=table.mean.columns)
    sources = pd.DataFrame("", index=table.mean.index, columns=table.mean.columns)
    found: dict[str, str] = {}
    if len(encoders) == 1:
        model, pretrained = (str(v) for v in encoders.iloc[0])
        heads = _plain_heads(prepared)
        places = {lab: (str(ds), str(src)) for lab, ds, src in
                  zip(prepared["dataset_label"], prepared["dataset"], prepared["source_dataset"])}
        if set(places) != set(pub.AVERAGED):  # a published average is over CoOp's eleven datasets, no others
            places[AVERAGE] = None
        for i, key in enumerate(table.mean.index):
            for j, col in enumerate(table.mean.columns):
                dims = dict(fixed or {})
                if table.block_dim:
                    dims[table.block_dim], dims[table.rows] = key
                else:
                    dims[table.rows] = key
                dims[table.cols] = col
                if table.mean.iat[i, j] != table.mean.iat[i, j]:
                    continue  # no cell of ours: nothing to compare with
                hit = _published_for(index, dims, heads, places, model, pretrained, blocks)
                if hit is not None:
                    values.iat[i, j], sources.iat[i, j] = hit.value, hit.source
                    found.setdefault(hit.source, hit.where)
    table.published, table.published_source = values, sources
    if found:
        table.notes.append(PUBLISHED_NOTE + " Sources: " + "; ".join(f"{s}, {w}" for s, w in found.items()) + ".")
    else:
        table.notes.append("Published numbers: none in the ledger matches a cell of this table (featbench published "
                           "lists them).")
    return table


def _plain_heads(prepared) -> dict:
    """Head label -> registry head, for labels that name a head's paper-default setting (nothing else)."""
    out = {}
    for head, label, over in zip(prepared["head"], prepared["head_label"], prepared["has_overrides"]):
        head = str(head)
        if not over and label in (head, display_name(head)):
            out[label] = head
    return out


def _published_for(index, dims: dict, heads: dict, places: dict, model: str, pretrained: str, blocks):
    if blocks is not None:  # base-to-new: blocks are heads (or "head (k-shot)"), columns Base / New / H
        label, shots = blocks.get(dims.get("head"), (None, None))
        protocol, split = "base-to-new", _B2N_SPLITS.get(str(dims.get("classes")))
    else:
        label, shots, split = dims.get("head"), dims.get("shots"), "all"
        protocol = "few-shot"
    head = heads.get(label)
    if head is None or split is None or shots is None:
        return None
    place = dims.get("dataset")
    if place == AVERAGE and places.get(AVERAGE, ()) is not None:
        dataset = "average"
    elif place in places and places[place] is not None:
        dataset, source = places[place]
        if source != dataset and blocks is None:
            protocol = "domain-generalisation"
    else:
        return None
    return index.find(head=head, model=model, pretrained=pretrained, dataset=dataset, shots=int(shots),
                      protocol=protocol, split=split)


__all__ = ["attach_published"]
