"""What the seed's paper grid costs on this machine, against the FLOP floor of the work it does.

    python benchmarks/grid_cost.py [--datasets caltech101,oxford_pets] [--quick] [--backbone rn50|vitb16]
                                   [--jobs 1] [--no-targets]

For each chosen CoOp dataset a synthetic feature cache with the dataset's real shape is written (classes,
train/val/test sizes, D = 1024 for RN50 or 512 for ViT-B/16, 10 augmented views; features are stored only for
the train rows the grid samples, as `extract --train-rows fewshot` does), and the seed grid runs on it through
the real runner: heads zeroshot, linear-probe, tip-adapter, tip-adapter-f, taskres x shots 1/2/4/8/16 x seeds
1/2/3, protocol paper. Printed per dataset and in total:

- wall: seconds of the grid (`run_fit`, this process, torch using every core it is given);
- GFLOP: the arithmetic of the work done, counted from what the fitted heads report (optimiser steps,
  L-BFGS evaluations, search sizes) with a per-head model (matmuls 2mnk; exp counted separately);
- floor: GFLOP / the `torch.mm` peak + exp count / the `torch.exp` peak, both measured in this run;
- ratio wall / floor.

Then the targets of issue 12 in one run (``--no-targets`` skips them): the TaskRes training kernel against
`torch.mm` on its own shapes at ImageNet shape, one linear-probe L-BFGS evaluation at ImageNet shape
against its matmul floor, and the linear probe against scikit-learn's lpclip protocol on the real
Caltech101/OxfordPets ViT-B/32 fixtures (when present).

``--quick``: ImageNet runs one seed at 16 shots with epochs / L-BFGS iterations cut (the ratio wall/floor is
of the work actually done; the grid's wall time is extrapolated from it and says so); the other datasets run
their full grid. ``FEATBENCH_BATCH=0`` runs the same grid with cross-cell batching off (the before/after
comparison in one environment). Report the machine load next to the figures: the script prints `uptime`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# CoOp splits (split_zhou_*.json; ImageNet: the ILSVRC train set, no val, 50k test): classes, train, val, test
SHAPES = {
    "imagenet": (1000, 1_281_167, 0, 50_000),
    "caltech101": (100, 4_128, 1_649, 2_465),
    "oxford_pets": (37, 2_944, 736, 3_669),
    "stanford_cars": (196, 6_509, 1_635, 8_041),
    "oxford_flowers": (102, 4_093, 1_633, 2_463),
    "food101": (101, 50_500, 20_200, 30_300),
    "fgvc_aircraft": (100, 3_334, 3_333, 3_333),
    "sun397": (397, 15_880, 3_970, 19_850),
    "dtd": (47, 2_820, 1_128, 1_692),
    "eurosat": (10, 13_500, 5_400, 8_100),
    "ucf101": (101, 7_639, 1_898, 3_783),
}
HEADS = ["zeroshot", "linear-probe", "tip-adapter", "tip-adapter-f", "taskres"]
SHOTS = [1, 2, 4, 8, 16]
SEEDS = [1, 2, 3]
DIMS = {"rn50": 1024, "vitb16": 512}
VIEWS = 10


# --------------------------------------------------------------------------------------------------
# synthetic caches with real shapes
# --------------------------------------------------------------------------------------------------
def make_cache(path: Path, dataset: str, dim: int, shots, seeds, seed: int = 0) -> Path:
    from featbench.cache import base_attrs, write_cache
    from featbench.fewshot import fewshot_rows, holdout_rows

    C, n_train, n_val, n_test = SHAPES[dataset]
    rng = np.random.default_rng(seed)

    def unit(a):
        return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)

    # CLIP-like statistics (measured on the real ViT-B/32 fixtures): unit-norm features, class means sharing one
    # offset (mean cosine between class means ~0.72), within-class cosine ~0.83
    offset = unit(rng.normal(size=dim))
    u = unit(rng.normal(size=(C, dim)))
    mu = 0.85 * offset + 0.53 * u
    t = 3.0 * unit(0.3 * offset + u + 0.7 * unit(rng.normal(size=(C, dim))))  # raw text outputs
    labels = {s: np.arange(n) % C for s, n in (("train", n_train), ("val", n_val), ("test", n_test)) if n}
    for s in labels:
        labels[s] = labels[s][rng.permutation(len(labels[s]))]
    need: set[int] = set()
    need_val: set[int] = set()
    for k in shots:
        for sd in seeds:
            sub = fewshot_rows(labels["train"], labels.get("val"), k, sd)
            need.update(sub.train)
            if sub.val is not None:
                need_val.update(sub.val)
            else:
                need.update(holdout_rows(labels["train"], sub.train, k, sd))

    def feats(y):
        return unit(mu[y] + np.sqrt(0.2 / dim) * rng.normal(size=(len(y), dim)))

    splits = {}
    rows = np.array(sorted(need), dtype=np.int64)
    splits["train"] = {"paths": [f"train/{i}.jpg" for i in range(n_train)], "labels": labels["train"],
                       "features": feats(labels["train"][rows]), "rows": rows}
    if n_val:
        vrows = np.arange(n_val, dtype=np.int64)  # all of val: Tip-Adapter's paper protocol selects on the full split
        splits["val"] = {"paths": [f"val/{i}.jpg" for i in range(n_val)], "labels": labels["val"],
                         "features": feats(labels["val"][vrows]), "rows": vrows}
    splits["test"] = {"paths": [f"test/{i}.jpg" for i in range(n_test)], "labels": labels["test"],
                      "features": feats(labels["test"])}
    base = splits["train"]["features"]
    views = np.empty((VIEWS,) + base.shape, np.float16)
    for v in range(VIEWS):
        views[v] = unit(base + np.sqrt(0.1 / dim) * rng.normal(size=base.shape))
    attrs = base_attrs(model="synthetic", pretrained="none", dataset=dataset, embed_dim=dim, logit_scale=100.0,
                       fingerprint=f"grid-cost-{dataset}-{dim}")
    return write_cache(path, attrs=attrs, classnames=[f"c{i}" for i in range(C)], splits=splits,
                       text_features=t[None], templates=["{}"], views=views, view_rows=rows)


# --------------------------------------------------------------------------------------------------
# peaks and the per-head FLOP model
# --------------------------------------------------------------------------------------------------
def mm_peak(m=2048, k=1024, n=1024, reps=10) -> float:
    """FLOP/s of torch.mm at a large square-ish shape (the floor's matmul rate)."""
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - t0)


def exp_peak(n=1 << 23, reps=5) -> float:
    import torch

    x, out = torch.randn(n), torch.empty(n)
    torch.exp(x, out=out)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.exp(x, out=out)
    return n * reps / (time.perf_counter() - t0)


def head_work(head, X, y, context, n_test: int) -> tuple[float, float]:
    """(matmul FLOPs, exp count) of fitting this head on (X, y, context) and evaluating n_test rows."""
    name = type(head).__name__
    N, D = np.shape(X)
    text = context.get("text")
    C = int(np.shape(text)[-2]) if text is not None else int(np.max(y)) + 1
    Xv = context.get("X_val")
    nv = 0 if Xv is None else int(np.shape(Xv)[0])
    info = getattr(head, "fit_info_", {}) or {}
    mm = ex = 0.0
    evalmm = 2.0 * n_test * D * C
    if name == "LinearProbe":
        evals = info.get("evaluations")
        if evals is None:  # an older featbench without the count: lower bound from the kept fit
            evals = int(getattr(head, "n_iter_", 0)) * max(1, (info.get("search") or {}).get("n_fits", 1))
        fits = max(1, (info.get("search") or {}).get("n_fits", 1))
        mm = evals * 4.0 * N * D * C + fits * 2.0 * nv * D * C
    elif name in ("TipAdapter", "TipAdapterF"):
        nb, na = (int(s) for s in head.search_steps)
        if nv:
            mm += 2.0 * nv * N * D + 2.0 * nv * D * C
            ex += nb * nv * N
        mm += 2.0 * n_test * N * D
        ex += n_test * N
        if name == "TipAdapterF":
            steps = int(info.get("iterations", 0))
            B = min(int(head.batch_size), N)
            mm += steps * (4.0 * B * N * D + 2.0 * B * D * C)
            ex += steps * B * N
    elif name == "TaskRes":
        B = min(int(head.batch_size), N)
        steps = int(head.epochs) * (N // B)
        mm = steps * 4.0 * B * D * C
    mm += evalmm
    return mm, ex


class WorkMeter:
    """Counts the work of every head the runner fits in this process (patches the fit entry points)."""

    def __init__(self):
        self.mm = 0.0
        self.exp = 0.0
        self.n_test = 0
        self.by_head: dict[str, float] = {}  # matmul FLOPs per head class

    def __enter__(self):
        from featbench import protocol

        self._patched = []
        try:
            from featbench import batching
        except ImportError:  # an older featbench: count through build_head instead
            batching = None
        if batching is not None:
            orig = batching.fit_all

            def fit_all(fits):
                out = orig(fits)
                for h, X, y, ctx in fits:
                    self.add(h, X, y, ctx)
                return out

            batching.fit_all = fit_all
            self._patched.append((batching, "fit_all", orig))
        else:
            orig_build = protocol.build_head

            def build_head(*a, **kw):
                h = orig_build(*a, **kw)
                fit = h.fit

                def counted(X, y, **ctx):
                    out = fit(X, y, **ctx)
                    self.add(h, X, y, ctx)
                    return out

                h.fit = counted
                return h

            protocol.build_head = build_head
            self._patched.append((protocol, "build_head", orig_build))
        return self

    def add(self, h, X, y, ctx):
        mm, ex = head_work(h, X, y, ctx, self.n_test)
        self.by_head[h.name] = self.by_head.get(h.name, 0.0) + mm
        self.mm += mm
        self.exp += ex

    def __exit__(self, *exc):
        for mod, name, orig in self._patched:
            setattr(mod, name, orig)


# --------------------------------------------------------------------------------------------------
# the grid
# --------------------------------------------------------------------------------------------------
def _work_of_group(cells, n_test, threads):
    """One worker's share: fit a group of cells (batched) and count its work in that process."""
    from featbench.batching import run_cells_bounded

    c0 = time.process_time()
    with WorkMeter() as meter:
        meter.n_test = n_test
        rows = run_cells_bounded(cells, threads)
    meter.by_head["cpu_s"] = time.process_time() - c0  # this worker's CPU seconds (all its threads)
    return rows, meter.mm, meter.exp, meter.by_head


def _run_grid(path, shots, seeds, sets, n_test, jobs):
    """The runner's own planning and grouping, executed on `jobs` loky workers that report their work."""
    from featbench.batching import cell_groups
    from featbench.runner import _cores, plan_fit

    cells = [p.cell for p in plan_fit([path], heads=HEADS, shots=shots, seeds=seeds, protocol="paper", sets=sets)]
    groups = [[cells[i] for i in g] for g in cell_groups(cells)]
    try:  # the runner's dispatch order (costliest groups first), where this featbench has it
        from featbench.batching import largest_first

        groups = list(largest_first(groups))
    except ImportError:
        pass
    if jobs <= 1:
        out = [_work_of_group(g, n_test, None) for g in groups]
    else:
        from joblib import Parallel, delayed

        threads = max(1, _cores() // jobs)
        out = Parallel(n_jobs=jobs, backend="loky", inner_max_num_threads=threads, batch_size=1)(
            delayed(_work_of_group)(g, n_test, threads) for g in groups)
    rows = [r for o in out for cell_rows in o[0] for r in cell_rows]
    by_head: dict[str, float] = {}
    for o in out:
        for h, v in o[3].items():
            by_head[h] = by_head.get(h, 0.0) + v
    return rows, sum(o[1] for o in out), sum(o[2] for o in out), by_head


def run_dataset(dataset, dim, tmp, quick, peaks, jobs):

    C, n_train, n_val, n_test = SHAPES[dataset]
    shots, seeds, sets = SHOTS, SEEDS, {}
    scale_note = ""
    big = dataset == "imagenet"
    if big and quick:
        # one cell per head at 16 shots with the work cut; the grid's time is extrapolated from it
        shots, seeds = [16], [1]
        sets = {"taskres.epochs": 2, "tip-adapter-f.epochs": 1, "linear-probe.max_iter": 2,
                "tip-adapter.search_steps": [20, 20], "tip-adapter-f.search_steps": [20, 20]}
        scale_note = "quick: 16-shot seed 1 with cut epochs/iterations/betas"
    t0 = time.perf_counter()
    path = make_cache(Path(tmp) / f"{dataset}.h5", dataset, dim, shots, seeds)
    build_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        rows, mm, ex, by_head = _run_grid(path, shots, seeds, sets, n_test, jobs)
    except ImportError:  # a featbench without featbench.batching (the "before" code): wall time only
        from featbench.runner import run_fit

        rows = run_fit([path], heads=HEADS, shots=shots, seeds=seeds, protocol="paper", sets=sets,
                       out=Path(tmp) / f"{dataset}.jsonl", progress=False, jobs=jobs)
        mm = ex = float("nan")
        by_head = {}
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    cpu += by_head.pop("cpu_s", 0.0)
    meter = WorkMeter()
    meter.mm, meter.exp = mm, ex
    floor = meter.mm / peaks["mm"] + meter.exp / peaks["exp"]
    per_head = {h: sum(r["fit_seconds"] for r in rows if r["head"] == h) for h in HEADS}
    os.unlink(path)
    return dict(dataset=dataset, cells=len(rows), wall=wall, gflop=meter.mm / 1e9, gexp=meter.exp / 1e9, floor=floor,
                build=build_s, note=scale_note, per_head=per_head, cpu=cpu, by_head=by_head)


# --------------------------------------------------------------------------------------------------
# the kernel targets
# --------------------------------------------------------------------------------------------------
def taskres_kernel_ratio(dim=1024, C=1000, N=16000, epochs=1):
    """TaskRes training GFLOP/s (4 B D C per step) over torch.mm [B, D] x [D, C] measured alongside."""
    from featbench.heads.taskres import TaskRes

    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, dim)).astype(np.float32)
    y = np.arange(N) % C
    views = X[None]
    text = rng.normal(size=(1, C, dim)).astype(np.float32)
    TaskRes(epochs=1).fit(X[:512], y[:512] % C, text=text, views=views[:, :512])  # warm-up
    t0 = time.perf_counter()
    TaskRes(epochs=epochs, lr=2e-4).fit(X, y, text=text, views=views)
    fit_s = time.perf_counter() - t0
    steps = epochs * (N // 256)
    import torch

    a, b = torch.randn(256, dim), torch.randn(dim, C)
    a @ b
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    mm = 2 * 256 * dim * C * 20 / (time.perf_counter() - t0)
    return steps * 4 * 256 * dim * C / fit_s / mm, fit_s / steps


def lp_iteration_ratio(dim=1024, C=1000, N=16000, iters=3):
    """Seconds per linear-probe L-BFGS evaluation at ImageNet shape over its matmul floor (4 N D C / mm peak)."""
    import torch

    from featbench.heads import _torch as T
    from featbench.heads.linear_probe import LinearProbe

    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, dim)).astype(np.float32)
    y = np.arange(N) % C
    lp = LinearProbe(max_iter=iters)
    Xt, yt = T.as_tensor(X), T.as_labels(y)
    lp._evaluations = 0
    t0 = time.perf_counter()
    lp._fit_torch(Xt, yt, 1.0, C)
    dt = time.perf_counter() - t0
    nfev = lp._evaluations
    a, b = torch.randn(N, dim), torch.randn(dim, C)
    a @ b
    t0 = time.perf_counter()
    for _ in range(3):
        a @ b
    mm_s = (time.perf_counter() - t0) / 3
    per_eval = dt / max(nfev, 1)
    return per_eval / (2 * mm_s), per_eval, nfev


def lpclip_loop(X, y, Xv, yv):
    """CoOp's lpclip/linear_probe.py search as it runs there: 7 sweep fits, then 8 steps that each fit both ends
    (23 scikit-learn fits, nothing memoised). Returns (C, classifier)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    def fit(c):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", FutureWarning)  # newer scikit-learn deprecates penalty="l2" (lpclip passes it)
            clf = LogisticRegression(solver="lbfgs", max_iter=1000, penalty="l2", C=c).fit(X, y)
        return clf, float((clf.predict(Xv) == yv).mean())

    sweep = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    accs = [fit(c)[1] for c in sweep]
    best = sweep[int(np.argmax(accs))]
    left, right = np.log10(best) - 1, np.log10(best) + 1
    for _ in range(8):
        clf_l, acc_l = fit(10 ** left)
        clf_r, acc_r = fit(10 ** right)
        if acc_l < acc_r:
            c_final, clf = 10 ** right, clf_r
            left = 0.5 * (left + right)
        else:
            c_final, clf = 10 ** left, clf_l
            right = 0.5 * (left + right)
    return c_final, clf


def lp_vs_sklearn(fixtures: Path, shots=(4, 16), seed=1):
    """Our lpclip search against lpclip's own loop (23 scikit-learn fits) and against solver='sklearn' in our
    memoised search (15 fits), on real ViT-B/32 features. Per case: {name: (seconds, C, test acc)}."""
    from featbench.fewshot import fewshot_rows
    from featbench.heads.linear_probe import LinearProbe

    out = []
    LinearProbe(search=False).fit(np.eye(4, dtype=np.float32), np.arange(4))  # warm-up (first torch call)
    for name in ("caltech101", "oxford_pets"):
        f = fixtures / f"{name}.npz"
        if not f.exists():
            continue
        d = np.load(f)
        Xtr, ytr = d["train_features"].astype(np.float32), d["train_labels"]
        Xva, yva = d["val_features"].astype(np.float32), d["val_labels"]
        Xte, yte = d["test_features"].astype(np.float32), d["test_labels"]
        for k in shots:
            sub = fewshot_rows(ytr, yva, k, seed)
            X, y = Xtr[sub.train], ytr[sub.train]
            Xv, yv = Xva[sub.val], yva[sub.val]
            res = {}
            for solver in ("torch", "sklearn"):
                t0 = time.perf_counter()
                h = LinearProbe(solver=solver).fit(X, y, X_val=Xv, y_val=yv)
                res[solver] = (time.perf_counter() - t0, h.C_, 100 * h.score(Xte, yte))
            t0 = time.perf_counter()
            c, clf = lpclip_loop(X, y, Xv, yv)
            res["lpclip"] = (time.perf_counter() - t0, c, 100 * float((clf.predict(Xte) == yte).mean()))
            out.append((name, k, res))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(SHAPES))
    ap.add_argument("--backbone", choices=list(DIMS), default="rn50")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (each gets cores // jobs threads)")
    ap.add_argument("--no-targets", action="store_true")
    ap.add_argument("--no-grid", action="store_true")
    args = ap.parse_args(argv)
    import torch

    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    bad = [d for d in datasets if d not in SHAPES]
    if bad:
        ap.error(f"unknown dataset(s) {bad}; choose from {', '.join(SHAPES)}")
    dim = DIMS[args.backbone]
    print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)
    try:
        from featbench.batching import batching_enabled

        batching = "on" if batching_enabled() else "off (FEATBENCH_BATCH=0)"
    except ImportError:
        batching = "not available (featbench without featbench.batching)"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.jobs} worker(s); batching {batching}; "
          f"backbone {args.backbone} (D={dim})")
    peaks = {"mm": mm_peak(), "exp": exp_peak(), "threads": torch.get_num_threads()}
    print(f"peaks measured now: torch.mm {peaks['mm'] / 1e9:.1f} GFLOP/s, torch.exp {peaks['exp'] / 1e9:.2f} Gexp/s")
    results = []
    if not args.no_grid:
        print(f"{'dataset':16s} {'cells':>5s} {'wall s':>8s} {'GFLOP':>9s} {'Gexp':>7s} {'floor s':>8s} {'wall/floor':>10s} {'cpu s':>7s} {'cpu/(cores*floor)':>17s}  fit s per head")
        with tempfile.TemporaryDirectory() as tmp:
            for ds in datasets:
                r = run_dataset(ds, dim, tmp, args.quick, peaks, args.jobs)
                # the load of a shared machine changes: the floor uses the best peak seen so far (strictest ratio)
                again = {"mm": mm_peak(), "exp": exp_peak()}
                if again["mm"] > peaks["mm"] or again["exp"] > peaks["exp"]:
                    peaks["mm"], peaks["exp"] = max(peaks["mm"], again["mm"]), max(peaks["exp"], again["exp"])
                    print(f"  (peaks re-measured after {ds}: torch.mm {peaks['mm'] / 1e9:.1f} GFLOP/s, torch.exp "
                          f"{peaks['exp'] / 1e9:.2f} Gexp/s; floor below uses them)")
                r["floor"] = r["gflop"] * 1e9 / peaks["mm"] + r["gexp"] * 1e9 / peaks["exp"]
                results.append(r)
                note = f"  ({r['note']})" if r["note"] else ""
                print(f"{ds:16s} {r['cells']:5d} {r['wall']:8.1f} {r['gflop']:9.1f} {r['gexp']:7.2f} {r['floor']:8.2f} "
                      f"{r['wall'] / r['floor']:10.1f} {r['cpu']:7.1f} {r['cpu'] / (peaks['threads'] * r['floor']):17.1f}  "
                      + " ".join(f"{h} {t:.1f}" for h, t in r["per_head"].items()) + note, flush=True)
                if r["by_head"]:
                    print(" " * 17 + "GFLOP per head: " + " ".join(f"{h} {v / 1e9:.1f}" for h, v in r["by_head"].items()))
        full = [r for r in results if not r["note"]]
        if full:
            w, fl = sum(r["wall"] for r in full), sum(r["floor"] for r in full)
            print(f"{'total (measured)':16s} {sum(r['cells'] for r in full):5d} {w:8.1f} "
                  f"{sum(r['gflop'] for r in full):9.1f} {sum(r['gexp'] for r in full):7.2f} {fl:8.2f} {w / fl:10.1f}")
    if not args.no_targets:
        print("targets (issue 12):")
        by = {r["dataset"]: r for r in results}
        if "caltech101" in by:
            print(f"  Caltech101-shaped 75-cell seed grid: {by['caltech101']['wall']:.1f} s wall (target <= 15 s; "
                  f"before: 52 s with --jobs 2 on an idle machine)")
        rest = [r for r in results if r["dataset"] != "imagenet"]
        if len(rest) == 10:
            print(f"  10 non-ImageNet datasets' seed grid: {sum(r['wall'] for r in rest) / 60:.1f} min (target <= 3 min)")
        if "imagenet" in by:
            r = by["imagenet"]
            print(f"  ImageNet-shaped grid: wall/floor {r['wall'] / r['floor']:.1f} of the work done"
                  f"{' (' + r['note'] + ')' if r['note'] else ''} (target <= 2)")
        n_threads = torch.get_num_threads()
        for th in sorted({1, n_threads}):
            torch.set_num_threads(th)
            ratio, per_step = taskres_kernel_ratio()
            print(f"  TaskRes training at ImageNet shape, {th} thread(s): {ratio:.2f} of torch.mm on the same shapes "
                  f"({per_step * 1e3:.0f} ms/step; target >= 0.6)", flush=True)
        torch.set_num_threads(n_threads)
        r_lp, per_eval, nfev = lp_iteration_ratio()
        print(f"  linear-probe L-BFGS evaluation at ImageNet shape: {per_eval:.2f} s = {r_lp:.2f}x its matmul floor "
              f"({nfev} evaluations timed; target <= 2)")
        default = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-vitb32"
        fixtures = Path(os.environ.get("FEATBENCH_REAL_FIXTURES", default))
        rows = lp_vs_sklearn(fixtures) if fixtures.exists() else []
        if not rows:
            print(f"  linear probe vs sklearn: real fixtures not found at {fixtures} (skipped)")
        tot = {"torch": 0.0, "sklearn": 0.0, "lpclip": 0.0}
        for name, k, res in rows:
            for key in tot:
                tot[key] += res[key][0]
            (tt, ct, at), (tl, cl, al), (ts, _cs, _as) = res["torch"], res["lpclip"], res["sklearn"]
            same = "same C" if math.isclose(ct, cl, rel_tol=1e-6) else "C DIFFERS"
            print(f"  linear probe {name} {k}-shot: ours {tt:6.2f} s C={ct:.4g} acc {at:.2f} | lpclip loop (sklearn, "
                  f"23 fits) {tl:6.2f} s C={cl:.4g} acc {al:.2f} | x{tl / tt:.1f}, {same}, acc {at - al:+.2f} | "
                  f"solver=sklearn in our search {ts:6.2f} s (x{ts / tt:.1f})")
        if rows:
            print(f"  linear probe, all cases: x{tot['lpclip'] / tot['torch']:.1f} vs lpclip's loop, "
                  f"x{tot['sklearn'] / tot['torch']:.1f} vs solver=sklearn in the same memoised search "
                  f"(target >= 5 at equal C, acc +-0.3)")
    print(f"uptime: {os.popen('uptime').read().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
