"""Heads on real CLIP ViT-B/32 features (../shared/fixtures/real-vitb32); skipped where the fixtures are absent.

Kept fast: ImageNet 1-shot seed 1 only (TaskRes at its paper ImageNet recipe: lr 2e-4, alpha 0.5, 100 epochs —
1000 rows, so 3 batches per epoch); linear probe on caltech101 4-shot seed 1 with the full lpclip search.
benchmarks/validate_real.py runs the 1/2-shot x 3-seed table.
"""

import numpy as np
import pytest

from featbench.fewshot import fewshot_rows
from featbench.heads import get_head

pytestmark = pytest.mark.real


def _load(d, name):
    z = np.load(d / f"{name}.npz")
    return {k: z[k] for k in z.files}


def _subset(data, shots, seed):
    val = data.get("val_labels")
    rows = fewshot_rows(data["train_labels"].tolist(), None if val is None else val.tolist(), shots, seed)
    tr = np.asarray(rows.train, int)
    va = np.asarray(rows.val or [], int)
    X, y = data["train_features"][tr].astype(np.float32), data["train_labels"][tr]
    if len(va):
        return X, y, data["val_features"][va].astype(np.float32), data["val_labels"][va]
    return X, y, None, None


def test_imagenet_one_shot_beats_zeroshot(real_fixtures):
    data = _load(real_fixtures, "imagenet")
    text, Xt, yt = data["text_raw"], data["test_features"].astype(np.float32), data["test_labels"]
    X, y, _, _ = _subset(data, 1, 1)
    assert len(y) == 1000
    zs = 100 * get_head("zeroshot").fit(X, y, text=text).score(Xt, yt)
    assert 55.0 <= zs <= 63.0  # ViT-B/32, single prompt
    tr = get_head("taskres", dataset="imagenet", shots=1, random_state=1).fit(X, y, text=text)
    assert (tr.lr, tr.alpha, tr.epochs) == (2e-4, 0.5, 100)
    tip = get_head("tip-adapter", dataset="imagenet", shots=1).fit(X, y, text=text)  # no val: init 1.17 / 1
    assert tip.alpha_ == 1.17 and tip.beta_ == 1.0
    assert 100 * tr.score(Xt, yt) > zs
    assert 100 * tip.score(Xt, yt) > zs


def test_linear_probe_torch_equals_sklearn_protocol(real_fixtures):
    """The first 30 Caltech101 classes, 4-shot (the full comparison, ~2 min, is in benchmarks/grid_cost.py)."""
    data = _load(real_fixtures, "caltech101")
    keep = 30
    X, y, Xv, yv = _subset(data, 4, 1)
    X, y, Xv, yv = X[y < keep], y[y < keep], Xv[yv < keep], yv[yv < keep]
    Xt, yt = data["test_features"].astype(np.float32), data["test_labels"]
    Xt, yt = Xt[yt < keep], yt[yt < keep]
    th = get_head("linear-probe", solver="torch").fit(X, y, X_val=Xv, y_val=yv)
    sk = get_head("linear-probe", solver="sklearn").fit(X, y, X_val=Xv, y_val=yv)
    assert abs(th.score(Xt, yt) - sk.score(Xt, yt)) * 100 <= 0.5
    assert abs(np.log10(th.C_) - np.log10(sk.C_)) <= 1.0
