"""featbench.stats against the textbook: paired t (scipy's ttest_rel and the formula), bootstrap intervals that
cover a known effect, McNemar's exact test from the binomial sum, t half-widths, and properties (hypothesis)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from featbench import stats
from featbench.errors import FeatbenchError


# -- paired t --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a,b", [([61.1, 61.1, 61.1], [61.9, 61.7, 62.0]), ([50, 52, 57, 40], [51, 55, 56, 44.5]),
                                 ([70.0, 71.0], [69.0, 73.5])])
def test_paired_t_is_scipys_ttest_rel_and_the_formula(a, b):
    est = stats.paired_t(a, b)
    ref = sps.ttest_rel(b, a)
    ci = ref.confidence_interval(0.95)
    assert est.p == pytest.approx(ref.pvalue, rel=1e-12)
    assert (est.low, est.high) == (pytest.approx(ci.low, rel=1e-12), pytest.approx(ci.high, rel=1e-12))
    assert est.df == len(a) - 1 == int(ref.df) and est.n == len(a)
    # the formula: mean(d) ± t_{0.975, n-1} * s_d / sqrt(n), s_d with n - 1 in the denominator
    d = [y - x for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    s = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = sps.t.ppf(0.975, n - 1) * s / math.sqrt(n)
    assert est.diff == pytest.approx(mean) and est.high - est.diff == pytest.approx(half)
    t_stat = mean / (s / math.sqrt(n))
    assert est.p == pytest.approx(2 * (1 - sps.t.cdf(abs(t_stat), n - 1)), rel=1e-9)


def test_paired_t_without_spread_is_finite():
    same = stats.paired_t([60.0, 61.0, 62.0], [60.0, 61.0, 62.0])
    assert (same.diff, same.low, same.high, same.p) == (0.0, 0.0, 0.0, 1.0)
    shifted = stats.paired_t([60.0, 61.0, 62.0], [61.0, 62.0, 63.0])
    assert (shifted.diff, shifted.low, shifted.high, shifted.p) == (pytest.approx(1.0),) * 3 + (0.0,)


def test_paired_t_needs_two_finite_pairs():
    with pytest.raises(FeatbenchError, match="at least 2 pairs"):
        stats.paired_t([1.0], [2.0])
    with pytest.raises(FeatbenchError, match="finite"):
        stats.paired_t([1.0, float("nan")], [2.0, 3.0])


def test_t_half_width_from_population_std():
    values = np.array([61.9, 61.7, 62.0])
    pop = values.std(ddof=0)
    expected = sps.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    assert stats.t_half_width(pop, 3) == pytest.approx(expected)
    assert stats.t_half_width(values.std(ddof=1), 3, ddof=1) == pytest.approx(expected)
    out = stats.t_half_width([pop, 0.5, float("nan")], [3, 1, 4])
    assert out[0] == pytest.approx(expected) and math.isnan(out[1]) and math.isnan(out[2])


# -- bootstrap over test images --------------------------------------------------------------------------------
def _paired_hits(rng, n, acc_a, diff, discordant):
    """Hits of A and B on n images: A right with prob acc_a; a `discordant` share of images flip, split so that
    B - A = diff in expectation (so A and B are strongly positively correlated, as two heads on one backbone)."""
    a = rng.random(n) < acc_a
    u = rng.random(n)
    up = discordant / 2 + diff / 2  # share of images: A wrong -> B right
    down = discordant / 2 - diff / 2  # share: A right -> B wrong
    b = a.copy()
    b[(~a) & (u < up / (1 - acc_a))] = True
    b[a & (u < down / acc_a)] = False
    return a, b


def test_paired_bootstrap_interval_covers_the_true_difference():
    rng = np.random.default_rng(123)
    true_diff = 2.0  # points
    covered, reps = 0, 300
    for rep in range(reps):
        a, b = _paired_hits(rng, 2000, 0.6, true_diff / 100, 0.10)
        est = stats.paired_bootstrap(a, b, resamples=1000, seed=rep)
        covered += est.low <= true_diff <= est.high
    assert 0.90 <= covered / reps <= 0.99  # nominal 95%


def test_paired_bootstrap_matches_the_normal_approximation():
    """For large N the percentile interval is the textbook d ± 1.96 sqrt((p01 + p10 - (p01 - p10)^2) / N)."""
    rng = np.random.default_rng(7)
    a, b = _paired_hits(rng, 50_000, 0.6, 0.015, 0.12)
    n = a.size
    p01, p10 = np.mean(b & ~a), np.mean(a & ~b)
    se = 100 * math.sqrt((p01 + p10 - (p01 - p10) ** 2) / n)
    est = stats.paired_bootstrap(a, b)
    assert est.diff == pytest.approx(100 * (b.mean() - a.mean()))
    assert est.high - est.low == pytest.approx(2 * 1.96 * se, rel=0.05)
    z_p = 2 * sps.norm.sf(abs(est.diff) / se)
    assert est.p == pytest.approx(z_p, abs=0.01) or est.p < 1e-3 and z_p < 1e-3


def test_unpaired_bootstrap_from_counts_is_wider_and_matches_its_formula():
    rng = np.random.default_rng(11)
    labels = np.repeat(np.arange(100), 40)
    a, b = _paired_hits(rng, labels.size, 0.6, 0.02, 0.08)
    count = lambda hits: np.bincount(labels[hits], minlength=100)  # noqa: E731
    total = np.bincount(labels, minlength=100)
    paired = stats.paired_bootstrap(a, b)
    unpaired = stats.unpaired_bootstrap(count(a), count(b), total)
    assert unpaired.diff == pytest.approx(paired.diff)
    assert unpaired.high - unpaired.low > 1.5 * (paired.high - paired.low)  # the pairing is worth a lot here
    # stratified, independent: Var = sum_c n_c p_c (1 - p_c) for A plus the same for B, over N^2
    var = sum(n * (k / n) * (1 - k / n) for c in (count(a), count(b)) for k, n in zip(c, total)) / total.sum() ** 2
    assert unpaired.high - unpaired.low == pytest.approx(2 * 1.96 * 100 * math.sqrt(var), rel=0.05)


def test_equal_heads_give_p_one_and_null_p_values_spread_out():
    rng = np.random.default_rng(5)
    a = rng.random(1000) < 0.7
    same = stats.paired_bootstrap(a, a.copy())
    assert (same.diff, same.low, same.high, same.p) == (0.0, 0.0, 0.0, 1.0)
    assert stats.mcnemar_exact(a, a) == (0, 0, 1.0)
    ps = []
    for rep in range(200):  # exchangeable A and B: no true difference
        a, b = _paired_hits(rng, 1500, 0.6, 0.0, 0.1)
        ps.append(stats.paired_bootstrap(a, b, resamples=500, seed=rep).p)
    ps = np.array(ps)
    assert 0.01 <= np.mean(ps < 0.05) <= 0.12 and 0.35 <= np.mean(ps) <= 0.65


def test_bootstrap_is_deterministic_and_fast_on_imagenet_sized_sets():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(1000), 50)
    a, b = _paired_hits(rng, labels.size, 0.62, 0.01, 0.1)
    count = lambda hits: np.bincount(labels[hits], minlength=1000)  # noqa: E731
    total = np.bincount(labels, minlength=1000)
    t0 = time.perf_counter()
    first = (stats.paired_bootstrap(a, b), stats.unpaired_bootstrap(count(a), count(b), total))
    elapsed = time.perf_counter() - t0
    assert first == (stats.paired_bootstrap(a, b), stats.unpaired_bootstrap(count(a), count(b), total))
    assert elapsed < 3.0  # ~0.05 s alone; loose for a shared machine


def test_mcnemar_is_the_exact_binomial_sum():
    a = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 1], dtype=bool)
    b = np.array([1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 1, 1], dtype=bool)
    n01, n10, p = stats.mcnemar_exact(a, b)
    assert (n01, n10) == (6, 3)
    n, k = n01 + n10, min(n01, n10)
    assert p == pytest.approx(min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n))


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(FeatbenchError, match="--bootstrap 5: give a whole number"):
        stats.paired_bootstrap([True], [False], resamples=5)
    with pytest.raises(FeatbenchError, match="equal, non-empty"):
        stats.paired_bootstrap([True, False], [True])
    with pytest.raises(FeatbenchError, match="0 <= correct <= total"):
        stats.unpaired_bootstrap([3], [1], [2])
    with pytest.raises(FeatbenchError, match="0 <= correct <= total"):
        stats.unpaired_bootstrap([0], [0], [0])


def test_format_p():
    assert stats.format_p(0.0312345) == "p = 0.0312" and stats.format_p(1.0) == "p = 1"
    assert stats.format_p(0.0) == "p < 0.0001"


# -- properties ------------------------------------------------------------------------------------------------
finite = st.floats(min_value=-100, max_value=100, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=2, max_size=12))
def test_paired_t_properties(pairs):
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    est = stats.paired_t(a, b)
    assert all(math.isfinite(v) for v in (est.diff, est.low, est.high, est.p))
    assert est.low <= est.diff + 1e-9 and est.diff <= est.high + 1e-9 and 0.0 <= est.p <= 1.0
    flipped = stats.paired_t(b, a)
    assert flipped.diff == pytest.approx(-est.diff, abs=1e-9) and flipped.p == pytest.approx(est.p, abs=1e-9)
    assert flipped.low == pytest.approx(-est.high, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=300), st.integers(0, 2**32 - 1))
def test_paired_bootstrap_properties(pairs, seed):
    a = np.array([x for x, _ in pairs])
    b = np.array([y for _, y in pairs])
    est = stats.paired_bootstrap(a, b, resamples=200, seed=seed)
    assert est.diff == pytest.approx(100 * (b.mean() - a.mean()))
    assert all(math.isfinite(v) for v in (est.low, est.high, est.p))
    assert est.low <= est.high and 0.0 < est.p <= 1.0 and -100 <= est.low and est.high <= 100
    assert est == stats.paired_bootstrap(a, b, resamples=200, seed=seed)
    _, _, p = stats.mcnemar_exact(a, b)
    assert 0.0 < p <= 1.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=40))
def test_unpaired_bootstrap_properties(classes):
    total = np.array([n for n, _, _ in classes])
    ca = np.array([int(n * fa) for n, fa, _ in classes])
    cb = np.array([int(n * fb) for n, _, fb in classes])
    if total.sum() == 0:
        with pytest.raises(FeatbenchError):
            stats.unpaired_bootstrap(ca, cb, total, resamples=200)
        return
    est = stats.unpaired_bootstrap(ca, cb, total, resamples=200)
    assert est.diff == pytest.approx(100 * (cb.sum() - ca.sum()) / total.sum())
    assert all(math.isfinite(v) for v in (est.low, est.high, est.p)) and est.low <= est.high and 0 < est.p <= 1


@settings(max_examples=60, deadline=None)
@given(st.floats(0, 50), st.integers(0, 30))
def test_t_half_width_properties(std, n):
    out = float(stats.t_half_width(std, n))
    if n < 2:
        assert math.isnan(out)
    else:
        assert out >= 0 and math.isfinite(out)
        assert out == pytest.approx(sps.t.ppf(0.975, n - 1) * std * math.sqrt(n / (n - 1)) / math.sqrt(n))
