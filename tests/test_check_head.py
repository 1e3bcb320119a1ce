"""The head contract as a suite: featbench.testing.check_head over every registered head, the checks catching
broken plugin heads, plugins without declarations, the scikit-learn side (check_estimator, tags, labels) and
the input checks every head inherits from featbench.heads.base."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import check_estimator

from featbench.errors import FeatbenchError
from featbench.heads import get_head_class, list_heads
from featbench.heads.base import ContextTags, Head, InvalidInputError
from featbench.heads.linear_probe import LinearProbe
from featbench.heads.spec import Param, positive
from featbench.testing import SKLEARN_EXPECTED_FAILURES, check_head, toy_problem

pytestmark = pytest.mark.usefixtures("torch_one_thread")

ALL_CHECKS = ["check_declarations", "check_values_validated", "check_params_round_trip", "check_not_fitted",
              "check_fit_and_outputs", "check_deterministic"]


def _registered(tower: bool) -> list[str]:
    return [n for n in list_heads() if bool(get_head_class(n).needs_text_tower) == tower]


# ----------------------------------------------------------------------------------------------------
# every registered head passes the contract
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _registered(tower=False))
def test_registered_head_passes_check_head(name):
    assert check_head(get_head_class(name)) == ALL_CHECKS


@pytest.fixture(scope="module")
def tiny_tower():
    from featbench.encoders import Encoder
    from featbench.texttower import TextTower

    enc = Encoder("tiny-vit", "none", "cpu")
    return TextTower.from_model(enc.model, enc.tokenizer)


@pytest.mark.parametrize("name", _registered(tower=True))  # the tower: ~2 s once open_clip is imported
def test_prompt_learner_passes_check_head_with_a_tiny_tower(name, tiny_tower):
    assert check_head(get_head_class(name), context={"text_tower": tiny_tower}, n_features=32) == ALL_CHECKS


def test_tower_heads_without_a_tower_run_only_the_static_checks():
    name = _registered(tower=True)[0]
    with pytest.warns(UserWarning, match="text tower"):
        assert check_head(get_head_class(name)) == ALL_CHECKS[:3]


# ----------------------------------------------------------------------------------------------------
# plugin heads: fit + decision_function are enough; the checks catch broken ones
# ----------------------------------------------------------------------------------------------------
class NearestMean(Head):
    """A plugin head with no declarations: one undeclared keyword parameter, one positional-or-keyword."""

    def __init__(self, shrink=0.0, *, metric="sq"):
        self.shrink = shrink
        self.metric = metric

    def fit(self, X, y, **context):
        self.means_ = np.stack([X[y == c].mean(0) for c in range(int(y.max()) + 1)]) * (1 - self.shrink)
        return self

    def decision_function(self, X):
        return -((X[:, None, :] - self.means_[None]) ** 2).sum(-1)


def test_plugin_without_declarations_is_a_full_estimator():
    assert check_head(NearestMean) == ALL_CHECKS
    head = NearestMean(shrink=0.5)
    assert head.get_params() == {"shrink": 0.5, "metric": "sq"}
    assert head.set_params(shrink=-3, metric="anything").hyperparameters() == {"shrink": -3, "metric": "anything"}
    assert clone(head).get_params() == head.get_params()
    with pytest.raises(FeatbenchError, match="NearestMean.*no parameter 'nope'"):
        head.set_params(nope=1)


class HalfDeclared(NearestMean):
    hyperparams = {"shrink": Param("float", low=0, high=1)}


def test_declared_parameters_are_checked_and_undeclared_pass():
    head = HalfDeclared()
    with pytest.raises(FeatbenchError, match=r"HalfDeclared.shrink=2.0: out of range"):
        head.set_params(shrink=2)
    assert head.set_params(shrink=1, metric=None).get_params() == {"shrink": 1.0, "metric": None}
    assert check_head(HalfDeclared(shrink=0.25)) == ALL_CHECKS


class NotSelf(NearestMean):
    def fit(self, X, y, **context):
        super().fit(X, y)
        return None


class WrongShape(NearestMean):
    def decision_function(self, X):
        return super().decision_function(X)[:, :2]


class Mutates(NearestMean):
    def fit(self, X, y, **context):
        context["text"] *= 2
        return super().fit(X, y)


class Random(NearestMean):
    def decision_function(self, X):
        return super().decision_function(X) + np.random.default_rng().normal(size=(len(X), len(self.means_)))


class NoContext(NearestMean):
    def fit(self, X, y):
        return super().fit(X, y)


class ChangesParams(NearestMean):
    def fit(self, X, y, **context):
        self.shrink = 0.1
        return super().fit(X, y)


class Unchecked(NearestMean):
    hyperparams = {"shrink": Param("float", low=0, high=1)}

    def set_params(self, **params):  # bypasses the declarations
        for k, v in params.items():
            setattr(self, k, v)
        return self


class BadDefault(NearestMean):
    hyperparams = {"shrink": positive()}  # the default 0.0 is outside (0, inf)


class DeclaresGhost(NearestMean):
    hyperparams = {"ghost": positive()}


@pytest.mark.parametrize("cls, check, needle", [
    (NotSelf, "check_fit_and_outputs", "must return self"),
    (WrongShape, "check_fit_and_outputs", "shape"),
    (Mutates, "check_fit_and_outputs", "modified its input"),
    (Random, "check_deterministic", "differ"),
    (NoContext, "check_fit_and_outputs", "TypeError"),
    (ChangesParams, "check_fit_and_outputs", "changed the head's parameters"),
    (Unchecked, "check_values_validated", "was accepted"),
    (BadDefault, "check_values_validated", "fails its own declaration"),
    (DeclaresGhost, "check_declarations", "ghost"),
])
def test_check_head_names_the_head_and_the_failed_check(cls, check, needle):
    with pytest.raises(AssertionError) as info:
        check_head(cls)
    message = str(info.value)
    assert message.startswith(f"check_head({cls.__name__}) failed {check}:"), message
    assert needle in message, message


def test_check_head_refuses_what_is_not_a_head():
    with pytest.raises(TypeError, match="Head subclass or instance"):
        check_head(dict)


# ----------------------------------------------------------------------------------------------------
# the scikit-learn side
# ----------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")  # torch, on the read-only memmap check
@pytest.mark.filterwarnings("ignore:Skipping check check_array_api_input")  # needs SCIPY_ARRAY_API=1
def test_linear_probe_passes_check_estimator_but_the_documented_departures():
    head = LinearProbe(max_iter=50)  # small solver budget: the checks' blobs converge well before
    results = check_estimator(head, on_fail=None)
    failed = {r["check_name"] for r in results if r["status"] == "failed"}
    assert failed == set(SKLEARN_EXPECTED_FAILURES), failed
    check_estimator(head, expected_failed_checks=SKLEARN_EXPECTED_FAILURES)  # the documented usage raises nothing


@pytest.mark.parametrize("name", list_heads())
def test_tags_mirror_the_class_attributes(name):
    cls = get_head_class(name)
    tags = get_tags(cls())
    assert tags.estimator_type == "classifier"
    assert tags.context_tags == ContextTags(needs_text=cls.needs_text, needs_text_tower=cls.needs_text_tower,
                                            uses_views=cls.uses_views, feature_kind=cls.feature_kind,
                                            fits_without_y=name == "zeroshot")
    assert tags.target_tags.required == (name != "zeroshot")


def test_head_declares_every_attribute_the_evaluation_layer_reads():
    for attr in ("name", "paper", "needs_text", "needs_text_tower", "uses_views", "searches_internally",
                 "uses_selection_split", "feature_kind", "search_space", "runtime_params", "hyperparams",
                 "scores_unseen_classes", "paper_selection", "paper_search", "paper_templates", "paper_view_scale",
                 "paper_classname_style", "reference_selects_on_test", "batch_key", "fit_batched", "paper_defaults",
                 "for_classes", "class_weights"):
        assert attr in vars(Head), attr


def test_string_labels_round_trip_and_index_labels_stay_columns():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(loc=c, size=(5, 4)) for c in (-3, 0, 3)]).astype(np.float32)
    names = np.repeat(["low", "mid", "high"], 5)
    head = LinearProbe(search=False).fit(X, names)
    assert list(head.classes_) == ["high", "low", "mid"] and head.n_features_in_ == 4
    assert (head.predict(X) == names).all() and head.score(X, names) == 1.0
    labels = np.repeat([0, 2, 4], 5)  # classes 1 and 3 have no train rows: their columns stay
    indexed = LinearProbe(search=False).fit(X, labels)
    assert indexed.decision_function(X).shape == (15, 5) and list(indexed.classes_) == [0, 1, 2, 3, 4]
    assert (indexed.predict(X) == labels).all()


def test_one_shot_index_labels_fit_without_warnings():
    problem = toy_problem(LinearProbe, shots=1)  # one row per class: type_of_target would call y "regression"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LinearProbe(search=False).fit(problem.X, problem.y)


def test_bad_arrays_are_one_line_featbench_and_value_errors():
    problem = toy_problem(LinearProbe)
    X = problem.X.copy()
    X[0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="head 'linear-probe': .*NaN") as info:
        LinearProbe().fit(X, problem.y)
    assert isinstance(info.value, FeatbenchError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)
    head = LinearProbe(search=False)
    with pytest.raises(NotFittedError, match="not fitted"):
        head.predict(problem.X)
    head.fit(problem.X, problem.y)
    with pytest.raises(InvalidInputError, match="X has 3 features, but LinearProbe is expecting 16"):
        head.decision_function(problem.X[:, :3])
    with pytest.raises(InvalidInputError, match="requires y"):
        LinearProbe().fit(problem.X, None)


def test_batched_fits_set_the_fitted_attributes_too():
    cls = get_head_class("taskres")
    problem = toy_problem(cls)
    heads = [cls(epochs=2, random_state=s) for s in (1, 2)]
    fitted = cls.fit_batched([(h, problem.X, problem.y, problem.context) for h in heads])
    assert fitted == heads
    for h in heads:
        assert h.n_features_in_ == problem.X.shape[1] and list(h.classes_) == [0, 1, 2]


def test_listing_heads_imports_neither_the_contract_nor_sklearn():
    code = ("import sys, featbench, featbench.heads as h; h.list_heads(); "
            "print(sorted(m for m in sys.modules if m.startswith(('sklearn', 'torch', 'featbench.heads.base'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
