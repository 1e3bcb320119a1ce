"""The frozen CLIP text tower that prompt learners (CoOp, KgCoOp) run at fit time.

Prompt learners train inputs to the text encoder, so unlike every other head they need the encoder itself,
not just its cached outputs. Two properties are kept:

* **The tower is the one that made the cache.** Extraction records, in the cache's root attr ``text_tower``
  (JSON), how to rebuild it: the open_clip model config, quick-GELU, the weights source (open_clip tag,
  local checkpoint path + sha256) and a sha256 of the text-tower tensors themselves. With ``--pretrained none``
  the tower's state is stored in the cache (``/model/text_tower_state``, one flat float32 vector laid out by
  the record's ``state_layout``), so a random-weight cache stays reproducible across torch/open_clip versions.
  ``load_for_cache`` rebuilds the tower, recomputes the tensor hash and refuses a mismatch in one line.
* **Only the text side is kept**, and only the work that matters is done: ``TextTower.encode`` runs the
  transformer on the first ``max(eot) + 1`` positions. Under the causal mask a position only attends to
  earlier ones, so tokens after the last end-of-text token of the batch cannot change any EOT feature (the
  test suite proves the identity against the full 77-token pass).

Heads never open files: the runner (``featbench.protocol.run_cell``) builds the tower, memoised per process,
and passes it to heads that declare ``needs_text_tower``.
"""

from __future__ import annotations

import hashlib
import json

from featbench.devices import resolve_device
from featbench.encoders import INIT_SEED, quiet_root_logger, resolve_weights
from featbench.errors import FeatbenchError, short_repr
from featbench.lru import LRU

from featbench.tower_record import (  # noqa: F401  (the record's names stay featbench.texttower's too)
    ATTR, IMPORT_HINT, MAX_MODEL_ELEMENTS, PARTS, STATE_DATASET, WEIGHT_KINDS, cache_record, cache_tower_record,
    check_record, check_supported, is_imported, numel, reextract_hint, state_sha256, text_state, tower_fix,
)

_MEMO = LRU(2)  # (tower sha256, device) -> TextTower


# ----------------------------------------------------------------------------------------------------
# the tower
# ----------------------------------------------------------------------------------------------------
class TextTower:
    """open_clip's text encoder as separate frozen pieces plus its tokenizer.

    ``embed(tokens)`` gives the token embeddings a prompt learner edits; ``encode(x, eot)`` maps prompt
    embeddings [N, L, W] and end-of-text positions [N] to text features [N, D] exactly as
    ``CLIP.encode_text`` does (add positions, causal transformer, ln_final, pool at EOT, project).
    """

    def __init__(self, token_embedding, positional_embedding, transformer, ln_final, text_projection, attn_mask,
                 tokenizer, pool_type: str = "argmax", eos_id: int | None = None, sha256: str = ""):
        self.token_embedding = token_embedding
        self.positional_embedding = positional_embedding
        self.transformer = transformer
        self.ln_final = ln_final
        self.text_projection = text_projection
        self.attn_mask = attn_mask
        self.tokenizer = tokenizer
        self.pool_type = pool_type
        self.eos_id = eos_id
        self.sha256 = sha256
        for p in self.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_model(cls, model, tokenizer, sha256: str = "") -> "TextTower":
        """Take the text pieces of an open_clip ``CLIP`` model (the caller drops the rest)."""
        check_supported(model)
        return cls(model.token_embedding, model.positional_embedding, model.transformer, model.ln_final,
                   model.text_projection, model.attn_mask, tokenizer, pool_type=model.text_pool_type,
                   eos_id=getattr(model, "text_eos_id", None), sha256=sha256)

    # -- bookkeeping -----------------------------------------------------------------------------------
    def parameters(self):
        import torch

        for part in (self.token_embedding, self.transformer, self.ln_final, self.text_projection,
                     self.positional_embedding):
            if isinstance(part, torch.nn.Module):
                yield from part.parameters()
            elif isinstance(part, torch.Tensor):
                yield part

    @property
    def device(self):
        return self.token_embedding.weight.device

    @property
    def width(self) -> int:
        return int(self.token_embedding.weight.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.positional_embedding.shape[0])

    def on(self, device) -> "TextTower":
        """This tower on ``device`` (itself when already there, else a moved copy)."""
        import copy

        import torch

        device = torch.device(device)
        if self.device == device or (device.type == self.device.type and device.index is None):
            return self
        moved = copy.copy(self)
        for name in ("token_embedding", "transformer", "ln_final", "positional_embedding", "attn_mask", "text_projection"):
            setattr(moved, name, _copy_to(getattr(self, name), device))
        return moved

    # -- text -> tensors -------------------------------------------------------------------------------
    def tokenize(self, texts):
        """[N, context_length] token ids (open_clip's tokenizer for this model)."""
        return self.tokenizer(list(texts)).to(self.device)

    def eot_positions(self, tokens):
        """Position of the end-of-text token in each row, the way open_clip pools."""
        if self.pool_type == "eos":
            return (tokens == self.eos_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)

    def embed(self, tokens):
        return self.token_embedding(tokens)

    # -- the forward pass ------------------------------------------------------------------------------
    def encode(self, x, eot, cut: bool = True):
        """Text features [N, D] of prompt embeddings x [N, L, W] pooled at positions eot [N].

        ``cut=True`` runs the transformer on the first max(eot)+1 positions only (exact under the causal mask).
        """
        import torch

        cast = self.transformer.get_cast_dtype() if hasattr(self.transformer, "get_cast_dtype") else x.dtype
        length = int(eot.max()) + 1 if cut else x.shape[1]
        x = x[:, :length].to(cast) + self.positional_embedding[:length].to(cast)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        x = self.transformer(x, attn_mask=mask)
        x = x[torch.arange(x.shape[0], device=x.device), eot]  # ln_final is per token: pool first, same values
        return self._project(x)

    def _project(self, x):
        """ln_final, then the text projection (a Linear module or a matrix), as CLIP.encode_text ends."""
        import torch

        x = self.ln_final(x)
        tp = self.text_projection
        if tp is None:
            return x
        return tp(x) if isinstance(tp, torch.nn.Module) else x @ tp

    def supports_shared_prefix(self) -> bool:
        """Whether ``encode_shared`` can run this transformer (open_clip's standard residual blocks)."""
        from open_clip.transformer import ResidualAttentionBlock

        blocks = getattr(self.transformer, "resblocks", None)
        return (blocks is not None and getattr(self.transformer, "batch_first", False) and self.attn_mask is not None
                and all(type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv")
                        and getattr(b.attn, "in_proj_weight", None) is not None and b.attn.batch_first
                        and b.attn.bias_k is None and not b.attn.add_zero_attn for b in blocks))

    def encode_shared(self, prefix, suffix, eot):
        """Features [C, D] of the prompts ``cat(prefix, suffix[c])``: prefix [P, W] shared by all rows, suffix
        [C, S, W], eot [C] the EOT positions in the whole prompt (each >= P).

        Exact shortcut: under the causal mask the first P positions only attend to each other, so their hidden
        states are the same in every row and are computed once; each row runs only its own S positions, which
        attend to the shared prefix's keys/values. With CoOp's 16 context tokens this is ~3x less work than
        the EOT-cut ``encode`` (the test suite checks both against the full 77-token pass).
        """
        import torch

        p = prefix.shape[0]
        length = int(eot.max()) + 1
        cast = self.transformer.get_cast_dtype()
        pos = self.positional_embedding.to(cast)
        xp = (prefix.to(cast) + pos[:p])[None]
        xs = suffix[:, : length - p].to(cast) + pos[p:length]
        mask = self.attn_mask.to(device=xs.device, dtype=cast)
        mask_p = mask[:p, :p]
        mask_s = torch.cat([mask.new_zeros(length - p, p), mask[p:length, p:length]], dim=1)
        for block in self.transformer.resblocks:
            xp, xs = _shared_block(block, xp, xs, mask_p, mask_s)
        return self._project(xs[torch.arange(xs.shape[0], device=xs.device), eot - p])

    def encode_text(self, texts, cut: bool = True):
        """Features of plain prompts (what ``CLIP.encode_text`` gives for them)."""
        tokens = self.tokenize(texts)
        return self.encode(self.embed(tokens), self.eot_positions(tokens), cut=cut)


def _copy_to(part, device):
    """A copy of a module (deep) or tensor (detached) on `device`; None stays None."""
    import copy

    import torch

    if part is None:
        return None
    if isinstance(part, torch.nn.Module):
        return copy.deepcopy(part).to(device)
    return part.detach().to(device)


def _shared_block(block, xp, xs, mask_p, mask_s):
    """One open_clip ResidualAttentionBlock on a shared prefix [1, P, W] and per-row suffixes [C, S, W]."""
    import torch
    import torch.nn.functional as F

    attn = block.attn
    heads = attn.num_heads

    def split(t):  # [B, L, W] -> [B, heads, L, W / heads]
        return t.unflatten(-1, (heads, t.shape[-1] // heads)).transpose(1, 2)

    def merge(t):
        return t.transpose(1, 2).flatten(-2)

    qp, kp, vp = (split(t) for t in F.linear(block.ln_1(xp), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
    qs, ks, vs = (split(t) for t in F.linear(block.ln_1(xs), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
    c = xs.shape[0]
    op = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask_p)
    keys = torch.cat([kp.expand(c, -1, -1, -1), ks], dim=2)
    values = torch.cat([vp.expand(c, -1, -1, -1), vs], dim=2)
    os_ = F.scaled_dot_product_attention(qs, keys, values, attn_mask=mask_s)
    xp = xp + block.ls_1(attn.out_proj(merge(op)))
    xs = xs + block.ls_1(attn.out_proj(merge(os_)))
    xp = xp + block.ls_2(block.mlp(block.ln_2(xp)))
    xs = xs + block.ls_2(block.mlp(block.ln_2(xs)))
    return xp, xs


# ----------------------------------------------------------------------------------------------------
# rebuilding (fit side)
# ----------------------------------------------------------------------------------------------------
def _register_config(record: dict) -> str:
    """Register the recorded model config under a name unique to it; returns that name."""
    import os
    import tempfile
    from pathlib import Path

    import open_clip

    cfg = record["model_cfg"]
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
    name = f"featbench-text-{digest}"
    if name not in open_clip.list_models():
        folder = Path(tempfile.gettempdir()) / f"featbench-towers-{os.getuid() if hasattr(os, 'getuid') else 0}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.json"
        tmp = path.with_name(f"{name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cfg))
        os.replace(tmp, path)
        open_clip.add_model_config(path)
    return name


def build_from_record(record: dict, cache=None, device="cpu") -> TextTower:
    """Rebuild the recorded tower, check its tensor hash, keep only the text pieces.

    The record is checked first (``check_record``) and its model config is tried on torch's meta device (no
    memory, no time), so a config open_clip rejects, a model prompt learners cannot run or a state layout that
    does not fit is one line naming the record, before any weights are allocated.
    """
    import gc

    check_record(record, cache)
    where = f"cache {cache.path}" if cache is not None else "text-tower record"
    name = _register_config(record)
    _dry_build(name, record, cache, where)
    net = _create_network(name, record, cache, where)
    if record["weights"] == "none":
        _load_stored_state(net, record, cache, where)
    else:
        _load_checkpoint(net, record, cache, where)
    sha = state_sha256(text_state(net))
    if sha != record["sha256"]:
        raise FeatbenchError(f"{where}: the rebuilt text tower differs from the one that made the cache (sha256 {sha[:12]} "
                             f"vs recorded {record['sha256'][:12]}); use the same weights/open_clip, or "
                             f"{tower_fix(cache)}")
    net.eval().requires_grad_(False)
    tower = TextTower.from_model(net, _tokenizer(name, cache, where), sha256=sha)
    net.visual = None  # drop the image tower: only the text pieces stay referenced
    del net
    gc.collect()
    return tower.on(device)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return short_repr(text.splitlines()[0], 200, plain=True) if text else type(err).__name__


def _rejected(cache, where: str, what: str) -> FeatbenchError:
    return FeatbenchError(f"{where}: its text_tower record {what}; {tower_fix(cache)}")


def _dry_build(name: str, record: dict, cache, where: str) -> None:
    """Build the recorded config on the meta device: open_clip's verdict on it, its size, its text tensors."""
    import itertools

    import open_clip
    import torch

    try:
        with quiet_root_logger(), torch.device("meta"):
            net = open_clip.create_model(name, pretrained=None, force_quick_gelu=record["quick_gelu"], device="meta")
    except Exception as err:  # open_clip raises many kinds on a config it cannot build
        raise _rejected(cache, where, f"has a 'model_cfg' open_clip cannot build ({_first_line(err)})") from None
    size = sum(t.numel() for t in itertools.chain(net.parameters(), net.buffers()))
    if size > MAX_MODEL_ELEMENTS:
        raise _rejected(cache, where, f"has a 'model_cfg' of {size:.3g} parameters, more than any CLIP model "
                                      f"(limit {MAX_MODEL_ELEMENTS:.0e})")
    try:
        check_supported(net)
    except FeatbenchError as err:
        raise _rejected(cache, where, f"has a 'model_cfg' prompt learners cannot run ({err})") from None
    if record["weights"] == "none":
        expected = [[k, list(t.shape)] for k, t in net.state_dict().items() if k.split(".", 1)[0] in PARTS]
        if record["state_layout"] != expected:
            diff = next((i for i, (a, b) in enumerate(zip(record["state_layout"], expected)) if a != b),
                        min(len(expected), len(record["state_layout"])))
            got = record["state_layout"][diff] if diff < len(record["state_layout"]) else "nothing"
            want = expected[diff] if diff < len(expected) else "nothing"
            raise _rejected(cache, where, f"has a 'state_layout' that does not fit its 'model_cfg' (entry {diff}: "
                                          f"{short_repr(got)}, the config has {short_repr(want)})")


def _create_network(name: str, record: dict, cache=None, where: str = "text-tower record"):
    """The recorded open_clip model, initialised from the encoders' fixed seed (as extraction made it)."""
    import open_clip
    import torch

    try:
        with quiet_root_logger(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            return open_clip.create_model(name, pretrained=None, force_quick_gelu=bool(record.get("quick_gelu")))
    except Exception as err:  # the meta build passed, so this is memory or an open_clip corner
        raise _rejected(cache, where, f"has a 'model_cfg' open_clip cannot build ({_first_line(err)})") from None


def _tokenizer(name: str, cache, where: str):
    import open_clip

    try:
        return open_clip.get_tokenizer(name)
    except Exception as err:  # a text_cfg naming a tokenizer that is not available offline
        raise _rejected(cache, where, f"has a 'model_cfg' whose tokenizer open_clip cannot load ({_first_line(err)})") from None


def _load_stored_state(net, record: dict, cache, where: str) -> None:
    """Random weights: load the text-tower state the cache stores as one flat float32 vector."""
    import torch

    if cache is None or not record.get("state"):
        raise FeatbenchError(f"{where}: a random-weight tower needs its stored state; {tower_fix(cache)}")
    flat = torch.from_numpy(cache.array(record["state"]).astype("float32", copy=False).reshape(-1))
    state, pos = {}, 0
    for key, shape in record["state_layout"]:
        n = numel(shape)
        if pos + n > flat.numel():
            break
        state[key] = flat[pos:pos + n].reshape(shape)
        pos += n
    try:
        missing, _ = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that do not fit the model
        raise _rejected(cache, where, f"has a 'state_layout' that does not fit {record['model']} ({_first_line(err)})") from None
    missing = [k for k in missing if k.split(".", 1)[0] in PARTS]
    if missing or pos != flat.numel():
        raise FeatbenchError(f"{where}: the stored text-tower state does not fit {record['model']}; {tower_fix(cache)}")


def _load_checkpoint(net, record: dict, cache, where: str) -> None:
    """Pretrained weights: the recorded checkpoint file, or the open_clip tag's file found again."""
    import open_clip

    kind = record["weights"]
    if kind == "file":
        path = record["pretrained"]
    else:
        try:
            path = resolve_weights(record["model"], record["pretrained"]).path
        except FeatbenchError as err:
            raise _rejected(cache, where, f"names weights ('model' {record['model']!r}, 'pretrained' "
                                          f"{record['pretrained']!r}) that cannot be found ({err})") from None
    try:
        with quiet_root_logger():
            open_clip.load_checkpoint(net, path)
    except Exception as err:
        raise FeatbenchError(f"{where}: could not load the text tower's weights from {path} "
                             f"({_first_line(err)})") from None


def load_for_cache(cache, device="cpu") -> TextTower:
    """The text tower that made ``cache``, on ``device``; memoised per process by its tensor hash."""
    device = resolve_device(device)
    record = cache_tower_record(cache)

    def make():  # a copy already on another device moves; otherwise rebuild from the record
        other = next((t for (sha, _), t in _MEMO.items() if sha == record["sha256"]), None)
        return other.on(device) if other is not None else build_from_record(record, cache, device)

    return _MEMO.get_or_make((record["sha256"], str(device)), make)


__all__ = ["TextTower", "cache_record", "cache_tower_record", "check_record", "build_from_record", "load_for_cache",
           "is_imported", "tower_fix", "state_sha256", "text_state", "ATTR", "STATE_DATASET", "IMPORT_HINT",
           "WEIGHT_KINDS"]
