"""`featbench fit` (run a grid of heads on feature caches) and `featbench fewshot` (audit a few-shot subset).

Thin: flags are parsed here, everything else lives in featbench.runner / featbench.protocol (imported inside
the command bodies so `featbench --help` never imports torch or h5py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from featbench.cli.app import app, parse_int_list, parse_str_list
from featbench.devices import check_torch_install
from featbench.errors import FeatbenchError

DEFAULT_HEADS = "zeroshot,linear-probe,tip-adapter,tip-adapter-f,taskres"


@app.command()
def fit(
    caches: List[Path] = typer.Argument(..., help="One or more schema-v1 feature caches (.h5).", show_default=False),
    heads: str = typer.Option(DEFAULT_HEADS, "--heads", help="Comma-separated head names (see the registry)."),
    shots: str = typer.Option("1,2,4,8,16", "--shots", help="Comma-separated shots per class."),
    seeds: str = typer.Option("1,2,3", "--seeds", help="Comma-separated few-shot seeds (CoOp uses 1,2,3)."),
    protocol: str = typer.Option("paper", "--protocol", help="paper (fixed defaults) | val (search on few-shot val) | oracle (search on test; marked)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="HEAD.PARAM=VALUE (YAML value), repeatable."),
    grid: Optional[List[str]] = typer.Option(None, "--grid", help="HEAD.PARAM=V1,V2,... one row per value, repeatable."),
    out: Path = typer.Option(Path("results/results.jsonl"), "--out", help="Results file (JSON lines); existing rows are skipped."),
    jobs: int = typer.Option(1, "--jobs", help="Parallel worker processes (joblib)."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run cells as Ray tasks: 'local', 'auto' or a cluster address."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N | auto"),
    eval_on: Optional[str] = typer.Option(None, "--eval-on", help="Comma-separated target caches (domain generalisation)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    base_to_new: bool = typer.Option(False, "--base-to-new", help="CoCoOp's base-to-new protocol: train on the first half of the sorted classes; rows 'classes': base and new."),
    save_predictions: Optional[Path] = typer.Option(None, "--save-predictions", help="Folder for each new row's "
                                                    "test predictions and labels (<row hash>.npz, named in the row)."),
    max_cells: int = typer.Option(10_000, "--max-cells", help="Refuse a grid of more cells than this (the count is "
                                  "printed before anything runs); raise it for a bigger sweep."),
    fast: bool = typer.Option(False, "--fast", help="On CUDA, allow nondeterministic kernels (faster; rows say "
                              "deterministic: false). Deterministic is the default."),
) -> None:
    """Fit heads on cached features over caches x heads x grid x shots x seeds; append one row per cell."""
    check_torch_install()
    from featbench.fitspec import FitSpec  # lazy: `featbench --help` stays free of numpy and h5py
    from featbench.runner import execute, parse_grids, parse_sets

    grids = parse_grids(grid)
    _check_heads(parse_str_list(heads))
    spec = FitSpec(caches=[str(c) for c in caches], heads=parse_str_list(heads), shots=parse_int_list(shots, "--shots"),
                   seeds=parse_int_list(seeds, "--seeds"), protocol=protocol, sets=parse_sets(set_), grids=grids,
                   out=out, jobs=jobs, device=device, eval_on=parse_str_list(eval_on) if eval_on else (),
                   progress=progress, ray_address=ray, base_to_new=base_to_new, save_predictions=save_predictions,
                   max_cells=max_cells, fast=fast)
    if save_predictions is not None:
        _check_output_folder(save_predictions, "--save-predictions")
    rows = execute(spec)
    head_list, shot_list, seed_list, targets = list(spec.heads), list(spec.shots), list(spec.seeds), spec.eval_on
    if not rows:
        typer.echo(f"nothing to do: every cell is already in {out}", err=True)
        from featbench.results import read_rows

        wanted = {str(Path(p).resolve()) for p in [*caches, *(targets or [])]}  # this command's caches only
        rows = [r for r in read_rows(out) if r.get("head") in head_list and r.get("shots") in shot_list
                and r.get("seed") in seed_list and r.get("protocol") == protocol
                and str(Path(str(r.get("cache", ""))).resolve()) in wanted
                and (r.get("classes") or "all") in (("base", "new") if base_to_new else ("all",))]
    else:
        typer.echo(f"appended {len(rows)} row(s) to {out}", err=True)
    _print_summary(rows, head_list, shot_list, grids)


def _check_heads(names: list[str]) -> None:
    """Every --heads name is a head, before any cache is opened (an unknown one: the closest names)."""
    from featbench.heads import get_head_class  # lazy: imports each named head's module

    for name in names:
        try:
            get_head_class(name)
        except FeatbenchError as err:
            raise FeatbenchError(f"--heads {name}: {err}") from None


def _check_output_folder(folder: Path, flag: str) -> None:
    from featbench.outputs import ensure_folder

    ensure_folder(folder, f"{flag} {folder}", "give a writable folder for the .npz files")


def _summary_labels(rows: list[dict], heads: list[str], grids: dict | None) -> list[tuple[str, list[dict]]]:
    """(label, rows) per head, grid point and encoder: a summary never averages over grid values or encoders."""
    from featbench.results import canonical_json

    encoders = {(r.get("model"), r.get("pretrained")) for r in rows}
    out = []
    for h in heads:
        params = [k.rsplit(".", 1)[1] for k in (grids or {}) if k.rsplit(".", 1)[0] == h]
        groups: dict[tuple, list[dict]] = {}
        for r in rows:
            if r["head"] != h:
                continue
            point = tuple(canonical_json((r.get("params") or {}).get(p)) for p in params)
            enc = (r.get("model"), r.get("pretrained")) if len(encoders) > 1 else None
            groups.setdefault((enc, point), []).append(r)
        for (enc, point), members in groups.items():
            inner = [f"{p}={v}" for p, v in zip(params, point)] + ([f"{enc[0]}/{enc[1]}"] if enc else [])
            out.append((f"{h} ({', '.join(inner)})" if inner else h, members))
    return out


def _print_summary(rows: list[dict], heads: list[str], shots: list[int], grids: dict | None = None) -> None:
    """Mean top-1 (over datasets and seeds) per head (and grid point, and encoder) x shots."""
    if not rows:
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    datasets = sorted({r["dataset"] for r in rows})
    console = Console(width=max(80, 16 + 10 * len(shots)))
    console.print(f"mean top-1 acc (%) over {len(datasets)} dataset(s) and their seeds: {', '.join(datasets)}")
    table = Table()
    table.add_column("head")
    for k in shots:
        table.add_column(f"{k}-shot", justify="right")
    subsets = [c for c in ("all", "base", "new") if any((r.get("classes") or "all") == c for r in rows)]
    for label, members in _summary_labels(rows, heads, grids):
        for c in subsets:
            cells = []
            for k in shots:
                accs = [float(r["acc"]) for r in members if int(r["shots"]) == k and (r.get("classes") or "all") == c]
                cells.append(f"{sum(accs) / len(accs):.2f}" if accs else "-")
            if any(x != "-" for x in cells):
                table.add_row(Text(label if c == "all" else f"{label} ({c})"), *cells)  # Text: no rich markup
    console.print(table)


@app.command()
def fewshot(
    cache: Path = typer.Argument(..., help="A schema-v1 feature cache (.h5).", show_default=False),
    shots: int = typer.Option(..., "--shots", help="Shots per class (K)."),
    seed: int = typer.Option(..., "--seed", help="Few-shot seed."),
) -> None:
    """Print the train and val image paths CoOp's sampler picks for (shots, seed), as JSON."""
    from featbench.cache import Cache
    from featbench.fewshot import fewshot_rows
    from featbench.protocol import has_val

    if shots < 1:
        raise FeatbenchError(f"--shots {shots}: give a positive number of shots per class")
    if not cache.exists():
        raise FeatbenchError(f"cache file {cache} does not exist; run `featbench extract` first or check the path")
    with Cache(cache) as c:
        if not c.has_split("train"):
            raise FeatbenchError(f"{cache}: no train split to sample from")
        val_labels = c.labels("val") if has_val(c) else None
        sub = fewshot_rows(c.labels("train"), val_labels, shots, seed)
        train_paths = c.paths("train")
        val_paths = c.paths("val") if sub.val is not None else []
        out = {"train": [train_paths[r] for r in sub.train], "val": [val_paths[r] for r in (sub.val or [])]}
    typer.echo(json.dumps(out, indent=1))
