"""The text-tower record a cache holds: how extraction writes it, and every field checked where it enters.

Prompt learners rebuild the text tower that made a cache (:mod:`featbench.texttower`). What they rebuild it from
is the cache's root attribute ``text_tower`` (JSON: open_clip model config, quick-GELU, weights source, a sha256 of
the tower's tensors) and, for random weights, ``/model/text_tower_state``. A damaged or hand-edited record is one
line naming the key and the fix (re-extract; for an imported cache, import again with ``--text-tower``), never a
traceback from open_clip.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

from featbench.errors import FeatbenchError, short_repr

ATTR = "text_tower"
STATE_DATASET = "/model/text_tower_state"
#: the CLIP attributes that make up the text tower (the attention mask is rebuilt, not stored)
PARTS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
_POOLS = ("argmax", "eos")


def reextract_hint(cache) -> str:
    return (f"re-extract it with `featbench extract --model {cache.model} --pretrained {cache.pretrained} ... "
            "--overwrite` (featbench now records the text tower in the cache)")


IMPORT_HINT = ("`featbench import FEATURES.npz ... --text-tower MODEL:PRETRAINED` (an open_clip tag, e.g. "
               "ViT-B-32:openai) or `--text-tower MODEL:/path/to/checkpoint.pt`, naming the encoder that made its "
               "text features (featbench re-encodes the class prompts to check it; the .npz needs classnames, "
               "text_raw and templates, or pass --templates FILE)")


def is_imported(cache) -> bool:
    """Whether `featbench import` made the cache (its features came from elsewhere: re-extracting is no fix)."""
    pp = getattr(cache, "preprocess", None)
    return isinstance(pp, dict) and pp.get("source") == "imported"


def tower_fix(cache) -> str:
    """How to give a cache a good text-tower record: import again with --text-tower, or re-extract."""
    if cache is None:
        return "record the tower again (featbench extract or featbench import --text-tower)"
    return f"import it again with {IMPORT_HINT}" if is_imported(cache) else reextract_hint(cache)


# ----------------------------------------------------------------------------------------------------
# what a cache records (extraction side)
# ----------------------------------------------------------------------------------------------------
def check_supported(model) -> None:
    if (not hasattr(model, "token_embedding") or getattr(model, "text_pool_type", None) not in _POOLS
            or getattr(model, "attn_mask", None) is None):
        raise FeatbenchError(
            f"{type(model).__name__}: prompt learners need an open_clip CLIP model with a built-in causal text "
            "transformer pooled at the end-of-text token (the EOT cut is exact only under the causal mask)"
        )


def text_state(model) -> "OrderedDict[str, Any]":
    """The text tower's tensors (name -> float32 CPU tensor), in state_dict order."""
    out = OrderedDict()
    for name, t in model.state_dict().items():
        if name.split(".", 1)[0] in PARTS:
            out[name] = t.detach().to("cpu").float().contiguous()
    return out


def state_sha256(state) -> str:
    """sha256 over (name, shape, float32 bytes) of every tensor, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        h.update(f"{name}\x00{tuple(t.shape)}\x00".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def cache_record(enc) -> tuple[dict, dict]:
    """(record for the cache's ``text_tower`` attr, extra datasets) for an `Encoder`.

    A model prompt learners cannot run gets ``{"unsupported": reason}``, so ``fit`` can say why.

    The record holds what rebuilding needs; the state itself is stored only for random weights.
    """
    import numpy as np
    import open_clip

    try:
        check_supported(enc.model)
    except FeatbenchError as err:
        return {"unsupported": str(err)}, {}
    state = text_state(enc.model)
    record = {
        "model": enc.name,
        "model_cfg": open_clip.get_model_config(enc.name),
        "quick_gelu": bool(enc.weights.tag_cfg.get("quick_gelu", False)),
        "weights": enc.weights.kind,
        "pretrained": enc.weights.label if enc.weights.kind != "file" else enc.weights.path,
        "checkpoint_sha256": enc.weights.sha256,
        "sha256": state_sha256(state),
        "state": None,
    }
    extra = {}
    if enc.weights.kind == "none":
        record["state"] = STATE_DATASET
        record["state_layout"] = [[k, list(v.shape)] for k, v in state.items()]
        extra[STATE_DATASET] = np.concatenate([v.numpy().ravel() for v in state.values()]).astype(np.float32)
    return record, extra


# ----------------------------------------------------------------------------------------------------
# the record a cache holds (fit side)
# ----------------------------------------------------------------------------------------------------
def cache_tower_record(cache) -> dict:
    """The cache's text-tower record, checked field by field, or a one-line error saying how to get a good one
    (cheap: no torch)."""
    raw = cache.attrs.get(ATTR)
    if raw is None or (isinstance(raw, (str, bytes)) and not raw.strip()):
        raise FeatbenchError(_no_record(cache))
    record = _parse_record(raw, cache)
    if isinstance(record, dict) and record.get("unsupported"):
        raise FeatbenchError(f"cache {cache.path}: prompt learners (coop, kgcoop, cocoop) cannot use its encoder: "
                             f"{short_repr(record['unsupported'], 300, plain=True)}")
    check_record(record, cache)
    if record["weights"] == "file":
        import os

        if not os.path.isfile(record["pretrained"]):
            raise FeatbenchError(f"cache {cache.path} was made with the checkpoint {record['pretrained']}, which no longer "
                                 "exists there; restore that file (prompt learners rebuild the text tower from it) or "
                                 + ("import the features again with --text-tower" if is_imported(cache) else "re-extract"))
    return record


def _no_record(cache) -> str:
    if is_imported(cache):
        return (f"cache {cache.path} was imported from features computed elsewhere (`featbench import`) and lacks the "
                "text encoder that made its text features, which prompt learners (coop, kgcoop, cocoop) run at fit "
                f"time; add it by importing again with {IMPORT_HINT}")
    return (f"cache {cache.path} does not record the text tower that made it (built before featbench recorded it), "
            f"which prompt learners (coop, kgcoop, cocoop) need; {reextract_hint(cache)}")


def _parse_record(raw, cache):
    """The attribute's JSON, or one line saying it is not JSON."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    if not isinstance(raw, str):
        raise FeatbenchError(f"cache {cache.path}: its text_tower record is stored as {type(raw).__name__}, expected "
                             f"a JSON string; {tower_fix(cache)}")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise FeatbenchError(f"cache {cache.path}: its text_tower record is not valid JSON "
                             f"({short_repr(err, 80, plain=True)}); {tower_fix(cache)}") from None


# ----------------------------------------------------------------------------------------------------
# the record's schema: every field the rebuild reads, checked where the record enters
# ----------------------------------------------------------------------------------------------------
WEIGHT_KINDS = ("none", "file", "tag")
#: parameters + buffers a rebuilt model may hold (open_clip's largest is about 5e9): a bigger config is a typo
MAX_MODEL_ELEMENTS = 10**10
_HEX = frozenset("0123456789abcdef")


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _sha(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and set(v) <= _HEX


#: (key, what it must be, test) for the top of ``model_cfg``; open_clip judges the rest (``_dry_build``)
_CFG_FIELDS = (
    ("embed_dim", "a positive integer", _count),
    ("vision_cfg", "an object", lambda v: isinstance(v, dict)),
    ("text_cfg", "an object", lambda v: isinstance(v, dict)),
)


#: (key, what it must be, test) for every key of the record the rebuild reads
_FIELDS = (
    ("model", "a non-empty string (the open_clip model name)", lambda v: isinstance(v, str) and bool(v.strip())),
    ("model_cfg", "an object (open_clip's model config: embed_dim, vision_cfg, text_cfg)",
     lambda v: isinstance(v, dict)),
    ("quick_gelu", "true or false", lambda v: isinstance(v, bool)),
    ("weights", f"one of {', '.join(WEIGHT_KINDS)}", lambda v: isinstance(v, str) and v in WEIGHT_KINDS),
    ("pretrained", "a non-empty string (an open_clip tag, a checkpoint path or none)",
     lambda v: isinstance(v, str) and bool(v.strip()) and "\x00" not in v),
    ("checkpoint_sha256", "null or a sha256 (64 lowercase hex digits)", lambda v: v is None or _sha(v)),
    ("sha256", "a sha256 of the tower's tensors (64 lowercase hex digits)", _sha),
    ("state", "null or the name of the cache dataset holding the tower's state (a string)",
     lambda v: v is None or (isinstance(v, str) and v.startswith("/") and "\x00" not in v)),
)


def check_record(record, cache=None) -> dict:
    """`record` when every field the rebuild reads has its type and form, else one line naming the key and the fix.

    ``cache`` (optional) is where a random-weight tower's state lives: its dataset must hold exactly the values
    the record's ``state_layout`` lays out (a truncated or foreign state is refused before torch runs).
    """
    problem = _record_problem(record, cache)
    if problem:
        where = f"cache {cache.path}" if cache is not None else "text-tower record"
        raise FeatbenchError(f"{where}: its text_tower record {problem}; {tower_fix(cache)}")
    return record


def _record_problem(record, cache) -> str | None:
    if not isinstance(record, dict):
        return f"is a JSON {_json_type(record)}, expected an object"
    for key, want, ok in _FIELDS:
        if key not in record:
            return f"lacks the key {key!r} ({want})"
        if not ok(record[key]):
            return f"has {key!r} = {short_repr(record[key])} ({_json_type(record[key])}), expected {want}"
    for key, want, ok in _CFG_FIELDS:
        cfg = record["model_cfg"]
        if key not in cfg:
            return f"has a 'model_cfg' without {key!r} ({want}; open_clip's configs have embed_dim, vision_cfg, text_cfg)"
        if not ok(cfg[key]):
            return f"has 'model_cfg'.{key!r} = {short_repr(cfg[key])} ({_json_type(cfg[key])}), expected {want}"
    if record["weights"] != "none":
        if record["state"] is not None:
            return (f"has 'state' = {short_repr(record['state'])} with 'weights' = {record['weights']!r}: only a "
                    "random-weight tower ('weights': 'none') stores its state; expected 'state': null")
        return None
    if record["state"] is None:
        return "has 'weights' = 'none' but 'state' null: a random-weight tower needs its stored state"
    return _layout_problem(record.get("state_layout", _MISSING)) or _state_problem(record, cache)


_MISSING = object()


def _layout_problem(layout) -> str | None:
    """The problem with a ``state_layout`` ([[tensor name, shape], ...]), or None."""
    want = "a list of [tensor name, [dims...]] pairs"
    if layout is _MISSING:
        return f"lacks the key 'state_layout' ({want}), which a random-weight tower needs"
    if not isinstance(layout, list) or not layout:
        return f"has 'state_layout' = {short_repr(layout)}, expected a non-empty list of [tensor name, [dims...]] pairs"
    seen = set()
    for i, entry in enumerate(layout):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], list)
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in entry[1])):
            return f"has 'state_layout'[{i}] = {short_repr(entry)}, expected [tensor name, [non-negative dims...]]"
        if entry[0].split(".", 1)[0] not in PARTS or entry[0] in seen:
            what = "twice" if entry[0] in seen else f"outside the text tower ({', '.join(PARTS)})"
            return f"has 'state_layout'[{i}] naming the tensor {short_repr(entry[0])} {what}"
        seen.add(entry[0])
    return None


def _state_problem(record: dict, cache) -> str | None:
    """Whether the cache's stored state holds exactly the values the layout lays out."""
    if cache is None or not hasattr(cache, "dataset_shape"):
        return None  # no cache to look in: the rebuild refuses a missing state
    name = record["state"]
    shape = cache.dataset_shape(name)
    if shape is None:
        return f"names the text-tower state {name} ('state'), which the cache lacks"
    total = sum(numel(dims) for _, dims in record["state_layout"])
    if len(shape) != 1 or shape[0] != total:
        return (f"lays out {total} values ('state_layout') but the dataset {name} has shape {list(shape)} "
                "(truncated, or the state of another model)")
    return None


def numel(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _json_type(v) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if v is None else names.get(type(v), type(v).__name__)


