"""Contract checks for heads: ``check_head`` runs featbench's estimator contract on any head, plugins included.

A plugin author calls ``check_head(MyHead)`` in their own tests, as scikit-learn users call
``check_estimator``; featbench's suite runs it over every registered head (tests/test_check_head.py). It needs
no cache: it builds a tiny synthetic problem carrying the context the head declares (class-prompt text,
augmented views, pre-projection arrays, a selection split), the same keys ``featbench.protocol`` passes.

scikit-learn's own ``check_estimator`` covers the rest for heads that fit from (X, y) alone;
``SKLEARN_EXPECTED_FAILURES`` names the few scikit-learn checks featbench's contract departs from on purpose,
each with its reason, ready for ``check_estimator(head, expected_failed_checks=SKLEARN_EXPECTED_FAILURES)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from featbench.errors import FeatbenchError
from featbench.heads.base import Head
from featbench.heads.spec import Param

#: scikit-learn checks a head fails by design, with the reason (pass to check_estimator's expected_failed_checks)
SKLEARN_EXPECTED_FAILURES: dict[str, str] = {
    "check_classifiers_train": "decision_function returns [N, C] logits for two classes too (one column per "
                               "class: the protocol restricts and argmaxes columns), not scikit-learn's [N]",
    "check_classifiers_classes": "binary decision_function is [N, 2] logits, not a signed [N] score (as above)",
    "check_do_not_raise_errors_in_init_or_set_params": "set_params checks each value against its heads.spec.Param "
                                                       "so a bad --set dies at the boundary, not at fit",
    "check_set_params": "set_params refuses out-of-range values (-inf, negative sizes) by design (heads.spec.Param)",
}


# ----------------------------------------------------------------------------------------------------
# a tiny synthetic problem with the context a head declares
# ----------------------------------------------------------------------------------------------------
@dataclass
class ToyProblem:
    """Train and test arrays plus the fit context (the keys featbench.protocol passes)."""

    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.context["classnames"])


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def toy_problem(head_cls, *, n_classes: int = 3, shots: int = 4, n_features: int = 16, seed: int = 0,
                params: dict | None = None) -> ToyProblem:
    """Gaussian clusters with noisy class-prompt text, as a cache would give ``head_cls`` (see ``check_head``)."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(n_classes, n_features)))
    text = (centres + 0.3 * rng.normal(size=(2, n_classes, n_features)) / np.sqrt(n_features)) * 7.0

    def draw(k: int):
        labels = np.repeat(np.arange(n_classes), k)
        x = centres[labels] + 0.3 * rng.normal(size=(labels.size, n_features)) / np.sqrt(n_features)
        return (x * rng.uniform(5, 9, size=(labels.size, 1))).astype(np.float32), labels

    (X, y), (Xv, yv), (Xt, yt) = draw(shots), draw(2), draw(5)
    views = (X[None] + 0.05 * rng.normal(size=(2,) + X.shape)).astype(np.float32)
    extra, to_pre = _projection_arrays(rng, text, n_features)
    if head_cls.feature_kind == "features_pre":  # the head reads pre-projection features: X, views, X_val
        X, Xv, Xt, views = (to_pre(a) for a in (X, Xv, Xt, views))
    context: dict[str, Any] = {"text": text.astype(np.float32), "views": views if head_cls.uses_views else None,
                               "logit_scale": 100.0, "classnames": [f"class {i}" for i in range(n_classes)],
                               "extra": extra}
    if head_cls.uses_selection_split(dict(params or {})):
        context["X_val"], context["y_val"] = Xv, yv
    if head_cls.transductive:  # the unlabeled images it will be scored on, as the protocol hands them over
        context["X_transductive"] = Xt
    return ToyProblem(X, y, Xt, yt, context)


def _projection_arrays(rng, text: np.ndarray, n_features: int):
    """The cache's optional pre-projection arrays (``extra``) and a map from features to pre-projection ones."""
    W0 = (rng.normal(size=(n_features + 8, n_features)) / np.sqrt(n_features + 8)).astype(np.float32)
    Wt0 = (rng.normal(size=(n_features + 4, n_features)) / np.sqrt(n_features + 4)).astype(np.float32)
    pinv, pinv_t = np.linalg.pinv(W0).astype(np.float32), np.linalg.pinv(Wt0).astype(np.float32)
    extra = {"image_projection": W0, "text_projection": Wt0, "text_features_pre": (text @ pinv_t).astype(np.float32)}
    return extra, lambda a: (a @ pinv).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# the checks (each raises AssertionError with what went wrong)
# ----------------------------------------------------------------------------------------------------
def check_declarations(make: Callable[[], Head], problem: ToyProblem | None) -> None:
    """Declared hyperparameters are Params of __init__ parameters; the class attributes have sane values."""
    cls = type(make())
    params = set(cls.param_names())
    for pname, spec in (cls.hyperparams or {}).items():
        assert isinstance(spec, Param), f"hyperparams[{pname!r}] is {type(spec).__name__}, not heads.spec.Param"
        assert pname in params, f"hyperparams declares {pname!r}, which __init__ does not take"
    assert cls.feature_kind in ("features", "features_pre"), f"feature_kind {cls.feature_kind!r}"
    assert isinstance(cls.search_space, dict), "search_space must be a dict {param: [values]}"
    unknown = set(cls.search_space) - params
    assert not unknown, f"search_space names parameters __init__ does not take: {sorted(unknown)}"


def check_params_round_trip(make: Callable[[], Head], problem: ToyProblem | None) -> None:
    """get_params / set_params / clone / repr agree, and hyperparameters() leaves out runtime settings."""
    head = make()
    params = head.get_params(deep=False)
    assert list(params) == head.param_names(), f"get_params keys {list(params)} != __init__ parameters"
    assert head.set_params(**params) is head, "set_params must return self"
    assert _same(head.get_params(deep=False), params), "set_params(**get_params()) changed the parameters"
    assert _same(clone(head).get_params(deep=False), params), "clone() changed the parameters"
    repr(head)
    hyper = head.hyperparameters()
    assert set(hyper) == set(params) - set(head.runtime_params), f"hyperparameters() gives {sorted(hyper)}"


def check_values_validated(make: Callable[[], Head], problem: ToyProblem | None) -> None:
    """Each declared hyperparameter accepts its current value and set_params refuses one outside its declaration."""
    head = make()
    label = head.head_name()
    for pname, spec in (type(head).hyperparams or {}).items():
        value = getattr(head, pname)
        try:
            spec.check(label, pname, value)
        except FeatbenchError as err:
            raise AssertionError(f"the value {value!r} of {pname!r} fails its own declaration: {err}") from None
        bad = bad_value(spec)
        if bad is _NO_BAD_VALUE:
            continue
        try:
            head.set_params(**{pname: bad})
        except FeatbenchError:
            continue
        raise AssertionError(f"set_params({pname}={bad!r}) was accepted; it breaks {spec.describe()}")


_NO_BAD_VALUE = object()


def bad_value(spec: Param) -> Any:
    """A value ``spec.check`` must refuse (or _NO_BAD_VALUE for kind 'any', which the head checks itself)."""
    if spec.kind == "any":
        return _NO_BAD_VALUE
    if spec.kind in ("floats", "ints"):
        return "not a list"
    if spec.kind == "bool":
        return "yes"
    if spec.kind == "str":
        return 3
    if spec.low is not None:
        return spec.low if spec.low_open else spec.low - 1
    if spec.high is not None:
        return spec.high if spec.high_open else spec.high + 1
    return float("nan") if spec.kind == "float" else 2.5


def check_not_fitted(make: Callable[[], Head], problem: ToyProblem) -> None:
    """Scoring before fit raises scikit-learn's NotFittedError."""
    try:
        make().decision_function(problem.X_test)
    except NotFittedError:
        return
    except Exception as err:  # noqa: BLE001 - the check reports what was raised instead
        raise AssertionError(f"decision_function before fit raised {type(err).__name__}, not NotFittedError") from err
    raise AssertionError("decision_function before fit returned instead of raising NotFittedError")


def check_fit_and_outputs(make: Callable[[], Head], problem: ToyProblem) -> None:
    """fit returns self, leaves params and inputs alone; logits, probabilities, predictions and score are sane."""
    head = make()
    params = head.get_params(deep=False)
    before = _copy_arrays((problem.X, problem.y, problem.context, problem.X_test))
    assert head.fit(problem.X, problem.y, **problem.context) is head, "fit must return self"
    assert _same(head.get_params(deep=False), params), "fit changed the head's parameters (learned state ends in _)"
    logits = np.asarray(head.decision_function(problem.X_test))
    n, C = len(problem.X_test), problem.n_classes
    assert logits.shape == (n, C), f"decision_function gives shape {logits.shape}, expected ({n}, {C})"
    assert np.isfinite(logits).all(), "decision_function gives non-finite logits"
    check_predictions(head, problem, logits)
    count = head.trainable_params()
    assert count is None or (isinstance(count, int) and not isinstance(count, bool) and count >= 0), \
        f"trainable_params() gives {count!r}, not a count (an int >= 0) or None (unknown)"
    after = (problem.X, problem.y, problem.context, problem.X_test)
    assert _same(after, before), "fit or decision_function modified its input arrays"


def check_predictions(head: Head, problem: ToyProblem, logits: np.ndarray) -> None:
    pred = np.asarray(head.predict(problem.X_test))
    assert pred.shape == (len(problem.X_test),), f"predict gives shape {pred.shape}"
    assert np.isin(pred, np.arange(problem.n_classes)).all(), "predict gives labels outside 0..C-1"
    assert (pred == logits.argmax(axis=1)).all(), "predict disagrees with the argmax of decision_function"
    proba = np.asarray(head.predict_proba(problem.X_test))
    assert np.allclose(proba.sum(axis=1), 1.0), "predict_proba rows do not sum to 1"
    assert 0.0 <= head.score(problem.X_test, problem.y_test) <= 1.0, "score is not a fraction"


def check_deterministic(make: Callable[[], Head], problem: ToyProblem) -> None:
    """Two fits with the same random_state give the same logits."""
    a, b = (make().fit(problem.X, problem.y, **problem.context) for _ in range(2))
    la, lb = a.decision_function(problem.X_test), b.decision_function(problem.X_test)
    assert np.allclose(la, lb, rtol=1e-5, atol=1e-5), \
        f"two fits with random_state={a.get_params(deep=False).get('random_state')!r} differ (max {np.abs(la - lb).max():.3g})"


def _copy_arrays(obj: Any) -> Any:
    """Copies of the numpy arrays inside dicts, lists and tuples; other objects (a text tower) kept as they are."""
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, dict):
        return {k: _copy_arrays(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copy_arrays(v) for v in obj)
    return obj


def _same(a: Any, b: Any) -> bool:
    """Deep equality that understands numpy arrays (NaN equal to NaN) inside dicts, lists and tuples."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.shape(a) == np.shape(b) and np.array_equal(a, b, equal_nan=np.asarray(a).dtype.kind in "fc")
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a is b or a == b


STATIC_CHECKS = (check_declarations, check_values_validated, check_params_round_trip)
FIT_CHECKS = (check_not_fitted, check_fit_and_outputs, check_deterministic)


# ----------------------------------------------------------------------------------------------------
# the entry point
# ----------------------------------------------------------------------------------------------------
def check_head(head, *, context: dict | None = None, n_features: int = 16) -> list[str]:
    """Run featbench's head contract on a head class or instance; raise AssertionError on the first failure.

    The checks: the head is constructible with its defaults; ``hyperparams`` declares only ``__init__``
    parameters as ``Param``s; ``get_params``/``set_params``/``clone`` round-trip and ``hyperparameters()``
    leaves out ``runtime_params``; every declared value passes its declaration and ``set_params`` refuses one
    outside it; ``decision_function`` before ``fit`` raises ``NotFittedError``; on a tiny synthetic problem
    carrying the context the head declares, ``fit`` returns ``self`` without changing its parameters or its
    inputs, ``decision_function`` gives finite [N, C] logits, ``predict`` agrees with their argmax and stays in
    0..C-1, ``predict_proba`` rows sum to 1, ``score`` is a fraction, and two fits with the same
    ``random_state`` give the same logits.

    Parameters
    ----------
    head : type or Head
        A ``featbench.heads.base.Head`` subclass (built with its defaults) or an instance (cloned for every
        fit, so small settings such as ``epochs=2`` keep the check fast).
    context : dict, optional
        Fit-context entries added to (or replacing) the synthetic ones, e.g. ``{"text_tower": tower}``. A head
        with ``needs_text_tower`` and no ``text_tower`` here gets only the checks that need no fit, with a
        ``UserWarning`` saying so (featbench's suite passes a tiny random-weight tower).
    n_features : int, default 16
        Width D of the synthetic features (match the text tower's output width when you pass one).

    Returns
    -------
    list of str
        The names of the checks that ran, in order.

    Raises
    ------
    AssertionError
        ``check_head(<head>) failed <check>: <what went wrong>``; an exception raised by the head inside a
        check is reported the same way, chained.

    Examples
    --------
    >>> import numpy as np
    >>> from featbench.heads.base import Head
    >>> from featbench.testing import check_head
    >>> class NearestMean(Head):
    ...     def __init__(self, *, shrink=0.0):
    ...         self.shrink = shrink
    ...     def fit(self, X, y, **context):
    ...         self.means_ = np.stack([X[y == c].mean(0) for c in range(int(y.max()) + 1)]) * (1 - self.shrink)
    ...         return self
    ...     def decision_function(self, X):
    ...         return -((X[:, None, :] - self.means_[None]) ** 2).sum(-1)
    >>> check_head(NearestMean)[-1]
    'check_deterministic'
    """
    make, label = _maker(head)
    head_cls = type(make())
    ran = [_run(check, label, make, None) for check in STATIC_CHECKS]
    if head_cls.needs_text_tower and "text_tower" not in (context or {}):
        warnings.warn(f"check_head({label}): the head needs a text tower and none was given in context; "
                      "skipped the fit checks", UserWarning, stacklevel=2)
        return ran
    problem = toy_problem(head_cls, n_features=n_features, params=make().get_params(deep=False))
    problem.context.update(context or {})
    return ran + [_run(check, label, make, problem) for check in FIT_CHECKS]


def _maker(head) -> tuple[Callable[[], Head], str]:
    """A factory of fresh unfitted heads (the class with defaults, or clones of the instance) and its label."""
    if isinstance(head, type):
        if not issubclass(head, Head):
            raise TypeError(f"check_head expects a featbench.heads.base.Head subclass or instance, got {head!r}")
        try:
            head()
        except Exception as err:  # noqa: BLE001 - reported as the failed check
            raise AssertionError(f"check_head({head.name or head.__name__}) failed constructible with defaults: "
                                 f"{type(err).__name__}: {err}") from err
        return head, head.name or head.__name__
    if not isinstance(head, Head):
        raise TypeError(f"check_head expects a featbench.heads.base.Head subclass or instance, got {head!r}")
    return (lambda: clone(head)), head.head_name()


def _run(check, label: str, make: Callable[[], Head], problem: ToyProblem | None) -> str:
    """Run one check; any failure becomes one AssertionError naming the head and the check."""
    name = check.__name__
    try:
        check(make, problem)
    except AssertionError as err:
        raise AssertionError(f"check_head({label}) failed {name}: {err}") from err
    except Exception as err:  # noqa: BLE001 - a crash inside the head is a failed check too
        raise AssertionError(f"check_head({label}) failed {name}: {type(err).__name__}: {err}") from err
    return name


__all__ = ["check_head", "toy_problem", "ToyProblem", "bad_value", "SKLEARN_EXPECTED_FAILURES"]
