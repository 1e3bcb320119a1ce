"""Trainable parameters of every built-in head at ImageNet scale with RN50 (C = 1000, D = 1024, 16 shots).

Each head is fitted (zero epochs / one iteration: the count comes from the learned state's shapes, not from the
training) on random arrays of those shapes, with a random-weight RN50 text tower for the prompt learners, and
reports ``trainable_params()``, the number every result row records. Prints the Markdown table README.md quotes
between ``<!-- param_counts -->`` markers; ``--check`` exits 1 when README.md differs.

    HF_HUB_OFFLINE=1 python benchmarks/param_counts.py [--check]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"<!-- param_counts -->\n(?P<body>.*?)\n<!-- /param_counts -->", re.S)
CLASSES, SHOTS, DIM, PRE_DIM = 1000, 16, 1024, 2048
#: what makes a fit short without changing the shapes it learns
SHORT = {"epochs": 0, "n_iter": 1, "max_iter": 1, "search": False, "iterations": 1}


def fit_contexts():
    """Random arrays of ImageNet/RN50 shapes, and the RN50 text tower (random weights) for prompt learners."""
    from featbench.encoders import Encoder
    from featbench.texttower import TextTower

    rng = np.random.default_rng(0)
    n = CLASSES * SHOTS
    enc = Encoder("RN50", "none", "cpu")
    tower = TextTower.from_model(enc.model, enc.tokenizer)
    text_width = int(tower.width)
    common = dict(y=np.repeat(np.arange(CLASSES), SHOTS), logit_scale=100.0,
                  text=rng.normal(size=(1, CLASSES, DIM)).astype(np.float32),
                  classnames=[f"class {i}" for i in range(CLASSES)],
                  extra={"image_projection": (rng.normal(size=(PRE_DIM, DIM)) / 45).astype(np.float32),
                         "text_projection": (rng.normal(size=(text_width, DIM)) / 22).astype(np.float32),
                         "text_features_pre": rng.normal(size=(1, CLASSES, text_width)).astype(np.float32)})
    X = rng.normal(size=(n, DIM)).astype(np.float32)
    X_pre = rng.normal(size=(n, PRE_DIM)).astype(np.float32)
    return common, X, X_pre, tower


def count(name: str, common, X, X_pre, tower) -> int | None:
    from featbench.heads import get_head, get_head_class

    cls = get_head_class(name)
    head = get_head(name, dataset="imagenet", shots=SHOTS)
    head.set_params(**{k: v for k, v in SHORT.items() if k in head.param_names()})
    context = dict(common)
    y = context.pop("y")
    if cls.needs_text_tower:
        context["text_tower"] = tower
    features = X_pre if cls.feature_kind == "features_pre" else X
    head.fit(features, y, **context)
    return head.trainable_params()


def table() -> str:
    from featbench.heads import BUILT_IN, head_origin, list_heads
    from featbench.table_model import display_name, format_count

    common, X, X_pre, tower = fit_contexts()
    lines = ["| head | trainable params | |", "|---|---:|---:|"]
    for name in list_heads():
        if head_origin(name) != BUILT_IN:
            continue
        n = count(name, common, X, X_pre, tower)
        shown = "unknown" if n is None else f"{n:,}"
        lines.append(f"| {display_name(name)} (`{name}`) | {shown} | {'' if n is None else format_count(n)} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md's block differs")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    body = table()
    print(body)
    if args.check:
        found = BLOCK.search(README.read_text(encoding="utf-8"))
        if found is None or found["body"].strip() != body.strip():
            print("README.md's param_counts block differs from this output", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
