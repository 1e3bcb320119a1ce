"""open_clip encoders: model + weights resolution, test/augmented-view transforms, image and text encoding.

Everything that turns pixels or prompts into numbers lives here, so extraction can stay a pure
orchestration of (path, row, args) -> features. Three properties matter downstream:

* Weights resolution never hangs: tags are checked against open_clip's table first, the local caches
  are looked up offline, and a download is only attempted when the hub is reachable within seconds.
* Augmented views are seeded per (relative path, view index, base seed) with a private generator, so
  a view's pixels do not depend on batch size, worker count, resume point or distributed rank.
* Pre-projection features are exact: `features == pre @ W (+ b)` for the stored projection W (b).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from featbench.devices import check_device, resolve_device
from featbench.errors import FeatbenchError

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_VIEW_SCALE = (0.5, 1.0)  # Tip-Adapter's RandomResizedCrop scale (TaskRes/Dassl uses (0.08, 1))
VIEW_RATIO = (3.0 / 4.0, 4.0 / 3.0)
INIT_SEED = 0  # random init (--pretrained none) is seeded so that two runs give the same encoder
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
_registered_assets = False


# ----------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def view_seed(relpath: str, view: int, base_seed: int = 0) -> int:
    """A stable 63-bit seed for one augmented view of one image (independent of batching and ranks)."""
    digest = hashlib.sha256(f"{relpath}\x00{int(view)}\x00{int(base_seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextlib.contextmanager
def quiet_root_logger():
    """open_clip logs 'initialized randomly' etc. on the root logger; keep the CLI output clean."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(old)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# ----------------------------------------------------------------------------------------------------
# model and weights resolution
# ----------------------------------------------------------------------------------------------------
def register_assets() -> None:
    """Register the bundled tiny configs (tiny-vit, tiny-rn, ...) under their file stems."""
    global _registered_assets
    if not _registered_assets:
        import open_clip

        open_clip.add_model_config(ASSETS)
        _registered_assets = True


def model_label(model: str) -> str:
    """The name a cache records for --model: a config file's stem, else the architecture name."""
    text = str(model)
    path = Path(text).expanduser()
    return path.stem if text.endswith(".json") or path.is_file() else text.replace("/", "-")


def weights_label(pretrained: str) -> str:
    """What a cache records as `pretrained`: 'none' (random init), a checkpoint's file name, or the tag."""
    text = str(pretrained).strip()
    if text.lower() in ("none", "random", ""):
        return "none"
    path = Path(text).expanduser()
    return path.name if path.is_file() else text


def resolve_model(model: str) -> tuple[str, str | None]:
    """(open_clip model name, sha256 of the config JSON when a path was given)."""
    import open_clip

    register_assets()
    text = str(model)
    path = Path(text).expanduser()
    if text.endswith(".json") or path.is_file():
        if not path.is_file():
            raise FeatbenchError(f"--model {text}: config file not found; pass an open_clip architecture name or a model-config JSON path")
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise FeatbenchError(f"--model {text}: not a readable JSON model config ({err})") from None
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
        if missing:
            raise FeatbenchError(f"--model {text}: not an open_clip model config (missing {', '.join(missing)})")
        open_clip.add_model_config(path)
        return model_label(text), sha256_json(cfg)
    name = model_label(text)
    if name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.lower() in m.lower()][:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise FeatbenchError(
            f"--model {text}: not an open_clip architecture{hint}; see `python -c \"import open_clip; print(open_clip.list_models())\"` "
            "or pass a path to an open_clip model-config JSON"
        )
    return name, None


@dataclass
class Weights:
    """Where the weights come from: kind is 'none', 'file' or 'tag'."""

    kind: str
    label: str  # what goes into the cache attrs (`pretrained`)
    path: str | None = None
    sha256: str | None = None
    tag_cfg: dict = field(default_factory=dict)


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face endpoint answers a TCP connect within `timeout` seconds."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("FEATBENCH_OFFLINE"):
        return False
    try:
        from huggingface_hub import constants

        endpoint = getattr(constants, "ENDPOINT", "https://huggingface.co")
    except Exception:  # pragma: no cover
        endpoint = "https://huggingface.co"
    from urllib.parse import urlparse

    host = urlparse(endpoint).hostname or "huggingface.co"
    result: list[bool] = []

    def probe():
        import socket

        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)  # DNS can hang longer than the socket timeout; don't wait for it
    return bool(result and result[0])


def local_checkpoint(cfg: dict) -> tuple[str | None, list[str]]:
    """Find a tag's weights in the local caches without touching the network; returns (path, places tried)."""
    tried: list[str] = []
    if cfg.get("file"):
        tried.append(str(cfg["file"]))
        if os.path.isfile(cfg["file"]):
            return str(cfg["file"]), tried
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_pytorch_model.bin"]
        alts = []
        for n in names:
            if n.endswith((".bin", ".pth")):
                alts.append(n[:-4] + ".safetensors")
        if not filename:
            alts.insert(0, "open_clip_model.safetensors")
        tried.append(f"Hugging Face cache {repo}")
        try:
            from huggingface_hub import try_to_load_from_cache

            for n in alts + names:
                hit = try_to_load_from_cache(repo_id=repo, filename=n)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return hit, tried
        except Exception:
            pass
    url = cfg.get("url", "")
    if url:
        target = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        tried.append(target)
        if os.path.isfile(target):
            return target, tried
    return None, tried


def resolve_weights(name: str, pretrained: str) -> Weights:
    """Resolve --pretrained (tag | file | none) to a local checkpoint, failing fast with one line."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    text = str(pretrained).strip()
    label = weights_label(text)
    if label == "none":
        return Weights(kind="none", label=label)
    path = Path(text).expanduser()
    if path.is_file():
        return Weights(kind="file", label=label, path=str(path), sha256=sha256_file(path))
    if os.sep in text or text.endswith(_WEIGHT_SUFFIXES):
        raise FeatbenchError(f"--pretrained {text}: checkpoint file not found; pass an existing file, an open_clip tag, or none")
    tags = open_clip.list_pretrained_tags_by_model(name)
    cfg = dict(get_pretrained_cfg(name, text) or {})
    if not cfg:
        known = ", ".join(tags) if tags else "none for this architecture"
        raise FeatbenchError(
            f"--pretrained {text}: not an open_clip tag for {name} (known tags: {known}); "
            "pass a local checkpoint file with --pretrained /path/to/weights.pt, or --pretrained none for random weights"
        )
    local, tried = local_checkpoint(cfg)
    if local is None:
        if not hub_reachable():
            raise FeatbenchError(
                f"--pretrained {text}: weights for {name}/{text} are not cached locally (tried {'; '.join(tried)}) "
                "and the hub is unreachable/offline; download them where there is internet, or pass a local "
                "checkpoint file with --pretrained /path/to/weights.pt"
            )
        from open_clip.pretrained import download_pretrained

        try:
            local = download_pretrained(cfg)
        except Exception as err:
            raise FeatbenchError(
                f"--pretrained {text}: downloading weights for {name} failed ({str(err).splitlines()[0][:200]}); "
                "pass a local checkpoint file with --pretrained /path/to/weights.pt"
            ) from None
        if not local:
            raise FeatbenchError(f"--pretrained {text}: open_clip has no download location for {name}/{text}; pass a local checkpoint file")
    return Weights(kind="tag", label=text, path=str(local), sha256=None, tag_cfg=cfg)


# ----------------------------------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------------------------------
def load_rgb(path: str | os.PathLike):
    """Decode an image fully (so corrupt/truncated files fail here, not later) and convert to RGB.

    Only regular files are opened: a FIFO or device listed in a manifest would block `extract` forever.
    """
    import stat

    from PIL import Image

    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) \
            else "a folder" if stat.S_ISDIR(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
        raise OSError(f"{kind}, not an image file")
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def _crop_params(width: int, height: int, scale: Sequence[float], ratio: Sequence[float], rng: random.Random):
    """RandomResizedCrop's parameter draw (torchvision's algorithm) with a private generator."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = rng.randint(0, height - h)
            j = rng.randint(0, width - w)
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ViewTransform:
    """RandomResizedCrop(size, scale, bicubic) + horizontal flip + CLIP normalisation, seeded per view."""

    def __init__(self, size: int, mean, std, scale=DEFAULT_VIEW_SCALE, flip: bool = True, base_seed: int = 0):
        self.size = int(size)
        self.mean = list(mean)
        self.std = list(std)
        self.scale = (float(scale[0]), float(scale[1]))
        self.flip = flip
        self.base_seed = int(base_seed)

    def __call__(self, img, relpath: str, view: int):
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        rng = random.Random(view_seed(relpath, view, self.base_seed))
        i, j, h, w = _crop_params(img.width, img.height, self.scale, VIEW_RATIO, rng)
        out = TF.resized_crop(img, i, j, h, w, [self.size, self.size], interpolation=InterpolationMode.BICUBIC)
        if self.flip and rng.random() < 0.5:
            out = TF.hflip(out)
        t = TF.to_tensor(out)
        return TF.normalize(t, self.mean, self.std)


@functools.lru_cache(maxsize=8)
def _tokenizer(name: str):
    """open_clip tokenizers take ~1 s to build (BPE merges); one per model name is enough."""
    import open_clip

    return open_clip.get_tokenizer(name)


# ----------------------------------------------------------------------------------------------------
# the encoder
# ----------------------------------------------------------------------------------------------------
def encoder_device(device: str | None) -> str:
    """The device an Encoder runs on, as a string: the spellings and availability rules of featbench.devices,
    plus a check that cuda:N names a GPU of this machine (before any weights are loaded)."""
    import torch

    dev = resolve_device(check_device(device or "auto"))
    if dev.type == "cuda" and dev.index is not None:
        count = torch.cuda.device_count()
        if not 0 <= dev.index < count:
            raise FeatbenchError(f"--device {dev}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    return str(dev)


def project_fp32(pre, w, b):
    """features = pre @ W (+ b) in float32 outside autocast, so a cache's pre-projection features reproduce its
    features to float32 precision on a GPU too (fp16 gave ~1e-3, and ProLIP with 0 epochs missed zero-shot)."""
    import torch

    with torch.autocast(pre.device.type, enabled=False):
        w = w.float()
        return pre @ w if b is None else torch.nn.functional.linear(pre, w, b.float())


class Encoder:
    """An open_clip model in eval mode plus everything needed to reproduce its features."""

    def __init__(self, model: str = "RN50", pretrained: str = "openai", device: str = "auto", *, view_scale=DEFAULT_VIEW_SCALE, view_seed: int = 0):
        import torch

        self.name, self.config_sha256 = resolve_model(model)
        self.weights = resolve_weights(self.name, pretrained)
        self.device = encoder_device(device)
        net = self._create_network(pretrained)
        self.model = net.to(self.device)
        self.amp = self.device.startswith("cuda")
        self._read_preprocessing(net)
        self.view_transform = ViewTransform(self.image_size, self.mean, self.std, scale=view_scale, base_seed=view_seed)
        self.tokenizer = _tokenizer(self.name)
        self.logit_scale = float(net.logit_scale.exp().item())
        with torch.no_grad():
            probe = self.model.encode_image(torch.zeros(1, 3, self.image_size, self.image_size, device=self.device))
        self.embed_dim = int(probe.shape[-1])

    def _create_network(self, pretrained: str):
        """The open_clip model, initialised from a fixed seed, with the resolved weights loaded, frozen."""
        import open_clip
        import torch
        from open_clip.transform import PreprocessCfg
        from dataclasses import asdict

        tag_cfg = self.weights.tag_cfg
        pp_keys = set(asdict(PreprocessCfg()).keys())
        force_pp = {k: v for k, v in tag_cfg.items() if k in pp_keys}
        with quiet_root_logger(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            net = open_clip.create_model(
                self.name,
                pretrained=None,
                force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                force_preprocess_cfg=force_pp or None,
            )
        if self.weights.path:
            try:
                with quiet_root_logger():
                    open_clip.load_checkpoint(net, self.weights.path)
            except Exception as err:
                msg = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
                raise FeatbenchError(
                    f"--pretrained {pretrained}: could not load {self.weights.path} into {self.name} ({msg}); "
                    "check that the checkpoint matches --model"
                ) from None
        return net.eval().requires_grad_(False)

    def _read_preprocessing(self, net) -> None:
        """Image size, normalisation and resizing from the model's preprocess config; the test transform."""
        import open_clip
        from open_clip.model import get_model_preprocess_cfg

        cfg = dict(get_model_preprocess_cfg(net))
        size = cfg.get("size", 224)
        self.image_size = int(size if isinstance(size, int) else size[0])
        self.mean = [float(x) for x in cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)]
        self.std = [float(x) for x in cfg.get("std", open_clip.OPENAI_DATASET_STD)]
        self.interpolation = str(cfg.get("interpolation", "bicubic"))
        self.resize_mode = str(cfg.get("resize_mode", "shortest"))
        self.fill_color = int(cfg.get("fill_color", 0))
        self.test_transform = open_clip.image_transform(
            self.image_size, is_train=False, mean=self.mean, std=self.std,
            resize_mode=self.resize_mode, interpolation=self.interpolation, fill_color=self.fill_color,
        )

    # -- identity ------------------------------------------------------------------------------------
    @property
    def pretrained_label(self) -> str:
        return self.weights.label

    @property
    def checkpoint_sha256(self) -> str | None:
        return self.weights.sha256

    @property
    def precision(self) -> str:
        """How the image tower computes: "fp16-autocast" on CUDA, "fp32" elsewhere."""
        return "fp16-autocast" if self.amp else "fp32"

    def preprocess_info(self) -> dict:
        """Everything about the pixels -> features mapping that is not the weights themselves.

        The precision is part of it: a partial begun on a GPU (fp16 autocast) never resumes on a CPU (fp32),
        and parts of both never merge. fp32, the only precision before this key existed, is left implicit so
        CPU caches keep their fingerprint.
        """
        info = {
            "image_size": self.image_size,
            "mean": self.mean,
            "std": self.std,
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
            "crop": "center",
            "fill_color": self.fill_color,
            "view_transform": "random_resized_crop+hflip",
            "view_scale": list(self.view_transform.scale),
            "view_ratio": list(VIEW_RATIO),
            "view_interpolation": "bicubic",
            "view_seed": self.view_transform.base_seed,
            "quick_gelu": bool(self.weights.tag_cfg.get("quick_gelu", False)),
            "model_config_sha256": self.config_sha256 or "",
            "init_seed": INIT_SEED if self.weights.kind == "none" else None,
        }
        if self.precision != "fp32":
            info["precision"] = self.precision
        return info

    # -- encoding ------------------------------------------------------------------------------------
    def _autocast(self):
        import torch

        if self.amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def supports_pre_projection(self) -> bool:
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import VisionTransformer

        v = self.model.visual
        if isinstance(v, VisionTransformer):
            return getattr(v, "proj", None) is not None
        return isinstance(v, ModifiedResNet) and getattr(v, "attnpool", None) is not None

    def encode_images(self, x, pre_projection: bool = False):
        """Raw image features [B, D] float32 (and pre-projection features [B, P] when asked)."""
        import torch

        with torch.no_grad():
            x = x.to(self.device, non_blocking=True)
            with self._autocast():
                if not pre_projection:
                    return self.model.encode_image(x).float(), None
                pre = self._visual_pre(x).float()
            return project_fp32(pre, *self._image_projection_tensors()), pre

    def _visual_pre(self, x):
        import torch
        import torch.nn.functional as F
        from open_clip.transformer import VisionTransformer

        v = self.model.visual
        if isinstance(v, VisionTransformer):
            proj = v.proj
            v.proj = None
            try:
                out = v(x)
            finally:
                v.proj = proj
            return out[0] if isinstance(out, tuple) else out
        # ModifiedResNet: everything up to the attention pool's output linear (c_proj)
        x = x.type(v.conv1.weight.dtype)
        x = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))
        ap = v.attnpool
        x = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3]).permute(2, 0, 1)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + ap.positional_embedding[:, None, :].to(x.dtype)
        e = x.shape[-1]
        eye = torch.eye(e, dtype=ap.c_proj.weight.dtype, device=x.device)
        x, _ = F.multi_head_attention_forward(
            query=x, key=x, value=x, embed_dim_to_check=e, num_heads=ap.num_heads,
            q_proj_weight=ap.q_proj.weight, k_proj_weight=ap.k_proj.weight, v_proj_weight=ap.v_proj.weight,
            in_proj_weight=None, in_proj_bias=torch.cat([ap.q_proj.bias, ap.k_proj.bias, ap.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=eye, out_proj_bias=torch.zeros(e, dtype=eye.dtype, device=x.device),
            use_separate_proj_weight=True, training=False, need_weights=False,
        )
        return x[0]

    def _image_projection_tensors(self):
        """(W, b) as used in the forward: ViT computes pre @ W; ResNet computes linear(pre, W, b)."""
        from open_clip.transformer import VisionTransformer

        v = self.model.visual
        if isinstance(v, VisionTransformer):
            return v.proj, None
        return v.attnpool.c_proj.weight, v.attnpool.c_proj.bias

    def image_projection(self):
        """([P, D] projection, [D] bias or None) as numpy float32, so that features = pre @ W + b."""
        w, b = self._image_projection_tensors()
        w = w.detach().float().cpu().numpy()
        if b is not None:  # nn.Linear stores [out, in]
            return w.T.copy(), b.detach().float().cpu().numpy()
        return w, None

    def text_projection(self):
        """[Q, D] text projection as numpy float32 (features_text = pre_text @ W), or None."""
        import torch

        tp = getattr(self.model, "text_projection", None)
        if tp is None:
            return None
        if isinstance(tp, torch.nn.Linear):
            if tp.bias is not None:
                return None
            return tp.weight.detach().float().cpu().numpy().T.copy()
        return tp.detach().float().cpu().numpy()

    def encode_text(self, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256, pre_projection: bool = False):
        """[T, C, D] raw text-encoder outputs for every template x class (and [T, C, Q] pre-projection)."""
        import numpy as np
        import torch

        prompts = [t.replace("{}", c) if "{}" in t else f"{t} {c}" for t in templates for c in classnames]
        feats, pres = [], []
        w = self.model.text_projection if pre_projection else None
        for start in range(0, len(prompts), batch_size):
            tokens = self.tokenizer(prompts[start:start + batch_size]).to(self.device)
            with torch.no_grad(), self._autocast():
                if pre_projection and w is not None and not isinstance(w, torch.nn.Linear):
                    self.model.text_projection = None
                    try:
                        pre = self.model.encode_text(tokens)
                    finally:
                        self.model.text_projection = w
                    pre = pre.float()
                    out = project_fp32(pre, w, None)
                    pres.append(pre.cpu().numpy())
                else:
                    out = self.model.encode_text(tokens)
            feats.append(out.float().cpu().numpy())
        t, c = len(templates), len(classnames)
        full = np.concatenate(feats).reshape(t, c, -1)
        pre_full = np.concatenate(pres).reshape(t, c, -1) if pres else None
        return full, pre_full

    def forward_only(self, x):
        """Images/s baseline for the benchmark: the model's forward on ready tensors."""
        import torch

        with torch.no_grad(), self._autocast():
            return self.model.encode_image(x.to(self.device, non_blocking=True))
