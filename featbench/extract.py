"""Extraction: a dataset + an open_clip encoder -> one schema-v1 HDF5 cache (resumable, atomic).

The plan (which rows get plain features, which train rows get augmented views) is a pure function of
the dataset index and the arguments; the work is cut into fixed blocks of that plan; each block's
numbers are a pure function of (relative path, row, arguments) — views are seeded per (path, view) —
so an interrupted run resumes into the same file, and a distributed run can hand each rank a disjoint
subset of rows (`shard_rows`) and merge the parts by row.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from featbench import cache as C
from featbench.datasets import load_dataset
from featbench.devices import use_deterministic
from featbench.diskspace import check_free_space, disk_full_as_error
from featbench.distributed import DistEnv, dist_env, run_sharded
from featbench.encoders import Encoder, ViewTransform, load_rgb, model_label, sha256_json, weights_label
from featbench.errors import FeatbenchError, FingerprintMismatch
from featbench.extract_spec import (  # noqa: F401  (the argument helpers keep their featbench.extract names)
    DTYPES, STANDARD_SHOTS, TRAIN_ROWS, ExtractSpec, dataset_name, expand_view_shots, parse_view_scale,
    parse_view_scales,
)
from featbench.extract_plan import (  # noqa: F401  (unserved keeps its featbench.extract name)
    Plan, apply_shard, index_sha, make_plan, restrict_plan, unserved,
)
from featbench.prompts import read_classnames, read_templates
from featbench.texttower import cache_record


# ----------------------------------------------------------------------------------------------------
# image loading (runs in DataLoader workers)
# ----------------------------------------------------------------------------------------------------
class _Blocks:
    """A map-style dataset over the pending blocks of one task: item = (task, block, images tensor, bad list).

    Each image's tensor depends only on its path (test transform) or (path, view) (augmented views),
    never on which worker loads it or what else is in the block.
    """

    def __init__(self, root, relpaths: list[str], task, blocks: list[int], transform, view_transform=None, views: int = 0, image_size: int = 224,
                 border: int = 0, name: str = ""):
        self.name = name
        self.root = Path(root)
        self.relpaths = relpaths
        self.task = task
        self.blocks = blocks
        self.transform = transform
        self.view_transform = view_transform
        self.views = views
        self.image_size = image_size
        self.border = int(border)  # pixels cut from each side before any transform (ObjectNet's red frame)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i):
        import torch

        b = self.blocks[i]
        start, stop = self.task.bounds(b)
        tensors, bad = [], []
        per = max(self.views, 1)
        for pos in range(start, stop):
            rel = self.relpaths[pos]
            try:
                img = load_rgb(self.root / rel)
            except Exception as err:  # unreadable/corrupt/missing: reported by the main process
                msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                bad.append((pos, rel, msg[:200]))
                tensors.extend([torch.zeros(3, self.image_size, self.image_size)] * per)
                continue
            if self.border:
                img = crop_border(img, self.border)
            if self.views:
                tensors.extend(self.view_transform(img, rel, v) for v in range(self.views))
            else:
                tensors.append(self.transform(img))
        return self.name, b, torch.stack(tensors), bad


def crop_border(img, border: int):
    """Cut ``border`` pixels from every side of a PIL image (ObjectNet's 1-pixel red frame)."""
    w, h = img.size
    if w <= 2 * border or h <= 2 * border:
        return img
    return img.crop((border, border, w - border, h - border))


def _worker_init(_):
    import torch

    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------------
# extraction: spec -> request (plan, encoder, identity) -> up to date | resume or create -> encode -> finalise
# ----------------------------------------------------------------------------------------------------
def extract(
    dataset: str,
    root,
    *,
    model: str = "RN50",
    pretrained: str = "openai",
    splits: Sequence[str] = ("train", "val", "test"),
    views: int = 10,
    view_shots: int | Sequence[int] = (1, 2, 4, 8, 16),
    seeds: Sequence[int] = (1, 2, 3),
    train_rows: str = "all",
    all_views: bool = False,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    dtype: str = "float16",
    cache_dir="cache",
    out=None,
    overwrite: bool = False,
    skip_bad_images: bool = False,
    manifest=None,
    classname_style: str = "clean",
    view_scale=(0.5, 1.0),
    view_scales=None,
    pre_projection: bool = False,
    templates: str | Path | Sequence[str] | None = None,
    classnames: str | Path | Sequence[str] | None = None,
    progress: bool = True,
    view_seed: int = 0,
    name: str | None = None,
    shard: tuple[int, int] | None = None,
    log: Callable[[str], None] | None = None,
    _after_block: Callable[[str, int], None] | None = None,
) -> Path:
    """Encode `dataset` with an open_clip model into a schema-v1 cache and return its path.

    Resumes a matching `<cache>.partial`; returns an existing matching cache untouched ("up to date");
    refuses a cache or partial made with another encoder or other content-changing arguments unless
    `overwrite`. `log` receives one-line messages (default: print when progress is on).
    shard=(rank, world): write only rank's share of the rows (a part file for `featbench.merge`).
    templates / classnames: a file (see featbench.prompts) or a list replacing the dataset's prompt templates /
    class names; both are part of the cache's fingerprint.
    view_scales (e.g. "0.5,1:0.08,1"): one view set per crop scale (replaces view_scale): Tip-Adapter, GDA,
    LP++ and ProLIP use (0.5, 1), TaskRes, CLAP, CoOp and CLIP-Adapter Dassl's (0.08, 1).
    batch_size / workers: None takes the device's defaults (64 and 0 on a CPU; 256 and min(16, cores) on CUDA).
    """
    spec = ExtractSpec.from_kwargs(
        dataset, root, model=model, pretrained=pretrained, splits=splits, views=views, view_shots=view_shots,
        seeds=seeds, train_rows=train_rows, all_views=all_views, batch_size=batch_size, workers=workers,
        device=device, dtype=dtype, cache_dir=cache_dir, out=out, overwrite=overwrite,
        skip_bad_images=skip_bad_images, manifest=manifest, classname_style=classname_style,
        view_scale=view_scale, view_scales=view_scales, pre_projection=pre_projection, templates=templates,
        classnames=classnames, progress=progress, view_seed=view_seed, name=name, shard=shard,
    )
    return run_extract(spec, log=log, after_block=_after_block)


def run_extract(spec: ExtractSpec, *, log: Callable[[str], None] | None = None,
                after_block: Callable[[str, int], None] | None = None) -> Path:
    """Carry out one extraction (see `extract`). `after_block(task, block)` runs after every block written
    (tests use it to kill a run part-way)."""
    say = log or (print if spec.progress else (lambda _m: None))
    use_deterministic(spec.device, warn_only=True)  # before the encoder starts CUDA: same images, same bits
    request = prepare(spec, say)
    if request.target.exists() and not spec.overwrite:
        return _reuse(request, say)
    state: dict = {}
    with disk_full_as_error(request.target.parent, request.target.name,
                            lambda: _still_to_write(request, state.get("writer")),
                            then="rerun the same command once there is room: it resumes from the blocks already written"):
        state["writer"] = writer = _open_partial(request, say)
        return _encode_and_finalise(request, writer, after_block, say)


def run_extract_sharded(spec: ExtractSpec, *, log: Callable[[str], None] | None = None, env: DistEnv | None = None) -> Path:
    """`run_extract` under torchrun: every rank encodes its shard of `spec` into a part file and rank 0 merges
    them (`featbench.distributed.run_sharded`); outside torchrun just `run_extract(spec)`."""
    env = env or dist_env()
    if not env.distributed:
        return run_extract(spec, log=log)

    def one(**changes) -> Path:  # the rank's part file, shard, device and progress bar
        return run_extract(spec.replace(**changes), log=log)

    final = spec.out or target_path(spec.dataset, spec.model, spec.pretrained, spec.cache_dir, name=spec.name)
    return run_sharded(one, final, device=spec.device, overwrite=spec.overwrite, env=env, progress=spec.progress)


@dataclass
class Request:
    """A spec resolved against its dataset and encoder: the rows to encode, the identity of the work
    (encoder fingerprint + extraction job) and the cache it goes to."""

    spec: ExtractSpec
    ds: Any
    plan: Plan
    enc: Any
    view_sets: list  # (name, crop scale, transform): /splits/train/views first, then views_2, ...
    preprocess: dict
    fingerprint: str
    job: dict
    target: Path
    planned_bytes: int = 0  # what a new partial file holds at least (set when it is laid out)

    def index_sha_for(self, splits: list[str]) -> str:
        """The index digest an older cache extracted with `splits` recorded."""
        return index_sha(restrict_plan(self.plan, self.ds, splits))

    def served_by(self, path: Path) -> dict:
        """The job of the finished cache at `path`, when that cache can serve this request; otherwise
        FingerprintMismatch (or FeatbenchError for a file that is no cache) saying why and what to pass."""
        fp, old_job = C.read_identity(path)
        if fp is None:
            raise FeatbenchError(f"{path} exists but is not a readable featbench cache; pass --overwrite to rebuild it or --out another file")
        if fp != self.fingerprint:
            raise FingerprintMismatch(
                f"{path} was built with a different encoder/preprocessing (fingerprint {fp[:12]} vs {self.fingerprint[:12]}); "
                "pass --overwrite to rebuild it or --out another file"
            )
        diff = unserved(old_job, self.job, self.index_sha_for)
        if diff:
            raise FingerprintMismatch(
                f"{path} was extracted with arguments that cannot serve this request ({'; '.join(diff)}); "
                "pass --overwrite to rebuild it or --out another file"
            )
        self._check_shard(path)
        return old_job

    def _check_shard(self, path: Path) -> None:
        label = self.spec.shard_label
        if label is None:
            return
        with C.Cache(path) as done:
            old_shard = done.attrs.get("shard")
        if old_shard != label:
            raise FingerprintMismatch(
                f"{path} is the part of shard {old_shard or 'none'}, not {label}; rerun with its original "
                "torchrun world size and --batch-size, or pass --overwrite to rebuild it"
            )


# -- the request: plan, encoder, identity -------------------------------------------------------------
def prepare(spec: ExtractSpec, say: Callable[[str], None]) -> Request:
    """Load the dataset index and the encoder, plan the rows and compute what identifies the work."""
    ds = load_request_dataset(spec)
    plan = plan_rows(spec, ds, say)
    enc, view_sets = load_encoder(spec)
    preprocess = _preprocess(spec, ds, enc)
    fingerprint = C.compute_fingerprint(enc.name, enc.pretrained_label, preprocess, enc.checkpoint_sha256)
    if spec.pre_projection and not enc.supports_pre_projection():
        raise FeatbenchError(f"--pre-projection: not supported for {enc.name} (only open_clip ViT and ModifiedResNet image towers)")
    target = spec.out or C.default_cache_path(spec.cache_dir, enc.name, enc.pretrained_label, ds.name)
    return Request(spec=spec, ds=ds, plan=plan, enc=enc, view_sets=view_sets, preprocess=preprocess,
                   fingerprint=fingerprint, job=_job(spec, ds, plan), target=Path(target))


def load_request_dataset(spec: ExtractSpec):
    """The dataset index with the spec's templates, class names and cache name applied."""
    templates = spec.templates
    if isinstance(templates, (str, Path)):
        templates = read_templates(templates)
    ds = load_dataset(spec.dataset, spec.root, manifest=spec.manifest, classname_style=spec.classname_style,
                      templates=None if templates is None else list(templates))
    if isinstance(spec.classnames, (str, Path)):
        ds.classnames = read_classnames(spec.classnames, ds.classnames, getattr(ds, "class_ids", None) or [])
    elif spec.classnames is not None:
        if len(spec.classnames) != len(ds.classnames):
            raise FeatbenchError(f"--classnames: {len(spec.classnames)} names for {len(ds.classnames)} classes")
        ds.classnames = list(spec.classnames)
    ds.name = spec.cache_name
    return ds


def plan_rows(spec: ExtractSpec, ds, say: Callable[[str], None]) -> Plan:
    """Which rows of which splits get plain features and views (a torchrun rank: only its share)."""
    plan = make_plan(ds, splits=list(spec.splits), views=spec.views, view_shots=spec.view_shots,
                     seeds=list(spec.seeds), train_rows=spec.train_rows, all_views=spec.all_views)
    for n in plan.notes:
        say(f"note: {n}")
    if spec.shard is not None:
        plan = apply_shard(plan, spec.shard[0], spec.shard[1], spec.feature_block, spec.view_block(plan.views))
    return plan


def load_encoder(spec: ExtractSpec):
    """The encoder and one view set per crop scale; the first is the encoder's own view transform."""
    scales = spec.view_scales
    enc = Encoder(spec.model, spec.pretrained, spec.device, view_scale=scales[0], view_seed=spec.view_seed)
    view_sets = [(C.VIEW_SET_NAMES[0], scales[0], enc.view_transform)]
    for i, sc in enumerate(scales[1:], start=1):
        vt = ViewTransform(enc.image_size, enc.mean, enc.std, scale=sc, base_seed=spec.view_seed + 7919 * i)
        view_sets.append((C.VIEW_SET_NAMES[i], sc, vt))
    return enc, view_sets


def _preprocess(spec: ExtractSpec, ds, enc) -> dict:
    """What the fingerprint covers besides the weights: image preprocessing and the text side."""
    preprocess = {
        **enc.preprocess_info(),
        "classname_style": spec.classname_style,
        "templates_sha256": sha256_json(list(ds.templates)),
    }
    if spec.classnames is not None:  # user class names: another text side, another fingerprint
        preprocess["classnames_sha256"] = sha256_json(list(ds.classnames))
    if len(spec.view_scales) > 1:  # single-scale caches keep their fingerprint and job identity
        preprocess["view_scales"] = [list(sc) for sc in spec.view_scales]
    return preprocess


def _job(spec: ExtractSpec, ds, plan: Plan) -> dict:
    """The extraction job recorded in the cache: what `unserved` compares a later request against."""
    job = {
        "dataset": ds.name,
        "splits": sorted(plan.splits),
        "index_sha256": index_sha(plan),
        "classnames_sha256": sha256_json(list(ds.classnames)),
        "views": plan.views,
        "view_shots": list(spec.view_shots),
        "seeds": list(spec.seeds),
        "train_rows": spec.train_rows,
        "all_views": spec.all_views,
        "dtype": spec.dtype,
        "pre_projection": spec.pre_projection,
    }
    if getattr(ds.info, "border_crop", 0):
        job["border_crop"] = int(ds.info.border_crop)
    if len(spec.view_scales) > 1:
        job["view_scales"] = [list(sc) for sc in spec.view_scales]
    return job


# -- an existing final cache ----------------------------------------------------------------------------
def _reuse(request: Request, say: Callable[[str], None]) -> Path:
    """Return the existing cache when it serves the request (else the refusal from `Request.served_by`)."""
    target = request.target
    old_job = request.served_by(target)
    C.remove_stale_partial(target, request.fingerprint, old_job)  # killed after the rename, before the partial went
    say(f"up to date: {target}" if old_job == json.loads(json.dumps(request.job)) else
        f"up to date: {target} (its extraction covers this request)")
    return target


# -- the partial file: resume or create -------------------------------------------------------------------
def _open_partial(request: Request, say: Callable[[str], None]):
    """A writer on `<target>.partial`: the same job's partial resumed, or a new one laid out."""
    spec = request.spec
    writer = C.CacheWriter(request.target, fingerprint=request.fingerprint, job=request.job, shard=spec.shard_label)
    if writer.try_resume(overwrite=spec.overwrite):
        say(f"resuming {writer.partial}")
        return writer
    enc, ds = request.enc, request.ds
    text, text_pre = enc.encode_text(ds.classnames, ds.templates, pre_projection=spec.pre_projection)
    _fits_dtype(request, "text features", text)
    if spec.pre_projection:
        _fits_dtype(request, "pre-projection text features", text_pre)
    arrays, extra, tasks, split_meta = _layout(request, text_pre)
    tower, tower_arrays = cache_record(enc)  # what prompt learners need to rebuild this text tower
    extra.update(tower_arrays)
    request.planned_bytes = _layout_bytes(request, arrays) + C.expected_bytes(extra.values(), np.float32)
    check_free_space(request.target.parent, request.planned_bytes, request.target.name, "nothing was written")
    writer.create(
        attrs=_attrs(request, tower), classnames=ds.classnames, splits=split_meta, text_features=text,
        templates=ds.templates, text_features_pre=text_pre if spec.pre_projection else None,
        arrays=arrays, extra=extra, tasks=tasks, dtype=spec.dtype,
    )
    try:
        for vname, sc, _ in request.view_sets:  # each view set records its crop scale
            for suffix in ("", "_pre"):
                writer.set_attr(f"/splits/train/{vname}{suffix}", "scale", list(sc))
    except BaseException:  # a resume would not add them: start afresh instead
        writer.discard()
        raise
    return writer


def _fits_dtype(request: Request, what: str, arr) -> None:
    """Refuse features that --dtype float16 would store as Inf (as `featbench import` does)."""
    C.require_fits_dtype(arr, request.spec.dtype, f"{request.enc.name} {what}",
                         "extract with --dtype float32 (this float16 extraction is not kept)")


def _layout_bytes(request: Request, arrays: dict | None = None) -> int:
    """Bytes a new partial file holds at least: its preallocated feature arrays (``arrays`` of its `_layout`,
    laid out again when not given) and the text features."""
    if arrays is None:
        arrays = _layout(request, None)[0]
    item = np.dtype(np.float16 if request.spec.dtype == "float16" else np.float32).itemsize
    text = len(request.ds.templates) * len(request.ds.classnames) * request.enc.embed_dim * item
    return text + sum(int(np.prod(shape)) * np.dtype(dt).itemsize for shape, dt in arrays.values())


def _still_to_write(request: Request, writer) -> int:
    """About how many bytes the extraction still has to write: all of a new file, else its pending blocks (the
    partial already holds everything else, its feature arrays preallocated)."""
    if writer is None or not writer.tasks or not writer.partial.exists():
        return request.planned_bytes or _layout_bytes(request)
    blocks_bytes = _layout_bytes(request)
    try:
        done, blocks = writer.blocks_done()
    except Exception:  # the file is unreadable after the failure: count every block
        return blocks_bytes
    return int(blocks_bytes * (blocks - done) / blocks) if blocks else 0


def _layout(request: Request, text_pre) -> tuple[dict, dict, list, dict]:
    """(arrays to preallocate, extra datasets, block tasks, split index) of a new partial file."""
    spec, plan, d = request.spec, request.plan, request.enc.embed_dim
    dt = np.float16 if spec.dtype == "float16" else np.float32
    extra, pre_dim = _projections(request.enc, text_pre) if spec.pre_projection else ({}, None)
    arrays, tasks, split_meta = {}, [], {}
    for s, items in plan.splits.items():
        split_meta[s] = {"paths": [p for p, _ in items], "labels": [y for _, y in items], "rows": plan.feature_rows[s]}
        m = plan.n_features(s)
        tasks.append(_task(arrays, f"{s}/features", f"/splits/{s}/features", (m,), d, pre_dim, dt, spec.feature_block))
    if plan.views and (plan.view_rows or spec.shard is None):
        k = len(plan.view_rows)
        extra["/splits/train/view_rows"] = np.asarray(plan.view_rows, dtype=np.int64)
        for vname, _, _ in request.view_sets:
            tasks.append(_task(arrays, f"train/{vname}", f"/splits/train/{vname}", (plan.views, k), d, pre_dim, dt,
                               spec.view_block(plan.views), axis=1))
    return arrays, extra, tasks, split_meta


def _projections(enc, text_pre) -> tuple[dict, int]:
    """The final projections (stored with pre-projection features) and the pre-projection width."""
    w, b = enc.image_projection()
    extra = {"/model/image_projection": w}
    if b is not None:
        extra["/model/image_projection_bias"] = b
    tp = enc.text_projection()
    if tp is not None and text_pre is not None:
        extra["/model/text_projection"] = tp
    return extra, int(w.shape[0])


def _task(arrays: dict, name: str, target: str, lead: tuple[int, ...], d: int, pre_dim: int | None, dt, block: int,
          axis: int = 0):
    """One block task over `target` (and `target`_pre with pre-projection features); adds their arrays."""
    targets = [target]
    arrays[target] = ((*lead, d), dt)
    if pre_dim is not None:
        targets.append(f"{target}_pre")
        arrays[f"{target}_pre"] = ((*lead, pre_dim), dt)
    return C.BlockTask(name=name, n=lead[axis], block=block, targets=tuple(targets), axis=axis)


def _attrs(request: Request, tower: dict) -> dict:
    """The cache's root attributes (no creation time: finalisation stamps it)."""
    enc, ds = request.enc, request.ds
    attrs = C.base_attrs(
        model=enc.name, pretrained=enc.pretrained_label, dataset=ds.name, embed_dim=enc.embed_dim,
        logit_scale=enc.logit_scale, fingerprint=request.fingerprint, preprocess=request.preprocess,
        checkpoint_sha256=enc.checkpoint_sha256 or "", **({"text_tower": tower} if tower else {}),
    )
    attrs.pop("created", None)
    if ds.class_map is not None:  # ObjectNet: per class, the ImageNet class names it stands for
        attrs["class_map"] = json.dumps(ds.class_map)
    return attrs


# -- encode the pending blocks, then finalise --------------------------------------------------------------
def _encode_and_finalise(request: Request, writer, after_block, say: Callable[[str], None]) -> Path:
    """Encode every pending block, then compact and rename the partial into place."""
    try:
        _run_tasks(writer, request, after_block)
        row_sets = {f"{s}/features": (f"/splits/{s}/rows", s) for s in request.plan.splits}
        for vname, _, _ in request.view_sets:
            row_sets[f"train/{vname}"] = ("/splits/train/view_rows", "train")
        path, skipped = writer.finalize(row_sets=row_sets)
    except C.DtypeRangeError:
        writer.discard()  # float16 can never hold these features: a rerun with --dtype float32 starts afresh
        raise
    finally:
        writer.close()
    if skipped:
        say(f"skipped {len(skipped)} unreadable image(s) (listed in /skipped of the cache), e.g. {skipped[0]}")
    return Path(path)


def _block_jobs(writer, request: Request) -> list[tuple[str, list[str], int, Any]]:
    """(task name, relative paths of its rows, views per row (0: plain features), view transform) per task."""
    plan = request.plan
    jobs = []
    for s in plan.splits:
        jobs.append((f"{s}/features", [plan.splits[s][r][0] for r in plan.feature_row_list(s)], 0, None))
    for vname, _, vt in request.view_sets:
        if f"train/{vname}" in writer.tasks:
            jobs.append((f"train/{vname}", [plan.splits["train"][r][0] for r in plan.view_rows], plan.views, vt))
    return jobs


def _run_tasks(writer, request: Request, after_block) -> None:
    jobs = _block_jobs(writer, request)
    pending = {name: writer.pending_blocks(name) for name, _, _, _ in jobs}
    total = 0
    for name, _, v, _ in jobs:
        t = writer.tasks[name]
        total += sum(t.bounds(b)[1] - t.bounds(b)[0] for b in pending[name]) * max(v, 1)
    sources = [_source(writer, request, name, rel, pending[name], v, vt) for name, rel, v, vt in jobs if pending[name]]
    bar = _Progress(total, enabled=request.spec.progress)
    try:
        if sources:
            _encode_blocks(writer, request, sources, bar, after_block)
    finally:
        bar.close()


def _source(writer, request: Request, name: str, rel: list[str], blocks: list[int], v: int, vt) -> _Blocks:
    """The pending `blocks` of one task as a dataset (views when `v`)."""
    ds, enc = request.ds, request.enc
    return _Blocks(ds.root, rel, writer.tasks[name], blocks, enc.test_transform, vt if v else None, views=v,
                   image_size=enc.image_size, border=getattr(ds.info, "border_crop", 0) or 0, name=name)


def loader_options(workers: int, device: str) -> dict:
    """DataLoader options: pinned batches for a GPU; with workers, four blocks prefetched per worker."""
    opts = {"num_workers": workers, "pin_memory": str(device).startswith("cuda"), "persistent_workers": False}
    if workers:
        opts.update(worker_init_fn=_worker_init, prefetch_factor=4)
    return opts


def _encode_blocks(writer, request: Request, sources: list[_Blocks], bar, after_block) -> None:
    """Load, encode and write every pending block, in task order, through one DataLoader: its workers start
    once for the whole extraction (persistent across tasks) and keep decoding while the encoder runs."""
    from torch.utils.data import ConcatDataset, DataLoader

    spec, enc, ds = request.spec, request.enc, request.ds
    views = {src.name: src.views for src in sources}
    loader = DataLoader(ConcatDataset(sources), batch_size=None, shuffle=False,
                        **loader_options(spec.workers, enc.device))
    current = None
    for name, b, x, bad in loader:
        if name != current:
            bar.describe(name)
            current = name
        if bad and not spec.skip_bad_images:
            pos, relpath, msg = bad[0]
            raise FeatbenchError(
                f"cannot read image {Path(ds.root) / relpath} ({msg}); fix or remove it, or pass --skip-bad-images"
            )
        feats, pre = enc.encode_images(x, pre_projection=spec.pre_projection)
        data = [feats.cpu().numpy()] + ([pre.cpu().numpy()] if spec.pre_projection else [])
        for what, arr in zip(("image features", "pre-projection image features"), data):
            _fits_dtype(request, f"{what} of {name} (block {b})", arr)
        v = views[name]
        if v:  # [n*V, D] (image-major) -> [V, n, D]
            data = [a.reshape(-1, v, a.shape[-1]).transpose(1, 0, 2) for a in data]
        writer.write_block(name, b, data, bad=[p for p, _, _ in bad])
        bar.advance(int(x.shape[0]))
        if after_block is not None:
            after_block(name, b)


class _Progress:
    """A rich progress bar with images/s, or nothing."""

    def __init__(self, total: int, enabled: bool):
        self.enabled = enabled and total > 0
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._p = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} img/s"), TimeElapsedColumn(), TimeRemainingColumn(),
            transient=False,
        )
        self._p.start()
        self._t0 = time.perf_counter()
        self._done = 0
        self._task = self._p.add_task("encoding", total=total, rate="-")

    def describe(self, text: str) -> None:
        if self.enabled:
            self._p.update(self._task, description=text)

    def advance(self, n: int) -> None:
        if self.enabled:
            self._done += n
            rate = self._done / max(time.perf_counter() - self._t0, 1e-9)
            self._p.update(self._task, advance=n, rate=f"{rate:,.1f}")

    def close(self) -> None:
        if self.enabled:
            self._p.stop()


def target_path(dataset: str, model: str, pretrained: str, cache_dir="cache", name: str | None = None) -> Path:
    """Where `extract` puts a cache by default, computed without loading the model (for torchrun ranks)."""
    return C.default_cache_path(cache_dir, model_label(model), weights_label(pretrained), dataset_name(dataset, name))
