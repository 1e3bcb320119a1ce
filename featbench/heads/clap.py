"""CLAP: a zero-shot-initialised linear probe held near the text prototypes by a class-adaptive penalty.

Silva-Rodriguez et al., "A Closer Look at the Few-Shot Adaptation of Large Vision-Language Models", CVPR 2024
(reference code jusiro/CLAP, trainers/adapters.py, configs/trainers/SGD_lr1e-1_B256_ep300.yaml,
experiments/experiment_CLAP.txt: init ``ZS``, constraint ``l2``). Following the reference:

- prototypes W [C, D] start at t_k = the template mean of the *raw* text-encoder outputs (not normalised);
- logits = s * norm(f) norm(W)^T with CLIP's logit scale s;
- loss = CE + (1/C) sum_k lambda_k ||w_k - t_k||^2 (the reference averages the penalty over classes);
- lambda_k = the zero-shot softmax probability of class k averaged over the support samples of class k
  (every augmented view counts as a sample, as in the reference), computed once before training;
- the training pool is the cached augmented views (the paper uses 20 per image; featbench uses what the cache
  has, else the plain features, noted; the paper's views are Dassl's RandomResizedCrop scale (0.08, 1));
  each epoch reshuffles the V*N pool and takes as many batches as the reference's image loader yields: Dassl
  drops the last incomplete batch when N >= batch, so floor(N / batch) batches, else one
  (``clap_batches_per_epoch``); each batch takes the next ``batch`` rows of the shuffled pool, as its
  ``run_epoch`` does;
- SGD lr 0.1, momentum 0.9, no weight decay, batch 256, 300 epochs, cosine over epochs after one warm-up epoch
  at a constant 1e-5 (Dassl); the last epoch's prototypes are the model. No validation set is used.

``lambda_scale`` multiplies every lambda_k (1 = the paper); ``inf`` freezes W at t (the lambda -> infinity
limit, exactly zero-shot). ``constraint="balanced"`` uses lambda_k = 1 and ``"none"`` gives ZS-LP, the
paper's unconstrained zero-shot-initialised probe.

Templates and class names follow the reference's CoOp code base: the 8 ImageNet templates (7 + "a photo of a
{}.") and class names with underscores kept (rows note a cache extracted with the other style).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from featbench.errors import FeatbenchError
from featbench.heads.base import Head, require
from featbench.heads.spec import DEVICE, SEED, Param, nonnegative, positive
from featbench.heads.paper import DASSL_SCALE, TEMPLATES_8

CONSTRAINTS = ("l2", "balanced", "none")


def clap_batches_per_epoch(n_images: int, batch_size: int) -> int:
    """Batches per epoch of the reference's Dassl train loader (drop_last when n_images >= batch_size)."""
    n, b = int(n_images), int(batch_size)
    return n // b if n >= b else 1


class CLAP(Head):
    """Class-adaptive linear probing: CE plus a per-class L2 pull towards the zero-shot prototypes."""

    name: ClassVar[str] = "clap"
    #: trained by fit (trainable_params): the class prototypes [C, D]
    trained_attributes: ClassVar[tuple] = ("prototypes_",)
    display_name: ClassVar[str] = "CLAP"  # what tables and plots show
    paper: ClassVar[str] = ("Silva-Rodriguez et al., A Closer Look at the Few-Shot Adaptation of Large "
                            "Vision-Language Models, CVPR 2024")
    needs_text: ClassVar[bool] = True
    uses_views: ClassVar[bool] = True
    searches_internally: ClassVar[bool] = False
    feature_kind: ClassVar[str] = "features"
    search_space: ClassVar[dict[str, list]] = {}  # validation-free by design
    #: typed, bounded hyperparameters (featbench.heads.spec): --set/--grid/recipes are checked against these
    hyperparams = {
        "epochs": nonnegative("int", doc="training epochs"),
        "lr": positive(doc="SGD learning rate"),
        "momentum": Param("float", low=0, high=1, high_open=True, doc="SGD momentum"),
        "batch_size": positive("int", doc="samples per batch"),
        "warmup_epochs": nonnegative("int", doc="constant warm-up epochs before the cosine schedule"),
        "warmup_lr": nonnegative(doc="learning rate during warm-up"),
        "weight_decay": nonnegative(doc="SGD weight decay"),
        "constraint": Param("str", choices=CONSTRAINTS, doc="l2 (class-adaptive), balanced (lambda=1) or none (ZS-LP)"),
        "lambda_scale": nonnegative(inf_ok=True, doc="multiplies every lambda_k; inf freezes the prototypes"),
        "device": DEVICE,
        "random_state": SEED,
    }
    paper_templates: ClassVar[dict] = TEMPLATES_8
    paper_classname_style: ClassVar[str] = "raw"
    paper_view_scale: ClassVar[tuple] = DASSL_SCALE

    def __init__(
        self,
        epochs: int = 300,
        lr: float = 0.1,
        momentum: float = 0.9,
        batch_size: int = 256,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        weight_decay: float = 0.0,
        constraint: str = "l2",
        lambda_scale: float = 1.0,
        device: str = "cpu",
        random_state: int = 0,
    ):
        self.epochs = epochs
        self.lr = lr
        self.momentum = momentum
        self.batch_size = batch_size
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.weight_decay = weight_decay
        self.constraint = constraint
        self.lambda_scale = lambda_scale
        self.device = device
        self.random_state = random_state

    @staticmethod
    def _logits(f, W, scale):
        from featbench.heads._torch import l2norm

        return scale * l2norm(f) @ l2norm(W).T

    def fit(self, X, y, *, text=None, views=None, logit_scale=100.0, X_val=None, y_val=None, classnames=None,
            extra=None) -> "CLAP":
        context = dict(text=text, views=views, logit_scale=logit_scale, X_val=X_val, y_val=y_val,
                       classnames=classnames, extra=extra)
        type(self).fit_batched([(self, X, y, context)])
        return self

    def _setup(self, X, y, text=None, views=None, logit_scale=100.0, **_):
        """Validation, the training pool and the class-adaptive multipliers (everything before the loop)."""
        import torch

        from featbench.heads import _torch as T

        require(text, "text features ([T, C, D] raw text-encoder outputs)", self.name)
        if self.constraint not in CONSTRAINTS:
            raise FeatbenchError(f"head '{self.name}': constraint must be one of {CONSTRAINTS}, not {self.constraint!r}")
        dev = T.resolve_device(self.device)
        t = torch.as_tensor(np.asarray(text, dtype=np.float32), device=dev)
        base = (t if t.ndim == 2 else t.mean(dim=0)).clone()  # [C, D] raw template mean
        n_classes, dim = base.shape
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != dim:
            raise FeatbenchError(f"head '{self.name}': image features {X.shape} do not match text width {dim}")
        y = np.asarray(y, dtype=np.int64)
        n_images = X.shape[0]
        notes: list[str] = []
        if views is not None:
            V = np.asarray(views, dtype=np.float32)
            if V.ndim != 3 or V.shape[1:] != X.shape:
                raise FeatbenchError(f"head '{self.name}': views shape {V.shape} does not match features {X.shape}")
            pool = torch.as_tensor(V.reshape(-1, dim), device=dev)
            pool_y = torch.as_tensor(np.tile(y, V.shape[0]), device=dev)
            views_used = int(V.shape[0])
        else:
            pool = torch.as_tensor(X, device=dev)
            pool_y = torch.as_tensor(y, device=dev)
            views_used = 0
            notes.append("no augmented views in cache: trained on plain features (the paper uses 20 views)")
        scale = float(logit_scale)

        # class-adaptive multipliers from the zero-shot softmax on the support samples
        with torch.no_grad():
            if self.constraint == "l2":
                probs = torch.softmax(self._logits(pool, base, scale), dim=1)
                counts = torch.bincount(pool_y, minlength=n_classes).to(probs.dtype)
                own = probs[torch.arange(len(pool_y), device=dev), pool_y]
                lam = torch.zeros(n_classes, device=dev).index_add_(0, pool_y, own) / counts.clamp_min(1)
            elif self.constraint == "balanced":
                lam = torch.ones(n_classes, device=dev)
            else:
                lam = torch.zeros(n_classes, device=dev)
        lam = lam * float(self.lambda_scale) if math.isfinite(self.lambda_scale) else lam
        self.lambdas_ = lam

        if self.constraint != "none" and math.isinf(self.lambda_scale):
            notes.append("lambda_scale=inf: prototypes frozen at the zero-shot weights")
            epochs = 0
        else:
            epochs = int(self.epochs)
        return dict(base=base, pool=pool, pool_y=pool_y, lam=lam, epochs=epochs, n_images=n_images, notes=notes,
                    views_used=views_used, scale=scale, dev=dev)

    # -- batched multi-run fitting (featbench.heads.base.Head.fit_batched) ------------------------------
    _SCHEDULE = ("lr", "momentum", "batch_size", "warmup_epochs", "warmup_lr", "weight_decay")

    def batch_key(self, X, y, context):
        """Runs with equal schedule and pool shape train as one stacked problem (lambdas, seeds, data may differ)."""
        v = context.get("views")
        frozen = self.constraint != "none" and not math.isfinite(float(self.lambda_scale))
        return (tuple(float(getattr(self, k)) for k in self._SCHEDULE), 0 if frozen else int(self.epochs),
                np.shape(X), np.shape(v) if v is not None else None, np.shape(context.get("text")),
                float(context.get("logit_scale", 100.0)), str(self.device))

    @classmethod
    def fit_batched(cls, fits):
        """Train R runs' prototypes stacked ([R, C, D], bmm, one momentum-SGD step for all)."""
        heads = [f[0] for f in fits]
        preps = [h._setup(X, y, **ctx) for h, X, y, ctx in fits]
        W = train_prototypes(heads, preps)
        for r, (h, p) in enumerate(zip(heads, preps)):
            h.lambdas_ = p["lam"]
            h.prototypes_ = W[r]
            h.base_ = p["base"]
            h.scale_ = p["scale"]
            h.fit_info_ = {"selected": {}, "views_used": p["views_used"], "notes": p["notes"]}
        return heads

    def decision_function(self, X) -> np.ndarray:
        import torch

        f = torch.as_tensor(np.asarray(X, dtype=np.float32), device=self.prototypes_.device)
        return self._logits(f, self.prototypes_, self.scale_).cpu().numpy()

    def class_weights(self) -> np.ndarray:
        """The learned prototypes (raw scale, like the text weights they started from)."""
        return self.prototypes_.cpu().numpy()


def train_prototypes(heads, preps):
    """CLAP's training loop for R runs at once; returns the prototypes [R, C, D].

    Each run draws its own pool permutation per epoch from its own generator; the summed loss gives each
    run's prototypes exactly its own gradient and momentum SGD is elementwise, so each run follows the
    trajectory it follows alone.
    """
    import torch
    import torch.nn.functional as Fn

    from featbench.heads import _torch as T

    h0, p0 = heads[0], preps[0]
    dev, epochs, scale = p0["dev"], p0["epochs"], p0["scale"]
    R = len(heads)
    base = torch.stack([p["base"] for p in preps])  # [R, C, D]
    lam = torch.stack([p["lam"] for p in preps])  # [R, C]
    W = base.clone().requires_grad_(True)
    batch = int(h0.batch_size)
    n_batches = clap_batches_per_epoch(p0["n_images"], batch)
    P, D = p0["pool"].shape
    used = min(P, n_batches * batch)  # pool rows an epoch reads
    feats = torch.empty(R, used, D, device=dev)
    labels = torch.empty(R, used, dtype=torch.long, device=dev)
    gens = [T.generator(h.random_state) for h in heads]
    pools = [T.l2norm(p["pool"]) for p in preps]  # normalised once: the rows are only ever read normalised
    buf = None
    for epoch in range(epochs):
        lr = T.cosine_with_warmup(epoch, float(h0.lr), epochs, int(h0.warmup_epochs), float(h0.warmup_lr))
        for r, h in enumerate(heads):
            perm = torch.randperm(P, generator=gens[r]).to(dev)[:used]
            torch.index_select(pools[r], 0, perm, out=feats[r])
            labels[r] = preps[r]["pool_y"][perm]
        for i in range(n_batches):
            f = feats[:, i * batch:(i + 1) * batch]
            if f.shape[1] == 0:
                break
            logits = scale * torch.bmm(f, T.l2norm(W).transpose(1, 2))  # [R, B, C]
            ce = Fn.cross_entropy(logits.reshape(-1, logits.shape[2]), labels[:, i * batch:(i + 1) * batch].reshape(-1),
                                  reduction="none").view(R, -1).mean(1)
            pen = (lam * (W - base).pow(2).sum(dim=2)).mean(1)  # zero lambdas for constraint "none"
            (g,) = torch.autograd.grad((ce + pen).sum(), (W,))
            with torch.no_grad():
                if h0.weight_decay:
                    g = g + h0.weight_decay * W
                buf = g.clone() if buf is None else h0.momentum * buf + g
                W -= lr * buf
    return W.detach()
