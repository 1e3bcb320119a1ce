"""CLIP-Adapter: r = 0 is zero-shot, only the adapter trains, training helps, determinism, registry, new classes."""

import numpy as np
import pytest
import torch

from featbench.errors import FeatbenchError
from featbench.heads import get_head, get_head_class, list_heads
from featbench.heads.clip_adapter import CLIPAdapter

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _norm(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _data(seed=0, C=6, D=16, k=8, kt=30, V=3, T=1, text_noise=0.5):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(C, D))
    text = (t[None] + text_noise * rng.normal(size=(T, C, D))).astype(np.float32) * 3
    mu = t + 1.0 * rng.normal(size=(C, D))

    def draw(kk):
        y = np.repeat(np.arange(C), kk)
        return (mu[y] + 1.0 * rng.normal(size=(len(y), D))).astype(np.float32) * 4, y

    X, y = draw(k)
    views = (X[None] + 0.5 * rng.normal(size=(V,) + X.shape)).astype(np.float32)
    return text, X, y, views, draw(kt)


FAST = dict(epochs=5, batch_size=16, lr=1e-2)


def test_ratio_zero_equals_zeroshot_exactly():
    text, X, y, views, (Xt, yt) = _data(0, T=1)
    zs = get_head("zeroshot").fit(X, y, text=text, logit_scale=50.0).decision_function(Xt)
    h = CLIPAdapter(**dict(FAST, ratio=0.0)).fit(X, y, text=text, views=views, logit_scale=50.0)
    np.testing.assert_array_equal(h.decision_function(Xt), zs)
    # several templates: "ensemble" is the zero-shot classifier; "single" (default) the last, CoOp's, template
    text3, X, y, views, (Xt, yt) = _data(1, T=3)
    zs3 = get_head("zeroshot").fit(X, y, text=text3).decision_function(Xt)
    ens = CLIPAdapter(**dict(FAST, ratio=0.0, prompt="ensemble")).fit(X, y, text=text3, views=views)
    np.testing.assert_array_equal(ens.decision_function(Xt), zs3)
    single = CLIPAdapter(**dict(FAST, ratio=0.0)).fit(X, y, text=text3, views=views)
    hand = 100.0 * _norm(Xt.astype(np.float64)) @ _norm(text3[-1].astype(np.float64)).T
    np.testing.assert_allclose(single.decision_function(Xt), hand, atol=1e-3)


def test_formula_by_hand():
    text, X, y, views, (Xt, yt) = _data(2)
    h = CLIPAdapter(**dict(FAST, ratio=0.3)).fit(X, y, text=text, views=views)
    W1, W2 = h.W1_.numpy().astype(np.float64), h.W2_.numpy().astype(np.float64)
    assert W1.shape == (16 // 4, 16) and W2.shape == (16, 16 // 4)
    f = Xt.astype(np.float64)
    a = np.maximum(np.maximum(f @ W1.T, 0) @ W2.T, 0)
    blend = 0.3 * a + 0.7 * f  # raw feature into the adapter; normalised after the blend
    hand = 100.0 * _norm(blend) @ _norm(text[0].astype(np.float64)).T
    np.testing.assert_allclose(h.decision_function(Xt), hand, rtol=1e-4, atol=1e-3)


def test_only_the_adapter_trains_with_the_reference_optimiser(monkeypatch):
    text, X, y, views, _ = _data(3)
    text0, X0, views0 = text.copy(), X.copy(), views.copy()
    seen = []

    class SpySGD(torch.optim.SGD):
        def __init__(self, params, **kw):
            params = list(params)
            seen.append(([tuple(p.shape) for p in params], kw))
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, "SGD", SpySGD)
    h = CLIPAdapter(epochs=3, batch_size=8).fit(X, y, text=text, views=views)
    (shapes, kw), = seen
    assert shapes == [(4, 16), (16, 4)]  # W1, W2 only: no bias, no text, no logit scale
    assert kw["momentum"] == 0.9 and kw["weight_decay"] == 5e-4 and kw["lr"] == 2e-3
    np.testing.assert_array_equal(text, text0)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(views, views0)
    assert h.lrs_[0] == 1e-5 and h.lrs_[1] == 2e-3  # one constant warm-up epoch, then the cosine


def test_training_improves_on_separable_data():
    # text weights only loosely point at the classes: zero-shot is poor, the adapter can fix the image side
    text, X, y, views, (Xt, yt) = _data(4, C=5, D=32, k=16, text_noise=2.0)
    zs = get_head("zeroshot").fit(X, y, text=text).score(Xt, yt)
    h = CLIPAdapter(ratio=0.8, epochs=60, batch_size=16, lr=0.05).fit(X, y, text=text, views=views)
    assert h.score(Xt, yt) > zs + 0.1, (zs, h.score(Xt, yt))
    assert h.score(X, y) > 0.9


def test_deterministic_and_seeded():
    text, X, y, views, (Xt, yt) = _data(5)
    a = CLIPAdapter(**FAST, random_state=3).fit(X, y, text=text, views=views).decision_function(Xt)
    torch.manual_seed(123)  # the global RNG plays no part
    b = CLIPAdapter(**FAST, random_state=3).fit(X, y, text=text, views=views).decision_function(Xt)
    c = CLIPAdapter(**FAST, random_state=4).fit(X, y, text=text, views=views).decision_function(Xt)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_registry_paper_defaults_and_declared_params():
    assert "clip-adapter" in list_heads()
    cls = get_head_class("clip-adapter")
    assert cls is CLIPAdapter and cls.scores_unseen_classes
    assert set(cls.hyperparams) == set(cls.param_names())
    h = get_head("clip-adapter", dataset="caltech101", shots=1)
    assert (h.ratio, h.reduction, h.lr, h.batch_size, h.epochs) == (0.2, 4, 2e-3, 32, 50)
    assert get_head("clip-adapter", dataset="dtd", shots=4).epochs == 100
    assert get_head("clip-adapter", dataset="dtd", shots=16).epochs == 200
    assert get_head("clip-adapter", dataset="imagenet", shots=16).epochs == 50
    with pytest.raises(FeatbenchError, match="clip-adapter.ratio"):
        get_head("clip-adapter", ratio=1.5)
    with pytest.raises(FeatbenchError, match="clip-adapter.prompt"):
        get_head("clip-adapter", prompt="many")


def test_for_classes_keeps_the_adapter_and_scores_new_text():
    text, X, y, views, (Xt, yt) = _data(6, C=6)
    base = CLIPAdapter(**FAST).fit(X[y < 3], y[y < 3], text=text[:, :3], views=views[:, y < 3])
    new = base.for_classes(text[:, 3:])
    assert base.decision_function(Xt).shape == (len(Xt), 3)
    out = new.decision_function(Xt)
    assert out.shape == (len(Xt), 3)
    blend = base.transform(Xt).astype(np.float64)
    hand = 100.0 * _norm(blend) @ _norm(text[0, 3:].astype(np.float64)).T
    np.testing.assert_allclose(out, hand, rtol=1e-4, atol=1e-3)


def test_no_views_is_noted():
    text, X, y, _, _ = _data(7)
    h = CLIPAdapter(**FAST).fit(X, y, text=text)
    assert h.fit_info_["views_used"] == 0 and any("no augmented views" in n for n in h.fit_info_["notes"])


@pytest.mark.real
@pytest.mark.slow  # 50 epochs x 32 batches of 1000 rows: ~30 s on a shared CPU
def test_real_imagenet_one_shot_beats_zeroshot(real_fixtures):
    from featbench.fewshot import fewshot_rows

    z = np.load(real_fixtures / "imagenet.npz")
    text, Xt, yt = z["text_raw"], z["test_features"].astype(np.float32), z["test_labels"]
    rows = np.asarray(fewshot_rows(z["train_labels"].tolist(), None, 1, 1).train, int)
    X, y = z["train_features"][rows].astype(np.float32), z["train_labels"][rows]
    zs = 100 * get_head("zeroshot").fit(X, y, text=text).score(Xt, yt)
    h = get_head("clip-adapter", dataset="imagenet", shots=1, random_state=1).fit(X, y, text=text)
    assert h.epochs == 50
    assert 100 * h.score(Xt, yt) > zs + 1.0  # measured 62.65 vs 61.14 (README)
