"""ProKeR: the head against a plain transcription of omarnust/BReg-Adapter ``trainers/proker.py``, the λ → 0
limit, determinism, the registry, and the real ViT-B/32 ImageNet fixture (skipped where ../shared is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from featbench.heads import get_head, get_head_class
from featbench.heads.proker import PROKER_RANGES, TRANSFER_HP

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _data(n_classes=5, dim=12, shots=2, n_views=3, n_val=10, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(n_classes, dim)))
    text = (centres + 2.5 * rng.normal(size=(2, n_classes, dim)) / np.sqrt(dim)) * 5.0  # zero-shot well below 100%

    def draw(k):
        y = np.repeat(np.arange(n_classes), k)
        return (centres[y] + 1.5 * rng.normal(size=(len(y), dim)) / np.sqrt(dim)).astype(np.float32) * 4, y

    X, y = draw(shots)
    Xv, yv = draw(n_val)
    Xt, yt = draw(n_test)
    views = (X[None] + 0.3 * rng.normal(size=(n_views,) + X.shape)).astype(np.float32)
    return X, y, views, Xv, yv, Xt, yt, text.astype(np.float32)


def _clip_weights(text):
    """utils.get_clip_weights: per-template normalise, mean, normalise -> [C, D]."""
    return _unit(_unit(np.asarray(text, np.float64)).mean(axis=0))


def _reference_proker(views, y, Xv, yv, Xt, text, beta_range, lmbda_range):
    """ProKeR as trainers/proker.py computes it, written out with numpy loops over the grid."""
    vecs = _unit(np.asarray(views, np.float64).reshape(-1, views.shape[-1]))  # main.py: every view, normalised
    labels = np.tile(y, views.shape[0])
    W = _clip_weights(text)
    n_classes = W.shape[0]
    cache = np.eye(n_classes)[labels]
    logits_text_shots = vecs @ W.T
    val, test = _unit(np.asarray(Xv, np.float64)), _unit(np.asarray(Xt, np.float64))

    def rbf(a, b, beta):
        return np.exp(-beta * (1.0 - a @ b.T))

    best_acc, best = 0.0, None
    for beta in np.linspace(*beta_range[:2], int(beta_range[2]), dtype=np.float32):
        for lmbda in np.linspace(*lmbda_range[:2], int(lmbda_range[2]), dtype=np.float32):
            lhs = rbf(vecs, vecs, float(beta)) / float(lmbda) + np.eye(len(vecs))
            alpha = np.linalg.solve(lhs, cache - logits_text_shots)
            val_logits = val @ W.T + rbf(val, vecs, float(beta)) @ alpha
            acc = float((val_logits.argmax(1) == yv).mean())
            if acc > best_acc:
                best_acc, best = acc, (float(beta), float(lmbda))
    beta, lmbda = best
    alpha = np.linalg.solve(rbf(vecs, vecs, beta) / lmbda + np.eye(len(vecs)), cache - logits_text_shots)
    return best, test @ W.T + rbf(test, vecs, beta) @ alpha


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_transcription(seed):
    X, y, views, Xv, yv, Xt, yt, text = _data(seed=seed)
    beta_range, lmbda_range = (0.5, 6.0, 6), (0.01, 2.0, 7)
    (beta, lmbda), ref_logits = _reference_proker(views, y, Xv, yv, Xt, text, beta_range, lmbda_range)
    head = get_head("proker", beta_range=list(beta_range), lmbda_range=list(lmbda_range))
    head.fit(X, y, text=text, views=views, X_val=Xv, y_val=yv)
    assert head.fit_info_["selected"]["beta"] == pytest.approx(beta, rel=1e-6)
    assert head.fit_info_["selected"]["lmbda"] == pytest.approx(lmbda, rel=1e-6)
    assert head.fit_info_["kernel_points"] == views.shape[0] * views.shape[1]
    np.testing.assert_allclose(head.decision_function(Xt), 100.0 * ref_logits, rtol=1e-4, atol=1e-3)


def test_lambda_to_zero_is_zeroshot():
    X, y, views, Xv, yv, Xt, yt, text = _data()
    head = get_head("proker", lmbda=1e-12, beta=2.0, search=False).fit(X, y, text=text, views=views)
    zeroshot = get_head("zeroshot").fit(X, y, text=text)
    np.testing.assert_allclose(head.decision_function(Xt), zeroshot.decision_function(Xt), rtol=1e-5, atol=1e-4)


def test_without_selection_split_uses_transfer_values():
    X, y, views, Xv, yv, Xt, yt, text = _data()
    head = get_head("proker", dataset="imagenet", shots=2).fit(X, y, text=text, views=views)
    assert (head.beta_, head.lmbda_) == TRANSFER_HP[2]
    assert head.fit_info_["selected"] == {} and head.fit_info_["views_used"] == 1
    assert any("no selection split" in n for n in head.fit_info_["notes"])


def test_determinism():
    X, y, views, Xv, yv, Xt, yt, text = _data()
    runs = [get_head("proker").fit(X, y, text=text, views=views, X_val=Xv, y_val=yv).decision_function(Xt)
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])


def test_registry_builds_it_with_paper_defaults():
    cls = get_head_class("proker")
    assert cls.__name__ == "ProKeR" and cls.searches_internally and cls.uses_views and cls.needs_text
    assert cls.paper_selection == "full_val" and cls.reference_selects_on_test == ("imagenet",)
    assert not cls.scores_unseen_classes  # per-point dual coefficients: base-to-new falls back to zero-shot
    head = get_head("proker", dataset="oxford_pets", shots=16)
    assert list(head.beta_range) == [0.01, 5.0, 40] and list(head.lmbda_range) == [0.01, 0.3, 20]
    assert (head.beta, head.lmbda) == TRANSFER_HP[16] and head.n_views is None
    assert get_head("proker", dataset="imagenet", shots=3).n_views == 1
    assert get_head("proker", dataset="imagenet", shots=3).beta == TRANSFER_HP[4][0]  # 3 shots use 4's values
    assert set(PROKER_RANGES) == {"caltech101", "dtd", "eurosat", "fgvc_aircraft", "food101", "imagenet",
                                  "oxford_flowers", "oxford_pets", "stanford_cars", "sun397", "ucf101"}
    get_head("proker", dataset="my_dataset", shots=None)  # no config: the class defaults


def test_too_many_kernel_points_is_one_clear_error():
    from featbench.errors import FeatbenchError

    X, y, views, Xv, yv, Xt, yt, text = _data()
    with pytest.raises(FeatbenchError, match="n_views=1"):
        get_head("proker", max_points=20).fit(X, y, text=text, views=views)
    head = get_head("proker", max_points=20, n_views=1, search=False).fit(X, y, text=text, views=views)
    assert head.fit_info_["kernel_points"] == 10


# ---------------------------------------------------------------------------------------------------- real fixture
def imagenet_subset(real_fixtures, shots, n_classes):
    """Support = the first `shots` train rows per class, selection = the other train rows, and the test rows."""
    d = np.load(real_fixtures / "imagenet.npz")
    ytr, yte = d["train_labels"], d["test_labels"]
    support = np.concatenate([np.where(ytr == c)[0][:shots] for c in range(n_classes)])
    select = np.concatenate([np.where(ytr == c)[0][shots:] for c in range(n_classes)])
    test = np.where(yte < n_classes)[0]
    Xtr, Xte = d["train_features"].astype(np.float32), d["test_features"].astype(np.float32)
    return (Xtr[support], ytr[support], Xtr[select], ytr[select], Xte[test], yte[test],
            d["text_raw"][:, :n_classes])


# All 1000 classes (about a minute each on 2 cores). On class subsets ProKeR's searched kernel can lose: at 250
# classes 63.76 / 62.85 vs zero-shot 63.96 (1 / 2 shots); at 500 classes it wins (66.57 / 67.27 vs 65.86).
@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("shots", [1, 2])
def test_real_imagenet_beats_zeroshot(real_fixtures, shots):
    X, y, Xs, ys, Xt, yt, text = imagenet_subset(real_fixtures, shots, n_classes=1000)
    zs = get_head("zeroshot").fit(X, y, text=text).score(Xt, yt)
    acc = get_head("proker", dataset="imagenet", shots=shots).fit(X, y, text=text, X_val=Xs, y_val=ys).score(Xt, yt)
    assert acc > zs, f"proker {shots}-shot: {acc:.4f} <= zero-shot {zs:.4f}"

