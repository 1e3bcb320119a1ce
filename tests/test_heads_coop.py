"""CoOp / KgCoOp and the text tower they run: exactness (zero-shot identity, EOT cut), training, the penalty,
and the cache's text-tower record end to end through the CLI (tiny random-weight models, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featbench.encoders import Encoder
from featbench.errors import FeatbenchError
from featbench.heads import get_head
from featbench.heads.coop import CoOp, KgCoOp
from featbench.heads.zeroshot import ZeroShot
from featbench.texttower import TextTower

pytestmark = pytest.mark.usefixtures("torch_one_thread")

NAMES = ["cat", "dog", "car", "tree"]


@pytest.fixture(scope="module")
def task(tower, enc):
    """4 classes whose image features sit near the 'a photo of a {}.' text features (8 shots each)."""
    with torch.no_grad():
        t = tower.encode_text([f"a photo of a {n}." for n in NAMES]).numpy()
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 8)
    X = (t[y] + 0.05 * rng.normal(size=(32, t.shape[1]))).astype(np.float32)
    return X, y, t, enc.logit_scale


# ----------------------------------------------------------------------------------------------------
# exactness
# ----------------------------------------------------------------------------------------------------
def test_coop_from_a_photo_of_a_with_zero_epochs_is_zero_shot(enc, tower):
    names = ["cat", "big dog", "traffic_light", "aeroplane"]
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20, 32)).astype(np.float32)
    y = np.arange(20) % 4
    coop = CoOp(ctx_init="a photo of a", epochs=0).fit(X, y, text_tower=tower, classnames=names, logit_scale=100.0)
    with torch.no_grad():  # open_clip's own encode_text on the hand-written prompts ("_" -> " " as CoOp does)
        ref = enc.model.encode_text(enc.tokenizer([f"a photo of a {n.replace('_', ' ')}." for n in names])).numpy()
    zs = ZeroShot().fit(X, y, text=ref[None], logit_scale=100.0)
    np.testing.assert_allclose(coop.decision_function(X), zs.decision_function(X), rtol=1e-4, atol=1e-4)
    assert coop.fit_info_["n_ctx"] == 4 and coop.fit_info_["shared_prefix"] and any("'_' replaced" in n for n in coop.fit_info_["notes"])


def test_eot_cut_equals_full_77_token_pass(tower):
    torch.manual_seed(0)
    tokens = tower.tokenize(["a photo of a cat.", "x x x x x x x x a very long name of a thing.", "dog"])
    eot = tower.eot_positions(tokens)
    x = tower.embed(tokens) + 0.05 * torch.randn(3, 77, tower.width)  # learned-context-like inputs
    cut = int(eot.max()) + 1
    assert cut < 77
    full = tower.encode(x, eot, cut=False)
    np.testing.assert_allclose(tower.encode(x, eot).numpy(), full.numpy(), rtol=1e-5, atol=1e-6)
    junk = x.clone()
    junk[:, cut:] = 100.0 * torch.randn(3, 77 - cut, tower.width)  # anything after the last EOT is irrelevant
    np.testing.assert_allclose(tower.encode(junk, eot, cut=False).numpy(), full.numpy(), rtol=1e-5, atol=1e-6)
    # and the same through open_clip's encode_text for plain prompts
    with torch.no_grad():
        model_full = tower.encode(tower.embed(tokens), eot, cut=False)
        np.testing.assert_allclose(tower.encode_text(["a photo of a cat.", "x x x x x x x x a very long name of a thing.", "dog"]).numpy(),
                                   model_full.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["tiny-vit", "tiny-rn"])
def test_shared_prefix_forward_and_gradient_equal_the_full_pass(model):
    e = Encoder(model, "none", "cpu")
    tw = TextTower.from_model(e.model, e.tokenizer)
    assert tw.supports_shared_prefix()
    torch.manual_seed(0)
    m = 5
    tokens = tw.tokenize([("x " * m) + n + "." for n in ["cat", "a very long name of a thing", "dog"]])
    eot = tw.eot_positions(tokens)
    emb = tw.embed(tokens).detach()
    ctx = (0.3 * torch.randn(m, tw.width)).requires_grad_(True)
    prefix = torch.cat([emb[0, :1], ctx])
    shared = tw.encode_shared(prefix, emb[:, 1 + m:], eot)
    (shared * torch.linspace(-1, 1, shared.shape[1])).sum().backward()
    g_shared, ctx.grad = ctx.grad.clone(), None
    full = tw.encode(torch.cat([prefix.unsqueeze(0).expand(3, -1, -1), emb[:, 1 + m:]], dim=1), eot, cut=False)
    (full * torch.linspace(-1, 1, full.shape[1])).sum().backward()
    np.testing.assert_allclose(shared.detach().numpy(), full.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_shared.numpy(), ctx.grad.numpy(), rtol=1e-4, atol=1e-5 * float(ctx.grad.abs().max()))


# ----------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------
def test_training_lowers_loss_beats_chance_and_is_deterministic(tower, task):
    X, y, _, scale = task
    kw = dict(n_ctx=4, epochs=40, batch_size=8, random_state=1)
    start = CoOp(n_ctx=4, epochs=0, random_state=1).fit(X, y, text_tower=tower, classnames=NAMES, logit_scale=scale)
    h = CoOp(**kw).fit(X, y, text_tower=tower, classnames=NAMES, logit_scale=scale)
    assert h.losses_[-1] < 0.8 * h.losses_[0]
    assert h.score(X, y) > max(0.5, start.score(X, y))
    assert h.fit_info_["views_used"] == 0 and any("plain features" in n for n in h.fit_info_["notes"])
    assert h.lrs_[0] == pytest.approx(1e-5) and h.lrs_[1] == pytest.approx(2e-3) and len(h.lrs_) == 40
    again = CoOp(**kw).fit(X, y, text_tower=tower, classnames=NAMES, logit_scale=scale)
    assert torch.equal(h.ctx_, again.ctx_)
    other = CoOp(**{**kw, "random_state": 2}).fit(X, y, text_tower=tower, classnames=NAMES, logit_scale=scale)
    assert not torch.equal(h.ctx_, other.ctx_)
    # the learned context scores any class names; on the training names it is the fitted classifier
    np.testing.assert_allclose(h.weights_for(NAMES), h.class_weights(), atol=1e-6)
    assert h.weights_for(["cat", "zebra"]).shape == (2, X.shape[1])


def test_views_are_used(tower, task):
    X, y, _, scale = task
    views = np.stack([X, X + 0.01]).astype(np.float32)
    h = CoOp(n_ctx=2, epochs=2, batch_size=8).fit(X, y, text_tower=tower, classnames=NAMES, logit_scale=scale, views=views)
    assert h.fit_info_["views_used"] == 2 and not h.fit_info_["notes"]
    with pytest.raises(FeatbenchError, match="views"):
        CoOp(epochs=1).fit(X, y, text_tower=tower, classnames=NAMES, views=views[:, :5])


def test_kgcoop_penalty(tower, task):
    X, y, t, scale = task
    X2 = np.roll(X, 8, axis=0)  # labels disagree with the text: plain CoOp must move away from it
    common = dict(epochs=40, batch_size=8, random_state=1)
    fit = lambda h: h.fit(X2, y, text_tower=tower, classnames=NAMES, logit_scale=scale, text=t[None])  # noqa: E731
    drift = lambda h: 1.0 - float((h.weights_ * h.clip_weights_).sum(-1).mean())  # noqa: E731
    # lam = 0 is CoOp from the same init, step for step
    k0 = fit(KgCoOp(lam=0.0, **common))
    c0 = CoOp(n_ctx=4, ctx_init="a photo of a", **common).fit(X2, y, text_tower=tower, classnames=NAMES, logit_scale=scale)
    assert torch.equal(k0.weights_, c0.weights_)
    # the paper's lam = 8 keeps the classifier far closer to the hand-crafted one
    assert drift(fit(KgCoOp(lam=8.0, **common))) < 0.1 * drift(k0)
    # a huge lam (lr small enough that lam * lr stays in SGD's stable range) stays at the hand-crafted classifier
    slow = dict(common, lr=1e-5, warmup_lr=1e-5)
    assert drift(fit(KgCoOp(lam=1e3, **slow))) < 1e-5 < 1e-3 < drift(fit(KgCoOp(lam=0.0, **slow)))


def test_defaults_params_and_errors(tower, task):
    X, y, _, scale = task
    c = get_head("coop", dataset="eurosat", shots=16)
    assert (c.n_ctx, c.ctx_init, c.epochs, c.lr, c.batch_size, c.momentum, c.weight_decay) == (16, None, 200, 2e-3, 32, 0.9, 5e-4)
    assert [get_head("coop", dataset="dtd", shots=k).epochs for k in (1, 2, 4, 8)] == [50, 100, 100, 200]
    assert get_head("coop", dataset="imagenet", shots=16).epochs == 50
    k = get_head("kgcoop", dataset="eurosat", shots=16)
    assert (k.ctx_init, k.n_ctx, k.lam, k.epochs, k.batch_size, k.lr) == ("a photo of a", 4, 8.0, 100, 128, 2e-3)
    for cls in (CoOp, KgCoOp):
        assert set(cls.param_names()) <= set(cls.hyperparams)
    with pytest.raises(FeatbenchError, match="coop.n_ctx"):
        get_head("coop", n_ctx=0)
    with pytest.raises(FeatbenchError, match="text tower"):
        CoOp(epochs=0).fit(X, y, classnames=NAMES)
    with pytest.raises(FeatbenchError, match="no room"):
        CoOp(n_ctx=76, epochs=0).fit(X, y, text_tower=tower, classnames=NAMES)
    with pytest.raises(FeatbenchError, match="text features"):
        KgCoOp(epochs=0).fit(X, y, text_tower=tower, classnames=NAMES)
    h = CoOp(n_ctx=3, ctx_init="a photo of a", epochs=0).fit(X, y, text_tower=tower, classnames=NAMES, logit_scale=scale)
    assert any("n_ctx=3 ignored" in n for n in h.fit_info_["notes"])


# ----------------------------------------------------------------------------------------------------
# the cache's record of its text tower, end to end
# ----------------------------------------------------------------------------------------------------
def _cli(*args):
    from featbench.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    from featbench.synthetic import make_dataset

    tmp = tmp_path_factory.mktemp("coop")
    root = make_dataset(tmp / "data", "caltech101", n_classes=3, per_split=(4, 2, 2), size=36)
    res = _cli("extract", "--dataset", "caltech101", "--root", root, "--model", "tiny-vit", "--pretrained", "none",
               "--views", "2", "--view-shots", "2", "--seeds", "1", "--batch-size", "8", "--device", "cpu",
               "--cache-dir", tmp / "cache", "--no-progress", "--workers", "0")
    assert res.exit_code == 0, res.output
    return tmp / "cache" / "tiny-vit--none" / "caltech101.h5"


def _copy_with(path, tmp_path, name, edit):
    import shutil

    import h5py

    out = tmp_path / name
    shutil.copy(path, out)
    with h5py.File(out, "r+") as f:
        edit(f)
    return out


def test_extract_then_fit_coop_kgcoop_through_the_cli(extracted, tmp_path):
    import h5py

    from featbench.texttower import build_from_record, cache_tower_record
    from featbench.cache import Cache

    with h5py.File(extracted, "r") as f:
        record = json.loads(f.attrs["text_tower"])
        assert record["weights"] == "none" and "/model/text_tower_state" in f
    with Cache(extracted) as c:  # the rebuilt tower reproduces the cache's own text features
        rebuilt = build_from_record(cache_tower_record(c), c)
        with torch.no_grad():
            feats = rebuilt.encode_text([t.replace("{}", n) for t in c.templates for n in c.classnames]).numpy()
        np.testing.assert_allclose(feats.reshape(c.text_features().shape), c.text_features(), atol=2e-3)
    out = tmp_path / "rows.jsonl"
    res = _cli("fit", extracted, "--heads", "coop,kgcoop", "--shots", "2", "--seeds", "1", "--set", "coop.epochs=2",
               "--set", "kgcoop.epochs=2", "--set", "coop.ctx_init=a photo of a", "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["head"] for r in rows] == ["coop", "kgcoop"]
    assert rows[0]["params"]["ctx_init"] == "a photo of a" and rows[1]["params"]["lam"] == 8.0
    assert all(r["views_used"] == 2 and 0.0 <= r["acc"] <= 100.0 for r in rows)


def test_cache_without_or_with_a_wrong_tower_record_fails_in_one_line(extracted, tmp_path):
    from featbench import texttower

    def drop(f):
        del f.attrs["text_tower"]

    def wrong_hash(f):
        rec = json.loads(f.attrs["text_tower"])
        rec["sha256"] = "0" * 64
        f.attrs["text_tower"] = json.dumps(rec)

    def tampered_state(f):
        f["/model/text_tower_state"][0] += 1.0

    for name, edit, needle in [("old.h5", drop, "re-extract"), ("hash.h5", wrong_hash, "differs"),
                               ("state.h5", tampered_state, "differs")]:
        texttower._MEMO.clear()
        bad = _copy_with(extracted, tmp_path, name, edit)
        res = _cli("fit", bad, "--heads", "coop", "--shots", "1", "--seeds", "1", "--set", "coop.epochs=1",
                   "--out", tmp_path / f"{name}.jsonl", "--no-progress")
        assert res.exit_code == 2, res.output
        assert needle in res.output and "Traceback" not in res.output
        assert len([ln for ln in res.output.strip().splitlines() if ln.strip()]) == 1
        if name == "old.h5":  # refused while planning, before any cell ran
            assert not (tmp_path / f"{name}.jsonl").exists()
    texttower._MEMO.clear()


def test_checkpoint_file_tower_is_rebuilt_from_the_file_and_checked(tmp_path, enc):
    from featbench.texttower import build_from_record, cache_record, cache_tower_record

    ckpt = tmp_path / "w.pt"
    torch.save(enc.model.state_dict(), ckpt)
    record, extra = cache_record(Encoder("tiny-vit", str(ckpt), "cpu"))
    assert record["weights"] == "file" and record["pretrained"] == str(ckpt) and not extra and record["state"] is None
    tw = build_from_record(record)
    with torch.no_grad():
        ref = enc.model.encode_text(enc.tokenizer(["a photo of a cat."]))
        np.testing.assert_allclose(tw.encode_text(["a photo of a cat."]).numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)

    class Fake:  # what cache_tower_record reads of a cache
        path, model, pretrained = "c.h5", "tiny-vit", "w.pt"
        attrs = {"text_tower": json.dumps(record)}

        def has_dataset(self, name):
            return False

    assert cache_tower_record(Fake())["sha256"] == record["sha256"]
    other = dict(enc.model.state_dict())
    other["ln_final.weight"] = other["ln_final.weight"] + 1.0
    torch.save(other, ckpt)  # the file changed since extraction
    with pytest.raises(FeatbenchError, match="differs"):
        build_from_record(record)
    ckpt.unlink()
    with pytest.raises(FeatbenchError, match="no longer exists"):
        cache_tower_record(Fake())


def test_unsupported_encoder_is_named_at_fit(enc):
    from featbench.texttower import cache_record, cache_tower_record

    class NoMask:  # a text tower without the causal mask: the EOT cut would not be exact
        def __getattr__(self, name):
            return None if name == "attn_mask" else getattr(enc.model, name)

    class E:
        model = NoMask()

    record, extra = cache_record(E())
    assert "causal" in record["unsupported"] and not extra

    class Fake:
        path, model, pretrained = "c.h5", "m", "none"
        attrs = {"text_tower": json.dumps(record)}

    with pytest.raises(FeatbenchError, match="cannot use its encoder"):
        cache_tower_record(Fake())
