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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from featbench.errors import FeatbenchError

STANDARD_SHOTS = (1, 2, 4, 8, 16)
TRAIN_ROWS = ("all", "fewshot")
DTYPES = ("float16", "float32")


# ----------------------------------------------------------------------------------------------------
# argument helpers (shared with the CLI)
# ----------------------------------------------------------------------------------------------------
def expand_view_shots(shots: int | Sequence[int]) -> tuple[int, ...]:
    """A single K means every standard shot count <= K plus K itself; a list is taken as given."""
    if isinstance(shots, int):
        shots = [shots]
    shots = [int(s) for s in shots]
    if any(s < 1 for s in shots):
        raise FeatbenchError(f"--view-shots must be positive integers, got {shots}")
    if len(shots) == 1:
        k = shots[0]
        return tuple(sorted({s for s in STANDARD_SHOTS if s <= k} | {k}))
    return tuple(sorted(set(shots)))


def parse_view_scale(value) -> tuple[float, float]:
    """'0.5,1' -> (0.5, 1.0), validated (0 < lo <= hi <= 1)."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
    else:
        parts = list(value)
    try:
        lo, hi = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise FeatbenchError(f"--view-scale expects two numbers like 0.5,1 (min and max crop area fraction); got {value!r}") from None
    if not (0 < lo <= hi <= 1):
        raise FeatbenchError(f"--view-scale {lo},{hi}: need 0 < min <= max <= 1")
    return lo, hi


def parse_view_scales(value) -> tuple[tuple[float, float], ...]:
    """'0.5,1:0.08,1' (or a list of pairs) -> ((0.5, 1.0), (0.08, 1.0)): one view set per crop scale, in order;
    the first is stored as /splits/train/views, the others as views_2, views_3, views_4."""
    from featbench.cache import VIEW_SET_NAMES

    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(":") if p]
    else:
        parts = list(value)
    scales = tuple(parse_view_scale(p) for p in parts)
    if not scales:
        raise FeatbenchError(f"--view-scales expects crop scales like 0.5,1:0.08,1; got {value!r}")
    if len(set(scales)) != len(scales):
        raise FeatbenchError(f"--view-scales {value!r}: each scale once")
    if len(scales) > len(VIEW_SET_NAMES):
        raise FeatbenchError(f"--view-scales: at most {len(VIEW_SET_NAMES)} view sets (got {len(scales)})")
    return scales


def apply_shard(plan: "Plan", rank: int, world: int, feat_block: int, view_block: int) -> "Plan":
    """Restrict a plan to rank's disjoint, non-padded share of every row list, cut on block boundaries so
    the rank forms exactly the batches a single process forms (same numbers, bit for bit)."""
    from featbench.distributed import shard_rows

    plan.feature_rows = {s: [int(r) for r in shard_rows(plan.feature_row_list(s), rank, world, feat_block)] for s in plan.splits}
    plan.view_rows = [int(r) for r in shard_rows(plan.view_rows, rank, world, view_block)]
    return plan


# ----------------------------------------------------------------------------------------------------
# the plan
# ----------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Which rows get what: split -> feature rows (None = all), train view rows, the job identity."""

    splits: dict[str, list[tuple[str, int]]]
    feature_rows: dict[str, list[int] | None]
    view_rows: list[int]
    views: int
    notes: list[str] = field(default_factory=list)

    def n_features(self, split: str) -> int:
        r = self.feature_rows[split]
        return len(self.splits[split]) if r is None else len(r)

    def feature_row_list(self, split: str) -> list[int]:
        r = self.feature_rows[split]
        return list(range(len(self.splits[split]))) if r is None else r


def make_plan(ds, *, splits, views, view_shots, seeds, train_rows, all_views) -> Plan:
    from featbench.fewshot import union_rows

    chosen: dict[str, list[tuple[str, int]]] = {}
    notes = []
    for s in splits:
        if s in ds.splits:
            chosen[s] = list(ds.splits[s])
        else:
            notes.append(f"dataset {ds.name} has no {s} split; skipped")
    if not chosen:
        raise FeatbenchError(f"--splits {','.join(splits)}: dataset {ds.name} has none of these (it has {', '.join(ds.splits)})")
    feature_rows: dict[str, list[int] | None] = {s: None for s in chosen}
    view_rows: list[int] = []
    if "train" in chosen:
        train_labels = [y for _, y in chosen["train"]]
        val_labels = [y for _, y in ds.splits["val"]] if "val" in ds.splits else None
        union, _ = union_rows(train_labels, val_labels, view_shots, seeds)
        union = [int(r) for r in union]
        if train_rows == "fewshot":
            # plain features also for the held-out selection rows of datasets without a val split (ImageNet)
            with_sel, _ = union_rows(train_labels, val_labels, view_shots, seeds, with_holdout=True)
            feature_rows["train"] = [int(r) for r in with_sel]
        if views > 0:
            view_rows = list(range(len(train_labels))) if all_views else union
    return Plan(splits=chosen, feature_rows=feature_rows, view_rows=view_rows, views=int(views) if view_rows else 0, notes=notes)


def _restrict(plan: Plan, ds, splits) -> Plan:
    """The plan's index over `splits` (as an older cache with those splits recorded it)."""
    return Plan(splits={s: list(ds.splits[s]) for s in splits if s in ds.splits}, feature_rows={}, view_rows=[], views=0)


def unserved(old: dict | None, new: dict, index_sha_for: Callable[[list[str]], str] | None = None) -> list[str]:
    """Why an existing cache extracted as `old` cannot serve the request `new` ([] = it can).

    A cache serves a request when it holds at least what the request asks for, computed the same way: the
    same dataset index, class names and dtype; a superset of the splits; every train row (``train_rows all``)
    or the same selection; pre-projection features if asked; and the same number of views for a superset of
    the (shots, seeds) subsets (or of every train row). A request without views for a training split is not
    served by a cache with views, since heads would train on them.
    """
    old = dict(old or {})
    out = []
    for key in ("dataset", "classnames_sha256", "dtype"):
        if old.get(key) != new.get(key):
            out.append(f"{key} {old.get(key)!r} vs {new.get(key)!r}")
    old_splits, new_splits = list(old.get("splits") or []), list(new.get("splits") or [])
    if not set(new_splits) <= set(old_splits):
        out.append(f"splits {','.join(old_splits)} lack {','.join(sorted(set(new_splits) - set(old_splits)))}")
    elif old.get("index_sha256") != new.get("index_sha256"):
        same = set(new_splits) != set(old_splits) and index_sha_for is not None and \
            index_sha_for(sorted(old_splits)) == old.get("index_sha256")
        if not same:
            out.append("the dataset's image index changed")
    if old.get("train_rows") != new.get("train_rows") and old.get("train_rows") != "all" and "train" in new_splits:
        out.append(f"train_rows {old.get('train_rows')} vs {new.get('train_rows')}")
    if new.get("pre_projection") and not old.get("pre_projection"):
        out.append("no pre-projection features")
    training = "train" in new_splits
    if int(new.get("views") or 0) == 0:
        if training and int(old.get("views") or 0) > 0:
            out.append(f"it has {old.get('views')} views, the request none")
    elif int(old.get("views") or 0) != int(new["views"]):
        out.append(f"views {old.get('views')} vs {new['views']}")
    elif not old.get("all_views"):
        if new.get("all_views"):
            out.append("views only for the few-shot rows, not all_views")
        else:
            out += _lacks(old, new)
    if training and old.get("train_rows") == "fewshot" and not any(m.startswith(("view_shots", "seeds")) for m in out):
        out += _lacks(old, new)  # its plain train features cover only the (shots, seeds) subsets it was made for
    return out


def _lacks(old: dict, new: dict) -> list[str]:
    out = []
    for key in ("view_shots", "seeds"):
        lack = sorted(set(new.get(key) or []) - set(old.get(key) or []))
        if lack:
            out.append(f"{key} lack {','.join(map(str, lack))}")
    return out


def _index_sha(plan: Plan) -> str:
    import hashlib

    h = hashlib.sha256()
    for s in sorted(plan.splits):
        h.update(s.encode())
        for p, y in plan.splits[s]:
            h.update(f"{p}\x00{int(y)}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# image loading (runs in DataLoader workers)
# ----------------------------------------------------------------------------------------------------
class _Blocks:
    """A map-style dataset over the pending blocks of one task: item = (block, images tensor, bad list).

    Each image's tensor depends only on its path (test transform) or (path, view) (augmented views),
    never on which worker loads it or what else is in the block.
    """

    def __init__(self, root, relpaths: list[str], task, blocks: list[int], transform, view_transform=None, views: int = 0, image_size: int = 224,
                 border: int = 0):
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

        from featbench.encoders import load_rgb

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
        return b, torch.stack(tensors), bad


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
# extraction
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
    batch_size: int = 64,
    workers: int = 0,
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
    """
    say = log or (print if progress else (lambda _m: None))
    # -- validate arguments (cheap, before any heavy import) -----------------------------------------
    splits = [s for s in splits]
    bad_splits = [s for s in splits if s not in ("train", "val", "test")]
    if bad_splits or not splits:
        raise FeatbenchError(f"--splits: expected a comma list of train,val,test; got {','.join(splits) or 'nothing'}")
    if train_rows not in TRAIN_ROWS:
        raise FeatbenchError(f"--train-rows {train_rows}: expected all or fewshot")
    if dtype not in DTYPES:
        raise FeatbenchError(f"--dtype {dtype}: expected float16 or float32")
    if int(views) < 0:
        raise FeatbenchError(f"--views {views}: expected 0 (no views) or a positive number")
    if int(batch_size) < 1:
        raise FeatbenchError(f"--batch-size {batch_size}: expected a positive integer")
    if int(workers) < 0:
        raise FeatbenchError(f"--workers {workers}: expected 0 or more")
    if classname_style not in ("clean", "raw"):
        raise FeatbenchError(f"--classname-style {classname_style}: expected clean or raw")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise FeatbenchError("--seeds is empty; give comma-separated integers like 1,2,3")
    view_shots = expand_view_shots(view_shots)
    scales = parse_view_scales(view_scales) if view_scales is not None else (parse_view_scale(view_scale),)
    view_scale = scales[0]

    from featbench.datasets import load_dataset
    from featbench.prompts import check_template, read_classnames, read_templates

    if templates is not None:
        templates = (read_templates(templates) if isinstance(templates, (str, Path))
                     else [check_template(t, "--templates") for t in templates])
    ds = load_dataset(dataset, root, manifest=manifest, classname_style=classname_style, templates=templates)
    if classnames is not None:
        if isinstance(classnames, (str, Path)):
            ds.classnames = read_classnames(classnames, ds.classnames, getattr(ds, "class_ids", None) or [])
        elif len(classnames) != len(ds.classnames):
            raise FeatbenchError(f"--classnames: {len(classnames)} names for {len(ds.classnames)} classes")
        else:
            ds.classnames = [str(c) for c in classnames]
    ds.name = dataset_name(dataset, name)
    plan = make_plan(ds, splits=splits, views=int(views), view_shots=view_shots, seeds=seeds,
                     train_rows=train_rows, all_views=all_views)
    for n in plan.notes:
        say(f"note: {n}")
    feat_block = int(batch_size)
    view_block = max(1, int(batch_size) // max(plan.views, 1))
    shard_label = None
    if shard is not None:
        plan = apply_shard(plan, int(shard[0]), int(shard[1]), feat_block, view_block)
        # a shard's rows depend on the batch size (shards are cut on block boundaries): part of its identity
        shard_label = f"{int(shard[0])}/{int(shard[1])} batch {int(batch_size)}"

    import numpy as np

    from featbench import cache as C
    from featbench.encoders import Encoder, ViewTransform, sha256_json

    enc = Encoder(model, pretrained, device, view_scale=view_scale, view_seed=view_seed)
    # one view set per crop scale; the first is the encoder's (and /splits/train/views, as before view sets)
    view_sets = [(C.VIEW_SET_NAMES[0], view_scale, enc.view_transform)]
    for i, sc in enumerate(scales[1:], start=1):
        vt = ViewTransform(enc.image_size, enc.mean, enc.std, scale=sc, base_seed=int(view_seed) + 7919 * i)
        view_sets.append((C.VIEW_SET_NAMES[i], sc, vt))
    preprocess = {
        **enc.preprocess_info(),
        "classname_style": classname_style,
        "templates_sha256": sha256_json(list(ds.templates)),
    }
    if classnames is not None:  # user class names: another text side, another fingerprint
        preprocess["classnames_sha256"] = sha256_json(list(ds.classnames))
    if len(scales) > 1:  # single-scale caches keep their fingerprint and job identity
        preprocess["view_scales"] = [list(sc) for sc in scales]
    fingerprint = C.compute_fingerprint(enc.name, enc.pretrained_label, preprocess, enc.checkpoint_sha256)
    if pre_projection and not enc.supports_pre_projection():
        raise FeatbenchError(f"--pre-projection: not supported for {enc.name} (only open_clip ViT and ModifiedResNet image towers)")
    job = {
        "dataset": ds.name,
        "splits": sorted(plan.splits),
        "index_sha256": _index_sha(plan),
        "classnames_sha256": sha256_json(list(ds.classnames)),
        "views": plan.views,
        "view_shots": list(view_shots),
        "seeds": seeds,
        "train_rows": train_rows,
        "all_views": bool(all_views),
        "dtype": dtype,
        "pre_projection": bool(pre_projection),
    }
    if getattr(ds.info, "border_crop", 0):
        job["border_crop"] = int(ds.info.border_crop)
    if len(scales) > 1:
        job["view_scales"] = [list(sc) for sc in scales]
    target = Path(out) if out else C.default_cache_path(cache_dir, enc.name, enc.pretrained_label, ds.name)

    # -- an existing final cache -----------------------------------------------------------------------
    if target.exists() and not overwrite:
        fp, old_job = C.read_identity(target)
        if fp is None:
            raise FeatbenchError(f"{target} exists but is not a readable featbench cache; pass --overwrite to rebuild it or --out another file")
        if fp != fingerprint:
            raise C.FingerprintMismatch(
                f"{target} was built with a different encoder/preprocessing (fingerprint {fp[:12]} vs {fingerprint[:12]}); "
                "pass --overwrite to rebuild it or --out another file"
            )
        diff = unserved(old_job, job, lambda splits: _index_sha(_restrict(plan, ds, splits)))
        if diff:
            raise C.FingerprintMismatch(
                f"{target} was extracted with arguments that cannot serve this request ({'; '.join(diff)}); "
                "pass --overwrite to rebuild it or --out another file"
            )
        if shard_label is not None:
            with C.Cache(target) as done:
                old_shard = done.attrs.get("shard")
            if old_shard != shard_label:
                raise C.FingerprintMismatch(
                    f"{target} is the part of shard {old_shard or 'none'}, not {shard_label}; rerun with its original "
                    "torchrun world size and --batch-size, or pass --overwrite to rebuild it"
                )
        C.remove_stale_partial(target, fingerprint, old_job)  # killed after the rename, before the partial went
        say(f"up to date: {target}" if old_job == json.loads(json.dumps(job)) else
            f"up to date: {target} (its extraction covers this request)")
        return target

    # -- the partial file: resume or create ------------------------------------------------------------
    writer = C.CacheWriter(target, fingerprint=fingerprint, job=job, shard=shard_label)
    resumed = writer.try_resume(overwrite=overwrite)
    dt = np.float16 if dtype == "float16" else np.float32
    d = enc.embed_dim
    if not resumed:
        text, text_pre = enc.encode_text(ds.classnames, ds.templates, pre_projection=pre_projection)
        arrays, extra, tasks = {}, {}, []
        split_meta = {}
        pre_dim = None
        if pre_projection:
            w, b = enc.image_projection()
            pre_dim = int(w.shape[0])
            extra["/model/image_projection"] = w
            if b is not None:
                extra["/model/image_projection_bias"] = b
            tp = enc.text_projection()
            if tp is not None and text_pre is not None:
                extra["/model/text_projection"] = tp
        for s, items in plan.splits.items():
            rows = plan.feature_rows[s]
            split_meta[s] = {"paths": [p for p, _ in items], "labels": [y for _, y in items], "rows": rows}
            m = plan.n_features(s)
            targets = [f"/splits/{s}/features"]
            arrays[targets[0]] = ((m, d), dt)
            if pre_projection:
                targets.append(f"/splits/{s}/features_pre")
                arrays[targets[1]] = ((m, pre_dim), dt)
            tasks.append(C.BlockTask(name=f"{s}/features", n=m, block=feat_block, targets=tuple(targets)))
        if plan.views and (plan.view_rows or shard is None):
            k = len(plan.view_rows)
            extra["/splits/train/view_rows"] = np.asarray(plan.view_rows, dtype=np.int64)
            for vname, _, _ in view_sets:
                targets = [f"/splits/train/{vname}"]
                arrays[targets[0]] = ((plan.views, k, d), dt)
                if pre_projection:
                    targets.append(f"/splits/train/{vname}_pre")
                    arrays[targets[1]] = ((plan.views, k, pre_dim), dt)
                tasks.append(C.BlockTask(name=f"train/{vname}", n=k, block=view_block, targets=tuple(targets), axis=1))
        from featbench.texttower import cache_record

        tower, tower_arrays = cache_record(enc)  # what prompt learners need to rebuild this text tower
        extra.update(tower_arrays)
        attrs = C.base_attrs(
            model=enc.name, pretrained=enc.pretrained_label, dataset=ds.name, embed_dim=d,
            logit_scale=enc.logit_scale, fingerprint=fingerprint, preprocess=preprocess,
            checkpoint_sha256=enc.checkpoint_sha256 or "", **({"text_tower": tower} if tower else {}),
        )
        attrs.pop("created", None)
        if ds.class_map is not None:  # ObjectNet: per class, the ImageNet class names it stands for
            attrs["class_map"] = json.dumps(ds.class_map)
        writer.create(
            attrs=attrs, classnames=ds.classnames, splits=split_meta, text_features=text,
            templates=ds.templates, text_features_pre=text_pre if pre_projection else None,
            arrays=arrays, extra=extra, tasks=tasks, dtype=dtype,
        )
        for vname, sc, _ in view_sets:  # each view set records its crop scale
            for suffix in ("", "_pre"):
                writer.set_attr(f"/splits/train/{vname}{suffix}", "scale", list(sc))
    else:
        say(f"resuming {writer.partial}")

    # -- encode the pending blocks ----------------------------------------------------------------------
    try:
        _run_tasks(writer, enc, ds, plan, workers=int(workers), skip_bad_images=skip_bad_images,
                   pre_projection=pre_projection, progress=progress, after_block=_after_block,
                   view_transforms={vname: vt for vname, _, vt in view_sets})
        row_sets = {f"{s}/features": (f"/splits/{s}/rows", s) for s in plan.splits}
        for vname, _, _ in view_sets:
            row_sets[f"train/{vname}"] = ("/splits/train/view_rows", "train")
        path, skipped = writer.finalize(row_sets=row_sets)
    finally:
        writer.close()
    if skipped:
        say(f"skipped {len(skipped)} unreadable image(s) (listed in /skipped of the cache), e.g. {skipped[0]}")
    return path


def _run_tasks(writer, enc, ds, plan: Plan, *, workers, skip_bad_images, pre_projection, progress, after_block,
               view_transforms=None):
    from torch.utils.data import DataLoader

    jobs = []
    for s in plan.splits:
        name = f"{s}/features"
        rel = [plan.splits[s][r][0] for r in plan.feature_row_list(s)]
        jobs.append((name, rel, 0, None))
    for vname, vt in (view_transforms or {"views": enc.view_transform}).items():
        if f"train/{vname}" in writer.tasks:
            rel = [plan.splits["train"][r][0] for r in plan.view_rows]
            jobs.append((f"train/{vname}", rel, plan.views, vt))
    pending = {name: writer.pending_blocks(name) for name, _, _, _ in jobs}
    total = 0
    for name, rel, v, _ in jobs:
        t = writer.tasks[name]
        total += sum(t.bounds(b)[1] - t.bounds(b)[0] for b in pending[name]) * max(v, 1)
    bar = _Progress(total, enabled=progress)
    try:
        for name, rel, v, vt in jobs:
            task = writer.tasks[name]
            blocks = pending[name]
            if not blocks:
                continue
            bar.describe(name)
            source = _Blocks(ds.root, rel, task, blocks, enc.test_transform, vt if v else None,
                             views=v, image_size=enc.image_size, border=getattr(ds.info, "border_crop", 0) or 0)
            loader = DataLoader(source, batch_size=None, shuffle=False, num_workers=workers,
                                worker_init_fn=_worker_init if workers else None,
                                pin_memory=enc.device.startswith("cuda"), persistent_workers=False)
            for b, x, bad in loader:
                if bad and not skip_bad_images:
                    pos, relpath, msg = bad[0]
                    raise FeatbenchError(
                        f"cannot read image {Path(ds.root) / relpath} ({msg}); fix or remove it, or pass --skip-bad-images"
                    )
                feats, pre = enc.encode_images(x, pre_projection=pre_projection)
                data = [feats.cpu().numpy()] + ([pre.cpu().numpy()] if pre_projection else [])
                if v:  # [n*V, D] (image-major) -> [V, n, D]
                    data = [a.reshape(-1, v, a.shape[-1]).transpose(1, 0, 2) for a in data]
                writer.write_block(name, b, data, bad=[p for p, _, _ in bad])
                bar.advance(int(x.shape[0]))
                if after_block is not None:
                    after_block(name, b)
    finally:
        bar.close()


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


def dataset_name(dataset: str, name: str | None) -> str:
    """The name a cache records: the catalog name, or for custom datasets (folder, csv) the required --name.

    Two custom datasets encoded by one model would otherwise share a cache path and result rows.
    """
    import re

    from featbench.datasets.catalog import dataset_info, list_datasets, resolve_name

    canonical = resolve_name(dataset)
    if dataset_info(canonical).group != "custom":
        if name is not None and name != canonical:
            raise FeatbenchError(f"--name only applies to custom datasets (folder, csv); {canonical} is always named {canonical}")
        return canonical
    if not name:
        raise FeatbenchError(f"--dataset {canonical} needs --name NAME (e.g. --name my-birds) so its cache path and result "
                             f"rows are distinct from other custom datasets'")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise FeatbenchError(f"--name {name[:80]!r}: use 1-64 letters, digits, '.', '_' or '-' (it names the cache file)")
    if name in list_datasets():
        raise FeatbenchError(f"--name {name}: that is a catalog dataset's name; pick a name of your own")
    return name


def target_path(dataset: str, model: str, pretrained: str, cache_dir="cache", name: str | None = None) -> Path:
    """Where `extract` puts a cache by default, computed without loading the model (for torchrun ranks)."""
    from featbench.cache import default_cache_path
    from featbench.encoders import model_label, weights_label

    return default_cache_path(cache_dir, model_label(model), weights_label(pretrained), dataset_name(dataset, name))
