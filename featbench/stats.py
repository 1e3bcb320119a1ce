"""Significance of a difference between two heads: paired t over seeds, paired bootstrap over test images,
McNemar's exact test, and t intervals for table cells. Pure numpy; scipy.stats only inside the functions.

Every function returns finite numbers (never NaN): a difference with no spread gets a zero-width interval and
p = 1 when it is zero (p = 0 for the t test, 1/(B+1) for a bootstrap, when it is not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featbench.errors import FeatbenchError

#: the two-sided confidence level of every interval featbench prints
LEVEL = 0.95
#: default number of bootstrap resamples (`featbench compare --bootstrap`)
RESAMPLES = 10_000
#: the bootstrap's random seed: the same command prints the same numbers
RNG_SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A difference B - A (in points) with its 95% interval, two-sided p-value and how they were computed."""

    diff: float
    low: float
    high: float
    p: float
    method: str
    n: int  # seeds (t test) or test images (bootstrap)
    df: int | None = None  # degrees of freedom of a t test


# -- paired t over seeds ---------------------------------------------------------------------------------------
def paired_t(a, b, level: float = LEVEL) -> Estimate:
    """Paired t test of ``b - a`` (one pair per seed): mean ± t(level, n-1) * sd/sqrt(n), sd with ddof=1."""
    from scipy import stats as sps  # lazy: the CLI path imports scipy only when a test is asked for

    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    n = d.size
    if n < 2:
        raise FeatbenchError(f"a paired t test needs at least 2 pairs; got {n}")
    if not np.isfinite(d).all():
        raise FeatbenchError("a paired t test needs finite numbers")
    mean = float(d.mean())
    se = float(d.std(ddof=1)) / np.sqrt(n)
    if se == 0.0:  # every seed gives the same difference: no spread to test against
        return Estimate(mean, mean, mean, 1.0 if mean == 0.0 else 0.0, "paired t", n, n - 1)
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * se
    p = float(2 * sps.t.sf(abs(mean) / se, n - 1))
    return Estimate(mean, float(mean - half), float(mean + half), min(1.0, p), "paired t", n, n - 1)


def t_half_width(std, n, level: float = LEVEL, *, ddof: int = 0):
    """Half-width of the t interval of a mean of ``n`` values whose std (computed with ``ddof``) is ``std``.

    Elementwise; NaN where n < 2 or std is NaN (a cell of one seed has no interval).
    """
    from scipy import stats as sps  # lazy, as above

    std = np.asarray(std, dtype=float)
    n = np.asarray(n, dtype=float)
    ok = (n >= 2) & np.isfinite(std)
    safe_n = np.where(ok, n, 2.0)
    sample_std = std * np.sqrt((safe_n - ddof) / (safe_n - 1))  # back to ddof=1
    half = sps.t.ppf(0.5 + level / 2, safe_n - 1) * sample_std / np.sqrt(safe_n)
    return np.where(ok, half, np.nan)


# -- bootstrap over test images --------------------------------------------------------------------------------
def _p_centered(boot: np.ndarray, observed: float) -> float:
    """Two-sided bootstrap p-value: how often a resample lies at least as far from the estimate as the estimate
    lies from 0 (the bootstrap distribution shifted to the null), with the +1 that keeps it above 0."""
    if observed == 0.0:
        return 1.0
    far = np.count_nonzero(np.abs(boot - observed) >= abs(observed) - 1e-9)
    return float((1 + far) / (1 + boot.size))


def _estimate(boot: np.ndarray, observed: float, level: float, method: str, n: int) -> Estimate:
    low, high = np.quantile(boot, [0.5 - level / 2, 0.5 + level / 2])
    return Estimate(observed, float(low), float(high), _p_centered(boot, observed), method, n)


def check_resamples(resamples: int) -> int:
    """The number of bootstrap resamples, 100 to 1,000,000 (fewer gives a coarse p; more only costs time)."""
    if not isinstance(resamples, (int, np.integer)) or isinstance(resamples, bool) or not 100 <= resamples <= 1_000_000:
        raise FeatbenchError(f"--bootstrap {resamples}: give a whole number of resamples from 100 to 1000000")
    return int(resamples)


def paired_bootstrap(correct_a, correct_b, *, resamples: int = RESAMPLES, seed: int = RNG_SEED,
                     level: float = LEVEL) -> Estimate:
    """Paired bootstrap of the accuracy difference (points) from per-image hits of A and B on the same images.

    Resampling N images with replacement only changes how many of them are "B right, A wrong" (n01) and
    "A right, B wrong" (n10), so each resample is one multinomial draw of those counts: exact, and O(B).
    """
    ca, cb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if ca.shape != cb.shape or ca.ndim != 1 or ca.size == 0:
        raise FeatbenchError(f"paired hits must be two equal, non-empty 1-d arrays; got shapes {ca.shape} and "
                             f"{cb.shape}")
    resamples = check_resamples(resamples)
    n = ca.size
    n01, n10 = int(np.count_nonzero(cb & ~ca)), int(np.count_nonzero(ca & ~cb))
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, [n01 / n, n10 / n, (n - n01 - n10) / n], size=resamples)
    boot = 100.0 * (draws[:, 0] - draws[:, 1]) / n
    return _estimate(boot, 100.0 * (n01 - n10) / n, level, "paired bootstrap", n)


def _sum_of_binomials(rng, totals: np.ndarray, correct: np.ndarray, resamples: int) -> np.ndarray:
    """``resamples`` draws of sum_c Binomial(totals[c], correct[c]/totals[c]).

    Classes with the same (total, correct) are pooled into one Binomial(m * total, p), which has the same
    distribution and makes a balanced 1000-class test set (ImageNet: 50 images each) ~51 draws per resample.
    """
    keep = (totals > 0) & (correct > 0) & (correct < totals)  # p = 0 or 1: no randomness
    fixed = int(correct[(totals > 0) & (correct >= totals)].sum())
    pairs, counts = np.unique(np.stack([totals[keep], correct[keep]], axis=1), axis=0, return_counts=True)
    out = np.full(resamples, fixed, dtype=np.int64)
    for (t, c), m in zip(pairs, counts):
        out += rng.binomial(int(t) * int(m), c / t, size=resamples)
    return out


def unpaired_bootstrap(correct_a, correct_b, totals, *, resamples: int = RESAMPLES, seed: int = RNG_SEED,
                       level: float = LEVEL) -> Estimate:
    """Bootstrap of the accuracy difference (points) from per-class counts alone, stratified by class, A and B
    resampled independently (the counts do not say which images both got right, so the pairing is lost and
    the interval is wider than the paired one whenever A and B tend to be right on the same images)."""
    ca, cb, tot = (np.asarray(x, dtype=np.int64) for x in (correct_a, correct_b, totals))
    if not (ca.shape == cb.shape == tot.shape) or ca.ndim != 1:
        raise FeatbenchError("per-class counts of A and B must be lists of the same length")
    if (ca < 0).any() or (cb < 0).any() or (ca > tot).any() or (cb > tot).any() or tot.sum() == 0:
        raise FeatbenchError("per-class counts must satisfy 0 <= correct <= total, with some test images")
    resamples = check_resamples(resamples)
    n = int(tot.sum())
    rng = np.random.default_rng(seed)
    boot_a = _sum_of_binomials(rng, tot, ca, resamples)
    boot_b = _sum_of_binomials(rng, tot, cb, resamples)
    boot = 100.0 * (boot_b - boot_a) / n
    return _estimate(boot, 100.0 * (int(cb.sum()) - int(ca.sum())) / n, level, "unpaired bootstrap", n)


def mcnemar_exact(correct_a, correct_b) -> tuple[int, int, float]:
    """McNemar's exact test on paired hits: (n01 = B right & A wrong, n10 = A right & B wrong, two-sided p),
    p from Binomial(n01 + n10, 1/2); 1.0 when there is no discordant image."""
    from scipy import stats as sps  # lazy, as above

    ca, cb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    n01, n10 = int(np.count_nonzero(cb & ~ca)), int(np.count_nonzero(ca & ~cb))
    if n01 + n10 == 0:
        return n01, n10, 1.0
    return n01, n10, float(min(1.0, sps.binomtest(n01, n01 + n10, 0.5).pvalue))


def format_p(p: float) -> str:
    """A p-value for a line of text: 3 significant digits, "< 0.0001" below that."""
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.3g}"


__all__ = ["Estimate", "LEVEL", "RESAMPLES", "RNG_SEED", "paired_t", "t_half_width", "paired_bootstrap",
           "unpaired_bootstrap", "mcnemar_exact", "format_p", "check_resamples"]
