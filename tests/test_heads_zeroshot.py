"""Zero-shot head: equals a hand computation of CLIP's prompt-ensembled classifier."""

import numpy as np
import pytest

from featbench.errors import FeatbenchError
from featbench.heads import get_head, get_head_class


def _norm(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    C, D, T = 6, 16, 3
    text = rng.normal(size=(T, C, D)).astype(np.float32) * 4
    X = (rng.normal(size=(40, D)) * 3).astype(np.float32)
    return text, X


def test_equals_hand_computation(data):
    text, X = data
    head = get_head("zeroshot").fit(None, None, text=text, logit_scale=50.0)
    t = _norm(_norm(text.astype(np.float64)).mean(0))
    expected = 50.0 * _norm(X.astype(np.float64)) @ t.T
    np.testing.assert_allclose(head.decision_function(X), expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(head.class_weights(), t, atol=1e-6)
    assert head.fit_info_ == {"selected": {}, "views_used": 0, "notes": []}
    assert (head.predict(X) == expected.argmax(1)).all()


def test_two_dim_text_and_flags(data):
    text, X = data
    a = get_head("zeroshot").fit(None, None, text=text[:1]).decision_function(X)
    b = get_head("zeroshot").fit(None, None, text=text[0]).decision_function(X)
    np.testing.assert_allclose(a, b, atol=1e-5)
    cls = get_head_class("zeroshot")
    assert cls.needs_text and not cls.uses_views and not cls.searches_internally
    assert get_head("zeroshot").hyperparameters() == {}


def test_missing_text_is_a_clear_error(data):
    _, X = data
    with pytest.raises(FeatbenchError, match="text"):
        get_head("zeroshot").fit(X, np.zeros(len(X), int))
