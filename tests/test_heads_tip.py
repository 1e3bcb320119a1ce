"""Tip-Adapter / Tip-Adapter-F: zero-shot limit, vectorised alpha/beta search == the reference double loop."""

import numpy as np
import pytest

from featbench.heads import get_head, get_head_class
from featbench.heads import tip_adapter as tip
from featbench.heads.tip_adapter import TipAdapter, TipAdapterF, search_grid


def _norm(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _data(seed=0, C=8, D=20, k=4, kv=4, kt=30, V=3, T=2, unbalanced=False):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(C, D))
    text = (t[None] + 0.8 * rng.normal(size=(T, C, D))).astype(np.float32) * 3
    mu = t + 0.9 * rng.normal(size=(C, D))  # image clusters near, not at, the text directions

    def draw(kk):
        y = np.repeat(np.arange(C), kk)
        if unbalanced:
            y = np.concatenate([y, np.arange(C // 2)])
        y = rng.permutation(y)
        return (mu[y] + 1.2 * rng.normal(size=(len(y), D))).astype(np.float32) * 5, y

    X, y = draw(k)
    views = (X[None] + 2.0 * rng.normal(size=(V,) + X.shape)).astype(np.float32)
    return text, X, y, views, draw(kv), draw(kt)


def _double_loop(X, y, views, text, Xv, yv, scale, s=100.0):
    """The reference search_hp, written plainly: one (beta, alpha) at a time, one-hot values, strict '>'."""
    keys = _norm(views.mean(0))
    L = np.eye(text.shape[1])[y]
    w = _norm(_norm(text).mean(0))
    f = _norm(Xv)
    betas, alphas = search_grid(scale)
    best, best_ab = 0, None
    for beta in betas:
        for alpha in alphas:
            aff = f @ keys.T
            logits = s * f @ w.T + alpha * (np.exp(-1 * (beta - beta * aff)) @ L)
            acc = 100.0 * (logits.argmax(1) == yv).sum() / len(yv)
            if acc > best:
                best, best_ab = acc, (alpha, beta)
    return best_ab, best


@pytest.mark.parametrize("seed,unbalanced,budget", [(0, False, None), (1, True, None), (2, False, 4096)])
def test_vectorised_search_equals_double_loop(seed, unbalanced, budget, monkeypatch):
    if budget:  # force row and beta chunking
        monkeypatch.setattr(tip, "_BUDGET", budget)
    text, X, y, views, (Xv, yv), _ = _data(seed, unbalanced=unbalanced)
    scale = [7.0, 3.0]
    (a_ref, b_ref), acc_ref = _double_loop(X.astype(np.float64), y, views.astype(np.float64),
                                            text.astype(np.float64), Xv.astype(np.float64), yv, scale)
    h = TipAdapter(search_scale=scale).fit(X, y, text=text, views=views, X_val=Xv, y_val=yv)
    sel = h.fit_info_["selected"]
    assert (sel["alpha"], sel["beta"]) == (a_ref, b_ref)
    assert sel["val_acc"] * 100 == pytest.approx(acc_ref)
    assert h.fit_info_["views_used"] == 3


def test_alpha_zero_equals_zeroshot():
    text, X, y, views, _, (Xt, yt) = _data(3)
    zs = get_head("zeroshot").fit(X, y, text=text, logit_scale=100.0)
    h = TipAdapter(alpha=0.0, beta=5.0, search=False).fit(X, y, text=text, views=views)
    np.testing.assert_allclose(h.decision_function(Xt), zs.decision_function(Xt), atol=1e-4)
    assert h.fit_info_["selected"] == {}


def test_cache_formula_and_plain_feature_fallback():
    text, X, y, _, _, (Xt, yt) = _data(4)
    h = TipAdapter(alpha=2.0, beta=3.0, search=False).fit(X, y, text=text, logit_scale=50.0)
    assert h.fit_info_["views_used"] == 0 and "no augmented views" in h.fit_info_["notes"][0]
    keys, f, w = _norm(X.astype(np.float64)), _norm(Xt.astype(np.float64)), _norm(_norm(text.astype(np.float64)).mean(0))
    expected = 50 * f @ w.T + 2.0 * np.exp(-3.0 * (1 - f @ keys.T)) @ np.eye(text.shape[1])[y]
    np.testing.assert_allclose(h.decision_function(Xt), expected, rtol=1e-4, atol=1e-3)


def test_class_weights_linearise_the_cache():
    text, X, y, views, _, (Xt, _) = _data(5)
    h = TipAdapter(alpha=1.0, beta=1e-3, search=False).fit(X, y, text=text, views=views)
    lin = _norm(Xt) @ h.class_weights().T
    diff = h.decision_function(Xt) - lin  # ~ the per-class constant alpha e^-beta * K
    assert np.ptp(diff, axis=1).max() < 1e-3


def test_class_weights_unbalanced_shots():
    """Unbalanced shots keep the one-hot value matrix; the linear base must still sum keys per class."""
    text, X, y, views, _, _ = _data(6, unbalanced=True)
    h = TipAdapter(alpha=2.0, beta=0.5, search=False).fit(X, y, text=text, views=views)
    keys = _norm(views.mean(0))
    proto = np.stack([keys[y == c].sum(0) for c in range(text.shape[1])])
    want = 100.0 * _norm(_norm(text).mean(0)) + 2.0 * 0.5 * np.exp(-0.5) * proto
    np.testing.assert_allclose(h.class_weights(), want, rtol=1e-4, atol=1e-4)


def test_paper_defaults():
    assert TipAdapter.paper_defaults("imagenet", 16) == {"alpha": 1.17, "beta": 1.0, "search_scale": [7.0, 3.0]}
    assert TipAdapter.paper_defaults("oxford_flowers", 1)["search_scale"] == [50.0, 50.0]
    assert TipAdapterF.paper_defaults("eurosat", 16)["epochs"] == 100
    assert TipAdapterF.paper_defaults("dtd", 16)["epochs"] == 20
    assert TipAdapter.paper_defaults("unknown", 1) == {}
    assert set(tip.TIP_DEFAULTS) == {"imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers",
                                     "food101", "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"}
    for name in ("tip-adapter", "tip-adapter-f"):
        cls = get_head_class(name)
        assert cls.needs_text and cls.uses_views and cls.searches_internally


def test_tip_f_trains_keys_deterministically():
    text, X, y, views, (Xv, yv), (Xt, yt) = _data(6)
    kw = dict(alpha=1.0, beta=2.0, search_scale=[7.0, 3.0], epochs=3, batch_size=8, lr=1e-2)
    a = TipAdapterF(**kw, random_state=1).fit(X, y, text=text, views=views, X_val=Xv, y_val=yv)
    b = TipAdapterF(**kw, random_state=1).fit(X, y, text=text, views=views, X_val=Xv, y_val=yv)
    c = TipAdapterF(**kw, random_state=2).fit(X, y, text=text, views=views, X_val=Xv, y_val=yv)
    np.testing.assert_array_equal(a.decision_function(Xt), b.decision_function(Xt))
    assert not np.array_equal(a.keys_.numpy(), c.keys_.numpy())
    plain = TipAdapter(**{k: kw[k] for k in ("alpha", "beta", "search_scale")}).fit(X, y, text=text, views=views)
    assert not np.allclose(a.keys_.numpy(), plain.keys_.numpy())
    assert a.fit_info_["iterations"] == 3 * 4  # 32 rows / batch 8
    assert any("last epoch" in n for n in a.fit_info_["notes"])
    # no training: Tip-Adapter-F is Tip-Adapter
    z = TipAdapterF(**{**kw, "epochs": 0}).fit(X, y, text=text, views=views, X_val=Xv, y_val=yv)
    t = TipAdapter(**{k: kw[k] for k in ("alpha", "beta", "search_scale")}).fit(
        X, y, text=text, views=views, X_val=Xv, y_val=yv)
    np.testing.assert_allclose(z.decision_function(Xt), t.decision_function(Xt), atol=1e-4)
    assert z.fit_info_["selected"] == t.fit_info_["selected"]


@pytest.mark.parametrize("case", ["random", "ties", "near_ties"])
def test_alpha_hits_equal_per_alpha_argmax(case):
    """The end-point shortcut of the alpha loop equals argmax(zs + cache * alpha) == y alpha by alpha."""
    import torch

    g = torch.Generator().manual_seed(7)
    b, n, C = 6, 300, 12
    zs = torch.randn(n, C, generator=g) * 3
    cache = torch.rand(b, n, C, generator=g) * 4
    y = torch.randint(0, C, (n,), generator=g)
    alphas = torch.tensor(search_grid([7.0, 3.0])[1], dtype=torch.float32)
    if case == "ties":  # integer logits: many exact ties, settled by the first maximal index
        zs, cache = zs.round(), cache.round()
    elif case == "near_ties":  # the true class crosses another inside the alpha range, within rounding
        other = (y + 1) % C
        rows = torch.arange(n)
        zs[rows, y] = zs[rows, other] + 1e-6 * torch.randn(n, generator=g)
        cache[:, rows, y] = cache[:, rows, other] + 1e-6 * torch.randn(b, n, generator=g)
    expected = torch.stack([((zs[None] + cache * a).argmax(-1) == y).sum(-1) for a in alphas], 1)
    assert torch.equal(tip._alpha_hits(zs, cache, y, alphas), expected)


def test_search_counts_equal_reference_arithmetic_across_row_blocks(monkeypatch):
    """Counts of every (beta, alpha) equal the reference's float32 loop, with several row blocks (the chained
    exp multiplies restart per block) and an uneven beta list (plain exps)."""
    import torch

    monkeypatch.setattr(tip, "_ROW_BLOCK", 64 * 40)  # 40 keys -> 64 rows per block
    g = torch.Generator().manual_seed(3)
    C, K, D, n = 8, 5, 16, 300
    mu = torch.nn.functional.normalize(torch.randn(C, D, generator=g), dim=-1)
    feats = lambda y: torch.nn.functional.normalize(mu[y] + 0.6 * torch.randn(len(y), D, generator=g), dim=-1)
    yk, yv = torch.arange(C).repeat_interleave(K), torch.arange(n) % C
    keys, fv = feats(yk), feats(yv)
    zs = 100 * fv @ torch.nn.functional.normalize(torch.randn(C, D, generator=g), dim=-1).T
    aff = fv @ keys.T
    for betas, alphas in (search_grid([12.0, 5.0]), ([0.5, 1.0, 3.0, 3.5], [0.1, 1.0, 2.0])):
        expected = torch.zeros(len(betas), len(alphas), dtype=torch.long)
        for i, beta in enumerate(betas):
            cache = ((-1) * (beta - beta * aff)).exp().reshape(n, C, K).sum(-1)
            for j, alpha in enumerate(alphas):
                expected[i, j] = ((zs + cache * alpha).argmax(1) == yv).sum()
        assert torch.equal(tip.search_counts(fv, keys, zs, yv, betas, alphas, C, K), expected)
