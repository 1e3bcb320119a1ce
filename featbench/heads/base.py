"""The contract every head follows: a scikit-learn estimator on cached feature arrays.

- ``Head`` is a ``sklearn.base.BaseEstimator`` and ``ClassifierMixin``, so ``clone``, ``Pipeline``,
  ``cross_val_score`` and ``sklearn.utils.estimator_checks.check_estimator`` work on heads.
- ``__init__`` only stores hyperparameters (keyword arguments with defaults); ``get_params``/``set_params``
  work as in scikit-learn, and ``set_params`` checks every value a head declares in ``hyperparams``
  (``featbench.heads.spec.Param``). Parameters a head does not declare (plugins need not declare any) pass
  through unchecked and are still recorded by ``hyperparameters()``.
- ``fit(X, y, **context)`` learns from the few-shot train features and returns ``self``. Learned state ends
  in ``_``. The context a head may use (all optional, heads ignore what they don't need):
    text         [T, C, D] raw text-encoder outputs per template (not normalised)
    views        [V, N, D] augmented-view features of the N train rows (aligned with X), or None
    logit_scale  float, CLIP's exponentiated logit scale (100 for OpenAI CLIP)
    X_val, y_val the selection split: few-shot val under `val`; under `paper` the split the head's reference
                 searches on (``paper_selection``); test under `oracle`
    classnames   list of C class names
    extra        dict of optional arrays (pre-projection features, projections, ...)
    text_tower   featbench.texttower.TextTower of the cache's model (heads with ``needs_text_tower``)
- ``decision_function(X)`` returns logits [N, C] (also for two classes: one column per class, unlike
  scikit-learn's binary classifiers); ``predict_proba``, ``predict`` and ``score`` (top-1 accuracy as a
  fraction) derive from it.
- Labels are class indices 0..C-1 into the text's class axis; ``classes_`` is then ``arange(C)`` and
  ``predict`` returns column indices. Other labels (strings, negative numbers) are encoded to indices
  before the head sees them and ``predict`` maps back, so heads fit from (X, y) alone behave as scikit-learn
  classifiers.
- Input checks happen once, here: ``Head.__init_subclass__`` wraps each subclass's own ``fit``,
  ``decision_function`` and ``fit_batched`` (as scikit-learn's ``_SetOutputMixin`` wraps ``transform``), so
  a plugin that writes only ``fit`` and ``decision_function`` gets the checks too: 2-D finite numeric X,
  1-D classification labels, ``n_features_in_`` and ``classes_`` set after fitting, ``NotFittedError``
  and a feature-count check before scoring. A bad array is one ``InvalidInputError`` line (a
  ``FeatbenchError`` and a ``ValueError``).
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
- ``trainable_params()`` (after fitting) is the number of parameters the fit trained by gradient (L-BFGS
  included): the element count of the learned attributes named by ``trained_attributes`` (``()`` for a
  training-free head: caches, kernels and closed-form statistics count 0). Heads whose trained state depends
  on their settings or on a base head override it. A head that declares nothing (``None``, the default a
  plugin gets) reports None: unknown, never a made-up 0. Counted from the shapes, even where epochs=0.
- ``class_weights()`` returns [C, D] class weights in the image-feature space where the head has them
  (zero-shot text weights, a linear probe's coefficients): TaskRes can use them as its base classifier.
- What a head needs from the evaluation layer is declared as class attributes on ``Head`` (every one with
  its default below) and mirrored in ``__sklearn_tags__().context_tags``.

Heads never touch files; the runner (featbench.protocol) turns a cache into these arrays.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils import Tags
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featbench.errors import FeatbenchError, short_repr
from featbench.heads.paper import FEWSHOT_VAL
from featbench.heads.spec import check_params


class InvalidInputError(FeatbenchError, ValueError):
    """Arrays a head cannot use (shape, NaN/inf, labels): one line for the CLI, a ValueError for scikit-learn."""


class HeadNotFittedError(FeatbenchError, NotFittedError):
    """A head scored before ``fit``: one line for the CLI, scikit-learn's NotFittedError for its tools."""


# ----------------------------------------------------------------------------------------------------
# tags
# ----------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class ContextTags:
    """What a head needs in fit's context besides (X, y): featbench's own input tags.

    needs_text        the class-prompt text features (``text`` [T, C, D])
    needs_text_tower  the cache's text tower (``text_tower``), rebuilt from the model that made the cache
    uses_views        augmented-view features (``views`` [V, N, D]) when the cache has them
    feature_kind      which cached features X holds: "features" or "features_pre" (pre-projection)
    fits_without_y    fit accepts y=None (zero-shot: the text alone defines the classifier)
    """

    needs_text: bool = False
    needs_text_tower: bool = False
    uses_views: bool = False
    feature_kind: str = "features"
    fits_without_y: bool = False


@dataclass(slots=True)
class HeadTags(Tags):
    """scikit-learn's Tags plus ``context_tags`` (what the head needs from featbench's evaluation layer)."""

    context_tags: ContextTags = field(default_factory=ContextTags)


# ----------------------------------------------------------------------------------------------------
# the base class
# ----------------------------------------------------------------------------------------------------
class Head(ClassifierMixin, BaseEstimator):
    """Base class: hyperparameter bookkeeping, input checks and the predict/score family built on decision_function."""

    #: the registry name rows and errors use ("" for an unregistered plugin: errors then use the class name)
    name: ClassVar[str] = ""
    #: the paper (or code) the head reproduces, for ``featbench heads NAME``
    paper: ClassVar[str] = ""
    #: how its paper names the method in tables and plots ("TaskRes", "Tip-Adapter-F"), declared as a string
    #: literal in the class's own body (read without importing the head, featbench.heads.paper.declared_display_name);
    #: "" shows the registry name
    display_name: ClassVar[str] = ""
    #: fit needs the class-prompt text features (``text``); the protocol refuses caches without them
    needs_text: ClassVar[bool] = False
    #: fit needs the cache's text tower (``text_tower``): prompt learners that run the text encoder
    needs_text_tower: ClassVar[bool] = False
    #: fit uses augmented-view features (``views``) when the cache has them; rows note their absence
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
    #: the split the reference searches on under `paper` (featbench.heads.paper.SELECTIONS)
    paper_selection: ClassVar[str] = FEWSHOT_VAL
    #: the paper's own procedure searches ``search_space``, so `paper` runs that search too
    paper_search: ClassVar[bool] = False
    #: dataset -> the prompt templates the reference averages ({}: every template in the cache)
    paper_templates: ClassVar[dict] = {}
    #: "clean" (``_`` -> space) or "raw" class names in the reference's prompts (None: either)
    paper_classname_style: ClassVar[str | None] = None
    #: RandomResizedCrop area scale of the reference's augmented views (None: any view set)
    paper_view_scale: ClassVar[tuple | None] = None
    #: datasets whose reference selects on the test split (what `oracle` reproduces)
    reference_selects_on_test: ClassVar[tuple] = ()
    #: the learned attributes fit trains, whose sizes ``trainable_params()`` adds up: () for a training-free
    #: head, None (undeclared, a plugin's default) for unknown
    trained_attributes: ClassVar[tuple[str, ...] | None] = None

    def __init_subclass__(cls, **kwargs):
        """Wrap the subclass's own fit / decision_function / fit_batched with the shared input checks."""
        own = vars(cls)
        if "fit" in own:
            cls.fit = _checked_fit(own["fit"])
        if "decision_function" in own:
            cls.decision_function = _checked_decision_function(own["decision_function"])
        if isinstance(own.get("fit_batched"), classmethod):
            cls.fit_batched = classmethod(_checked_fit_batched(own["fit_batched"].__func__))
        super().__init_subclass__(**kwargs)

    # -- scikit-learn parameter protocol ---------------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        """The ``__init__`` parameters, in signature order (scikit-learn's _get_param_names sorts them)."""
        if cls.__init__ is object.__init__:
            return []
        sig = inspect.signature(cls.__init__)
        kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return [p.name for p in sig.parameters.values() if p.name != "self" and p.kind in kinds]

    @classmethod
    def _get_param_names(cls) -> list[str]:
        return sorted(cls.param_names())

    @classmethod
    def head_name(cls) -> str:
        """The name errors use: the registry name, else the class name (plugins need not set ``name``)."""
        return cls.name or cls.__name__

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The ``__init__`` parameters as stored; ``deep`` adds ``param__sub`` entries for estimator values."""
        params = {k: getattr(self, k) for k in self.param_names()}
        if deep:
            for k, v in list(params.items()):
                if hasattr(v, "get_params") and not isinstance(v, type):
                    params.update({f"{k}__{sk}": sv for sk, sv in v.get_params(deep=True).items()})
        return params

    def set_params(self, **params) -> "Head":
        """Set parameters, each checked against its ``hyperparams`` declaration (undeclared ones pass as given)."""
        valid = set(self.param_names())
        for k in params:
            if k not in valid:
                raise InvalidInputError(f"head '{self.head_name()}' has no parameter '{k}'; "
                                        f"it has: {', '.join(sorted(valid))}")
        for k, v in check_params(type(self), params).items():
            setattr(self, k, v)
        return self

    def hyperparameters(self) -> dict[str, Any]:
        """get_params() without runtime-only settings: what a result row records."""
        return {k: v for k, v in self.get_params(deep=False).items() if k not in self.runtime_params}

    def __sklearn_tags__(self) -> HeadTags:
        tags = super().__sklearn_tags__()
        head_tags = HeadTags(**{f.name: getattr(tags, f.name) for f in fields(tags)},
                             context_tags=self.context_tags())
        head_tags.target_tags.required = not head_tags.context_tags.fits_without_y
        return head_tags

    @classmethod
    def context_tags(cls) -> ContextTags:
        """The class attributes that say what fit needs, as one ContextTags (``__sklearn_tags__`` carries it)."""
        return ContextTags(needs_text=bool(cls.needs_text), needs_text_tower=bool(cls.needs_text_tower),
                           uses_views=bool(cls.uses_views), feature_kind=cls.feature_kind or "features",
                           fits_without_y=fit_accepts_no_labels(cls))

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

    def trainable_params(self) -> int | None:
        """How many parameters the fit trained (the sizes of ``trained_attributes``); None when undeclared."""
        if self.trained_attributes is None:
            return None
        return count_params(self, self.trained_attributes)

    def predict_proba(self, X) -> np.ndarray:
        logits = np.asarray(self.decision_function(X), dtype=np.float64)
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """The best class per row: a column index, or the label fit saw when labels were not indices."""
        return self._labels_of(np.asarray(self.decision_function(X)).argmax(axis=1))

    def _labels_of(self, columns: np.ndarray) -> np.ndarray:
        """Map logit columns to labels: identity for index labels, ``classes_[columns]`` for encoded ones."""
        classes = getattr(self, "classes_", None)
        if classes is None or is_index_labels(classes):
            return columns
        return classes[columns]

    def score(self, X, y, sample_weight=None) -> float:
        """Top-1 accuracy as a fraction (weighted by ``sample_weight`` when given)."""
        hits = self.predict(X) == np.asarray(y)
        return float(np.average(hits, weights=sample_weight))

    def class_weights(self) -> np.ndarray:
        raise FeatbenchError(f"head '{self.head_name()}' has no class-weight matrix to use as a TaskRes base")

    def for_classes(self, text, classnames=None, extra=None) -> "Head":
        """A fitted copy scoring the classes of ``text`` [T, C', D] (heads with ``scores_unseen_classes``)."""
        raise FeatbenchError(f"head '{self.head_name()}' cannot score classes it was not trained on")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params(deep=False).items())
        return f"{type(self).__name__}({args})"


def count_params(head: Head, names) -> int:
    """The element count of the fitted attributes ``names`` (tensors, arrays, or lists of them; None counts 0)."""
    try:
        check_is_fitted(head)
    except NotFittedError:
        raise HeadNotFittedError(f"head '{head.head_name()}' is not fitted yet; call fit(X, y, ...) first") from None
    total = 0
    for name in names:
        if not hasattr(head, name):
            raise FeatbenchError(f"head '{head.head_name()}' declares trained attribute '{name}' but its fit did not "
                                 "set it; fix trained_attributes")
        value = getattr(head, name)
        parts = value if isinstance(value, (list, tuple)) else [value]
        total += sum(int(np.prod(np.shape(p))) for p in parts if p is not None)
    return total


def require(value, what: str, head: str):
    """Raise a clear error when a head is fitted without a context array it needs."""
    if value is None:
        raise FeatbenchError(f"head '{head}' needs {what}, which this cache does not provide")
    return value


# ----------------------------------------------------------------------------------------------------
# the shared input checks (wrapped around every subclass's fit / decision_function / fit_batched)
# ----------------------------------------------------------------------------------------------------
def fit_accepts_no_labels(cls) -> bool:
    """Whether ``cls.fit`` gives ``y`` a default of None (zero-shot heads fit from the text alone)."""
    fit = inspect.unwrap(cls.fit)
    y = inspect.signature(fit).parameters.get("y")
    return y is not None and y.default is None


def is_index_labels(classes: np.ndarray) -> bool:
    """classes_ is 0..C-1: predictions are the logit columns themselves."""
    return classes.dtype.kind in "iu" and np.array_equal(classes, np.arange(len(classes)))


def _one_line(head: Head, err: ValueError) -> InvalidInputError:
    """A scikit-learn validation error as one InvalidInputError line naming the head (no array dumps, no
    advice about other scikit-learn estimators)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    kept = [ln for ln in lines if not ln.startswith(("array=", "[")) and "does not accept missing values" not in ln]
    text = short_repr(" ".join(" ".join(kept).split()), 300, plain=True)
    return InvalidInputError(f"head '{head.head_name()}': {text} (a head takes X [N, D] of finite numbers, y [N] of class labels)")


def check_fit_input(head: Head, X, y):
    """Validated (X, y as class indices, encoded labels or None); X=None passes for heads that fit without it."""
    if X is None and y is None and fit_accepts_no_labels(type(head)):
        return X, y, None
    try:
        if y is None:
            X = validate_data(head, X, y=None, reset=True)  # raises when the head's tags require y
            return X, y, None
        X, y = validate_data(head, X, y, reset=True)
        if y.dtype.kind in "iu" and (y.size == 0 or y.min() >= 0):
            return X, y, None  # class indices (1-shot: one row per class, which type_of_target would warn about)
        check_classification_targets(y)
    except ValueError as err:
        raise _one_line(head, err) from None
    classes, indices = np.unique(y, return_inverse=True)
    return X, indices.reshape(-1), classes


def record_classes(head: Head, y, encoded, context: dict) -> None:
    """Set ``classes_`` after fitting: the encoded labels, else 0..C-1 with C the head's (or the context's) count."""
    if encoded is not None:
        head.classes_ = encoded
        return
    counts = [int(getattr(head, "n_classes_", 0) or 0)]
    if y is not None and len(y):
        counts.append(int(np.max(y)) + 1)
    if context.get("text") is not None:
        counts.append(int(np.shape(context["text"])[-2]))
    if context.get("classnames") is not None:
        counts.append(len(context["classnames"]))
    head.classes_ = np.arange(max(counts))


def check_predict_input(head: Head, X):
    """Fitted, 2-D finite numeric X with the feature count fit saw."""
    try:
        check_is_fitted(head)
    except NotFittedError:
        raise HeadNotFittedError(f"head '{head.head_name()}' is not fitted yet; call fit(X, y, ...) first") from None
    try:
        return validate_data(head, X, reset=False)
    except ValueError as err:
        raise _one_line(head, err) from None


def _checked_fit(fit):
    @functools.wraps(fit)
    def fit_checked(self, X, y=None, **context):
        X, y, encoded = check_fit_input(self, X, y)
        fitted = fit(self, X, y, **context)
        record_classes(self, y, encoded, context)
        return fitted

    return fit_checked


def _checked_decision_function(decision_function):
    @functools.wraps(decision_function)
    def decision_function_checked(self, X):
        return decision_function(self, check_predict_input(self, X))

    return decision_function_checked


def _checked_fit_batched(fit_batched):
    @functools.wraps(fit_batched)
    def fit_batched_checked(cls, fits):
        checked = [(head, *check_fit_input(head, X, y), context) for head, X, y, context in fits]
        fitted = fit_batched(cls, [(head, X, y, context) for head, X, y, _, context in checked])
        for head, _, y, encoded, context in checked:
            record_classes(head, y, encoded, context)
        return fitted

    return fit_batched_checked


__all__ = ["Head", "HeadTags", "ContextTags", "InvalidInputError", "HeadNotFittedError", "require", "count_params"]
