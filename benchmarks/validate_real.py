"""Check the heads on real CLIP ViT-B/32 features (../shared/fixtures/real-vitb32) and print a table.

ImageNet (text weights available): 1- and 2-shot subsets of the fixture's train rows (Dassl sampling, seeds
1, 2, 3), evaluated on its 3989 "test" rows. The train rows are already Tip-Adapter-style averaged keys, so
they are passed as X with views=None (TaskRes then trains on plain features; Tip-Adapter's keys are those
rows). ImageNet has no val split, so Tip-Adapter keeps the paper's ImageNet init alpha=1.17, beta=1 (no
search) and TaskRes uses its ImageNet defaults (lr 2e-4, alpha 0.5, 100 epochs).

Image-only datasets: the linear probe's torch solver against the scikit-learn reference, each running the
full lpclip C search on the few-shot val rows (min(K, 4) per class) and scored on test.

    python benchmarks/validate_real.py [--fixtures DIR] [--seeds 1,2,3] [--quick]

--quick: seed 1 only, linear probe on caltech101 4-shot only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "real-vitb32"


def load(d: Path, name: str) -> dict:
    z = np.load(d / f"{name}.npz")
    return {k: z[k] for k in z.files}


def subset(data: dict, shots: int, seed: int):
    from featbench.fewshot import fewshot_rows

    val_labels = data.get("val_labels")
    rows = fewshot_rows(data["train_labels"].tolist(), None if val_labels is None else val_labels.tolist(), shots, seed)
    tr, va = np.asarray(rows.train, int), np.asarray(rows.val or [], int)
    X = data["train_features"][tr].astype(np.float32)
    y = data["train_labels"][tr]
    Xv = data["val_features"][va].astype(np.float32) if len(va) else None
    yv = data["val_labels"][va] if len(va) else None
    return X, y, Xv, yv


def imagenet_rows(d: Path, shots_list, seeds, heads=("zeroshot", "taskres", "tip-adapter", "tip-adapter-f")):
    from featbench.heads import get_head

    data = load(d, "imagenet")
    text = data["text_raw"]
    Xt, yt = data["test_features"].astype(np.float32), data["test_labels"]
    out = []
    for shots in shots_list:
        for seed in seeds:
            X, y, _, _ = subset(data, shots, seed)
            for name in heads:
                head = get_head(name, dataset="imagenet", shots=shots, random_state=seed) if name != "zeroshot" \
                    else get_head(name)
                t0 = time.perf_counter()
                head.fit(X, y, text=text, logit_scale=100.0)
                acc = 100 * head.score(Xt, yt)
                out.append(dict(dataset="imagenet", head=name, shots=shots, seed=seed, acc=acc,
                                seconds=time.perf_counter() - t0))
    return out


def lp_rows(d: Path, datasets, shots_list, seeds):
    from featbench.heads.linear_probe import LinearProbe

    out = []
    for ds in datasets:
        data = load(d, ds)
        Xt, yt = data["test_features"].astype(np.float32), data["test_labels"]
        for shots in shots_list:
            for seed in seeds:
                X, y, Xv, yv = subset(data, shots, seed)
                for solver in ("torch", "sklearn"):
                    t0 = time.perf_counter()
                    h = LinearProbe(solver=solver).fit(X, y, X_val=Xv, y_val=yv)
                    out.append(dict(dataset=ds, head=f"linear-probe[{solver}]", shots=shots, seed=seed,
                                    acc=100 * h.score(Xt, yt), seconds=time.perf_counter() - t0, C=h.C_))
    return out


def summarise(rows):
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["shots"], r["head"]), []).append(r)
    print(f"{'dataset':<12} {'shots':>5} {'head':<24} {'acc (mean over seeds)':>22} {'per seed':<28} {'fit+eval s':>10}")
    for (ds, k, head), rs in groups.items():
        accs = [r["acc"] for r in rs]
        extra = "  C=" + ",".join(f"{r['C']:.3g}" for r in rs) if "C" in rs[0] else ""
        print(f"{ds:<12} {k:>5} {head:<24} {np.mean(accs):>16.2f} ± {np.std(accs):4.2f} "
              f"{' '.join(f'{a:.2f}' for a in accs):<28} {np.mean([r['seconds'] for r in rs]):>10.2f}{extra}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if not (args.fixtures / "imagenet.npz").exists():
        print(f"real-feature fixtures not found at {args.fixtures}; nothing to validate")
        return 0
    seeds = [1] if args.quick else [int(s) for s in args.seeds.split(",")]
    rows = imagenet_rows(args.fixtures, (1, 2), seeds)
    if args.quick:
        rows += lp_rows(args.fixtures, ["caltech101"], [4], seeds)
    else:
        rows += lp_rows(args.fixtures, ["caltech101", "oxford_pets"], [4, 16], seeds)
    summarise(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
