"""Encoder loading, weights resolution (fast, one-line failures), transforms, pre-projection algebra."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch

from featbench.encoders import ASSETS, Encoder, ViewTransform, resolve_weights, view_seed
from featbench.errors import FeatbenchError


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_bundled_tiny_models_build_and_encode(name):
    enc = Encoder(name, "none", "cpu")
    assert enc.embed_dim == 32 and enc.image_size == 32
    assert enc.pretrained_label == "none" and enc.checkpoint_sha256 is None
    feats, pre = enc.encode_images(torch.randn(3, 3, 32, 32))
    assert feats.shape == (3, 32) and pre is None
    text, _ = enc.encode_text(["cat", "dog", "car"], ["a photo of a {}.", "art of the {}."])
    assert text.shape == (2, 3, 32)
    assert enc.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    info = enc.preprocess_info()
    assert info["image_size"] == 32 and info["interpolation"] == "bicubic" and info["view_scale"] == [0.5, 1.0]


def test_random_init_is_reproducible():
    x = torch.randn(2, 3, 32, 32)
    a = Encoder("tiny-vit", "none", "cpu").encode_images(x)[0]
    b = Encoder("tiny-vit", "none", "cpu").encode_images(x)[0]
    assert torch.equal(a, b)


def test_model_config_json_path_registers_under_its_stem(tmp_path):
    cfg = tmp_path / "my-net.json"
    shutil.copy(ASSETS / "tiny-vit.json", cfg)
    enc = Encoder(str(cfg), "none", "cpu")
    assert enc.name == "my-net" and enc.config_sha256
    with pytest.raises(FeatbenchError, match="--model"):
        Encoder(str(tmp_path / "missing.json"), "none", "cpu")
    with pytest.raises(FeatbenchError, match="--model"):
        Encoder("no-such-arch", "none", "cpu")


def test_local_checkpoint_file_loads_and_is_hashed(tmp_path):
    ref = Encoder("tiny-vit", "none", "cpu")
    ckpt = tmp_path / "tiny.pt"
    torch.save(ref.model.state_dict(), ckpt)
    enc = Encoder("tiny-vit", str(ckpt), "cpu")
    assert enc.pretrained_label == "tiny.pt" and len(enc.checkpoint_sha256) == 64
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(enc.encode_images(x)[0], ref.encode_images(x)[0])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(FeatbenchError, match="could not load"):
        Encoder("tiny-vit", str(bad), "cpu")


@pytest.mark.parametrize(
    "model,pretrained,needle",
    [("RN50", "openai", "not cached locally"), ("RN50", "no-such-tag", "not an open_clip tag"),
     ("tiny-vit", "openai", "not an open_clip tag"), ("RN50", "/nowhere/w.pt", "not found")],
)
def test_unavailable_weights_fail_fast_with_one_line(model, pretrained, needle, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(FeatbenchError) as err:
        resolve_weights(model, pretrained)
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    assert "\n" not in msg and needle in msg and "--pretrained" in msg


def test_view_transform_seeded_per_path_and_view():
    from PIL import Image

    img = Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8))
    vt = ViewTransform(32, [0.5] * 3, [0.25] * 3, scale=(0.5, 1.0))
    a = vt(img, "a/b.jpg", 0)
    assert a.shape == (3, 32, 32)
    assert torch.equal(a, vt(img, "a/b.jpg", 0))
    assert not torch.equal(a, vt(img, "a/b.jpg", 1))
    assert not torch.equal(a, vt(img, "a/c.jpg", 0))
    assert view_seed("x", 1, 0) != view_seed("x", 1, 1)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_pre_projection_reproduces_features(name):
    enc = Encoder(name, "none", "cpu")
    assert enc.supports_pre_projection()
    x = torch.randn(4, 3, 32, 32)
    plain, _ = enc.encode_images(x)
    feats, pre = enc.encode_images(x, pre_projection=True)
    assert torch.allclose(plain, feats, atol=1e-6)
    w, b = enc.image_projection()
    rebuilt = pre.numpy() @ w + (0 if b is None else b)
    np.testing.assert_allclose(rebuilt, feats.numpy(), atol=1e-5)
    text, text_pre = enc.encode_text(["cat", "dog"], ["a {}."], pre_projection=True)
    np.testing.assert_allclose(text_pre @ enc.text_projection(), text, atol=1e-5)


def test_test_transform_is_clip_eval_preprocessing():
    """REFERENCE.md: resize the shorter side (bicubic), center crop, CLIP mean/std."""
    import open_clip
    import torchvision.transforms.functional as TF
    from PIL import Image
    from torchvision.transforms import InterpolationMode

    enc = Encoder("tiny-vit", "none", "cpu")
    assert enc.mean == list(open_clip.OPENAI_DATASET_MEAN) and enc.std == list(open_clip.OPENAI_DATASET_STD)
    img = Image.fromarray((np.random.default_rng(1).random((40, 70, 3)) * 255).astype(np.uint8))
    manual = TF.center_crop(TF.resize(img, 32, interpolation=InterpolationMode.BICUBIC), [32, 32])
    manual = TF.normalize(TF.to_tensor(manual), enc.mean, enc.std)
    assert torch.allclose(enc.test_transform(img), manual)
