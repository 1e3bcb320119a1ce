"""The leaderboard on real CLIP ViT-B/32 features: what ../shared/fixtures/real-vitb32 allows.

Imports each fixture .npz as a schema-v1 cache (`featbench import`), runs `featbench fit` over every head the
fixture can feed, then prints `featbench table --rows head --cols shots` per dataset group.

What the fixtures allow (their README): ImageNet has text weights but only ~3 train images per class and no
val split, so 1- and 2-shot runs (selection on held-out train rows); the five other datasets are image-only,
so only the linear probe runs there (1-16 shots, selection on their val split). No per-view features (train
rows are 10-view averages) and no pre-projection features, so TaskRes/Tip-Adapter-F train on plain features
and ProLIP / text-projection cannot run.

    python benchmarks/real_leaderboard.py [--fixtures DIR] [--out DIR] [--protocol val] [--seeds 1,2,3] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "real-vitb32"
TEXT_HEADS = "zeroshot,linear-probe,tip-adapter,tip-adapter-f,taskres,gda,lp++,clap"
IMAGE_ONLY = ("caltech101", "oxford_flowers", "oxford_pets", "ucf101", "fgvc")
CATALOG_NAME = {"fgvc": "fgvc_aircraft"}


def featbench(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "featbench", *args], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"featbench {' '.join(args)} failed:\n{res.stderr}")
    return res.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--out", type=Path, default=Path("results/real-vitb32"))
    ap.add_argument("--protocol", default="val")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--jobs", default="1")
    ap.add_argument("--image-only", action="store_true", help="also run the linear probe on the five image-only datasets")
    args = ap.parse_args()
    if not (args.fixtures / "imagenet.npz").exists():
        sys.exit(f"fixtures not found in {args.fixtures}")
    args.out.mkdir(parents=True, exist_ok=True)

    caches = {}
    names = ("imagenet",) + (IMAGE_ONLY if args.image_only else ())
    for name in names:
        cache = args.out / f"{name}.h5"
        if not cache.exists():
            featbench("import", str(args.fixtures / f"{name}.npz"), "--out", str(cache), "--dataset",
                      CATALOG_NAME.get(name, name), "--model", "ViT-B-32", "--pretrained", "openai")
        caches[name] = cache

    results = args.out / f"results-{args.protocol}.jsonl"
    common = ["--protocol", args.protocol, "--seeds", args.seeds, "--out", str(results), "--jobs", args.jobs, "--no-progress"]
    featbench("fit", str(caches["imagenet"]), "--heads", TEXT_HEADS, "--shots", "1,2", *common)
    if args.image_only:
        featbench("fit", *[str(caches[n]) for n in IMAGE_ONLY], "--heads", "linear-probe", "--shots", "1,2,4,8,16", *common)

    print(f"# ImageNet (ViT-B/32 fixtures), {args.protocol} protocol, seeds {args.seeds}")
    print(featbench("table", str(results), "--rows", "head", "--cols", "shots", "--datasets", "imagenet",
                    "--shots", "1,2", "--format", "markdown"))
    if args.image_only:
        print(f"# linear probe on the image-only fixtures, {args.protocol} protocol")
        print(featbench("table", str(results), "--rows", "dataset", "--cols", "shots", "--heads", "linear-probe",
                        "--datasets", ",".join(CATALOG_NAME.get(n, n) for n in IMAGE_ONLY), "--format", "markdown"))


if __name__ == "__main__":
    main()
