"""Text-projection tuning: re-learn CLIP's text projection on the few-shot images (a TaskRes* base).

TaskRes's "enhanced base" (TaskRes*) recomputes W0 with a tuned text projection, but the paper publishes the
tuned projections only as weight files. This head is featbench's *reconstruction* of such a base, not the
paper's procedure: the recipe is the one ProLIP's authors use to tune the text projection (astra-vision/ProLIP,
methods/ProLIP_text.py), which is ProLIP's recipe applied to the text side:

- inputs: ``extra["text_features_pre"]`` [T, C, Q] (text-encoder outputs before the projection) and
  ``extra["text_projection"]`` Wt0 [Q, D]; image features X (post-projection, raw) and optional views;
- class weights W(Wt) = mean over templates of (text_pre Wt): raw scale, like TaskRes's W0;
- logits = s * norm(f) norm(W)^T; loss = CE + lambda ||Wt - Wt0||_F^2 with lambda = 1/shots;
- full batch, one cached view per epoch (cycling), Adam (eps 1e-4), cosine over 300 epochs, lr 1e-3.

``class_weights()`` returns W(Wt) so that ``taskres.base=text-projection`` puts the TaskRes residual on it.
With 0 epochs the head is zero-shot CLIP with TaskRes-style weights (norm of the raw template mean).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from featbench.errors import FeatbenchError
from featbench.heads.prolip import (PRE_PROJECTION_HINT, ProjectionTuning, shots_per_class, training_views,
                                    tune_projection)


class TextProjection(ProjectionTuning):
    """Tunes CLIP's text projection on the few-shot data; its class weights serve as a TaskRes base."""

    name: ClassVar[str] = "text-projection"
    #: trained by fit (trainable_params): the text projection [D_text, D]
    trained_attributes: ClassVar[tuple] = ("text_projection_",)
    display_name: ClassVar[str] = "Text projection"  # what tables and plots show
    paper: ClassVar[str] = ("featbench reconstruction of TaskRes*'s enhanced base (Yu et al., CVPR 2023), "
                            "recipe of ProLIP's text-projection tuning (Fahes et al., 2024)")
    needs_text: ClassVar[bool] = True
    uses_views: ClassVar[bool] = True
    searches_internally: ClassVar[bool] = False
    feature_kind: ClassVar[str] = "features"
    scores_unseen_classes: ClassVar[bool] = True  # new classes: their pre-projection text through the tuned Wt
    search_space: ClassVar[dict[str, list]] = {"lr": [1e-2, 1e-3, 1e-4, 1e-5]}

    def fit(self, X, y, *, text=None, views=None, logit_scale=100.0, X_val=None, y_val=None, classnames=None,
            extra=None) -> "TextProjection":
        import torch
        import torch.nn.functional as Fn

        from featbench.heads._torch import resolve_device

        extra = extra or {}
        if extra.get("text_features_pre") is None or extra.get("text_projection") is None:
            raise FeatbenchError(f"head '{self.name}' needs pre-projection text features and the text projection; "
                                 f"{PRE_PROJECTION_HINT}")
        dev = resolve_device(self.device)
        pre = torch.as_tensor(np.asarray(extra["text_features_pre"], dtype=np.float32), device=dev)
        if pre.ndim == 2:
            pre = pre[None]
        Wt0 = torch.as_tensor(np.asarray(extra["text_projection"], dtype=np.float32), device=dev)
        if Wt0.ndim != 2 or pre.shape[-1] != Wt0.shape[0]:
            raise FeatbenchError(f"head '{self.name}': text_features_pre {tuple(pre.shape)} and text_projection "
                                 f"{tuple(Wt0.shape)} do not fit together; {PRE_PROJECTION_HINT}")
        n_classes, dim = pre.shape[1], Wt0.shape[1]
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != dim:
            raise FeatbenchError(f"head '{self.name}': image features {X.shape} do not match the text projection's "
                                 f"output width {dim}")
        notes: list[str] = []
        train = Fn.normalize(training_views(X, views, dev, self.name, "views", notes,
                                            "no augmented views in cache: trained on plain features"), dim=-1)
        lam = float(self.lam) if self.lam is not None else 1.0 / shots_per_class(y, n_classes)
        scale = float(logit_scale)

        def logits(Wt, epoch):
            weights = Fn.normalize((pre @ Wt).mean(dim=0), dim=-1)
            return scale * train[epoch % train.shape[0]] @ weights.T

        self.text_projection_ = tune_projection(Wt0, logits, y, lam, int(self.epochs), float(self.lr), float(self.eps))
        with torch.no_grad():
            self.weights_ = (pre @ self.text_projection_).mean(dim=0)  # [C, D] raw
        self.scale_ = scale
        self.lam_ = lam
        views_used = int(train.shape[0]) if views is not None else 0
        self.fit_info_ = {"selected": {}, "views_used": views_used, "notes": notes + [f"lambda={lam:.4g}"]}
        return self

    def decision_function(self, X) -> np.ndarray:
        import torch
        import torch.nn.functional as Fn

        f = Fn.normalize(torch.as_tensor(np.asarray(X, dtype=np.float32), device=self.weights_.device), dim=-1)
        return (self.scale_ * f @ Fn.normalize(self.weights_, dim=-1).T).cpu().numpy()

    def class_weights(self) -> np.ndarray:
        """Re-projected class weights: template mean of text_pre @ tuned projection, raw scale (TaskRes W0)."""
        return self.weights_.cpu().numpy()

    def for_classes(self, text, classnames=None, extra=None) -> "TextProjection":
        """A copy whose weights are the given classes' pre-projection text through the tuned projection."""
        import copy

        import torch

        pre = (extra or {}).get("text_features_pre")
        if pre is None:
            raise FeatbenchError(f"head '{self.name}' needs the new classes' pre-projection text features; "
                                 f"{PRE_PROJECTION_HINT}")
        pre = torch.as_tensor(np.asarray(pre, dtype=np.float32), device=self.weights_.device)
        if pre.ndim == 2:
            pre = pre[None]
        other = copy.copy(self)
        with torch.no_grad():
            other.weights_ = (pre @ self.text_projection_).mean(dim=0)
        return other
