"""Zero-shot CLIP: the prompt-ensembled text embeddings are the classifier (no training)."""

from __future__ import annotations

import numpy as np

from featbench.heads.base import Head, require
from featbench.heads.spec import DEVICE, SEED


class ZeroShot(Head):
    """t_c = norm(mean_T norm(text)); logits = logit_scale * norm(f) . t_c (CLIP, Radford et al. 2021)."""

    name = "zeroshot"
    #: trained by fit (trainable_params): training-free: the text weights are CLIP's
    trained_attributes = ()
    display_name = "Zero-shot CLIP"  # what tables and plots show
    paper = "Radford et al. 2021, Learning Transferable Visual Models From Natural Language Supervision"
    needs_text = True
    uses_views = False
    searches_internally = False
    search_space: dict = {}  # nothing to tune
    scores_unseen_classes = True
    #: typed, bounded hyperparameters (featbench.heads.spec): --set/--grid/recipes are checked against these
    hyperparams = {
        "device": DEVICE,
        "random_state": SEED,
    }

    def __init__(self, device: str = "cpu", random_state: int = 0):
        self.device = device
        self.random_state = random_state  # unused (deterministic); accepted so runners can pass it to any head

    def fit(self, X, y=None, *, text=None, views=None, logit_scale=100.0, X_val=None, y_val=None,
            classnames=None, extra=None) -> "ZeroShot":
        from featbench.heads import _torch as T

        require(text, "text features (the cache's /text group)", self.name)
        dev = T.resolve_device(self.device)
        self.weights_ = T.zeroshot_weights(text, dev)  # [C, D], unit rows
        self.logit_scale_ = float(logit_scale)
        self.n_classes_ = int(self.weights_.shape[0])
        self.fit_info_ = {"selected": {}, "views_used": 0, "notes": []}
        return self

    def decision_function(self, X) -> np.ndarray:
        from featbench.heads import _torch as T

        return T.cosine_decision(X, self.weights_, self.logit_scale_)

    def class_weights(self) -> np.ndarray:
        from featbench.heads import _torch as T

        return T.to_numpy(self.weights_)

    def for_classes(self, text, classnames=None, extra=None) -> "ZeroShot":
        """Zero-shot CLIP over the classes of ``text`` [T, C', D]."""
        return ZeroShot(device=self.device, random_state=self.random_state).fit(
            None, None, text=text, logit_scale=self.logit_scale_)
