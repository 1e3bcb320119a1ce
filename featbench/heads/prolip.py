"""ProLIP: fine-tune only CLIP's final image projection, pulled back towards its pretrained value.

Fahes et al., "CLIP's Visual Embedding Projector is a Few-shot Cornucopia" (arXiv 2410.05270; reference code
astra-vision/ProLIP, methods/ProLIP.py and configs/experiments/*.yaml). Following the reference:

- inputs are *pre-projection* image features x (``feature_kind = "features_pre"``: the runner passes them as
  X / X_val / views) and ``extra["image_projection"]`` W0 [P, D] (+ ``"image_projection_bias"`` [D] for
  architectures whose last layer has one, e.g. RN50's attention-pool output; the bias stays frozen);
- f = x W (+ b); logits = s * norm(f) T^T with T the zero-shot text weights (normalised template means of
  normalised text outputs) and s the logit scale;
- loss = CE + lambda * ||W - W0||_F^2 (sum of squares); lambda = 1/N with N the number of *shots* per class
  (reference ``lambda_funct_1_N``: ``lambda_v = 1/shots``);
- full batch; each epoch uses one augmented view of every support image, cycling through the cached views
  (the reference caches 300); plain features when the cache has no views (noted);
- Adam (eps 1e-4), cosine annealing over 300 epochs; the last epoch's projection is the model.
- lr and lambda: the paper's few-shot table (Table 1, ``configs/experiments/few_shot_few_val.yaml``:
  ``search_lr: True``) searches lr in 1e-2..1e-8 x lambda in {10, 1, 0.1, 0.01, 1e-3, 1e-4, 0} on a few-shot
  val set of K images per class (``main.py``: ``generate_fewshot_dataset_(shots, split="val")``), first
  strict best, lr outer. That grid is ``search_space``, and ``paper_search`` makes ``--protocol paper`` run it
  on that split (``val`` runs it on CoOp's min(K, 4)). Used alone (no search), the head defaults to lr 1e-5
  and lambda = 1/N: the validation-free setting of the paper's transfer experiments (cross-dataset, domain
  and base-to-new tables: ``few_shot_no_val_lr1e-5_lambda_1_N.yaml``). Its validation-free few-shot table
  (Table 2) reports lr 1e-5..1e-2, which agree within 0.4 points.
- Views: the reference caches 300 views at RandomResizedCrop scale (0.5, 1); ImageNet uses the 7 "select"
  templates; class names with underscores replaced.

With 0 epochs the head is zero-shot CLIP exactly (x W0 + b = the stored image features).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from featbench.errors import FeatbenchError
from featbench.heads.base import Head, require
from featbench.heads.spec import DEVICE, nonnegative, positive
from featbench.heads.paper import KSHOT_VAL, TEMPLATES_7, TIP_SCALE

PRE_PROJECTION_HINT = "re-extract with `featbench extract --pre-projection`"


def shots_per_class(y, n_classes: int) -> int:
    """Shots per class of a few-shot support set (rounded mean over the classes present)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes)
    present = counts[counts > 0]
    return max(1, int(round(float(present.mean())))) if len(present) else 1


def training_views(X: np.ndarray, views, dev, head: str, what: str, notes: list, fallback_note: str):
    """[V, N, D] tensor of the cached views aligned with X, or X alone as a single 'view' (noted)."""
    import torch

    if views is None:
        notes.append(fallback_note)
        return torch.as_tensor(X, device=dev)[None]
    V = np.asarray(views, dtype=np.float32)
    if V.ndim != 3 or V.shape[1:] != X.shape:
        raise FeatbenchError(f"head '{head}': {what} {V.shape} do not match features {X.shape}")
    return torch.as_tensor(V, device=dev)


def tune_projection(P0, logits_fn, y, lam: float, epochs: int, lr: float, eps: float):
    """ProLIP's recipe for a projection matrix: full batch, one cached view per epoch, CE + lam*|P - P0|^2,
    Adam(eps) with a per-epoch cosine learning rate. logits_fn(P, epoch) -> [N, C]. Returns the tuned P."""
    import torch
    import torch.nn.functional as Fn

    from featbench.heads._torch import cosine_per_step

    yt = torch.as_tensor(np.asarray(y, dtype=np.int64), device=P0.device)
    P = P0.clone().requires_grad_(True)
    if epochs > 0:
        opt = torch.optim.Adam([P], lr=lr, eps=eps)
        for epoch in range(epochs):
            for group in opt.param_groups:
                group["lr"] = cosine_per_step(epoch, lr, epochs)
            loss = Fn.cross_entropy(logits_fn(P, epoch), yt) + lam * (P - P0).pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return P.detach()


class ProjectionTuning(Head):
    """Shared hyperparameters of the projection-tuning heads (ProLIP, text-projection): one recipe, two sides."""
    #: typed, bounded hyperparameters (featbench.heads.spec): --set/--grid/recipes are checked against these
    hyperparams = {
        "epochs": nonnegative("int", doc="full-batch training epochs"),
        "lr": positive(doc="Adam learning rate"),
        "lam": nonnegative(none_ok=True, doc="weight of ||W - W0||^2; null = 1 / shots per class"),
        "eps": positive(doc="Adam epsilon"),
        "device": DEVICE,
    }

    def __init__(
        self,
        epochs: int = 300,
        lr: float = 1e-3,
        lam: float | None = None,
        eps: float = 1e-4,
        device: str = "cpu",
    ):
        self.epochs = epochs
        self.lr = lr
        self.lam = lam
        self.eps = eps
        self.device = device


class ProLIP(ProjectionTuning):
    """Fine-tunes the final visual projection on cached pre-projection features with ||W - W0||^2."""

    name: ClassVar[str] = "prolip"
    #: trained by fit (trainable_params): the visual projection [D_pre, D] (its bias stays frozen)
    trained_attributes: ClassVar[tuple] = ("projection_",)
    display_name: ClassVar[str] = "ProLIP"  # what tables and plots show
    paper: ClassVar[str] = "Fahes et al., CLIP's Visual Embedding Projector is a Few-shot Cornucopia, 2024"
    needs_text: ClassVar[bool] = True
    uses_views: ClassVar[bool] = True
    searches_internally: ClassVar[bool] = False
    feature_kind: ClassVar[str] = "features_pre"
    scores_unseen_classes: ClassVar[bool] = True  # the tuned projection is class-agnostic; classes are text
    search_space: ClassVar[dict[str, list]] = {
        "lr": [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8],
        "lam": [10.0, 1.0, 0.1, 0.01, 0.001, 0.0001, 0.0],
    }
    paper_search: ClassVar[bool] = True  # Table 1: the grid above on K val images per class
    paper_selection: ClassVar[str] = KSHOT_VAL
    paper_templates: ClassVar[dict] = TEMPLATES_7
    paper_classname_style: ClassVar[str] = "clean"
    paper_view_scale: ClassVar[tuple] = TIP_SCALE

    def __init__(self, epochs: int = 300, lr: float = 1e-5, lam: float | None = None, eps: float = 1e-4,
                 device: str = "cpu"):
        super().__init__(epochs=epochs, lr=lr, lam=lam, eps=eps, device=device)

    def fit(self, X, y, *, text=None, views=None, logit_scale=100.0, X_val=None, y_val=None, classnames=None,
            extra=None) -> "ProLIP":
        import torch

        import torch.nn.functional as Fn

        from featbench.heads._torch import resolve_device, zeroshot_weights

        require(text, "text features ([T, C, D] raw text-encoder outputs)", self.name)
        extra = extra or {}
        if extra.get("image_projection") is None:
            raise FeatbenchError(f"head '{self.name}' needs pre-projection features; {PRE_PROJECTION_HINT}")
        dev = resolve_device(self.device)
        W0 = torch.as_tensor(np.asarray(extra["image_projection"], dtype=np.float32), device=dev)
        bias = extra.get("image_projection_bias")
        bias = None if bias is None else torch.as_tensor(np.asarray(bias, dtype=np.float32), device=dev)
        T = zeroshot_weights(text, dev)
        n_classes, dim = T.shape
        X = np.asarray(X, dtype=np.float32)
        if W0.ndim != 2 or W0.shape[1] != dim:
            raise FeatbenchError(f"head '{self.name}': image_projection {tuple(W0.shape)} does not map to the "
                                 f"text width {dim}; {PRE_PROJECTION_HINT}")
        if X.ndim != 2 or X.shape[1] != W0.shape[0]:
            raise FeatbenchError(f"head '{self.name}' needs pre-projection features (width {W0.shape[0]}), got "
                                 f"features of shape {X.shape}; {PRE_PROJECTION_HINT}")
        notes: list[str] = []
        train = training_views(X, views, dev, self.name, "pre-projection views", notes,
                               "no augmented views in cache: trained on plain pre-projection features")
        lam = float(self.lam) if self.lam is not None else 1.0 / shots_per_class(y, n_classes)
        scale = float(logit_scale)

        def logits(W, epoch):
            x = train[epoch % train.shape[0]]
            f = x @ W if bias is None else x @ W + bias
            return scale * Fn.normalize(f, dim=-1) @ T.T

        self.projection_ = tune_projection(W0, logits, y, lam, int(self.epochs), float(self.lr), float(self.eps))
        self.bias_ = bias
        self.text_weights_ = T
        self.scale_ = scale
        self.lam_ = lam
        views_used = int(train.shape[0]) if views is not None else 0
        self.fit_info_ = {"selected": {}, "views_used": views_used, "notes": notes + [f"lambda={lam:.4g}"]}
        return self

    def transform(self, X) -> np.ndarray:
        """Project pre-projection features with the fine-tuned projection (raw, not normalised)."""
        import torch

        x = torch.as_tensor(np.asarray(X, dtype=np.float32), device=self.projection_.device)
        if x.shape[-1] != self.projection_.shape[0]:
            raise FeatbenchError(f"head '{self.name}' needs pre-projection features (width "
                                 f"{self.projection_.shape[0]}), got width {x.shape[-1]}; {PRE_PROJECTION_HINT}")
        f = x @ self.projection_
        return (f if self.bias_ is None else f + self.bias_).cpu().numpy()

    def decision_function(self, X) -> np.ndarray:
        import torch
        import torch.nn.functional as Fn

        f = torch.as_tensor(self.transform(X), device=self.projection_.device)
        return (self.scale_ * Fn.normalize(f, dim=-1) @ self.text_weights_.T).cpu().numpy()

    def for_classes(self, text, classnames=None, extra=None) -> "ProLIP":
        """A copy with the tuned projection, scoring the classes of ``text`` [T, C', D] (base-to-new)."""
        import copy

        from featbench.heads._torch import zeroshot_weights

        other = copy.copy(self)
        other.text_weights_ = zeroshot_weights(text, self.projection_.device)
        return other
