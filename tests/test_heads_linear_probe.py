"""Linear probe: lpclip's C search logic, and the torch L-BFGS solver against scikit-learn's reference."""

import numpy as np
import pytest

from featbench.heads import get_head, get_head_class
from featbench.heads.linear_probe import SWEEP, LinearProbe, lpclip_search


def _clusters(seed, k_train=4, k_val=4, k_test=40, C=12, D=24, spread=1.6):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(C, D)) * 2.0

    def draw(k):
        y = np.repeat(np.arange(C), k)
        return (mu[y] + spread * rng.normal(size=(len(y), D))).astype(np.float32), y

    return draw(k_train), draw(k_val), draw(k_test)


def _reference_lpclip(acc_of):
    """A transcription of lpclip's loop (linear-space ends, np.log10/np.power as the reference does)."""
    search_list = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    acc_list = [acc_of(c) for c in search_list]
    c_peak = search_list[int(np.argmax(acc_list))]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    c_final = None
    for _ in range(8):
        acc_left, acc_right = acc_of(c_left), acc_of(c_right)
        if acc_left < acc_right:
            c_final = c_right
            c_left = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_right = np.log10(c_right)
        else:
            c_final = c_left
            c_right = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_left = np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return c_final


@pytest.mark.parametrize("shape", ["peak", "plateau", "rising", "noisy"])
def test_search_logic_matches_lpclip_transcription(shape):
    rng = np.random.default_rng(hash(shape) % 1000)
    noise = {}

    def acc_of(c):  # a deterministic accuracy curve over log C, quantised like a real val set
        lc = round(float(np.log10(c)), 9)
        if shape == "peak":
            v = 1 - abs(lc + 1.3) / 10
        elif shape == "plateau":
            v = 0.5 if lc < 0 else 0.7
        elif shape == "rising":
            v = 0.1 * lc
        else:
            v = noise.setdefault(lc, rng.integers(0, 5) / 4)
        return round(v * 40) / 40

    c_ref = _reference_lpclip(acc_of)
    c_ours, model, trace = lpclip_search(lambda lc: (acc_of(10 ** lc), lc),
                                        order=sorted(range(7), key=lambda i: SWEEP[i]))
    assert c_ours == pytest.approx(c_ref, rel=1e-9)
    assert model == pytest.approx(np.log10(c_ref))
    assert len(trace["steps"]) == 8 and trace["n_fits"] <= 7 + 9


@pytest.mark.parametrize("seed", [0, 1])
def test_torch_solver_matches_sklearn_protocol(seed):
    (X, y), (Xv, yv), (Xt, yt) = _clusters(seed)
    th = LinearProbe(solver="torch").fit(X, y, X_val=Xv, y_val=yv)
    sk = LinearProbe(solver="sklearn").fit(X, y, X_val=Xv, y_val=yv)
    assert abs(th.score(Xt, yt) - sk.score(Xt, yt)) * 100 <= 0.5
    assert abs(np.log10(th.C_) - np.log10(sk.C_)) <= 1.0  # same C region
    assert th.fit_info_["selected"] == {"C": th.C_}


def test_torch_solver_reaches_sklearn_optimum_at_fixed_C():
    (X, y), _, (Xt, yt) = _clusters(3)
    for C in (1e-2, 1.0):
        th = LinearProbe(solver="torch", C=C).fit(X, y)
        sk = LinearProbe(solver="sklearn", C=C).fit(X, y)
        np.testing.assert_allclose(th.coef_, sk.coef_, atol=2e-2 * np.abs(sk.coef_).max())
        assert (th.predict(Xt) == sk.predict(Xt)).mean() >= 0.99
        assert "fixed C" in th.fit_info_["notes"][0]


def test_api_and_errors():
    (X, y), _, _ = _clusters(4, C=5)
    h = get_head("linear-probe", dataset="caltech101", shots=4, C=0.1).fit(X, y)
    assert h.class_weights().shape == (5, X.shape[1])
    assert h.decision_function(X).shape == (len(X), 5)
    assert h.fit_info_["views_used"] == 0 and h.fit_info_["selected"] == {}
    cls = get_head_class("linear-probe")
    assert cls.searches_internally and not cls.needs_text and not cls.uses_views
    from featbench.errors import FeatbenchError

    with pytest.raises(FeatbenchError, match="solver"):
        LinearProbe(solver="newton").fit(X, y)
