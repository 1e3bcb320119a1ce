"""CoCoOp: a plain transcription of KaiyangZhou/CoOp ``trainers/cocoop.py`` (image by image, full 77-token
text encoder) against the batched head, the zero-shot identity, new classes, determinism and the registry
(tiny random-weight tower, CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featbench.errors import FeatbenchError
from featbench.heads import get_head, list_heads
from featbench.heads.cocoop import CoCoOp
from featbench.heads.coop import CoOp

pytestmark = pytest.mark.usefixtures("torch_one_thread")

NAMES = ["cat", "big dog", "traffic_light"]


@pytest.fixture(scope="module")
def task(tower):
    with torch.no_grad():
        t = tower.encode_text([f"a photo of a {n.replace('_', ' ')}." for n in NAMES]).numpy()
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 2)
    X = (t[y] + 0.3 * rng.normal(size=(6, t.shape[1]))).astype(np.float32)
    return X, y


# ----------------------------------------------------------------------------------------------------
# the reference, transcribed plainly (PromptLearner + CustomCLIP + TextEncoder, Dassl's SGD loop)
# ----------------------------------------------------------------------------------------------------
def reference_logits(model, ctx, meta, f, classnames):
    """CustomCLIP.forward: for each image, its prompts for every class through the whole 77-token encoder."""
    names = [n.replace("_", " ") for n in classnames]
    tokens = model.tokenizer([f"a photo of a {n}." for n in names])
    emb = model.token_embedding(tokens)
    prefix, suffix = emb[:, :1], emb[:, 1 + ctx.shape[0]:]
    logits = []
    for f_i in f:
        bias = F.linear(F.relu(F.linear(f_i, meta[0], meta[1])), meta[2], meta[3])
        ctx_i = (ctx + bias).unsqueeze(0).expand(len(names), -1, -1)
        x = torch.cat([prefix, ctx_i, suffix], dim=1) + model.positional_embedding
        x = model.transformer(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        x = x[torch.arange(len(names)), tokens.argmax(dim=-1)]
        tp = model.text_projection
        t = tp(x) if isinstance(tp, torch.nn.Module) else x @ tp
        t = t / t.norm(dim=-1, keepdim=True)
        logits.append(100.0 * f_i @ t.t())
    return torch.stack(logits)


def reference_fit(model, X, y, ctx, meta, epochs, lr, batch, seed):
    """Dassl: SGD(momentum 0.9, wd 5e-4) on ctx + meta_net, cosine lr per epoch (no warm-up), random order per epoch,
    the same generator draws as the head (meta-net init, then per epoch one view index per image + a permutation)."""
    gen = torch.Generator().manual_seed(seed)
    for p in meta:  # the head's meta-net init consumes these draws
        torch.rand(*p.shape, generator=gen)
    ctx = ctx.clone().requires_grad_(True)
    meta = [p.clone().requires_grad_(True) for p in meta]
    opt = torch.optim.SGD([ctx, *meta], lr=lr, momentum=0.9, weight_decay=5e-4)
    f_all = torch.as_tensor(X) / torch.as_tensor(X).norm(dim=-1, keepdim=True)
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr * (1 + math.cos(math.pi * epoch / epochs)) / 2
        torch.randint(0, 1, (len(y),), generator=gen)  # the view draw (one view: the plain features)
        order = torch.randperm(len(y), generator=gen)
        for s in range(0, len(y) - len(y) % batch, batch):
            idx = order[s:s + batch]
            loss = F.cross_entropy(reference_logits(model, ctx, meta, f_all[idx], NAMES), torch.as_tensor(y)[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return ctx.detach(), [p.detach() for p in meta]


class _Model:  # what the transcription reads of open_clip's CLIP, plus the tokenizer
    def __init__(self, enc):
        m = enc.model
        self.token_embedding, self.positional_embedding = m.token_embedding, m.positional_embedding
        self.transformer, self.ln_final, self.text_projection = m.transformer, m.ln_final, m.text_projection
        self.attn_mask, self.tokenizer = m.attn_mask, enc.tokenizer


def test_batched_head_equals_the_reference_loop(enc, tower, task):
    X, y = task
    kw = dict(epochs=3, lr=0.05, batch_size=2, warmup_epochs=0, random_state=3)
    start = CoCoOp(**{**kw, "epochs": 0}).fit(X, y, text_tower=tower, classnames=NAMES, logit_scale=100.0)
    head = CoCoOp(**kw).fit(X, y, text_tower=tower, classnames=NAMES, logit_scale=100.0)
    model = _Model(enc)
    ctx, meta = reference_fit(model, X, y, start.ctx_, start.meta_net_, epochs=3, lr=0.05, batch=2, seed=3)
    np.testing.assert_allclose(head.ctx_.numpy(), ctx.numpy(), rtol=1e-4, atol=1e-5)
    for a, b in zip(head.meta_net_, meta):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(head.ctx_, start.ctx_)  # training moved the context
    with torch.no_grad():
        ref = reference_logits(model, ctx, meta, torch.as_tensor(X) / torch.as_tensor(X).norm(dim=-1, keepdim=True), NAMES)
    np.testing.assert_allclose(head.decision_function(X), ref.numpy(), rtol=1e-4, atol=1e-3)
    assert head.fit_info_["prompts_per_step"] == 2 * 3 and head.fit_info_["trainable"] == ["ctx", "meta_net"]


def test_without_the_meta_net_shift_it_is_coop(tower, task):
    X, y = task
    h = CoCoOp(epochs=0).fit(X, y, text_tower=tower, classnames=NAMES, logit_scale=100.0)
    h.meta_net_ = [p.clone() for p in h.meta_net_]
    h.meta_net_[2].zero_()
    h.meta_net_[3].zero_()
    coop = CoOp(ctx_init="a photo of a", n_ctx=4, epochs=0).fit(X, y, text_tower=tower, classnames=NAMES, logit_scale=100.0)
    np.testing.assert_allclose(h.decision_function(X), coop.decision_function(X), rtol=1e-4, atol=1e-4)


def test_new_classes_use_the_learned_context(enc, tower, task):
    X, y = task
    head = CoCoOp(epochs=2, lr=0.05, batch_size=2, warmup_epochs=0).fit(X, y, text_tower=tower, classnames=NAMES)
    new = ["zebra", "fire_truck"]
    other = head.for_classes(None, classnames=new)
    f = torch.as_tensor(X) / torch.as_tensor(X).norm(dim=-1, keepdim=True)
    with torch.no_grad():
        ref = reference_logits(_Model(enc), head.ctx_, head.meta_net_, f, new)
    np.testing.assert_allclose(other.decision_function(X), ref.numpy(), rtol=1e-4, atol=1e-3)
    assert other.decision_function(X).shape == (6, 2) and head.decision_function(X).shape == (6, 3)
    assert CoCoOp.scores_unseen_classes
    with pytest.raises(FeatbenchError, match="class names"):
        head.for_classes(None, classnames=[])


def test_determinism_views_and_scoring_in_chunks(tower, task, monkeypatch):
    X, y = task
    views = np.stack([X, X + 0.01]).astype(np.float32)
    kw = dict(epochs=2, batch_size=1, random_state=1)
    a = CoCoOp(**kw).fit(X, y, text_tower=tower, classnames=NAMES, views=views)
    b = CoCoOp(**kw).fit(X, y, text_tower=tower, classnames=NAMES, views=views)
    c = CoCoOp(**{**kw, "random_state": 2}).fit(X, y, text_tower=tower, classnames=NAMES, views=views)
    assert torch.equal(a.ctx_, b.ctx_) and all(torch.equal(p, q) for p, q in zip(a.meta_net_, b.meta_net_))
    assert not torch.equal(a.meta_net_[0], c.meta_net_[0])
    assert a.fit_info_["views_used"] == 2 and len(a.losses_) == 2 and a.lrs_[0] == pytest.approx(1e-5)
    import featbench.heads.cocoop as mod

    whole = a.decision_function(X)
    monkeypatch.setattr(mod, "EVAL_SEQUENCES", 4)  # one image per tower call
    np.testing.assert_allclose(a.decision_function(X), whole, rtol=1e-5, atol=1e-5)


def test_registry_builds_it_with_the_config_defaults(tower, task):
    X, y = task
    assert "cocoop" in list_heads()
    h = get_head("cocoop", dataset="imagenet", shots=16)
    assert (h.n_ctx, h.ctx_init, h.epochs, h.lr, h.batch_size, h.momentum, h.weight_decay, h.warmup_epochs,
            h.warmup_lr) == (4, "a photo of a", 10, 2e-3, 1, 0.9, 5e-4, 1, 1e-5)
    assert set(CoCoOp.param_names()) <= set(CoCoOp.hyperparams)
    with pytest.raises(FeatbenchError, match="text tower"):
        CoCoOp(epochs=0).fit(X, y, classnames=NAMES)
    with pytest.raises(FeatbenchError, match="D // 16"):
        CoCoOp(epochs=0).fit(X[:, :8], y, text_tower=tower, classnames=NAMES)


def test_base_to_new_through_the_cli_scores_new_classes_itself(tmp_path):
    import json

    from typer.testing import CliRunner

    from featbench.cli import app
    from featbench.synthetic import make_dataset

    run = lambda *a: CliRunner().invoke(app, [str(x) for x in a])  # noqa: E731
    root = make_dataset(tmp_path / "data", "caltech101", n_classes=4, per_split=(3, 2, 2), size=36)
    res = run("extract", "--dataset", "caltech101", "--root", root, "--model", "tiny-vit", "--pretrained", "none",
              "--views", "2", "--view-shots", "2", "--seeds", "1", "--batch-size", "8", "--device", "cpu",
              "--cache-dir", tmp_path / "cache", "--no-progress", "--workers", "0")
    assert res.exit_code == 0, res.output
    out = tmp_path / "rows.jsonl"
    res = run("fit", tmp_path / "cache" / "tiny-vit--none" / "caltech101.h5", "--heads", "cocoop", "--shots", "2",
              "--seeds", "1", "--set", "cocoop.epochs=1", "--base-to-new", "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["classes"] for r in rows] == ["base", "new"] and all(r["fallback"] is None for r in rows)
    assert rows[1]["n_classes"] == 2 and rows[0]["views_used"] == 2 and 0.0 <= rows[1]["acc"] <= 100.0
