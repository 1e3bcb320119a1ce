"""Fit-grid throughput: cells/s with `--jobs 1` vs `--jobs 2` on this machine, printed as a ratio.

A synthetic schema-v1 cache (C classes, D dims, views) and a grid of cheap-but-real cells: linear-probe (lpclip
C search), tip-adapter (alpha/beta search), tip-adapter-f and taskres with reduced epochs, over shots x seeds.
Both runs compute the same rows (checked). jobs=1 runs after a warm-up cell so it does not pay the one-off torch
imports; jobs=2 is timed twice: "cold" includes starting the loky workers (what a single `featbench fit`
invocation pays), "warm" reuses them.

    python benchmarks/grid_scaling.py [--classes 20] [--dim 256] [--seeds 1,2] [--epochs 20]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def make_cache(path: Path, n_classes: int, dim: int, n_views: int, seed: int = 0) -> Path:
    from featbench.cache import base_attrs, write_cache

    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, dim)).astype(np.float32)
    splits = {}
    for split, per in (("train", 20), ("val", 6), ("test", 40)):
        labels = np.repeat(np.arange(n_classes), per)
        labels = labels[rng.permutation(labels.size)]
        feats = means[labels] + 1.5 * rng.normal(size=(labels.size, dim)).astype(np.float32)
        splits[split] = {"paths": [f"{split}/{i}.jpg" for i in range(labels.size)], "labels": labels, "features": feats}
    n_train = splits["train"]["labels"].size
    base = means[splits["train"]["labels"]]
    views = np.stack([base + 1.5 * rng.normal(size=base.shape) for _ in range(n_views)]).astype(np.float32)
    text = np.stack([means + 0.8 * rng.normal(size=means.shape) for _ in range(4)]).astype(np.float32)
    attrs = base_attrs(model="synthetic", pretrained="none", dataset="caltech101", embed_dim=dim, logit_scale=100.0,
                       fingerprint="grid-scaling")
    return write_cache(path, attrs=attrs, classnames=[f"c{i}" for i in range(n_classes)], splits=splits,
                       text_features=text, templates=["{}"] * 4, views=views, view_rows=np.arange(n_train))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--shots", default="1,2,4,8,16")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--epochs", type=int, default=20, help="taskres / tip-adapter-f epochs (papers: 100-200 / 20)")
    args = ap.parse_args()

    from featbench.runner import run_fit

    shots = [int(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    heads = ["linear-probe", "tip-adapter", "tip-adapter-f", "taskres"]
    sets = {"taskres.epochs": args.epochs, "tip-adapter-f.epochs": max(1, args.epochs // 4)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = make_cache(tmp / "caltech101.h5", args.classes, args.dim, args.views)
        grid = dict(heads=heads, shots=shots, seeds=seeds, sets=sets, progress=False)
        n_cells = len(heads) * len(shots) * len(seeds)

        run_fit([cache], out=tmp / "warmup.jsonl", **{**grid, "shots": [1], "seeds": [99]})  # imports, first-call costs

        def timed(jobs: int, name: str):
            t0 = time.perf_counter()
            rows = run_fit([cache], out=tmp / f"{name}.jsonl", jobs=jobs, **grid)
            return time.perf_counter() - t0, rows

        t1, rows1 = timed(1, "j1")
        t2c, rows2 = timed(2, "j2cold")
        t2w, rows2w = timed(2, "j2warm")

    def stable(rows):
        return [{k: v for k, v in r.items() if k not in ("timestamp", "fit_seconds")} for r in rows]

    same = stable(rows1) == stable(rows2) == stable(rows2w)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"grid: {n_cells} cells = heads {','.join(heads)} x shots {args.shots} x seeds {args.seeds}; "
          f"C={args.classes} D={args.dim} views={args.views} epochs taskres={args.epochs} tip-f={sets['tip-adapter-f.epochs']}")
    print(f"cores: {os.cpu_count()}  load average (1 min) at end: {load:.2f}")
    print(f"--jobs 1        : {t1:7.2f} s  {n_cells / t1:6.2f} cells/s")
    print(f"--jobs 2 (cold) : {t2c:7.2f} s  {n_cells / t2c:6.2f} cells/s  (includes starting 2 workers)")
    print(f"--jobs 2 (warm) : {t2w:7.2f} s  {n_cells / t2w:6.2f} cells/s")
    print(f"speed-up jobs2/jobs1: cold {t1 / t2c:.2f}x, warm {t1 / t2w:.2f}x   rows identical: {same}")


if __name__ == "__main__":
    main()
