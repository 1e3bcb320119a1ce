"""`featbench extract`, `featbench info`, `featbench ls`: build and inspect feature caches.

Heavy modules (torch, open_clip, h5py) are imported inside the command bodies only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from featbench.cli.app import app, parse_int_list, parse_str_list
from featbench.devices import check_torch_install
from featbench.errors import FeatbenchError


def _choice(value: str, flag: str, allowed: tuple[str, ...]) -> str:
    v = str(value).strip().lower()
    if v not in allowed:
        raise FeatbenchError(f"{flag} {value}: expected one of {', '.join(allowed)}")
    return v


@app.command()
def extract(
    dataset: str = typer.Option(..., "--dataset", help="dataset name (see `featbench datasets`), folder or csv"),
    root: Path = typer.Option(..., "--root", help="dataset root (the CoOp DATA folder, or the dataset folder)"),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="CSV manifest (path,label[,split]) for --dataset csv"),
    name: Optional[str] = typer.Option(None, "--name", help="name of a custom dataset (folder, csv; required there): "
                                       "the cache file and result rows carry it"),
    model: str = typer.Option("RN50", "--model", help="open_clip architecture name or path to a model-config JSON"),
    pretrained: str = typer.Option("openai", "--pretrained", help="open_clip tag, local checkpoint file, or none"),
    splits: str = typer.Option("train,val,test", "--splits", help="comma list of train,val,test"),
    views: int = typer.Option(10, "--views", help="augmented views per few-shot train image (0: none)"),
    view_shots: str = typer.Option("1,2,4,8,16", "--view-shots", help="shot counts whose few-shot rows get views; one K = every standard count <= K"),
    view_scale: Optional[str] = typer.Option(None, "--view-scale", help="RandomResizedCrop area scale min,max (Tip-Adapter 0.5,1; Dassl 0.08,1) [default: 0.5,1]"),
    view_scales: Optional[str] = typer.Option(None, "--view-scales", help="several view sets, one per scale, e.g. 0.5,1:0.08,1 (replaces --view-scale; each head trains on its paper's)"),
    for_heads: Optional[str] = typer.Option(None, "--for-heads", help="comma list of heads: extract the view sets their papers train on (the union of their crop scales, e.g. taskres,tip-adapter -> 0.5,1:0.08,1)"),
    seeds: str = typer.Option("1,2,3", "--seeds", help="few-shot seeds whose rows get views"),
    train_rows: str = typer.Option("all", "--train-rows", help="all | fewshot: which train rows get plain features"),
    all_views: bool = typer.Option(False, "--all-views", help="views for every train row"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="images per encoder batch "
                                             "[default: 64 on a CPU, 256 on CUDA]", show_default=False),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader worker processes for decoding "
                                          "[default: 0 on a CPU, min(16, cores) on CUDA]", show_default=False),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    dtype: str = typer.Option("float16", "--dtype", help="on-disk dtype: float16 | float32"),
    cache_dir: Path = typer.Option(Path("cache"), "--cache-dir"),
    out: Optional[Path] = typer.Option(None, "--out", help="cache file (default <cache-dir>/<model>--<pretrained>/<dataset>.h5)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="rebuild a cache/partial made with other arguments"),
    skip_bad_images: bool = typer.Option(False, "--skip-bad-images", help="skip unreadable images (recorded in /skipped)"),
    classname_style: str = typer.Option("clean", "--classname-style", help="clean ('_' -> ' ') | raw"),
    templates: Optional[Path] = typer.Option(None, "--templates", help="prompt templates: one per line with {} "
                                             "for the class name, or a .json/.yaml list (replaces the dataset's)"),
    classnames: Optional[Path] = typer.Option(None, "--classnames", help="class names: one per line in label "
                                              "order, or a .json/.yaml mapping class folder -> name"),
    pre_projection: bool = typer.Option(False, "--pre-projection", help="also store features before the final projection"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
) -> None:
    """Encode a dataset once into an HDF5 feature cache (resumable; rerun the same command to continue)."""
    from featbench.distributed import dist_env  # lazy: the command's heavy imports stay out of `--help`
    from featbench.extract import run_extract_sharded
    from featbench.extract_spec import ExtractSpec
    check_torch_install()

    spec = ExtractSpec.from_cli(
        dataset=dataset, root=root, manifest=manifest, name=name, model=model, pretrained=pretrained,
        splits=parse_str_list(splits), views=views, view_shots=parse_int_list(view_shots, "--view-shots"),
        **_scale_flags(view_scale, view_scales, for_heads), seeds=parse_int_list(seeds, "--seeds"),
        train_rows=train_rows, all_views=all_views, batch_size=batch_size, workers=workers, device=device,
        dtype=dtype, cache_dir=cache_dir, out=out, overwrite=overwrite, skip_bad_images=skip_bad_images,
        classname_style=classname_style, templates=templates, classnames=classnames,
        pre_projection=pre_projection, no_progress=no_progress,
    )
    env = dist_env()  # under torchrun: every rank encodes its shard, rank 0 merges and prints the path
    path = run_extract_sharded(spec, log=lambda m: typer.echo(m, err=True), env=env)
    if env.is_main:
        typer.echo(str(path))


def _scale_flags(view_scale: str | None, view_scales: str | None, for_heads: str | None) -> dict:
    """The crop-scale keywords of ExtractSpec: at most one of --view-scale, --view-scales and --for-heads."""
    given = [flag for flag, v in (("--view-scale", view_scale), ("--view-scales", view_scales),
                                  ("--for-heads", for_heads)) if v is not None]
    if len(given) > 1:
        raise FeatbenchError(f"{' and '.join(given)}: give one of them (--for-heads takes the scales from the heads' papers)")
    if for_heads is not None:
        from featbench.extract_spec import heads_view_scales  # lazy: imports the heads' modules

        heads = parse_str_list(for_heads)
        if not heads:
            raise FeatbenchError("--for-heads is empty; name heads like taskres,tip-adapter (see `featbench heads`)")
        try:
            return {"view_scales": heads_view_scales(heads)}
        except FeatbenchError as err:
            raise FeatbenchError(f"--for-heads {for_heads}: {err}") from None
    if view_scales is not None:
        return {"view_scales": view_scales}
    return {} if view_scale is None else {"view_scale": view_scale}


@app.command()
def info(
    cache: Path = typer.Argument(..., help="a cache file (.h5)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable JSON"),
) -> None:
    """Describe a feature cache: encoder, splits, rows with features, views, skipped images."""
    from featbench.cache import Cache

    with Cache(cache) as c:
        summary = c.summary()
    if as_json:
        typer.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))
        return
    pp = summary.get("preprocess", {})
    lines = [
        f"cache       {summary['path']}",
        f"model       {summary['model']}  pretrained {summary['pretrained']}  embed_dim {summary['embed_dim']}  "
        f"logit_scale {float(summary['logit_scale']):.4g}",
        f"fingerprint {summary['fingerprint'][:16]}…",
        f"dataset     {summary['dataset']}  classes {summary['num_classes']}  templates {summary['templates']}"
        + ("  (class names from --classnames)" if isinstance(pp, dict) and "classnames_sha256" in pp else ""),
        _preprocess_line(pp),
    ]
    for s, d in summary["splits"].items():
        lines.append(f"split {s:<5} {d['rows']} rows, {d['with_features']} with features")
    v = summary["views"]
    sets = ", ".join(f"{k} scale {sc}" for k, sc in (v.get("sets") or {}).items())
    lines.append(f"views       {v['num_views']} x {v['rows']} train rows ({sets})" if v["num_views"] else "views       none")
    if summary.get("skipped"):
        lines.append(f"skipped     {summary['skipped']} unreadable image(s)")
    lines.append(f"created     {summary.get('created', '?')}")
    typer.echo("\n".join(lines))


def _preprocess_line(pp: dict) -> str:
    """What `info` says about preprocessing; caches made by `featbench import` carry no record of it."""
    if not isinstance(pp, dict) or "image_size" not in pp:
        imported = isinstance(pp, dict) and pp.get("source") == "imported"
        return "preprocess  n/a (" + ("imported features: " if imported else "") + "not recorded in the cache)"
    text = f"preprocess  {pp['image_size']}px {pp.get('interpolation', '')} {pp.get('resize_mode', '')}".rstrip()
    if pp.get("view_scales") or pp.get("view_scale") is not None:
        text += f", views scale {pp.get('view_scales') or pp['view_scale']}"
    return text


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@app.command("ls")
def ls(
    folder: Optional[Path] = typer.Argument(None, help="where to look, recursively (default: cache)"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="the same as the FOLDER argument"),
) -> None:
    """List the caches under a folder: model, pretrained, dataset, splits, rows, views, size."""
    if folder is not None and cache_dir is not None and folder != cache_dir:
        raise FeatbenchError(f"ls: give the folder once (got {folder} and --cache-dir {cache_dir})")
    cache_dir = folder or cache_dir or Path("cache")
    if cache_dir.exists() and not cache_dir.is_dir():
        raise FeatbenchError(f"ls {cache_dir}: not a folder; `featbench info {cache_dir}` describes one cache")
    from rich.console import Console
    from rich.table import Table

    from featbench.cache import PARTIAL_SUFFIX, Cache

    if not cache_dir.exists():
        raise FeatbenchError(f"ls {cache_dir}: folder does not exist; run `featbench extract` first or name the folder")
    table = Table("cache", "model", "pretrained", "dataset", "splits", "rows", "views", "size")
    found = 0
    for p in sorted(cache_dir.rglob("*.h5")):
        found += 1
        try:
            with Cache(p) as c:
                s = c.summary()
        except FeatbenchError as err:
            table.add_row(str(p), "-", "-", "-", "-", "-", "-", _human(p.stat().st_size) + f" (unreadable: {str(err)[:40]})")
            continue
        rows = ", ".join(f"{k}:{d['with_features']}/{d['rows']}" for k, d in s["splits"].items())
        v = s["views"]
        table.add_row(str(p), s["model"], s["pretrained"], s["dataset"], ",".join(s["splits"]), rows,
                      f"{v['num_views']}x{v['rows']}" if v["num_views"] else "-", _human(p.stat().st_size))
    for p in sorted(cache_dir.rglob("*.h5" + PARTIAL_SUFFIX)):
        found += 1
        table.add_row(str(p), "-", "-", "-", "-", "-", "-", _human(p.stat().st_size) + " (partial: rerun extract to resume)")
    if not found:
        typer.echo(f"no caches under {cache_dir}")
        return
    Console(width=200).print(table)


@app.command("import")
def import_command(
    npz: Path = typer.Argument(..., help=".npz with <split>_features/<split>_labels (+ classnames, text_raw, train_views)"),
    out: Path = typer.Option(..., "--out", help="cache file to write"),
    dataset: str = typer.Option(..., "--dataset", help="dataset name recorded in the cache (e.g. imagenet)"),
    model: str = typer.Option(..., "--model", help="encoder label recorded in the cache (e.g. ViT-B-32)"),
    pretrained: str = typer.Option(..., "--pretrained", help="weights label recorded in the cache (e.g. openai)"),
    logit_scale: float = typer.Option(100.0, "--logit-scale", help="CLIP's exponentiated logit scale"),
    dtype: str = typer.Option("float16", "--dtype", help="on-disk dtype: float16 | float32"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out"),
    text_tower: Optional[str] = typer.Option(None, "--text-tower", help="MODEL:PRETRAINED (open_clip tag) or "
                                             "MODEL:/path/to/checkpoint.pt: the text encoder that made text_raw, "
                                             "checked by re-encoding the class prompts; prompt learners (coop, "
                                             "kgcoop, cocoop) need it"),
    templates: Optional[Path] = typer.Option(None, "--templates", help="the prompt templates of text_raw where the "
                                             ".npz has none: one per line with {} for the class name, or a .json/.yaml list"),
) -> None:
    """Import features computed elsewhere (.npz arrays) as a schema-v1 cache that `featbench fit` reads."""
    from featbench.importer import import_npz
    from featbench.prompts import read_templates

    _choice(dtype, "--dtype", ("float16", "float32"))
    if text_tower is not None:
        check_torch_install()
    path = import_npz(npz, out, dataset=dataset, model=model, pretrained=pretrained, logit_scale=logit_scale,
                      dtype=dtype, overwrite=overwrite, text_tower=text_tower,
                      templates=None if templates is None else read_templates(templates))
    typer.echo(str(path))
