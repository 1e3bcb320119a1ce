"""featbench from Python: the functions behind ``featbench.<name>`` (a notebook's way in, no CLI needed).

Everything here builds the same values the CLI builds (a :class:`featbench.fitspec.FitSpec`, a
:class:`featbench.protocol.Cell`) and returns the same result rows the CLI writes, so a row made in a notebook
and a row made by ``featbench fit`` are interchangeable in one results file and one table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from featbench.b2n_table import aggregate_base_to_new, is_base_to_new
from featbench.cache import Cache
from featbench.errors import FeatbenchError
from featbench.fitspec import DEFAULT_OUT, STANDARD_SEEDS, STANDARD_SHOTS, FitSpec
from featbench.heads import get_head, get_head_class, list_heads, register_head
from featbench.heads.base import Head
from featbench.importer import import_npz
from featbench.protocol import Cell, head_target, run_cell
from featbench.runner import execute
from featbench.result_reader import load_results
from featbench.tables import aggregate, aggregate_by_encoder, render_groups

RUNTIME_PARAMS = ("device", "random_state")


def open_cache(path: str | os.PathLike) -> Cache:
    """Open a feature cache, checked against the cache contract.

    Parameters
    ----------
    path : str or path-like
        A schema-v1 ``.h5`` file written by ``featbench extract``, ``import`` or ``merge``.

    Returns
    -------
    Cache
        The open cache (a context manager; ``close()`` when done): ``classnames``, ``labels(split)``,
        ``features(split)``, ``text_features()``, ``dataset``, ``model``, ``pretrained``, ``fingerprint``.

    Raises
    ------
    FeatbenchError
        The file is missing or breaks the contract (one line naming the file and the fix).

    Examples
    --------
    >>> with featbench.open_cache("cache/RN50--openai/caltech101.h5") as cache:  # doctest: +SKIP
    ...     X = cache.features("test")
    """
    if not Path(path).exists():
        raise FeatbenchError(f"cache file {path} does not exist; run `featbench extract` first or check the path")
    return Cache(path)


def _head_name(head, dataset: str, shots: int) -> tuple[str, dict]:
    """(registry name, parameters fixed by the caller) for a name, a Head class or a Head instance.

    An instance fixes the parameters where it departs from the paper's defaults for this dataset and shot
    count: the fitted head is exactly the instance, and rows (and table labels) show only real departures.
    """
    if isinstance(head, str):
        get_head_class(head)  # unknown names fail here, with the registry's suggestion
        return head, {}
    cls = head if isinstance(head, type) else type(head)
    if not issubclass(cls, Head):
        raise FeatbenchError(f"evaluate: head {head!r} is not a featbench Head (a name, a Head subclass or an instance)")
    name = next((n for n in list_heads() if _registered(n) is cls), None)
    if name is None:
        name = f"{cls.__module__}:{cls.__qualname__}"
        register_head(name, cls)
    if isinstance(head, type):
        return name, {}
    paper = get_head(name, dataset=dataset, shots=shots).get_params(deep=False)
    fixed = {k: v for k, v in head.get_params(deep=False).items()
             if k not in RUNTIME_PARAMS and (k not in paper or paper[k] != v)}
    return name, fixed


def _registered(name: str):
    try:
        return get_head_class(name)
    except Exception:  # a registered head that cannot be imported here is simply not this one
        return None


def evaluate(head, cache, *, shots: int, seed: int = 1, protocol: str = "paper", device: str = "cpu",
             eval_on: Iterable[str | os.PathLike] = (), base_to_new: bool = False, **params: Any):
    """Fit one head on one few-shot subset of a cache and score it: one cell of ``featbench fit``.

    Parameters
    ----------
    head : str, Head subclass or Head instance
        A registered name (``"taskres"``), a ``"package.module:Class"`` target, a class, or an instance whose
        hyperparameters are kept (as ``--set`` would fix them).
    cache : str, path-like or Cache
        The feature cache (an open :class:`Cache` is used through its path).
    shots : int
        Shots per class.
    seed : int, default=1
        Few-shot seed (CoOp uses 1, 2, 3).
    protocol : {"paper", "val", "oracle"}, default="paper"
        How hyperparameters are chosen (see featbench.protocol).
    device : str, default="cpu"
        auto | cpu | cuda | cuda:N.
    eval_on : sequence of path, optional
        Domain-generalisation target caches.
    base_to_new : bool, default=False
        CoCoOp's base-to-new protocol (two rows: base and new classes).
    **params
        Hyperparameters to fix (``alpha=0.25``), checked against the head's declarations.

    Returns
    -------
    dict or list of dict
        The result row the CLI would append (``acc``, ``mean_per_class_recall``, ``per_class``, ``params``, the
        cache fingerprint, ...); a list when the cell writes several rows (``eval_on``, ``base_to_new``).

    Examples
    --------
    >>> row = featbench.evaluate("taskres", "cache/RN50--openai/caltech101.h5", shots=16, seed=1)  # doctest: +SKIP
    >>> round(row["acc"], 2)  # doctest: +SKIP
    """
    path = str(cache.path) if isinstance(cache, Cache) else os.fspath(cache)
    with open_cache(path) as opened:
        dataset = opened.dataset
    name, fixed = _head_name(head, dataset, int(shots))
    spec = FitSpec(caches=[path], heads=[name], shots=[shots], seeds=[seed], protocol=protocol, device=device,
                   eval_on=tuple(eval_on), base_to_new=base_to_new, progress=False)
    overrides = {**fixed, **params}
    if overrides:  # the same checks --set runs, naming the parameter
        get_head(name, **overrides)
    cell = Cell.from_spec(spec, spec.caches[0], name, overrides, shots, seed)
    rows = run_cell(cell)
    return rows[0] if len(rows) == 1 else rows


def fit(caches, *, heads, shots: Iterable[int] = STANDARD_SHOTS, seeds: Iterable[int] = STANDARD_SEEDS,
        out: str | os.PathLike = DEFAULT_OUT, protocol: str = "paper", sets: Mapping | None = None,
        grids: Mapping | None = None, jobs: int = 1, device: str = "cpu", progress: bool = False,
        **options: Any) -> list[dict]:
    """Run a grid (caches x heads x settings x shots x seeds) into an append-only results file, with resume.

    Parameters
    ----------
    caches : path or sequence of path
        Feature caches.
    heads : str or sequence of str
        Registered names or ``"package.module:Class"`` targets.
    shots, seeds : sequence of int
        Default 1, 2, 4, 8, 16 shots and seeds 1, 2, 3 (CoOp's protocol).
    out : path, default="results/results.jsonl"
        Results file; cells already in it are skipped.
    protocol, sets, grids, jobs, device, progress
        As ``featbench fit``'s flags (``sets={"taskres.alpha": 0.5}``, ``grids={"taskres.alpha": [0.5, 1]}``).
    **options
        Any other :class:`featbench.fitspec.FitSpec` field (``eval_on``, ``base_to_new``, ``max_cells``, ...).

    Returns
    -------
    list of dict
        The rows this call appended, in cell order.
    """
    spec = FitSpec(caches=caches, heads=heads, shots=shots, seeds=seeds, out=out, protocol=protocol,
                   sets=sets or {}, grids=grids or {}, jobs=jobs, device=device, progress=progress, **options)
    return execute(spec, announce=lambda msg: None)


def import_features(npz: str | os.PathLike, out: str | os.PathLike, *, dataset: str, model: str,
                    pretrained: str, **options: Any) -> Path:
    """Features computed elsewhere (an ``.npz``: ``<split>_features``, ``<split>_labels``, optionally
    ``classnames``, ``text_raw`` [T, C, D], ``train_views``) as a cache every head reads; ``featbench import``.

    Returns
    -------
    Path
        The cache written (atomically) at ``out``.
    """
    return import_npz(npz, out, dataset=dataset, model=model, pretrained=pretrained, **options)


def read_results(paths):
    """Result files (or folders of ``*.jsonl``) as one pandas DataFrame, every line validated.

    Returns
    -------
    pandas.DataFrame
        One row per result row, with the row's fields as columns.
    """
    return load_results(paths)


def make_table(df, *, rows: str = "head", cols: str = "shots", fmt: str = "markdown", metric: str = "acc",
               protocol: str | None = None, decimals: int = 2, names: str = "paper", **filters: Any) -> str:
    """A comparison table (mean ± std over seeds) of result rows, as ``featbench table`` prints it.

    Parameters
    ----------
    df : pandas.DataFrame
        From :func:`read_results`.
    rows, cols : {"head", "dataset", "shots"}
        The table's rows and columns (the third dimension is averaged or split into blocks). ``cols="params"``:
        accuracy against trainable parameters (heads as rows; ``rows="head"`` or ``"dataset"``).
    fmt : {"markdown", "latex", "csv"}
        Output format.
    names : {"paper", "registry"}, default="paper"
        Heads as their papers name them (TaskRes, Tip-Adapter-F) or by registry name (``featbench table --names``).
    **filters
        ``heads=``, ``shots=``, ``datasets=``, ``model=``, ``pretrained=``.

    Returns
    -------
    str
        The rendered table(s): one per encoder, base-to-new rows as a Base / New / H table.
    """
    layout = dict(build=aggregate_base_to_new) if is_base_to_new(df) else dict(rows=rows, cols=cols)
    groups = aggregate_by_encoder(df, metric=metric, protocol=protocol, names=names, **layout, **filters)
    return render_groups(groups, fmt, decimals=decimals)


__all__ = ["open_cache", "import_features", "evaluate", "fit", "read_results", "make_table", "get_head", "list_heads", "register_head",
           "Head", "aggregate"]
