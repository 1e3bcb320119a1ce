"""TaskRes: zero-shot limits, only the residual trains, Dassl's warm-up + cosine schedule, bases, determinism."""

import math

import numpy as np
import pytest
import torch

from featbench.errors import FeatbenchError
from featbench.heads import get_head, get_head_class
from featbench.heads._torch import cosine_with_warmup
from featbench.heads.taskres import TaskRes


def _norm(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _data(seed=0, C=6, D=16, k=8, kt=30, V=3, T=1):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(C, D))
    text = (t[None] + 0.5 * rng.normal(size=(T, C, D))).astype(np.float32) * 3
    mu = t + 1.0 * rng.normal(size=(C, D))

    def draw(kk):
        y = np.repeat(np.arange(C), kk)
        return (mu[y] + 1.0 * rng.normal(size=(len(y), D))).astype(np.float32) * 4, y

    X, y = draw(k)
    views = (X[None] + 1.5 * rng.normal(size=(V,) + X.shape)).astype(np.float32)
    return text, X, y, views, draw(kt)


FAST = dict(epochs=5, batch_size=16, lr=1e-2)


def test_alpha_zero_and_zero_epochs_equal_zeroshot():
    text, X, y, views, (Xt, yt) = _data(0, T=1)
    zs = get_head("zeroshot").fit(X, y, text=text).decision_function(Xt)
    for kw in (dict(FAST, alpha=0.0), dict(FAST, epochs=0)):
        h = TaskRes(**kw).fit(X, y, text=text, views=views)
        np.testing.assert_allclose(h.decision_function(Xt), zs, atol=1e-4)
    # several templates: W0 is the mean of the *raw* outputs; cos identity: s * norm(f) norm(W0)^T
    text3, X, y, views, (Xt, yt) = _data(1, T=3)
    h = TaskRes(**dict(FAST, alpha=0.0)).fit(X, y, text=text3, views=views, logit_scale=30.0)
    hand = 30.0 * _norm(Xt.astype(np.float64)) @ _norm(text3.astype(np.float64).mean(0)).T
    np.testing.assert_allclose(h.decision_function(Xt), hand, atol=1e-4)
    zs3 = get_head("zeroshot").fit(X, y, text=text3).decision_function(Xt)
    assert (h.predict(Xt) == zs3.argmax(1)).mean() > 0.9  # close to, not identical with, the normalised ensemble


def test_gradients_touch_only_the_residual(monkeypatch):
    text, X, y, views, _ = _data(2)
    text0, views0, X0 = text.copy(), views.copy(), X.copy()
    seen = []

    class SpyAdam(torch.optim.Adam):
        def __init__(self, params, **kw):
            params = list(params)
            seen.append((params, kw))
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", SpyAdam)
    h = TaskRes(**FAST).fit(X, y, text=text, views=views)
    (params, kw), = seen
    assert len(params) == 1 and params[0].shape == (1, 6, 16)  # runs stacked: [R, C, D]
    assert kw["betas"] == (0.9, 0.999) and kw["weight_decay"] == 5e-4
    assert params[0].grad is not None and float(params[0].grad.abs().sum()) > 0
    assert not h.W0_.requires_grad and h.W0_.grad is None
    np.testing.assert_array_equal(h.W0_.numpy(), text[0])  # W0 untouched (raw, unnormalised)
    assert float(h.residual_.abs().sum()) > 0
    np.testing.assert_array_equal(text, text0)
    np.testing.assert_array_equal(views, views0)
    np.testing.assert_array_equal(X, X0)
    assert h.fit_info_["trainable"] == ["residual"]


def test_schedule_matches_hand_computation():
    lr, E = 2e-3, 100
    assert cosine_with_warmup(0, lr, E) == 1e-5  # warm-up epoch at constant 1e-5
    assert cosine_with_warmup(1, lr, E) == pytest.approx(lr)  # successor starts at t=0
    assert cosine_with_warmup(50, lr, E) == pytest.approx(lr * (1 + math.cos(math.pi * 49 / 100)) / 2)
    assert cosine_with_warmup(99, lr, E) == pytest.approx(lr * (1 + math.cos(math.pi * 98 / 100)) / 2)
    # the same numbers from torch's own CosineAnnealingLR stepped as Dassl's wrapper steps it
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, float(E))
    lrs = [1e-5, lr]  # epoch 0 (wrapper's constant), epoch 1 (successor's initial lr)
    for _ in range(E - 2):
        opt.step()
        cos.step()
        lrs.append(cos.get_last_lr()[0])
    ours = [cosine_with_warmup(e, lr, E) for e in range(E)]
    np.testing.assert_allclose(ours, lrs, rtol=1e-9)
    # and the head really uses it, once per epoch
    text, X, y, views, _ = _data(3)
    h = TaskRes(lr=lr, epochs=7, batch_size=16).fit(X, y, text=text, views=views)
    np.testing.assert_allclose(h.lrs_, [cosine_with_warmup(e, lr, 7) for e in range(7)])


def test_deterministic_and_views_matter():
    text, X, y, views, (Xt, _) = _data(4)
    a = TaskRes(**FAST, random_state=3).fit(X, y, text=text, views=views).decision_function(Xt)
    b = TaskRes(**FAST, random_state=3).fit(X, y, text=text, views=views).decision_function(Xt)
    c = TaskRes(**FAST, random_state=4).fit(X, y, text=text, views=views).decision_function(Xt)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    h = TaskRes(**FAST).fit(X, y, text=text)
    assert h.fit_info_["views_used"] == 0 and "plain features" in h.fit_info_["notes"][0]
    assert TaskRes(**FAST).fit(X, y, text=text, views=views).fit_info_["views_used"] == 3


def test_training_improves_train_fit():
    text, X, y, views, (Xt, yt) = _data(5)
    zs = get_head("zeroshot").fit(X, y, text=text)
    h = TaskRes(epochs=30, batch_size=16, lr=2e-2).fit(X, y, text=text, views=views)
    assert h.score(X, y) > zs.score(X, y)


def test_bases(tmp_path):
    text, X, y, views, (Xt, _) = _data(6)
    w = np.random.default_rng(0).normal(size=text.shape[1:]).astype(np.float32)
    arr = TaskRes(epochs=0, base=w, base_norm="none").fit(X, y, text=text)
    np.testing.assert_allclose(arr.decision_function(Xt), 100 * _norm(Xt) @ _norm(w).T, atol=1e-3)
    np.save(tmp_path / "w.npy", w)
    torch.save(torch.from_numpy(w), tmp_path / "w.pt")
    for src in (tmp_path / "w.npy", str(tmp_path / "w.pt")):
        h = TaskRes(epochs=0, base=src).fit(X, y, text=text)
        np.testing.assert_allclose(h.decision_function(Xt), arr.decision_function(Xt), atol=1e-3)
        assert h.fit_info_["base"].startswith("file")
    # a registered head fitted with the same context; zeroshot as base at 0 epochs is zero-shot
    zs = get_head("zeroshot").fit(X, y, text=text).decision_function(Xt)
    h = TaskRes(epochs=0, base="zeroshot").fit(X, y, text=text)
    np.testing.assert_allclose(h.decision_function(Xt), zs, atol=1e-3)
    assert h.fit_info_["base"] == "head zeroshot" and "rescaled" in h.fit_info_["notes"][0]
    lp = TaskRes(**FAST, base="linear-probe").fit(X, y, text=text, views=views)
    np.testing.assert_allclose(lp.W0_.numpy() / np.linalg.norm(lp.W0_.numpy(), axis=1, keepdims=True),
                               _norm(lp.base_head_.class_weights()), atol=1e-5)
    inst = get_head("linear-probe", C=0.1)
    TaskRes(**FAST, base=inst).fit(X, y, text=text)
    assert hasattr(inst, "coef_")
    assert TaskRes(base=inst).hyperparameters()["base"] == "LinearProbe"
    with pytest.raises(FeatbenchError, match="not found"):
        TaskRes(base=str(tmp_path / "missing.npy")).fit(X, y, text=text)
    with pytest.raises(FeatbenchError, match="unknown head"):
        TaskRes(base="no-such-head").fit(X, y, text=text)
    with pytest.raises(FeatbenchError, match="base must be"):
        TaskRes(base=np.zeros((6, 3))).fit(X, y, text=text)
    with pytest.raises(FeatbenchError, match="text"):
        TaskRes().fit(X, y)


def test_paper_defaults_and_flags():
    assert TaskRes.paper_defaults("imagenet", 1) == {"lr": 2e-4, "alpha": 0.5, "epochs": 100}
    assert TaskRes.paper_defaults("oxford_flowers", 16) == {"lr": 2e-3, "alpha": 1.0, "epochs": 200}
    assert TaskRes.paper_defaults("dtd", 4)["epochs"] == 100 and TaskRes.paper_defaults(None, 8) == {"epochs": 200}
    h = get_head("taskres", dataset="imagenet", shots=16)
    assert (h.lr, h.alpha, h.epochs) == (2e-4, 0.5, 200)
    cls = get_head_class("taskres")
    assert cls.needs_text and cls.uses_views and not cls.searches_internally
    assert "device" not in h.hyperparameters() and "random_state" not in h.hyperparameters()


def test_named_base_gets_the_datasets_paper_defaults():
    """taskres.base=tip-adapter under the runner: the base Tip-Adapter uses that dataset's search scale/init."""
    from featbench.heads import get_head

    rng = np.random.default_rng(0)
    text = rng.normal(size=(1, 3, 8)).astype(np.float32)
    X = np.repeat(text[0], 2, axis=0) + 0.1 * rng.normal(size=(6, 8)).astype(np.float32)
    y = np.repeat(np.arange(3), 2)
    head = get_head("taskres", dataset="oxford_flowers", shots=2, base="tip-adapter", epochs=1,
                    paper_context=("oxford_flowers", 2))
    head.fit(X, y, text=text)
    assert head.base_head_.alpha == 10 and list(head.base_head_.search_scale) == [50, 50]  # Flowers' Tip defaults
    assert "paper_context" not in head.hyperparameters()


def _autograd_reference(h, X, y, text, views):
    """The straightforward loop (autograd, normalise W, torch Adam): what the hand-written kernel must equal."""
    import torch.nn.functional as F

    from featbench.heads import _torch as T

    W0 = torch.as_tensor(text.mean(0))
    res = torch.nn.Parameter(torch.zeros_like(W0))
    opt = torch.optim.Adam([res], lr=h.lr, betas=(0.9, 0.999), weight_decay=h.weight_decay)
    gen = T.generator(h.random_state)
    n = len(y)
    yt = torch.as_tensor(y)
    for epoch in range(h.epochs):
        T.set_lr(opt, cosine_with_warmup(epoch, h.lr, h.epochs, h.warmup_epochs, h.warmup_lr))
        vidx = T.draw_view_indices(views.shape[0], n, gen).numpy()
        feats = T.l2norm(torch.as_tensor(views[vidx, np.arange(n)]))
        for idx in T.minibatches(n, h.batch_size, gen, drop_last=n >= h.batch_size):
            w = T.l2norm(W0 + h.alpha * res)
            loss = F.cross_entropy(100.0 * feats[idx] @ w.T, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return res.detach().numpy()


@pytest.mark.parametrize("bs", [16, 1000])
def test_hand_written_kernel_equals_autograd(bs):
    text, X, y, views, _ = _data(7, T=2)
    h = TaskRes(epochs=6, batch_size=bs, lr=1e-2, alpha=0.7, random_state=5).fit(X, y, text=text, views=views)
    ref = _autograd_reference(h, X, y, text, views)
    np.testing.assert_allclose(h.residual_.numpy(), ref, atol=2e-5 * max(1.0, np.abs(ref).max()), rtol=1e-4)


def test_batched_runs_equal_one_at_a_time():
    """Seeds x alphas with different data per run (as different few-shot subsets) in one stacked fit."""
    runs = []
    for seed in range(3):
        text, X, y, views, (Xt, _) = _data(10 + seed)
        for alpha in (0.25, 1.0):
            runs.append((dict(FAST, alpha=alpha, random_state=seed), X, y, dict(text=text, views=views), Xt))
    heads = [TaskRes(**kw) for kw, *_ in runs]
    keys = {h.batch_key(X, y, ctx) for h, (_, X, y, ctx, _) in zip(heads, runs)}
    assert len(keys) == 1 and None not in keys
    TaskRes.fit_batched([(h, X, y, ctx) for h, (_, X, y, ctx, _) in zip(heads, runs)])
    for h, (kw, X, y, ctx, Xt) in zip(heads, runs):
        alone = TaskRes(**kw).fit(X, y, **ctx)
        np.testing.assert_allclose(h.decision_function(Xt), alone.decision_function(Xt), atol=1e-4)
        assert h.fit_info_ == alone.fit_info_ and h.lrs_ == alone.lrs_
    assert TaskRes(base="zeroshot").batch_key(X, y, runs[0][3]) is None  # a fitted base head: one at a time
    assert TaskRes(lr=0.1).batch_key(X, y, runs[0][3]) != TaskRes().batch_key(X, y, runs[0][3])
