"""TransCLIP: a plain transcription of MaxZanella/transduction-for-vlms ``TransCLIP_solver`` (dense, image by
image where the reference is) against the head, zero-shot and few-shot; the transductive contract; determinism
and the registry; and the protocol end to end (X_transductive, "transductive": true rows, --eval-on, base-to-new)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featbench.errors import FeatbenchError
from featbench.heads import get_head, list_heads
from featbench.heads.transclip import FS_GAMMAS, TransCLIP
from featbench.heads.zeroshot import ZeroShot

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ----------------------------------------------------------------------------------------------------
# the reference, transcribed plainly (TransCLIP.py + TransCLIP_utils.py, CPU, dense W)
# ----------------------------------------------------------------------------------------------------
def ref_affinity(query, support):
    aff = query @ query.T if support is None else torch.cat([support @ query.T, query @ query.T])
    knn = aff.topk(4, -1).indices[:, 1:]
    W = torch.zeros(aff.shape)
    for r in range(aff.shape[0]):
        for c in knn[r]:
            W[r, c] = aff[r, c]
    return W


def ref_update_z(ll, y_hat, z, W, lam, labels):
    n = ll.shape[0]
    if labels is not None:
        z = torch.cat([z.clone(), F.one_hot(labels, y_hat.shape[1]).float()])
    for _ in range(5):
        inter = ll.clone() + (50 / 6) * (W.T @ z + (W @ z[:n])[:n])
        inter -= inter.max(dim=1, keepdim=True).values
        inter = (y_hat ** lam) * torch.exp(inter / 50)
        z[:n] = inter / inter.sum(dim=1, keepdim=True)
    return z[:n]


def ref_loglik(x, mu, std):
    out = torch.empty(x.shape[0], mu.shape[0])
    for i in range(x.shape[0]):
        out[i] = -0.5 * (((x[i][None] - mu) ** 2) / std[None]).sum(-1)
    return out


def ref_update_mu(gamma, q, z, s, labels):
    mu = (z / q.shape[0]).T @ q
    if s is not None:
        onehot = F.one_hot(labels, z.shape[1]).float()
        mu += (gamma * 50 / s.shape[0] * onehot).T @ s
        mu /= (z.sum(0) / q.shape[0] + gamma * 50 / s.shape[0] * onehot.sum(0))[:, None]
    else:
        mu /= (z.sum(0) / q.shape[0])[:, None]
    return mu / mu.norm(dim=-1, keepdim=True)


def ref_update_std(gamma, q, z, mu, s, labels):
    std = torch.einsum("ij,ijk->k", z, (q[:, None] - mu[None]) ** 2) / q.shape[0]
    if s is not None and gamma > 0:
        onehot = F.one_hot(labels, z.shape[1]).float()
        std += gamma * 50 / s.shape[0] * torch.einsum("ij,ijk->k", onehot, (s[:, None] - mu[None]) ** 2)
        return std / (z.sum() / q.shape[0] + gamma * 50 / s.shape[0] * onehot.sum())
    return std / (z.sum() / q.shape[0])


def ref_init_mu(q, z, s, labels):
    K = z.shape[1]
    if s is not None:
        mu = F.one_hot(labels, K).float().T @ s
    else:
        mu = torch.zeros(K, q.shape[1])
        top = z.topk(8, dim=0).indices
        mask = torch.zeros_like(z).scatter_(0, top, 1)
        for c in range(K):
            idx = mask[:, c].nonzero().squeeze(1)
            mu[c] = (q[idx] * (z * mask)[idx, c][:, None])[:8].mean(0)
    return mu / mu.norm(dim=-1, keepdim=True)


def reference_transclip(query, logits, support=None, labels=None, val=None, val_labels=None):
    """TransCLIP_solver: returns the z reported for the best-validated gamma (few-shot) or the final z."""
    y_hat = F.softmax(logits, dim=1)
    z = F.softmax(logits, dim=1)
    lam, gammas = (1.0, [0]) if support is None else (0.5, [0.002, 0.01, 0.02, 0.2])
    mu = ref_init_mu(query, z, support, labels)
    std = torch.ones(query.shape[1]) / query.shape[1]
    W = ref_affinity(query, support)
    nearest = None if val is None else (val @ query.T).argmax(dim=1)
    best_val, best_z = -1, None
    for gamma in gammas:
        for k in range(11):
            z = ref_update_z(ref_loglik(query, mu, std), y_hat, z, W, lam, labels)
            if k == 10:
                if nearest is not None:
                    acc = float((z[nearest].argmax(1) == val_labels).float().mean())
                    if acc > best_val:
                        best_val, best_z = acc, z.clone()
                else:
                    best_z = z
                break
            mu = ref_update_mu(gamma, query, z, support, labels)
            std = ref_update_std(gamma, query, z, mu, support, labels)
    return best_z


# ----------------------------------------------------------------------------------------------------
# small data: 4 classes in 16-D, zero-shot text that is right more often than not
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    K, D = 4, 16
    centers = rng.normal(size=(K, D))
    text = centers + 1.2 * rng.normal(size=(K, D))

    def draw(n_per):
        y = np.repeat(np.arange(K), n_per)
        return (centers[y] + 0.9 * rng.normal(size=(len(y), D))).astype(np.float32), y

    X, y = draw(2)
    Xv, yv = draw(2)
    Xq, yq = draw(15)
    return dict(X=X, y=y, Xv=Xv, yv=yv, Xq=Xq, yq=yq, text=text.astype(np.float32)[None])


def _unit(a):
    t = torch.as_tensor(a, dtype=torch.float32)
    return t / t.norm(dim=-1, keepdim=True)


def test_zero_shot_equals_the_reference(data):
    d = data
    h = TransCLIP(mode="zs").fit(d["X"], d["y"], X_transductive=d["Xq"], text=d["text"], logit_scale=100.0)
    logits = 100.0 * _unit(d["Xq"]) @ _unit(d["text"][0]).T
    ref = reference_transclip(_unit(d["Xq"]), logits)
    np.testing.assert_allclose(np.exp(h.decision_function(d["Xq"])), ref.numpy(), atol=2e-4)
    zs = ZeroShot().fit(None, None, text=d["text"])
    assert (h.predict(d["Xq"]) != zs.predict(d["Xq"])).any()  # the transduction changed some predictions
    assert h.fit_info_["mode"] == "zs" and h.fit_info_["lam"] == 1.0 and "gamma" not in h.fit_info_["selected"]


def test_few_shot_equals_the_reference_and_picks_gamma_on_val(data):
    d = data
    h = TransCLIP().fit(d["X"], d["y"], X_transductive=d["Xq"], X_val=d["Xv"], y_val=d["yv"], text=d["text"])
    logits = 100.0 * _unit(d["Xq"]) @ _unit(d["text"][0]).T
    ref = reference_transclip(_unit(d["Xq"]), logits, _unit(d["X"]), torch.as_tensor(d["y"]), _unit(d["Xv"]),
                              torch.as_tensor(d["yv"]))
    np.testing.assert_allclose(np.exp(h.decision_function(d["Xq"])), ref.numpy(), atol=2e-4)
    info = h.fit_info_
    assert info["mode"] == "fs" and info["lam"] == 0.5 and info["selected"]["gamma"] in FS_GAMMAS
    # the paper's Laplacian (rows matched to their samples) is another computation
    aligned = TransCLIP(affinity="aligned").fit(d["X"], d["y"], X_transductive=d["Xq"], X_val=d["Xv"], y_val=d["yv"],
                                                text=d["text"])
    assert not np.allclose(aligned.decision_function(d["Xq"]), h.decision_function(d["Xq"]))
    with pytest.raises(FeatbenchError, match="selection split"):
        TransCLIP().fit(d["X"], d["y"], X_transductive=d["Xq"], text=d["text"])


def test_scores_only_its_transductive_set_in_any_chunking(data):
    d = data
    h = TransCLIP(mode="zs").fit(d["X"], d["y"], X_transductive=d["Xq"], text=d["text"])
    whole = h.decision_function(d["Xq"])
    np.testing.assert_array_equal(np.concatenate([h.decision_function(d["Xq"][s:s + 7]) for s in range(0, 60, 7)]), whole)
    np.testing.assert_array_equal(h.decision_function(d["Xq"].copy()[10:30]), whole[10:30])
    np.testing.assert_allclose(h.predict_proba(d["Xq"]).sum(1), 1.0, atol=1e-5)
    with pytest.raises(FeatbenchError, match="transductive"):
        h.decision_function(d["Xv"])
    untransduced = TransCLIP(mode="zs").fit(d["X"], d["y"], text=d["text"])
    with pytest.raises(FeatbenchError, match="X_transductive"):
        untransduced.decision_function(d["Xq"])


def test_on_top_of_a_trained_base_and_determinism(data):
    d = data
    fit = lambda **kw: TransCLIP(**kw).fit(d["X"], d["y"], X_transductive=d["Xq"], X_val=d["Xv"], y_val=d["yv"],  # noqa: E731
                                           text=d["text"], logit_scale=100.0)
    a, b = fit(base="taskres"), fit(base="taskres")
    np.testing.assert_array_equal(a.decision_function(d["Xq"]), b.decision_function(d["Xq"]))
    assert a.fit_info_["mode"] == "zs" and a.base_.name == "taskres"  # TransCLIP-ZS on top, as fewshot_atop.sh
    logits = torch.as_tensor(a.base_.decision_function(d["Xq"]))
    np.testing.assert_allclose(np.exp(a.decision_function(d["Xq"])), reference_transclip(_unit(d["Xq"]), logits).numpy(),
                               atol=2e-4)
    with pytest.raises(FeatbenchError, match="text tower"):
        fit(base="coop")


def test_registry_builds_it_with_the_paper_defaults():
    assert "transclip" in list_heads() and TransCLIP.transductive and not ZeroShot.transductive
    h = get_head("transclip", dataset="imagenet", shots=2)
    assert (h.base, h.mode, h.lam, h.gammas, h.iters, h.z_iters, h.n_neighbors, h.affinity) == \
        ("zeroshot", "auto", None, None, 10, 5, 3, "reference")
    assert TransCLIP.uses_selection_split({}) and not TransCLIP.uses_selection_split({"base": "taskres"})
    assert TransCLIP.uses_selection_split({"base": "tip-adapter"})  # the base's own search gets the split
    assert set(TransCLIP.param_names()) <= set(TransCLIP.hyperparams)
    with pytest.raises(FeatbenchError, match="transclip.mode"):
        get_head("transclip", mode="both")


# ----------------------------------------------------------------------------------------------------
# the protocol: X_transductive is the split each row is scored on
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    from featbench.api import import_features

    rng = np.random.default_rng(1)
    K, D = 6, 16
    centers = rng.normal(size=(K, D))

    def split(n_per):
        y = np.repeat(np.arange(K), n_per)
        return (centers[y] + 0.8 * rng.normal(size=(len(y), D))).astype(np.float32), y

    tmp = tmp_path_factory.mktemp("transclip")
    out = {}
    for name, n_test in (("src", 10), ("tgt", 7)):
        (Xtr, ytr), (Xv, yv), (Xte, yte) = split(4), split(4), split(n_test)
        np.savez(tmp / f"{name}.npz", train_features=Xtr, train_labels=ytr, val_features=Xv, val_labels=yv,
                 test_features=Xte, test_labels=yte, classnames=np.array([f"c{i}" for i in range(K)]),
                 templates=np.array(["a photo of a {}."]),
                 text_raw=(centers + 1.0 * rng.normal(size=(K, D))).astype(np.float32)[None])
        out[name] = import_features(tmp / f"{name}.npz", tmp / f"{name}.h5", dataset="toy", model="m", pretrained="p")
    return out


def test_protocol_passes_the_scored_split_and_marks_rows(caches, monkeypatch):
    from featbench import protocol
    from featbench.cell_inputs import labelled, open_cached

    seen = []
    real_fit = TransCLIP.fit

    def spy(self, X, y, **context):
        seen.append(context.get("X_transductive"))
        return real_fit(self, X, y, **context)

    monkeypatch.setattr(TransCLIP, "fit", spy)
    src, tgt = str(caches["src"]), str(caches["tgt"])
    rows = protocol.run_cell(protocol.Cell(src, "transclip", protocol.head_target("transclip"), shots=2, seed=1))
    test_X, _ = labelled(open_cached(src), "test", "features", None)
    assert len(rows) == 1 and rows[0]["transductive"] is True and np.array_equal(seen[-1], test_X)
    assert rows[0]["selected"]["gamma"] in FS_GAMMAS and 0 <= rows[0]["acc"] <= 100
    zs = protocol.run_cell(protocol.Cell(src, "zeroshot", protocol.head_target("zeroshot"), shots=2, seed=1))
    assert "transductive" not in zs[0]

    seen.clear()  # --eval-on: a fit per target, on that target's test features
    rows = protocol.run_cell(protocol.Cell(src, "transclip", protocol.head_target("transclip"), shots=2, seed=1,
                                           eval_on=(tgt, src)))
    tgt_X, _ = labelled(open_cached(tgt), "test", "features", None)
    assert seen[0] is None and np.array_equal(seen[1], tgt_X) and np.array_equal(seen[2], test_X)
    assert [r["transductive"] for r in rows] == [True, True] and rows[1]["acc"] == pytest.approx(
        protocol.run_cell(protocol.Cell(src, "transclip", protocol.head_target("transclip"), shots=2, seed=1))[0]["acc"])

    seen.clear()  # base-to-new: the base row's test images are the transductive set; new classes fall back
    rows = protocol.run_cell(protocol.Cell(src, "transclip", protocol.head_target("transclip"), shots=2, seed=1,
                                           base_to_new=True))
    assert [r["classes"] for r in rows] == ["base", "new"] and all(r["transductive"] for r in rows)
    assert len(seen[0]) == rows[0]["n_test"] and rows[1]["fallback"] == "zeroshot"
    json.dumps(rows)


@pytest.mark.real
@pytest.mark.slow  # 3,989 x 1,000 transduction: ~5-10 s of CPU
def test_real_imagenet_transduction_beats_zeroshot(real_fixtures):
    z = np.load(real_fixtures / "imagenet.npz")
    text, Xt, yt = z["text_raw"], z["test_features"].astype(np.float32), z["test_labels"]
    X, y = z["train_features"].astype(np.float32), z["train_labels"]
    zs = 100 * ZeroShot().fit(None, None, text=text).score(Xt, yt)
    h = TransCLIP(mode="zs").fit(X, y, X_transductive=Xt, text=text)
    assert 100 * h.score(Xt, yt) > zs + 0.5  # measured 62.15 vs 61.12
