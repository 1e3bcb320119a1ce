"""Turn features computed elsewhere (a .npz of arrays) into a schema-v1 cache, so every head can use them.

Researchers often already hold CLIP features from their own pipelines. The .npz holds, per split in
train/val/test: ``<split>_features`` [N, D] and ``<split>_labels`` [N]; optionally ``<split>_paths`` [N]
(the image identities; ``<split>/<row>`` placeholders otherwise), ``train_views`` [V, N_train, D],
``classnames`` [C], ``text_raw`` [T, C, D] raw text-encoder outputs and ``templates`` [T]. The fingerprint
is derived from the model/pretrained labels the user gives (plus the `preprocess` description), so caches
imported with the same labels combine (domain generalisation) while anything else is refused.

Prompt learners (coop, kgcoop, cocoop) also need the text encoder itself. ``--text-tower MODEL:PRETRAINED``
(or ``MODEL:/path/to/checkpoint.pt``) names it; it is trusted only after it re-encodes every imported class
prompt (template x class) to the imported ``text_raw`` (cosine >= ``TOWER_MIN_COSINE``), and is then recorded
exactly as extraction records it (``featbench.texttower.cache_record``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featbench.cache import SPLITS, base_attrs, compute_fingerprint, require_fits_dtype, write_cache
from featbench.errors import FeatbenchError
from featbench.npyfiles import load_npz
from featbench.prompts import check_classname

#: the least cosine between a re-encoded class prompt and its imported text feature. Rounding a feature to
#: float16 (the default on-disk dtype, and a common export dtype) costs ~1e-8 in cosine (measured on the tiny
#: test model: min 0.99999998); fp16 autocast, whose per-element error is ~1e-3 relative, costs ~1e-6. Another
#: checkpoint of the same architecture lands far below (two random tiny towers: 0.05-0.12).
TOWER_MIN_COSINE = 0.999


def _numeric(npz: Path, name: str, arr, dtype: str) -> np.ndarray:
    """A float32 copy of a feature array that fits the on-disk ``dtype``, or one line naming the array that is
    not numbers, not finite or out of that dtype's range."""
    arr = np.asarray(arr)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)) or arr.dtype == bool:
        raise FeatbenchError(f"{npz}: {name} holds {arr.dtype} values, expected numbers (float features)")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, refused just below
        out = arr.astype(np.float32)
    if out.size and not np.isfinite(out).all():
        bad = int(out.size - np.count_nonzero(np.isfinite(out)))
        raise FeatbenchError(f"{npz}: {name} holds {bad} NaN/Inf value(s) (or values too large for float32); "
                             "drop or fix those rows before importing")
    require_fits_dtype(out, dtype, f"{npz}: {name}", "import with --dtype float32 (or rescale the features)")
    return out


def _labels(npz: Path, name: str, arr) -> np.ndarray:
    """int64 labels 0..C-1, or one line saying what is wrong with them."""
    arr = np.asarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise FeatbenchError(f"{npz}: {name} must hold whole-number class indices 0..C-1")
    elif not np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        raise FeatbenchError(f"{npz}: {name} holds {arr.dtype} values, expected integer class indices 0..C-1")
    labels = arr.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise FeatbenchError(f"{npz}: {name} has negative labels (min {int(labels.min())}); labels are class indices 0..C-1")
    return labels


def _classnames(npz: Path, arrays: dict, n_classes: int) -> list[str]:
    if "classnames" not in arrays:
        return [f"class_{i}" for i in range(n_classes)]
    names = [str(c) for c in np.asarray(arrays["classnames"]).reshape(-1)]
    for i, name in enumerate(names):
        check_classname(name, f"{npz}: classnames[{i}]")
    return names


def import_npz(npz: str | Path, out: str | Path, *, dataset: str, model: str, pretrained: str,
               logit_scale: float = 100.0, preprocess: str = "imported", dtype: str = "float16",
               overwrite: bool = False, text_tower: str | None = None, templates: list[str] | None = None,
               device: str = "auto") -> Path:
    """Write a schema-v1 cache at `out` from the arrays in `npz`; returns the cache path.

    ``text_tower`` ("MODEL:PRETRAINED" or "MODEL:/path/to/checkpoint.pt") records the text encoder that made
    ``text_raw`` after checking it re-encodes them; ``templates`` gives the prompt templates the .npz lacks.
    """
    npz, out = Path(npz), Path(out)
    if not npz.exists():
        raise FeatbenchError(f"feature file {npz} not found; pass an .npz with <split>_features and <split>_labels arrays")
    if not npz.is_file():
        raise FeatbenchError(f"feature file {npz} is not a regular file; pass an .npz file")
    if out.exists() and not overwrite:
        raise FeatbenchError(f"{out} exists; pass --overwrite to replace it")
    arrays = load_npz(npz, f"{npz} is not a readable .npz file")

    splits = {}
    dim = None
    for split in SPLITS:
        if f"{split}_features" not in arrays:
            continue
        feats = _numeric(npz, f"{split}_features", arrays[f"{split}_features"], dtype)
        if f"{split}_labels" not in arrays:
            raise FeatbenchError(f"{npz}: has {split}_features but no {split}_labels")
        labels = _labels(npz, f"{split}_labels", arrays[f"{split}_labels"])
        if feats.ndim != 2 or labels.shape != (feats.shape[0],):
            raise FeatbenchError(f"{npz}: {split}_features must be [N, D] with N = len({split}_labels)")
        dim = dim or feats.shape[1]
        if feats.shape[1] != dim:
            raise FeatbenchError(f"{npz}: {split}_features has width {feats.shape[1]}, other splits {dim}")
        paths = arrays.get(f"{split}_paths")
        paths = [str(p) for p in paths] if paths is not None else [f"{split}/{i:07d}" for i in range(len(labels))]
        if len(paths) != len(labels):
            raise FeatbenchError(f"{npz}: {split}_paths has {len(paths)} entries but {split}_labels has {len(labels)}")
        splits[split] = {"paths": paths, "labels": labels, "features": feats}
    if not splits:
        raise FeatbenchError(f"{npz}: no <split>_features arrays (expected train_features, val_features, test_features)")

    n_classes = max((int(s["labels"].max()) for s in splits.values() if len(s["labels"])), default=-1) + 1
    classnames = _classnames(npz, arrays, n_classes)
    if len(classnames) < n_classes:
        raise FeatbenchError(f"{npz}: labels go up to {n_classes - 1} but classnames has {len(classnames)} entries")

    text = arrays.get("text_raw")
    if text is not None:
        text = _numeric(npz, "text_raw", text, dtype)
    templates = _templates(npz, arrays, templates)
    if text is not None and (text.ndim != 3 or text.shape[1:] != (len(classnames), dim)):
        raise FeatbenchError(f"{npz}: text_raw must be [T, {len(classnames)}, {dim}], got {list(text.shape)}")
    if templates is not None and text is not None and len(templates) != text.shape[0]:
        raise FeatbenchError(f"{npz}: text_raw holds {text.shape[0]} template(s) but {len(templates)} templates are "
                             "given; give one template per text_raw row, in order")
    tower, tower_extra = ({}, {}) if text_tower is None else check_text_tower(
        text_tower, npz=npz, arrays=arrays, classnames=classnames, templates=templates, text=text, device=device)

    views = arrays.get("train_views")
    if views is not None:
        views = _numeric(npz, "train_views", views, dtype)
    view_rows = None
    if views is not None:
        if "train" not in splits or views.ndim != 3 or views.shape[1:] != splits["train"]["features"].shape:
            raise FeatbenchError(f"{npz}: train_views must be [V, N_train, D] aligned with train_features")
        view_rows = np.arange(views.shape[1])

    try:
        logit_scale = float(logit_scale)
    except (TypeError, ValueError):
        raise FeatbenchError(f"--logit-scale {logit_scale!r}: give a positive number such as 100") from None
    if not np.isfinite(logit_scale) or logit_scale <= 0:
        raise FeatbenchError(f"--logit-scale {logit_scale}: give a finite positive number such as 100 (CLIP's exp(logit_scale))")
    prep = {"source": "imported", "preprocess": preprocess}
    attrs = base_attrs(model=model, pretrained=pretrained, dataset=dataset, embed_dim=dim, logit_scale=logit_scale,
                       fingerprint=compute_fingerprint(model, pretrained, prep), preprocess=prep,
                       **({"text_tower": tower} if tower else {}))
    return write_cache(out, attrs=attrs, classnames=classnames, splits=splits, text_features=text,
                       templates=templates, views=views, view_rows=view_rows, dtype=dtype, extra=tower_extra or None)


def _templates(npz: Path, arrays: dict, given: list[str] | None) -> list[str] | None:
    """The .npz's templates, or --templates where it has none (both: they must agree)."""
    stored = [str(t) for t in np.asarray(arrays["templates"]).reshape(-1)] if "templates" in arrays else None
    if given is None:
        return stored
    given = [str(t) for t in given]
    if "text_raw" not in arrays:
        raise FeatbenchError(f"--templates: {npz} has no text_raw, whose prompts the templates describe; drop --templates")
    if stored is not None and stored != given:
        raise FeatbenchError(f"--templates: {npz} already records {len(stored)} template(s) that differ from the "
                             "given ones; drop --templates (the .npz's templates are used)")
    return given


# ----------------------------------------------------------------------------------------------------
# --text-tower: the text encoder that made text_raw, checked by re-encoding its prompts
# ----------------------------------------------------------------------------------------------------
def parse_tower_spec(spec: str) -> tuple[str, str]:
    """("MODEL", "PRETRAINED") of --text-tower MODEL:PRETRAINED, or one line saying the form."""
    model, sep, weights = str(spec).partition(":")
    if not sep or not model.strip() or not weights.strip():
        raise FeatbenchError(f"--text-tower {spec}: give MODEL:PRETRAINED, an open_clip model and tag (e.g. "
                             "ViT-B-32:openai) or MODEL:/path/to/checkpoint.pt")
    return model.strip(), weights.strip()


def check_text_tower(spec: str, *, npz: Path, arrays: dict, classnames: list[str], templates: list[str] | None,
                     text: np.ndarray | None, device: str = "auto") -> tuple[dict, dict]:
    """(the text-tower record, its datasets) for --text-tower after it re-encodes the imported prompts.

    Refuses, in one line, what cannot be checked (no text_raw, no class names, no templates), an encoder open_clip
    cannot build or prompt learners cannot run, and one whose prompts land elsewhere (the worst class's cosine).
    """
    model, weights = parse_tower_spec(spec)
    if text is None:
        raise FeatbenchError(f"--text-tower {spec}: {npz} has no text_raw [T, C, D] to check the encoder against; "
                             "add the text features that encoder made (with classnames and templates)")
    if "classnames" not in arrays:
        raise FeatbenchError(f"--text-tower {spec}: {npz} has no classnames, so its class prompts cannot be "
                             "re-encoded; add the classnames array (label order) that made text_raw")
    if templates is None:
        raise FeatbenchError(f"--text-tower {spec}: {npz} has no templates, so its class prompts cannot be "
                             "re-encoded; add a templates array or pass --templates FILE (one per line with {} for "
                             "the class name, e.g. the dataset's templates that made text_raw)")
    enc = _tower_encoder(spec, model, weights, device)
    record, extra = _tower_record(spec, enc)
    fresh = enc.encode_text(classnames, templates)[0]
    _check_reencoded(spec, npz, fresh, text, classnames, templates)
    return record, extra


def _tower_encoder(spec: str, model: str, weights: str, device: str):
    """The open_clip encoder --text-tower names (weights resolved offline as `extract` resolves them)."""
    from featbench.encoders import Encoder  # lazy: torch and open_clip only when --text-tower is given

    try:
        return Encoder(model, weights, device)
    except FeatbenchError as err:
        raise FeatbenchError(f"--text-tower {spec}: {_as_tower_flags(str(err))}") from None


def _as_tower_flags(msg: str) -> str:
    """An encoder's message in --text-tower's terms (it speaks of extract's --model and --pretrained)."""
    for flag, part in (("--pretrained /path/to/weights.pt", "--text-tower MODEL:/path/to/checkpoint.pt"),
                       ("--pretrained none", "--text-tower MODEL:none"), ("--pretrained ", "PRETRAINED "),
                       ("--model", "MODEL")):
        msg = msg.replace(flag, part)
    return msg


def _tower_record(spec: str, enc) -> tuple[dict, dict]:
    from featbench.texttower import cache_record

    record, extra = cache_record(enc)
    if record.get("unsupported"):
        raise FeatbenchError(f"--text-tower {spec}: prompt learners cannot run this encoder: {record['unsupported']}")
    return record, extra


def _check_reencoded(spec: str, npz: Path, fresh: np.ndarray, text: np.ndarray, classnames: list[str],
                     templates: list[str]) -> None:
    """Every re-encoded prompt points where the imported one does (cosine >= TOWER_MIN_COSINE)."""
    if fresh.shape != text.shape:
        raise FeatbenchError(f"--text-tower {spec}: the encoder gives text features of shape {list(fresh.shape)} "
                             f"but {npz} text_raw has {list(text.shape)}; name the encoder that made text_raw")
    cos = cosines(fresh, text)  # [T, C]
    t, c = np.unravel_index(int(np.argmin(cos)), cos.shape)
    worst = float(cos[t, c])
    if not worst >= TOWER_MIN_COSINE:
        raise FeatbenchError(
            f"--text-tower {spec}: the encoder does not reproduce {npz} text_raw: class {classnames[c]!r} (index {c}) "
            f"has cosine {worst:.4f} with template {templates[t]!r} (need >= {TOWER_MIN_COSINE}); name the model and "
            "weights (and templates) that made text_raw")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity along the last axis (0 where either vector is zero)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    den = na * nb
    return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1.0), 0.0)
