"""featbench.lbfgs follows scipy's L-BFGS-B (no bounds) iterate for iterate, up to rounding."""

import numpy as np
import pytest
import torch
from scipy import optimize

from featbench.lbfgs import minimize


def _rosen(x):
    x = x.numpy()
    return float(optimize.rosen(x)), torch.from_numpy(optimize.rosen_der(x))


def _scipy(fun, x0, **opts):
    o = dict(maxiter=1000, gtol=1e-8, ftol=64 * np.finfo(float).eps, maxls=50, maxcor=10)
    o.update(opts)
    return optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", options=o)


def _start(n):
    x0 = np.full(n, -1.2)
    x0[1::2] = 1.0
    return x0


def test_rosenbrock_2d_same_iterates_as_scipy():
    """Curved valley: the line search brackets, interpolates and backtracks; counts and optimum agree."""
    x0 = _start(2)
    ref = _scipy(lambda x: (optimize.rosen(x), optimize.rosen_der(x)), x0)
    ours = minimize(_rosen, torch.from_numpy(x0), max_iter=1000, gtol=1e-8)
    assert (ours.n_iter, ours.n_eval) == (ref.nit, ref.nfev)
    np.testing.assert_allclose(ours.x.numpy(), ref.x, atol=1e-12)
    assert ours.status == "gradient below gtol"


@pytest.mark.parametrize("k", [5, 20, 40])
def test_rosenbrock_20d_trajectory_matches_scipy(k):
    """Stopped after k iterations, the iterate equals scipy's to rounding (history of 10 pairs in use)."""
    x0 = _start(20)
    ref = _scipy(lambda x: (optimize.rosen(x), optimize.rosen_der(x)), x0, maxiter=k)
    ours = minimize(_rosen, torch.from_numpy(x0), max_iter=k, gtol=1e-8)
    assert (ours.n_iter, ours.n_eval) == (ref.nit, ref.nfev)
    np.testing.assert_allclose(ours.x.numpy(), ref.x, atol=1e-9)
    assert ours.status == "max_iter reached"


def test_logistic_loss_same_iterations_and_solution_as_scipy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8))
    y = (X @ rng.normal(size=8) + 0.5 * rng.normal(size=120) > 0).astype(float)

    def fun(w):
        z = X @ w
        f = np.mean(np.logaddexp(0, z) - y * z) + 0.01 * w @ w
        return f, X.T @ (1 / (1 + np.exp(-z)) - y) / len(y) + 0.02 * w

    ref = _scipy(fun, np.zeros(8), gtol=1e-6)
    ours = minimize(lambda w: (lambda f, g: (float(f), torch.from_numpy(g)))(*fun(w.numpy())), torch.zeros(8, dtype=torch.float64),
                    gtol=1e-6)
    assert (ours.n_iter, ours.n_eval) == (ref.nit, ref.nfev)
    np.testing.assert_allclose(ours.x.numpy(), ref.x, atol=1e-10)


def test_stops_at_start_when_gradient_is_small_and_on_flat_objectives():
    r = minimize(lambda x: (float((x * x).sum()), 2 * x), torch.zeros(3, dtype=torch.float64))
    assert (r.n_iter, r.n_eval, r.status) == (0, 1, "gradient below gtol at the start")
    r = minimize(lambda x: (float(((x - 3) ** 2).sum()), 2 * (x - 3)), torch.zeros(3, dtype=torch.float64), gtol=1e-10)
    np.testing.assert_allclose(r.x.numpy(), 3.0, atol=1e-8)


def test_host_reads_are_batched_one_per_evaluation_and_iteration(monkeypatch):
    """On a GPU each scalar read waits for the device: the loop may read once per evaluation and once per
    iteration, never inside the two-loop recursion (it used to read ~2m + 5 scalars per iteration)."""
    reads = []
    for name in ("item", "tolist", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **k):
            reads.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    x0 = torch.from_numpy(_start(20))

    def fun(x):  # the Rosenbrock function on tensors: f stays a 0-dim tensor
        f = (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()
        g = torch.zeros_like(x)
        g[:-1] = -400.0 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
        g[1:] += 200.0 * (x[1:] - x[:-1] ** 2)
        return f, g

    ours = minimize(fun, x0, max_iter=30, gtol=1e-8)
    assert ours.n_iter == 30
    assert set(reads) == {"tolist"}
    assert len(reads) <= ours.n_eval + ours.n_iter + 2  # + restarts after a failed search, if any
    ref = _scipy(lambda x: (optimize.rosen(x), optimize.rosen_der(x)), _start(20), maxiter=30)
    np.testing.assert_allclose(ours.x.numpy(), ref.x, atol=1e-9)
