"""TaskRes: task residual tuning of CLIP's text classifier (Yu et al. CVPR 2023, geekyutao/TaskRes).

W = W0 + alpha * X with W0 the *unnormalised* template-mean of the raw text-encoder outputs and X [C, D] a
zero-initialised residual, the only trained tensor; logits = logit_scale * norm(f) norm(W)^T; cross-entropy.

The recipe reproduces the reference trainer on Dassl:
- Adam(betas 0.9/0.999) with coupled L2 weight decay 5e-4 (torch Adam's ``weight_decay``), lr 2e-3
  (ImageNet 2e-4), alpha 0.5 (Flowers 1.0), 100 epochs for 1/2/4 shots and 200 for 8/16, batch 256.
- LR: Dassl's ConstantWarmupScheduler(1 epoch at 1e-5) around CosineAnnealingLR(T_max=max_epoch), stepped
  once per epoch (see ``featbench.heads._torch.cosine_with_warmup`` for the traced semantics).
- Dassl's train loader reshuffles every epoch and drops the last incomplete batch when there are at least
  ``batch_size`` images (``drop_last = is_train and len(data) >= batch_size``); reproduced with the head's own
  generator.
- The last epoch's residual is evaluated (no validation-based selection).
- Speed, same maths: a hand-written gradient (two matmuls per step, the 1/|w_c| of the cosine applied to the
  [B, C] logits instead of normalising the [C, D] matrix, no autograd graph, preallocated buffers) and torch's
  fused Adam; runs with the same schedule and shapes (seeds, alphas of a search) train stacked as one
  [R, C, D] problem (``fit_batched``; see ``train_residuals``), each with its own generator.
- Augmentation: each epoch every image contributes one of its cached augmented views, drawn at random (the
  feature-cache stand-in for Dassl's fresh random crop + flip); without views the plain features are used
  and ``fit_info_['notes']`` says so.

Enhanced base (TaskRes*): ``base`` replaces W0 by another classifier — a Dassl checkpoint ``model.pth.tar`` with
a tuned text projection as the authors publish them (``dassl_projection_base``), an array [C, D], a .npy/.pt/.pth file,
a registered head name (fitted first on the same data and context) or a Head instance (used as is when
fitted, else fitted). With ``base_norm="text"`` (default) a non-text base is rescaled so its mean row norm
equals that of the raw-text W0 when text is available: row directions (hence the base's own cosine
predictions) are unchanged, and the paper's alpha and lr keep the relative step size they were tuned for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featbench.errors import FeatbenchError
from featbench.heads.base import Head
from featbench.heads.spec import DEVICE, SEED, Param, nonnegative, positive
from featbench.heads.paper import DASSL_SCALE, TEMPLATES_8, epochs_for_shots
from featbench.npyfiles import check_npy_size

# per-dataset / per-shot defaults of the reference configs (data, not branches)
TASKRES_LR: dict[str, float] = {"imagenet": 2e-4}
TASKRES_ALPHA: dict[str, float] = {"oxford_flowers": 1.0}
TASKRES_EPOCHS_BY_SHOTS: dict[int, int] = {1: 100, 2: 100, 4: 100, 8: 200, 16: 200}


def _load_base_file(p: Path):
    """The array in a .npy/.pt/.pth base file; pickles and anything but one numeric tensor are refused."""
    if p.suffix == ".npy":
        with open(p, "rb") as fh:  # a header declaring a huge array is refused before numpy allocates it
            check_npy_size(fh, p.stat().st_size, f"taskres.base={p}")
        try:
            return np.load(p, allow_pickle=False)
        except ValueError as err:  # object arrays and pickled files need allow_pickle, which we never grant
            why = "holds Python objects (a pickle or an object array)" if "pickle" in str(err) else str(err)[:120]
            raise FeatbenchError(f"taskres.base={p}: {why}; save a numeric [C, D] array with np.save") from None
        except (OSError, EOFError) as err:
            raise FeatbenchError(f"taskres.base={p}: not a readable .npy file ({str(err)[:120]})") from None
    import pickle

    import torch

    try:
        w = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, AttributeError, ValueError) as err:
        msg = (str(err).splitlines() or [type(err).__name__])[0][:120]
        raise FeatbenchError(f"taskres.base={p}: not a plain tensor file ({msg}); save one [C, D] tensor with "
                             "torch.save") from None
    if isinstance(w, dict):
        if len(w) != 1:
            raise FeatbenchError(f"taskres.base: {p} holds {len(w)} tensors; save a single [C, D] tensor")
        w = next(iter(w.values()))
    if not isinstance(w, torch.Tensor):
        raise FeatbenchError(f"taskres.base={p} holds a {type(w).__name__}, not a tensor; save one [C, D] tensor")
    return w.detach().float().numpy()


def _base_array(w, what: str) -> np.ndarray:
    """A finite float32 [C, D] base, or one line saying why not (object arrays, strings, ragged lists, NaN)."""
    try:
        arr = np.asarray(w)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError
        arr = arr.astype(np.float32)
    except (ValueError, TypeError):
        raise FeatbenchError(f"{what}: expects numeric [C, D] class weights (a head name, a .npy/.pt file or a "
                             "list of lists of numbers)") from None
    if arr.size and not np.isfinite(arr).all():
        raise FeatbenchError(f"{what}: the base classifier holds NaN/Inf values; give finite class weights")
    return arr


#: globals a Dassl checkpoint pickles besides tensors: optimizer/scheduler objects (replaced by inert stubs,
#: never constructed) and plain containers; anything else means code would run, and is refused
_INERT_PREFIXES = ("torch.optim.", "dassl.")
_CONTAINERS = {"dict": dict, "list": list, "set": set, "tuple": tuple, "collections.OrderedDict": None,
               "collections.defaultdict": None}


class _Inert:
    """Stands in for an optimizer/scheduler object of a checkpoint: keeps no state, runs no code."""

    def __setstate__(self, state):
        pass


def _load_torch_file(p: Path):
    """torch.load(weights_only=True): no pickled code runs. A Dassl checkpoint's optimizer and scheduler
    objects (``torch.optim.*``, ``dassl.*``) load as inert stubs; any other object is a one-line error."""
    import collections
    import pickle
    import re

    import torch

    allowed: list = []
    for _ in range(64):
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
            if found is None:  # not a pickle torch can read at all
                raise FeatbenchError(f"taskres.base: {p} is not a readable torch file; pass a .npy, .pt or Dassl "
                                     f"model.pth.tar file") from None
            name = found.group(1)
            if name in _CONTAINERS:
                allowed.append(_CONTAINERS[name] or getattr(collections, name.rpartition(".")[2]))
            elif name.startswith(_INERT_PREFIXES):
                module, _, qual = name.rpartition(".")
                allowed.append(type(qual, (_Inert,), {"__module__": module, "__qualname__": qual}))
            else:
                raise FeatbenchError(f"taskres.base: {p} needs pickled code to load ({name}); featbench loads "
                                     f"weights only: re-save it as torch.save({{'state_dict': {{'weight': W}}}}, path)") from None
        except Exception as err:  # not a torch file at all (zip errors, truncated files)
            raise FeatbenchError(f"taskres.base: {p} is not a readable torch file ({type(err).__name__}); pass a .npy, "
                                 f".pt or Dassl model.pth.tar file") from None
    raise FeatbenchError(f"taskres.base: {p} pickles too many objects to load safely; re-save its weights alone")


def dassl_projection_base(ckpt: dict, p: Path, text_pre, dim: int) -> np.ndarray:
    """TaskRes*'s enhanced base from a Dassl checkpoint holding a tuned text projection.

    TaskRes (trainers/taskres.py, ``_get_enhanced_base_text_features``) sets the text encoder's projection to
    ``state_dict['weight'].t()`` — the weight of an nn.Linear(Q, D), shape [D, Q] — and averages the projected
    template outputs: W0 = mean_T(text_pre) @ weight^T, [C, D], not normalised. ``text_pre`` [T, C, Q] are the
    cache's pre-projection text features. A [Q, D] weight (the projection itself) is accepted when Q != D.
    """
    sd = ckpt.get("state_dict")
    w = sd.get("weight") if isinstance(sd, dict) else None
    if w is None or not hasattr(w, "float"):
        raise FeatbenchError(f"taskres.base: {p} is a checkpoint without state_dict['weight'] (a tuned text "
                             f"projection); pass TaskRes's released model.pth.tar or a [C, D] weight file")
    if text_pre is None:
        raise FeatbenchError(f"taskres.base: {p} is a tuned text projection; it needs the cache's pre-projection text "
                             f"features: re-extract with `featbench extract --pre-projection`")
    w = w.float().numpy().astype(np.float32)
    t = np.asarray(text_pre, np.float32)
    t = t if t.ndim == 2 else t.mean(0)  # [C, Q]
    q = t.shape[1]
    if w.ndim == 2 and w.shape == (dim, q):
        proj = w.T
    elif w.ndim == 2 and w.shape == (q, dim):
        proj = w
    else:
        raise FeatbenchError(f"taskres.base: {p} state_dict['weight'] has shape {tuple(w.shape)}; a text projection "
                             f"for this cache is [{dim}, {q}] (nn.Linear weight, as TaskRes saves it)")
    if not np.isfinite(w).all():
        raise FeatbenchError(f"taskres.base: {p} state_dict['weight'] holds NaN or inf values; use another checkpoint")
    return (t @ proj).astype(np.float32)


class TaskRes(Head):
    """Task residual on top of a frozen base classifier (CLIP text weights by default)."""

    name = "taskres"
    #: trained by fit (trainable_params): the residual X [C, D] (W0 frozen), plus a base head fitted here
    trained_attributes = ("residual_",)
    display_name = "TaskRes"  # what tables and plots show
    paper = "Yu et al. 2023, Task Residual for Tuning Vision-Language Models"
    needs_text = True
    uses_views = True
    searches_internally = False
    # alpha is the method's one knob (the paper ablates it around its 0.5 default, 1.0 on Flowers); lr and
    # epochs stay at the paper's recipe so a val search costs 4 fits, not a product grid.
    search_space = {"alpha": [0.25, 0.5, 1.0, 2.0]}
    #: typed, bounded hyperparameters (featbench.heads.spec): --set/--grid/recipes are checked against these
    hyperparams = {
        "alpha": nonnegative(doc="scale of the learned residual (W = W0 + alpha X)"),
        "lr": positive(doc="Adam learning rate"),
        "epochs": nonnegative("int", doc="training epochs (0 = the base classifier alone)"),
        "batch_size": positive("int", doc="images per batch"),
        "weight_decay": nonnegative(doc="Adam (coupled L2) weight decay"),
        "warmup_epochs": nonnegative("int", doc="constant warm-up epochs before the cosine schedule"),
        "warmup_lr": nonnegative(doc="learning rate during warm-up"),
        "base": Param("any", doc="base classifier: null (text), a head name, a .npy/.pt [C, D] file or an array"),
        "base_norm": Param("str", choices=("text", "none"), doc="rescale a non-text base to the text W0's mean row norm"),
        "device": DEVICE,
        "random_state": SEED,
        "paper_context": Param("any", doc="(dataset, shots) for a named base head; set by the runner"),
    }
    runtime_params = Head.runtime_params + ("paper_context",)
    # trainers/taskres.py: ImageNet's 7 select templates + "a photo of a {}.", raw class names, Dassl crops
    paper_templates = TEMPLATES_8
    paper_classname_style = "raw"
    paper_view_scale = DASSL_SCALE

    def __init__(self, alpha: float = 0.5, lr: float = 2e-3, epochs: int = 100, batch_size: int = 256,
                 weight_decay: float = 5e-4, warmup_epochs: int = 1, warmup_lr: float = 1e-5, base=None,
                 base_norm: str = "text", device: str = "cpu", random_state: int = 0, paper_context=None):
        self.alpha = alpha
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.base = base
        self.base_norm = base_norm
        # (dataset, shots) whose paper defaults a base head named by string gets; set by the runner
        self.paper_context = paper_context
        self.device = device
        self.random_state = random_state

    @classmethod
    def paper_defaults(cls, dataset, shots):
        d: dict = {}
        if dataset is not None:
            d["lr"] = TASKRES_LR.get(dataset, 2e-3)
            d["alpha"] = TASKRES_ALPHA.get(dataset, 0.5)
        if shots is not None:
            d["epochs"] = epochs_for_shots(TASKRES_EPOCHS_BY_SHOTS, shots)
        return d

    def hyperparameters(self):
        hp = super().hyperparameters()
        b = hp.get("base")
        if isinstance(b, (list, tuple)):  # a literal from --set/recipes: checked here, before any cell runs
            b = _base_array(b, "taskres.base")
        if b is not None and not isinstance(b, (str, int, float)):  # keep result rows JSON-friendly
            hp["base"] = type(b).__name__ if isinstance(b, Head) else f"array{tuple(np.shape(b))}"
        return hp

    @classmethod
    def uses_selection_split(cls, params) -> bool:
        """A base head that searches on val (linear-probe's C, Tip-Adapter's alpha/beta) gets the split too."""
        base = params.get("base")
        if isinstance(base, str) and not Path(base).suffix:
            from featbench.heads import get_head_class, list_heads

            if base in list_heads():
                return get_head_class(base).uses_selection_split({})
        return False

    # -- base classifier -------------------------------------------------------------------------------
    def _resolve_base(self, X, y, context) -> tuple[np.ndarray, str]:
        text = context.get("text")
        base = self.base
        if base is None:
            if text is None:
                raise FeatbenchError("head 'taskres' needs text features (the cache's /text group) or a base= classifier")
            t = np.asarray(text, np.float32)
            return (t if t.ndim == 2 else t.mean(0)), "text (mean of raw template outputs)"
        if isinstance(base, Head):
            if not hasattr(base, "fit_info_"):
                base.fit(X, y, **context)
            return np.asarray(base.class_weights(), np.float32), f"head instance {base.name}"
        if isinstance(base, (str, Path)):
            p = Path(base)
            if p.suffix in (".npy", ".pt", ".pth", ".tar"):
                if not p.exists():
                    raise FeatbenchError(f"taskres.base: weight file {p} not found; pass an existing .npy/.pt file")
                if not p.is_file():  # a folder, FIFO or device would fail late or block forever
                    raise FeatbenchError(f"taskres.base: {p} is not a regular file; pass a .npy/.pt file")
                if p.suffix != ".npy":
                    ckpt = _load_torch_file(p)
                    if isinstance(ckpt, dict) and "state_dict" in ckpt:  # a Dassl checkpoint (TaskRes* published bases)
                        return dassl_projection_base(ckpt, p, (context.get("extra") or {}).get("text_features_pre"),
                                                     X.shape[1]), f"Dassl checkpoint {p} (tuned text projection)"
                w = _load_base_file(p)
                return _base_array(w, f"taskres.base={p}"), f"file {p}"
            from featbench.heads import get_head, get_head_class

            cls = get_head_class(str(base))  # raises a clear error for unknown names
            kw = {k: getattr(self, k) for k in ("device", "random_state") if k in cls.param_names()}
            dataset, shots = tuple(self.paper_context or (None, None))
            head = get_head(str(base), dataset=dataset, shots=shots, **kw)
            head.fit(X, y, **context)
            self.base_head_ = head
            return np.asarray(head.class_weights(), np.float32), f"head {base}"
        return _base_array(base, "taskres.base"), "array"

    # -- estimator API -----------------------------------------------------------------------------------
    def _setup(self, X, y, context):
        """Validation, base resolution and the training source; everything fit needs before the loop."""
        from featbench.heads import _torch as T

        X, y = T.check_xy(X, y)
        text, views, classnames = context.get("text"), context.get("views"), context.get("classnames")
        self.base_head_ = None  # set by _resolve_base when base names a head (no stale one from an earlier fit)
        w0, base_desc = self._resolve_base(X, y, context)
        if w0.ndim != 2 or w0.shape[1] != X.shape[1]:
            raise FeatbenchError(f"taskres.base must be [C, D={X.shape[1]}] class weights (got shape {w0.shape})")
        n_expected = len(classnames) if classnames is not None else (np.asarray(text).shape[-2] if text is not None else None)
        if n_expected is not None and w0.shape[0] != n_expected:
            raise FeatbenchError(f"taskres.base has {w0.shape[0]} class rows but the cache has {n_expected} classes; "
                                 f"give a [{n_expected}, {X.shape[1]}] base")
        notes: list[str] = []
        text_scale = base_desc.startswith("Dassl checkpoint")  # already the paper's raw-text W0 scale
        if self.base is not None and self.base_norm == "text" and text is not None and not text_scale:
            t = np.asarray(text, np.float32)
            ref = np.linalg.norm(t if t.ndim == 2 else t.mean(0), axis=1).mean()
            cur = np.linalg.norm(w0, axis=1).mean()
            if cur > 0:
                w0 = w0 * (ref / cur)
                notes.append(f"base rescaled by {ref / cur:.4g} to the raw-text W0's mean row norm")
        elif self.base_norm not in ("text", "none"):
            raise FeatbenchError(f"taskres.base_norm must be 'text' or 'none' (got {self.base_norm!r})")
        T.check_xy(X, y, w0.shape[0])
        if views is not None:
            src = np.asarray(views)
            if src.ndim != 3 or src.shape[1] != X.shape[0]:
                raise FeatbenchError(f"views must be [V, N={X.shape[0]}, D] aligned with the train rows (got {src.shape})")
            views_used = int(src.shape[0])
        else:
            src = np.asarray(X)[None]
            views_used = 0
            if int(self.epochs):
                notes.append("no augmented views in cache: trained on plain features")
        self.logit_scale_ = float(context.get("logit_scale", 100.0))
        return dict(w0=np.asarray(w0, np.float32), src=src, y=np.asarray(y), notes=notes, base_desc=base_desc,
                    views_used=views_used)

    def _finish(self, prep, W0, residual, lrs):
        from featbench.heads import _torch as T

        self.W0_ = W0  # frozen: never requires grad
        self.residual_ = residual
        self.alpha_ = float(self.alpha)
        self.weights_ = T.l2norm(self.W0_ + self.alpha_ * self.residual_)
        self.n_classes_ = int(W0.shape[0])
        self.lrs_ = list(lrs)
        base_head = getattr(self, "base_head_", None)
        base_selected = dict(getattr(base_head, "fit_info_", {}).get("selected") or {}) if base_head is not None else {}
        self.fit_info_ = {"selected": {f"base.{k}": v for k, v in base_selected.items()},
                          "views_used": prep["views_used"], "notes": prep["notes"], "base": prep["base_desc"],
                          "trainable": ["residual"], "epochs": int(self.epochs),
                          "lr_first_last": [lrs[0], lrs[-1]] if lrs else []}
        return self

    def fit(self, X, y, *, text=None, views=None, logit_scale=100.0, X_val=None, y_val=None, classnames=None,
            extra=None) -> "TaskRes":
        context = dict(text=text, views=views, logit_scale=logit_scale, X_val=X_val, y_val=y_val,
                       classnames=classnames, extra=extra)
        type(self).fit_batched([(self, X, y, context)])
        return self

    # -- batched multi-run fitting (featbench.heads.base.Head.fit_batched) ------------------------------
    _SCHEDULE = ("lr", "epochs", "batch_size", "weight_decay", "warmup_epochs", "warmup_lr")

    def batch_key(self, X, y, context):
        """Runs with the same schedule and shapes share one stacked training loop (alpha, seed, data may differ)."""
        if self.base is not None:  # a base head is fitted per run (its own search): not batched
            return None
        v = context.get("views")
        return (tuple(float(getattr(self, k)) for k in self._SCHEDULE), np.shape(X), np.shape(v) if v is not None else None,
                np.shape(context.get("text")), float(context.get("logit_scale", 100.0)), str(self.device))

    @classmethod
    def fit_batched(cls, fits):
        """Train R residuals as one problem: [R, C, D] residuals, bmm's, one fused Adam step for all.

        Each run keeps its own generator and draw order (views, then the permutation, per epoch), so every
        run sees exactly the minibatches it would see alone; the rows equal one-at-a-time fits.
        """
        import torch

        from featbench.heads import _torch as T

        heads = [f[0] for f in fits]
        preps = [h._setup(X, y, ctx) for h, X, y, ctx in fits]
        h0 = heads[0]
        dev = T.resolve_device(h0.device)
        W0 = torch.stack([T.as_tensor(p["w0"], dev) for p in preps])
        res, lrs = train_residuals(
            W0, [p["src"] for p in preps], [p["y"] for p in preps], [float(h.alpha) for h in heads],
            [T.generator(h.random_state) for h in heads], scale=h0.logit_scale_, lr=float(h0.lr),
            epochs=int(h0.epochs), batch_size=int(h0.batch_size), weight_decay=float(h0.weight_decay),
            warmup_epochs=int(h0.warmup_epochs), warmup_lr=float(h0.warmup_lr))
        for r, (h, p) in enumerate(zip(heads, preps)):
            h._finish(p, W0[r], res[r], lrs)
        return heads

    def decision_function(self, X) -> np.ndarray:
        from featbench.heads import _torch as T

        return T.cosine_decision(X, self.weights_, self.logit_scale_)

    def trainable_params(self) -> int | None:
        """The residual's size, plus what a base head named by ``base`` trained in this fit (None if unknown)."""
        own = super().trainable_params()
        if self.base_head_ is None:
            return own
        base = self.base_head_.trainable_params()
        return None if base is None else own + base

    def class_weights(self) -> np.ndarray:
        """W0 + alpha * X (unnormalised, as the method defines the tuned classifier)."""
        from featbench.heads import _torch as T

        return T.to_numpy(self.W0_ + self.alpha_ * self.residual_)


def train_residuals(W0, srcs, ys, alphas, gens, *, scale, lr, epochs, batch_size, weight_decay, warmup_epochs,
                    warmup_lr):
    """The TaskRes training loop for R stacked runs; returns (residuals [R, C, D], per-epoch lrs).

    Kernel (same maths as autograd on ``CE(s * f.w_c / |w_c|)``, written out so a step is two bmm's plus
    O(C D) elementwise work and no allocation of [C, D] temporaries):
      W = W0 + alpha X;  z = s (F W^T) / |w|;  G = (softmax(z) - onehot) / B
      dL/dW = (G s/|w|)^T F - diag(sum_b G z / |w|^2) W;  dL/dX = alpha dL/dW
    followed by torch's fused Adam (coupled L2) on the stacked residual. Each epoch's features are gathered
    once in minibatch order (view draw, then permutation, from each run's own generator), so a step reads a
    contiguous [R, B, D] slice.
    """
    import torch

    from featbench.heads import _torch as T

    dev = W0.device
    R, C, D = W0.shape
    n = int(np.shape(ys[0])[0])
    residual = torch.zeros_like(W0, requires_grad=True)
    opt = T.make_optimizer(torch.optim.Adam, [residual], lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    if epochs == 0 or n == 0:
        return residual.detach(), []
    bs = int(batch_size)
    drop_last = n >= bs
    stop = (n // bs) * bs if drop_last else n
    alpha = torch.tensor(alphas, dtype=W0.dtype, device=dev).view(R, 1, 1)
    # the per-epoch gather happens on the host (views stay there); one upload per epoch, none per step
    staging = T.HostStaging([((R, n, D), torch.float32), ((R, n), torch.long)], dev)
    ys_t = [torch.as_tensor(np.asarray(y), dtype=torch.long) for y in ys]
    W = torch.empty_like(W0)
    grad = torch.empty_like(W0)
    inv = torch.empty(R, C, device=dev)
    ar = np.arange(n)
    lrs = []
    with torch.no_grad():
        for epoch in range(epochs):
            lr_e = T.cosine_with_warmup(epoch, lr, epochs, warmup_epochs, warmup_lr)
            T.set_lr(opt, lr_e)
            lrs.append(lr_e)
            host, host_y = staging.fill()  # waits until the previous epoch's upload has read them
            for r in range(R):
                vidx = T.draw_view_indices(srcs[r].shape[0], n, gens[r]).numpy()
                perm = torch.randperm(n, generator=gens[r]).numpy()
                host[r] = torch.from_numpy(np.ascontiguousarray(srcs[r][vidx[perm], ar[perm]], dtype=np.float32))
                host_y[r] = ys_t[r][perm]
            feats, labels = staging.upload()
            feats.div_(torch.linalg.vector_norm(feats, dim=2, keepdim=True).clamp_min_(1e-12))
            for s0 in range(0, stop, bs):
                F_ = feats[:, s0:s0 + bs]
                yb = labels[:, s0:s0 + bs]
                B = F_.shape[1]
                torch.addcmul(W0, alpha, residual, out=W)
                torch.linalg.vector_norm(W, dim=2, out=inv)
                inv.clamp_min_(1e-12).reciprocal_()  # 1/|w_c|
                z = torch.bmm(F_, W.transpose(1, 2))  # [R, B, C]
                z.mul_(inv.unsqueeze(1).mul(scale))
                g = torch.softmax(z, dim=2)
                g.scatter_add_(2, yb.unsqueeze(2), torch.full((R, B, 1), -1.0, device=dev)).div_(B)  # (P - Y) / B
                # d/dX = alpha dL/dW: alpha folded into the small [R, C] and [R, B, C] factors
                k = (g * z).sum(1).mul_(inv).mul_(inv).mul_(-alpha.view(R, 1))  # -alpha sum_b G z / |w|^2
                torch.mul(W, k.unsqueeze(2), out=grad)
                g.mul_(inv.unsqueeze(1).mul(alpha.view(R, 1, 1) * scale))
                grad.baddbmm_(g.transpose(1, 2), F_)
                residual.grad = grad
                opt.step()
    return residual.detach(), lrs
