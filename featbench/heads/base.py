"""The contract every head follows: a scikit-learn-style estimator on cached feature arrays.

- ``__init__`` only stores hyperparameters (keyword arguments with defaults); ``get_params``/``set_params``
  work as in scikit-learn.
- ``fit(X, y, **context)`` learns from the few-shot train features and returns ``self``. Learned state ends
  in ``_``. The context a head may use (all optional, heads ignore what they don't need):
    text         [T, C, D] raw text-encoder outputs per template (not normalised)
    views        [V, N, D] augmented-view features of the N train rows (aligned with X), or None
    logit_scale  float, CLIP's exponentiated logit scale (100 for OpenAI CLIP)
    X_val, y_val the selection split: few-shot val under `val`; under `paper` the split the head's reference
                 searches on (``paper_selection``); test under `oracle`
    classnames   list of C class names
    extra        dict of optional arrays (pre-projection features, projections, ...)
- ``decision_function(X)`` returns logits [N, C]; ``predict_proba``, ``predict`` and ``score`` (top-1
  accuracy as a fraction) derive from it.
- ``fit_info_`` (dict) reports what fitting decided: hyperparameters selected by an internal search
  (``selected``), whether augmented views were used (``views_used``), and notes.
- ``scores_unseen_classes`` (class attribute) says whether a fitted head can score classes it never trained
  on, given their text features: then ``for_classes(text, classnames, extra)`` returns a fitted copy whose
  logits cover exactly those classes (base-to-new evaluation). Heads with per-class parameters cannot.
- Batched multi-run fitting (optional): ``batch_key(X, y, context)`` returns a hashable key, or None when
  this run cannot be batched; runs of the same head class with equal keys may be fitted together by the
  classmethod ``fit_batched([(head, X, y, context), ...])``, which fits every head in place and must give the
  same fitted state as calling ``fit`` on each (stacked parameters, batched matmuls, each run's own RNG
  stream). The default key is None and the default ``fit_batched`` fits one at a time.
  ``featbench.batching`` groups the runs of a grid (seeds, sweep points, a protocol search) for it.
- ``class_weights()`` returns [C, D] class weights in the image-feature space where the head has them
  (zero-shot text weights, a linear probe's coefficients): TaskRes can use them as its base classifier.

Heads never touch files; the runner (featbench.protocol) turns a cache into these arrays.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import numpy as np

from featbench.errors import FeatbenchError


class Head:
    """Base class: hyperparameter bookkeeping and the predict/score family built on decision_function."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    needs_text: ClassVar[bool] = False
    #: prompt learners: fit() needs the cache's text tower (``context["text_tower"]``, featbench.texttower)
    needs_text_tower: ClassVar[bool] = False
    uses_views: ClassVar[bool] = False
    #: the head performs its own paper-defined search on (X_val, y_val) (lpclip's C, Tip-Adapter's alpha/beta)
    searches_internally: ClassVar[bool] = False
    #: which cached features the head reads: "features" or "features_pre" (pre-projection)
    feature_kind: ClassVar[str] = "features"
    #: hyperparameter grid searched on the selection split under protocol `val`/`oracle` (fixed under `paper`)
    search_space: ClassVar[dict[str, list]] = {}
    #: parameters that are not hyperparameters of the method (not recorded as such in result rows)
    runtime_params: ClassVar[tuple[str, ...]] = ("device", "random_state", "verbose")
    #: typed, bounded declarations of the hyperparameters (featbench.heads.spec.Param); set_params checks them
    hyperparams: ClassVar[dict] = {}
    #: a fitted head can score classes it never saw from their text features (see ``for_classes``)
    scores_unseen_classes: ClassVar[bool] = False
    #: fit() adapts to unlabeled test features, ``context["X_transductive"]`` [N, D]: the split it is scored on
    transductive: ClassVar[bool] = False
    # -- what the head's reference code used (featbench.heads.paper explains each; the protocol reads them) --
    paper_selection: ClassVar[str] = "fewshot_val"
    paper_search: ClassVar[bool] = False
    paper_templates: ClassVar[dict] = {}
    paper_classname_style: ClassVar[str | None] = None
    paper_view_scale: ClassVar[tuple | None] = None
    reference_selects_on_test: ClassVar[tuple] = ()

    # -- scikit-learn parameter protocol ---------------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        """The ``__init__`` keyword parameters: what get_params, set_params and --set know."""
        sig = inspect.signature(cls.__init__)
        kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return [p.name for p in sig.parameters.values() if p.name != "self" and p.kind in kinds]

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.param_names()}

    def set_params(self, **params) -> "Head":
        from featbench.heads.spec import check_params

        valid = set(self.param_names())
        for k in params:
            if k not in valid:
                raise FeatbenchError(f"head '{self.name}' has no parameter '{k}'; it has: {', '.join(sorted(valid))}")
        for k, v in check_params(type(self), params).items():
            setattr(self, k, v)
        return self

    def hyperparameters(self) -> dict[str, Any]:
        """get_params() without runtime-only settings: what a result row records."""
        return {k: v for k, v in self.get_params().items() if k not in self.runtime_params}

    @classmethod
    def uses_selection_split(cls, params: dict[str, Any]) -> bool:
        """Whether fit() wants (X_val, y_val) with these hyperparameters (a paper-defined internal search)."""
        return bool(cls.searches_internally)

    @classmethod
    def paper_defaults(cls, dataset: str | None, shots: int | None) -> dict[str, Any]:
        """Per-dataset / per-shot defaults from the head's paper (data, not code branches)."""
        return {}

    # -- estimator API -----------------------------------------------------------------------------------
    def fit(self, X, y, **context) -> "Head":  # pragma: no cover - abstract
        raise NotImplementedError

    def batch_key(self, X, y, context: dict):
        """A hashable key under which this run can share a batched fit with others (None: fit alone)."""
        return None

    @classmethod
    def fit_batched(cls, fits: list) -> list["Head"]:
        """Fit ``[(head, X, y, context), ...]`` (equal batch_key) together; returns the fitted heads, in order."""
        return [head.fit(X, y, **context) for head, X, y, context in fits]

    def decision_function(self, X) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_proba(self, X) -> np.ndarray:
        logits = np.asarray(self.decision_function(X), dtype=np.float64)
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        return np.asarray(self.decision_function(X)).argmax(axis=1)

    def score(self, X, y) -> float:
        return float((self.predict(X) == np.asarray(y)).mean())

    def class_weights(self) -> np.ndarray:
        raise FeatbenchError(f"head '{self.name}' has no class-weight matrix to use as a TaskRes base")

    def for_classes(self, text, classnames=None, extra=None) -> "Head":
        """A fitted copy scoring the classes of ``text`` [T, C', D] (heads with ``scores_unseen_classes``)."""
        raise FeatbenchError(f"head '{self.name}' cannot score classes it was not trained on")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def require(value, what: str, head: str):
    """Raise a clear error when a head is fitted without a context array it needs."""
    if value is None:
        raise FeatbenchError(f"head '{head}' needs {what}, which this cache does not provide")
    return value
