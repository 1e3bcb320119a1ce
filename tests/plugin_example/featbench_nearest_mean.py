"""Nearest class mean on CLIP features, as a featbench plugin (the worked example of CONTRIBUTING.md).

A head is a scikit-learn-style estimator on cached arrays (featbench.heads.base): ``__init__`` stores the
hyperparameters declared in ``hyperparams``, ``fit`` learns from the few-shot features, ``decision_function``
returns logits. ``center`` subtracts the mean few-shot feature before normalising (SimpleShot's CL2N,
Wang et al. 2019), which protocol val searches over.
"""

import numpy as np

from featbench.heads.base import Head
from featbench.heads.spec import Param


class NearestClassMean(Head):
    """Cosine similarity to each class's mean few-shot feature."""

    paper = "Wang et al. 2019, SimpleShot: Revisiting Nearest-Neighbor Classification for Few-Shot Learning"
    hyperparams = {
        "scale": Param("float", low=0, low_open=True, doc="logit scale (softmax temperature^-1)"),
        "center": Param("bool", doc="subtract the mean few-shot feature before normalising (CL2N)"),
    }
    search_space = {"center": [False, True]}

    def __init__(self, *, scale: float = 10.0, center: bool = False):
        self.scale = scale
        self.center = center

    def fit(self, X, y, *, classnames=None, **context):
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
        self.shift_ = X.mean(0) if self.center else np.zeros(X.shape[1])
        Xn = _unit(X - self.shift_)
        n_classes = len(classnames) if classnames is not None else int(y.max()) + 1
        means = [Xn[y == c].mean(0) if np.any(y == c) else np.zeros(X.shape[1]) for c in range(n_classes)]
        self.means_ = _unit(np.stack(means))
        return self

    def decision_function(self, X):
        return self.scale * _unit(np.asarray(X, dtype=np.float64) - self.shift_) @ self.means_.T


def _unit(a):
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
