"""APE and APE-T: the heads against plain transcriptions of yangyangyang127/APE (``main.py`` APE/APE_T,
``utils.py`` cal_criterion/APE_Training), degenerate cases, determinism, the registry, and the real ViT-B/32
ImageNet fixture (skipped where ../shared is absent)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featbench.heads import get_head, get_head_class

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _data(n_classes=4, dim=10, shots=2, n_views=3, n_val=8, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(n_classes, dim)))
    text = (centres + 2.5 * rng.normal(size=(2, n_classes, dim)) / np.sqrt(dim)) * 5.0  # zero-shot ~60%

    def draw(k):
        y = np.repeat(np.arange(n_classes), k)
        return (centres[y] + 1.5 * rng.normal(size=(len(y), dim)) / np.sqrt(dim)).astype(np.float32) * 4, y

    X, y = draw(shots)
    Xv, yv = draw(n_val)
    Xt, yt = draw(n_test)
    views = (X[None] + 0.3 * rng.normal(size=(n_views,) + X.shape)).astype(np.float32)
    return X, y, views, Xv, yv, Xt, yt, text.astype(np.float32)


def _clip_weights(text):
    """extract_text_feature: per-prompt normalise, mean, normalise; returned here as [C, D]."""
    return _unit(_unit(np.asarray(text, np.float64)).mean(axis=0))


def _cache_keys(views):
    """extract_few_shot_feature: the mean of the augmented views, normalised (rows are class-grouped here)."""
    return _unit(np.asarray(views, np.float64).mean(axis=0))


def _reference_criterion(W, keys, shots, w, feat_num, use_cache=True):
    """cal_criterion with its four nested loops."""
    n_classes, dim = W.shape
    text_feat = W[:, None, :]
    feats = np.concatenate([text_feat, keys.reshape(n_classes, shots, dim)], axis=1) if use_cache else text_feat
    sim_sum, count = np.zeros(dim), 0
    for i in range(n_classes):
        for j in range(n_classes):
            for m in range(feats.shape[1]):
                for n in range(feats.shape[1]):
                    if i != j:
                        sim_sum += feats[i, m] * feats[j, n]
                        count += 1
    criterion = -w[0] * (sim_sum / count) + w[1] * W.var(axis=0, ddof=1)
    return np.argsort(-criterion, kind="stable")[:feat_num]


def _reference_ape(views, y, Xv, yv, Xt, text, cfg):
    """main.py APE(): channel selection, KL-weighted values, the beta/alpha/gamma loops on val."""
    W, keys = _clip_weights(text), _cache_keys(views)
    n_classes = W.shape[0]
    values = np.eye(n_classes)[y]
    val, test = _unit(np.asarray(Xv, np.float64)), _unit(np.asarray(Xt, np.float64))
    idx = _reference_criterion(W, keys, len(y) // n_classes, cfg["w"], cfg["feat_num"])
    new_W, new_keys = _unit(W[:, idx]), _unit(keys[:, idx])
    new_val, new_test = _unit(val[:, idx]), _unit(test[:, idx])
    key_logits = new_keys @ new_W.T
    key_logits = np.exp(key_logits) / np.exp(key_logits).sum(1, keepdims=True)
    cache_div = np.sum(values * np.log2((values + 1e-6) / (key_logits + 1e-6)), axis=1)[:, None]
    sb, sa, sg = cfg["search_scale"]
    nb, na, ng = cfg["search_steps"]
    best_acc, best = 0.0, None
    R_fF, R_fW = new_val @ new_keys.T, 100.0 * val @ W.T
    for beta in [i * (sb - 0.1) / nb + 0.1 for i in range(nb)]:
        for alpha in [i * (sa - 0.1) / na + 0.1 for i in range(na)]:
            for gamma in [i * sg / ng for i in range(ng)]:
                soft = values * np.exp(cache_div * gamma)
                logits = R_fW + np.exp(-(beta - beta * R_fF)) @ soft * alpha
                acc = float((logits.argmax(1) == yv).mean())
                if acc > best_acc:
                    best_acc, best = acc, (alpha, beta, gamma)
    alpha, beta, gamma = best
    soft = values * np.exp(cache_div * gamma)
    return best, idx, 100.0 * test @ W.T + np.exp(-(beta - beta * (new_test @ new_keys.T))) @ soft * alpha


APE_CFG = dict(search_scale=(7.0, 5.0, 1.0), search_steps=(12, 6, 5), feat_num=6, w=(0.6, 0.4))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ape_matches_reference_transcription(seed):
    X, y, views, Xv, yv, Xt, yt, text = _data(seed=seed)
    (alpha, beta, gamma), idx, ref_logits = _reference_ape(views, y, Xv, yv, Xt, text, APE_CFG)
    head = get_head("ape", **APE_CFG).fit(X, y, text=text, views=views, X_val=Xv, y_val=yv)
    assert sorted(head.channels_.tolist()) == sorted(idx.tolist())
    sel = head.fit_info_["selected"]
    assert (sel["alpha"], sel["beta"], sel["gamma"]) == pytest.approx((alpha, beta, gamma))
    np.testing.assert_allclose(head.decision_function(Xt), ref_logits, rtol=1e-4, atol=1e-3)


def test_criterion_closed_form_matches_the_loops_text_only_and_unbalanced():
    from featbench.heads.ape import channel_criterion

    rng = np.random.default_rng(3)
    W, keys = _unit(rng.normal(size=(4, 7))), _unit(rng.normal(size=(8, 7)))
    labels = np.repeat(np.arange(4), 2)
    for use_cache in (True, False):
        ref = _reference_criterion(W, keys, 2, (0.3, 0.7), 7, use_cache=use_cache)
        got = channel_criterion(torch.tensor(W), torch.tensor(keys), torch.tensor(labels), 4, (0.3, 0.7), use_cache)
        assert got.argsort(descending=True).tolist() == ref.tolist()
    # unbalanced: the pair count is sum_{i != j} M_i M_j
    lab = np.array([0, 0, 0, 1, 2, 3, 3, 3])
    got = channel_criterion(torch.tensor(W), torch.tensor(keys), torch.tensor(lab), 4, (1.0, 0.0))
    sets = [np.vstack([W[c], keys[lab == c]]) for c in range(4)]
    total, count = np.zeros(7), 0
    for i in range(4):
        for j in range(4):
            if i != j:
                for a in sets[i]:
                    for b in sets[j]:
                        total, count = total + a * b, count + 1
    np.testing.assert_allclose(got.numpy(), -total / count, rtol=1e-10)


def test_ape_alpha_zero_is_zeroshot_and_all_channels_is_tip_adapter():
    X, y, views, Xv, yv, Xt, yt, text = _data()
    zs = get_head("zeroshot").fit(X, y, text=text).decision_function(Xt)
    ape = get_head("ape", alpha=0.0, search=False).fit(X, y, text=text, views=views)
    np.testing.assert_allclose(ape.decision_function(Xt), zs, rtol=1e-5, atol=1e-4)
    # every channel kept and gamma = 0: APE's cache is Tip-Adapter's
    ape = get_head("ape", alpha=1.7, beta=3.0, gamma=0.0, feat_num=10, search=False).fit(X, y, text=text, views=views)
    tip = get_head("tip-adapter", alpha=1.7, beta=3.0, search=False).fit(X, y, text=text, views=views)
    np.testing.assert_allclose(ape.decision_function(Xt), tip.decision_function(Xt), rtol=1e-5, atol=1e-4)
    assert any("every channel kept" in n for n in ape.fit_info_["notes"])


# ---------------------------------------------------------------------------------------------------- APE-T
class _ReferenceAPETraining(torch.nn.Module):
    """utils.APE_Training, with the residual width and the channels passed in (and float32, not half)."""

    def __init__(self, n_classes, shots, indices):
        super().__init__()
        self.shots, self.indices, self.feat_num = shots, indices, len(indices)
        self.value_weights = torch.nn.Parameter(torch.ones([n_classes * shots, 1]))
        self.res = torch.nn.Parameter(torch.zeros([n_classes, self.feat_num]))

    def forward(self, cache_keys, clip_weights, cache_values):  # clip_weights [D, C] as in the reference
        res_keys = self.res.unsqueeze(1).repeat(1, self.shots, 1).reshape(-1, self.feat_num)
        new_cache_keys = cache_keys.clone()
        new_cache_keys[:, self.indices] = new_cache_keys[:, self.indices] + res_keys
        new_clip_weights = clip_weights.clone()
        new_clip_weights[self.indices, :] = clip_weights[self.indices, :] + self.res.t()
        return new_cache_keys, new_clip_weights, cache_values * self.value_weights


def _reference_ape_t_training(X, y, text, cfg, epochs):
    """APE_T()'s loop for full batches of plain features (no augmentation: one batch, order-free mean loss)."""
    W = torch.tensor(_clip_weights(text), dtype=torch.float32)
    keys = torch.tensor(_unit(np.asarray(X, np.float64)), dtype=torch.float32)
    values = torch.nn.functional.one_hot(torch.tensor(y)).float()
    shots = len(y) // W.shape[0]
    idx = _reference_criterion(W.double().numpy(), keys.double().numpy(), shots, cfg["w"], cfg["feat_num"])
    adapter = _ReferenceAPETraining(W.shape[0], shots, torch.tensor(idx))
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg["lr"], eps=cfg["eps"], weight_decay=1e-1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * 1)
    beta, alpha = cfg["beta"], cfg["alpha"]
    feats = keys.clone()  # the training images: the plain normalised features
    for _ in range(epochs):
        new_keys, new_W, R_FW = adapter(keys, W.t(), values)
        logits = 100.0 * feats @ new_W + ((-1) * (beta - beta * (feats @ new_keys.t()))).exp() @ R_FW * alpha
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    with torch.no_grad():
        return adapter(keys, W.t(), values)


def test_ape_t_training_matches_reference_transcription():
    X, y, views, Xv, yv, Xt, yt, text = _data(seed=4)
    cfg = dict(feat_num=6, w=(0.2, 0.8), lr=1e-2, eps=1e-3, alpha=2.0, beta=1.0)
    new_keys, new_W, R_FW = _reference_ape_t_training(X, y, text, cfg, epochs=7)
    head = get_head("ape-t", epochs=7, batch_size=64, search=False, **cfg).fit(X, y, text=text)
    np.testing.assert_allclose(head.keys_.numpy(), new_keys.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(head.adapted_text_.numpy(), new_W.t().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(head.value_weights_.numpy(), R_FW.max(1).values.numpy(), rtol=1e-4, atol=1e-5)
    f = torch.tensor(_unit(np.asarray(Xt, np.float64)), dtype=torch.float32)
    ref = 100.0 * f @ new_W + ((-1) * (1.0 - f @ new_keys.t())).exp() @ R_FW * 2.0
    np.testing.assert_allclose(head.decision_function(Xt), ref.numpy(), rtol=1e-4, atol=1e-3)
    assert head.fit_info_["iterations"] == 7 and any("last epoch" in n for n in head.fit_info_["notes"])


def test_ape_t_without_training_searches_like_tip_adapter():
    X, y, views, Xv, yv, Xt, yt, text = _data(seed=5)
    ape_t = get_head("ape-t", epochs=0, search_scale=[7, 7]).fit(X, y, text=text, views=views, X_val=Xv, y_val=yv)
    tip = get_head("tip-adapter", search_scale=[7, 7]).fit(X, y, text=text, views=views, X_val=Xv, y_val=yv)
    assert ape_t.fit_info_["selected"]["alpha"] == pytest.approx(tip.fit_info_["selected"]["alpha"])
    assert ape_t.fit_info_["selected"]["beta"] == pytest.approx(tip.fit_info_["selected"]["beta"])
    np.testing.assert_allclose(ape_t.decision_function(Xt), tip.decision_function(Xt), rtol=1e-5, atol=1e-4)


def test_ape_t_keeps_the_best_selection_epoch():
    """The kept epoch scores at least as well on the selection split as the last one (same draws, same seed)."""
    X, y, views, Xv, yv, Xt, yt, text = _data(seed=6)
    params = dict(epochs=6, lr=5e-2, feat_num=6, search=False, random_state=2)
    best = get_head("ape-t", **params).fit(X, y, text=text, views=views, X_val=Xv, y_val=yv)
    last = get_head("ape-t", select_epoch=False, **params).fit(X, y, text=text, views=views, X_val=Xv, y_val=yv)
    assert 0 <= best.fit_info_["selected"]["epoch"] < 6 and "epoch" not in last.fit_info_["selected"]
    assert best.score(Xv, yv) >= last.score(Xv, yv)


def test_determinism():
    X, y, views, Xv, yv, Xt, yt, text = _data()
    for name, params in (("ape", dict(search_steps=[20, 5, 3])), ("ape-t", dict(epochs=4, random_state=3))):
        runs = [get_head(name, **params).fit(X, y, text=text, views=views, X_val=Xv, y_val=yv).decision_function(Xt)
                for _ in range(2)]
        np.testing.assert_array_equal(runs[0], runs[1], err_msg=name)


def test_registry_builds_them_with_paper_defaults():
    assert get_head_class("ape").__name__ == "APE" and get_head_class("ape-t").__name__ == "APET"
    for name in ("ape", "ape-t"):
        cls = get_head_class(name)
        assert cls.searches_internally and cls.uses_views and cls.needs_text and cls.paper_selection == "full_val"
        assert cls.reference_selects_on_test == ("imagenet",) and not cls.scores_unseen_classes
    ape = get_head("ape", dataset="imagenet", shots=4)
    assert list(ape.search_scale) == [7, 7, 0.5] and list(ape.search_steps) == [200, 20, 5]
    assert ape.feat_num == 500 and list(ape.w) == [0.7, 0.3] and ape.alpha == 2.0
    ape_t = get_head("ape-t", dataset="eurosat", shots=16)
    assert (ape_t.epochs, ape_t.lr, ape_t.eps, ape_t.feat_num) == (200, 1e-3, 1e-3, 900)
    assert list(ape_t.search_scale) == [30, 5] and list(ape_t.w) == [0.2, 0.8]
    assert get_head("ape-t", dataset="food101", shots=2).eps == 1e-2
    assert get_head("ape-t", dataset="food101", shots=4).eps == 1e-3
    get_head("ape", dataset="my_dataset", shots=None)


# ---------------------------------------------------------------------------------------------------- real fixture
@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("name", ["ape", "ape-t"])
@pytest.mark.parametrize("shots", [1, 2])
def test_real_imagenet_beats_zeroshot(real_fixtures, name, shots):
    d = np.load(real_fixtures / "imagenet.npz")
    ytr, yte = d["train_labels"], d["test_labels"]
    support = np.concatenate([np.where(ytr == c)[0][:shots] for c in range(1000)])
    select = np.setdiff1d(np.arange(len(ytr)), support)  # the other train rows: the selection split
    Xtr, Xt, yt, text = d["train_features"].astype(np.float32), d["test_features"].astype(np.float32), yte, d["text_raw"]
    X, y, Xs, ys = Xtr[support], ytr[support], Xtr[select], ytr[select]
    zs = get_head("zeroshot").fit(X, y, text=text).score(Xt, yt)
    acc = get_head(name, dataset="imagenet", shots=shots).fit(X, y, text=text, X_val=Xs, y_val=ys).score(Xt, yt)
    assert acc > zs, f"{name} {shots}-shot: {acc:.4f} <= zero-shot {zs:.4f}"
