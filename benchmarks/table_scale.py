"""`featbench table` on a big results file, against `pandas.read_json(lines=True)` of the same file.

    python benchmarks/table_scale.py [--rows 200000] [--per-class] [--keep DIR]

Writes a synthetic results file of ``--rows`` rows of about 1 KB each (the fields `featbench fit` writes:
paths, fingerprints, parameters, notes, timestamps; 10 heads x 10 datasets x 5 shot counts x as many seeds as
it takes), with ``--per-class`` also each row's per-class counts (180 classes: about 1 KB more a row). Then,
each in a fresh subprocess so that nothing is shared or cached:

- ``featbench table FILE`` (its Markdown table to /dev/null);
- ``pandas.read_json(FILE, lines=True)`` (reading only: no table).

Printed for each: wall seconds and peak resident memory (``ru_maxrss`` of that child, read by a wrapper
process that runs only it), next to the file's size. Issue 17's targets: featbench no slower than pandas,
and its peak memory below the file's size. Report the machine load next to the figures (`uptime` is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HEADS = ("zeroshot", "linear-probe", "tip-adapter", "tip-adapter-f", "taskres", "clip-adapter", "gda", "lp++",
         "coop", "prolip")
DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
            "fgvc_aircraft", "sun397", "dtd", "eurosat")
SHOTS = (1, 2, 4, 8, 16)

#: runs one command and prints its wall seconds and peak RSS (KiB): the wrapper has no other child
_MEASURE = """
import resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
wall = time.perf_counter() - t0
print(rc, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def make_row(i: int, per_class: bool) -> dict:
    """One result row shaped like those `featbench fit` writes (about 1 KB)."""
    head = HEADS[i % len(HEADS)]
    dataset = DATASETS[(i // len(HEADS)) % len(DATASETS)]
    shots = SHOTS[(i // (len(HEADS) * len(DATASETS))) % len(SHOTS)]
    seed = 1 + i // (len(HEADS) * len(DATASETS) * len(SHOTS))
    acc = 40.0 + (i * 7919 % 5000) / 100.0
    row = {
        "dataset": dataset, "source_dataset": dataset, "model": "ViT-B-16", "pretrained": "openai",
        "fingerprint": f"{hash(dataset) & 0xFFFFFFFFFFFF:012x}" * 5 + "abcd",
        "content": f"{hash(dataset + 'c') & 0xFFFFFFFF:08x}" * 4,
        "cache": f"/data/featbench/caches/vit-b-16/openai/{dataset}/features-views10-scale0.5.h5",
        "head": head,
        "params": {"alpha": 0.5, "beta": 1.0, "lr": 0.002, "epochs": 20 * shots, "batch_size": 256,
                   "weight_decay": 0.0005, "init": "zeroshot", "views": 10, "temperature": 100.0},
        "overrides": {}, "paper_defaults": ["epochs", "lr"], "selected": {},
        "protocol": "paper", "test_selection": False, "classes": "all", "shots": shots, "seed": seed,
        "acc": acc, "mean_per_class_recall": acc - 0.5, "n_test": 2465, "fit_seconds": 1.2345,
        "views_used": 10, "views_scale": [0.5, 1.0],
        "notes": ["selection: CoOp's few-shot val split (min(K, 4) images per class)",
                  "templates: the dataset's CoOp template (1 of the cache's 7)",
                  "class names: clean style (underscores as spaces), as the reference"],
        "featbench_version": "0.9.0", "timestamp": f"2026-12-06T04:{i // 60 % 60:02d}:{i % 60:02d}+00:00",
    }
    if per_class:
        row["per_class"] = {"correct": [(i + c) % 30 for c in range(180)], "total": [30] * 180}
    return row


def write_results(path: Path, n: int, per_class: bool) -> int:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps(make_row(i, per_class), separators=(",", ":")) + "\n")
    return path.stat().st_size


def measure(cmd: list[str]) -> tuple[int, float, int]:
    """(exit code, wall seconds, peak RSS in bytes) of ``cmd`` in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, check=True)
    rc, wall, rss_kib = out.stdout.split()
    return int(rc), float(wall), int(rss_kib) * 1024


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--per-class", action="store_true", help="rows carry per-class counts (180 classes)")
    ap.add_argument("--keep", type=Path, default=None, help="write the results file here and keep it")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = (args.keep or Path(tmp)) / f"results-{args.rows}{'-perclass' if args.per_class else ''}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        size = write_results(path, args.rows, args.per_class)
        print(f"results file: {args.rows} rows, {size / 1e6:.1f} MB ({size / args.rows:.0f} B a row)"
              + (", with per-class counts" if args.per_class else ""))
        print("load:", os.popen("uptime").read().strip())
        runs = {
            "featbench table": [sys.executable, "-m", "featbench", "table", str(path)],
            "pandas.read_json(lines=True)": [sys.executable, "-c",
                                             "import sys, pandas; pandas.read_json(sys.argv[1], lines=True)",
                                             str(path)],
        }
        for name, cmd in runs.items():
            rc, wall, rss = measure(cmd)
            status = "" if rc == 0 else f"  (exit code {rc})"
            print(f"{name:30s} {wall:7.2f} s   peak RSS {rss / 1e6:7.1f} MB "
                  f"({100 * rss / size:5.1f}% of the file){status}")


if __name__ == "__main__":
    main()
