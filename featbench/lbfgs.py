"""L-BFGS on torch tensors, following scipy's L-BFGS-B (the solver scikit-learn's lbfgs uses) without bounds.

Why our own: driving scipy from Python costs ~8 ms of Fortran/C bookkeeping and two host copies of the
whole parameter vector per evaluation, which dwarfs the two small matmuls of a linear probe on a few-shot
set. Here the state (iterate, gradient, history) stays in float64 tensors on the objective's device and
only scalars cross to the host.

The rules are L-BFGS-B's for an unbounded problem, so the iterates match scipy's up to rounding:
- direction -H g from the last ``m`` pairs (s, y) with H0 = (s'y / y'y) I; without bounds this is the
  same quasi-Newton step as L-BFGS-B's compact form (its Cauchy point and subspace minimisation reduce
  to it);
- the very first line search starts at step 1/||g|| and every later one at 1; the line search is
  Moré & Thuente's (MINPACK-2 dcsrch) with ftol 1e-3, gtol 0.9, xtol 0.1 and at most ``maxls``
  evaluations; a failed search or an ascent direction drops the history and retries from steepest
  descent (and stops if the history was already empty);
- a pair with s'y <= eps * (-g0'd) * step is skipped;
- stop when max|g| <= gtol, when (f_old - f) <= ftol * max(|f_old|, |f|, 1), or after ``max_iter``
  iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_EPS = 2.220446049250313e-16
_BIG = 1e10  # L-BFGS-B's step bound when no variable is bounded


@dataclass
class Result:
    x: object  # torch tensor
    f: float
    n_iter: int
    n_eval: int
    status: str


def minimize(fun, x0, *, max_iter: int = 1000, gtol: float = 1e-5, ftol: float = 64 * _EPS, m: int = 10,
             maxls: int = 50) -> Result:
    """Minimise ``fun(x) -> (f, grad)`` from ``x0`` (a float64 tensor); ``f`` a float or a 0-dim tensor.

    On a GPU every host read of a scalar waits for the device, so the loop reads scalars in batches: one
    transfer per evaluation (f, g'd and max|g| together) and one per iteration (g'd of the new direction,
    with ||d|| on the first), while the two-loop recursion keeps its coefficients on the device.
    """
    x = x0.clone()
    f, g = fun(x)
    f, gmax = host(f, g.abs().max())
    n_eval = 1
    if gmax <= gtol:
        return Result(x, f, 0, n_eval, "gradient below gtol at the start")
    S: list = []
    Y: list = []
    rho: list[float] = []
    it = 0
    while True:
        d = _direction(g, S, Y, rho)
        gd0, dnorm = host(g @ d, d.norm()) if it == 0 else (host(g @ d)[0], None)
        if gd0 >= 0:  # not a descent direction: forget the history and use steepest descent
            if not S:
                return Result(x, f, it, n_eval, "no descent direction")
            S.clear(), Y.clear(), rho.clear()
            continue
        stp = min(1.0 / dnorm, _BIG) if it == 0 else 1.0
        search = _LineSearch(f, gd0, stp, stpmax=_BIG)
        xs, fs, gs, gds, gmax, ok = x, f, g, gd0, gmax, False
        for _ in range(maxls):
            xs = x + stp * d if stp != 1.0 else x + d
            fs, gs = fun(xs)
            fs, gds, gmax = host(fs, gs @ d, gs.abs().max())
            n_eval += 1
            stp, done = search.next(fs, gds, stp)
            if done:
                ok = True
                break
        if not ok:  # line search failed: restart from steepest descent, or give up without history
            if not S:
                return Result(x, f, it, n_eval, "line search failed")
            S.clear(), Y.clear(), rho.clear()
            continue
        f_old, g_old = f, g
        x, f, g = xs, fs, gs
        it += 1
        if it >= max_iter:
            return Result(x, f, it, n_eval, "max_iter reached")
        if gmax <= gtol:
            return Result(x, f, it, n_eval, "gradient below gtol")
        if f_old - f <= ftol * max(abs(f_old), abs(f), 1.0):
            return Result(x, f, it, n_eval, "relative reduction of f below ftol")
        # the pair (s, y) and L-BFGS-B's curvature check on s'y (known on the host from g'd: no transfer)
        s = d * stp if stp != 1.0 else d
        y = g - g_old
        sy = (gds - gd0) * stp if stp != 1.0 else gds - gd0
        if sy <= _EPS * (-gd0 * stp):
            continue
        if len(S) == m:
            S.pop(0), Y.pop(0), rho.pop(0)
        S.append(s)
        Y.append(y)
        rho.append(1.0 / sy)


def host(*values) -> list[float]:
    """Python floats of scalars (tensors or numbers), with one device-to-host transfer for all the tensors."""
    import torch

    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if not tensors:
        return [float(v) for v in values]
    read = iter(torch.stack([t.reshape(()).to(torch.float64) for t in tensors]).tolist())
    return [next(read) if isinstance(v, torch.Tensor) else float(v) for v in values]


def _direction(g, S, Y, rho):
    """-H g by the two-loop recursion, H0 = (s'y / y'y) I of the newest pair (steepest descent without pairs).

    The coefficients a_i and b stay 0-dim tensors on g's device: no host transfer inside the recursion.
    """
    if not S:
        return -g
    q = g.clone()
    a = [None] * len(S)
    for i in range(len(S) - 1, -1, -1):
        a[i] = (S[i] @ q) * rho[i]
        q.sub_(Y[i] * a[i])
    y = Y[-1]
    q.div_((y @ y) * rho[-1])
    for i in range(len(S)):
        b = (Y[i] @ q) * rho[i]
        q.add_(S[i] * (a[i] - b))
    return q.neg_()


class _LineSearch:
    """Moré & Thuente's line search (MINPACK-2 dcsrch) for phi(stp) = f(x + stp d), phi'(0) = gd0 < 0.

    ``next(f, g, stp)`` takes phi and phi' at the step just evaluated and returns (next step, done); done
    when the strong Wolfe conditions hold or the interval can no longer shrink (dcsrch's warnings, which
    L-BFGS-B also accepts).
    """

    ftol, gtol, xtol = 1e-3, 0.9, 0.1
    xtrapl, xtrapu = 1.1, 4.0

    def __init__(self, f0: float, g0: float, stp: float, stpmax: float, stpmin: float = 0.0):
        self.finit, self.ginit = f0, g0
        self.gtest = self.ftol * g0
        self.stpmin, self.stpmax = stpmin, stpmax
        self.width = stpmax - stpmin
        self.width1 = 2.0 * self.width
        self.brackt = False
        self.stage = 1
        self.stx, self.fx, self.gx = 0.0, f0, g0
        self.sty, self.fy, self.gy = 0.0, f0, g0
        self.stmin = 0.0
        self.stmax = stp + self.xtrapu * stp

    def next(self, f: float, g: float, stp: float) -> tuple[float, bool]:
        ftest = self.finit + stp * self.gtest
        if self.stage == 1 and f <= ftest and g >= 0:
            self.stage = 2
        if self.brackt and (stp <= self.stmin or stp >= self.stmax):
            return stp, True  # rounding errors prevent progress
        if self.brackt and self.stmax - self.stmin <= self.xtol * self.stmax:
            return stp, True  # interval below xtol
        if stp == self.stpmax and f <= ftest and g <= self.gtest:
            return stp, True
        if stp == self.stpmin and (f > ftest or g >= self.gtest):
            return stp, True
        if f <= ftest and abs(g) <= self.gtol * (-self.ginit):
            return stp, True  # strong Wolfe conditions
        if self.stage == 1 and f <= self.fx and f > ftest:
            # the modified function psi(stp) = phi(stp) - phi(0) - stp * gtest while in stage 1
            gt = self.gtest
            stx, fxm, gxm, sty, fym, gym, stp = _step(self.stx, self.fx - self.stx * gt, self.gx - gt,
                                                      self.sty, self.fy - self.sty * gt, self.gy - gt,
                                                      stp, f - stp * gt, g - gt, self)
            self.stx, self.fx, self.gx = stx, fxm + stx * gt, gxm + gt
            self.sty, self.fy, self.gy = sty, fym + sty * gt, gym + gt
        else:
            (self.stx, self.fx, self.gx, self.sty, self.fy, self.gy,
             stp) = _step(self.stx, self.fx, self.gx, self.sty, self.fy, self.gy, stp, f, g, self)
        if self.brackt:
            if abs(self.sty - self.stx) >= 0.66 * self.width1:
                stp = self.stx + 0.5 * (self.sty - self.stx)
            self.width1 = self.width
            self.width = abs(self.sty - self.stx)
            self.stmin, self.stmax = min(self.stx, self.sty), max(self.stx, self.sty)
        else:
            self.stmin = stp + self.xtrapl * (stp - self.stx)
            self.stmax = stp + self.xtrapu * (stp - self.stx)
        stp = min(max(stp, self.stpmin), self.stpmax)
        if self.brackt and (stp <= self.stmin or stp >= self.stmax or self.stmax - self.stmin <= self.xtol * self.stmax):
            stp = self.stx
        return stp, False


def _cubic_gamma(theta, a, b, stp, other, flip_if_greater: bool, clip: bool = False):
    s = max(abs(theta), abs(a), abs(b))
    disc = (theta / s) ** 2 - (a / s) * (b / s)
    gamma = s * math.sqrt(max(0.0, disc) if clip else disc)
    if (stp > other) if flip_if_greater else (stp < other):
        gamma = -gamma
    return gamma


def _step(stx, fx, dx, sty, fy, dy, stp, fp, dp, ls):
    """One safeguarded cubic/quadratic step of Moré & Thuente (dcstep); updates ls.brackt.

    Returns the new (stx, fx, dx, sty, fy, dy, stp).
    """
    sgnd = dp * (dx / abs(dx))
    if fp > fx:  # higher function value: the minimum is bracketed
        theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp
        gamma = _cubic_gamma(theta, dx, dp, stp, stx, flip_if_greater=False)
        p = (gamma - dx) + theta
        q = ((gamma - dx) + gamma) + dp
        stpc = stx + (p / q) * (stp - stx)
        stpq = stx + ((dx / ((fx - fp) / (stp - stx) + dx)) / 2.0) * (stp - stx)
        stpf = stpc if abs(stpc - stx) < abs(stpq - stx) else stpc + (stpq - stpc) / 2.0
        ls.brackt = True
    elif sgnd < 0:  # derivatives of opposite sign: bracketed
        theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp
        gamma = _cubic_gamma(theta, dx, dp, stp, stx, flip_if_greater=True)
        p = (gamma - dp) + theta
        q = ((gamma - dp) + gamma) + dx
        stpc = stp + (p / q) * (stx - stp)
        stpq = stp + (dp / (dp - dx)) * (stx - stp)
        stpf = stpc if abs(stpc - stp) > abs(stpq - stp) else stpq
        ls.brackt = True
    elif abs(dp) < abs(dx):  # same sign, derivative magnitude decreases
        theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp
        gamma = _cubic_gamma(theta, dx, dp, stp, stx, flip_if_greater=True, clip=True)
        p = (gamma - dp) + theta
        q = (gamma + (dx - dp)) + gamma
        r = p / q
        if r < 0 and gamma != 0:
            stpc = stp + r * (stx - stp)
        elif stp > stx:
            stpc = ls.stmax
        else:
            stpc = ls.stmin
        stpq = stp + (dp / (dp - dx)) * (stx - stp)
        if ls.brackt:
            stpf = stpc if abs(stpc - stp) < abs(stpq - stp) else stpq
            if stp > stx:
                stpf = min(stp + 0.66 * (sty - stp), stpf)
            else:
                stpf = max(stp + 0.66 * (sty - stp), stpf)
        else:
            stpf = stpc if abs(stpc - stp) > abs(stpq - stp) else stpq
            stpf = min(ls.stmax, max(ls.stmin, stpf))
    else:  # same sign, derivative does not decrease: step to the far end (or the cubic inside the bracket)
        if ls.brackt:
            theta = 3.0 * (fp - fy) / (sty - stp) + dy + dp
            gamma = _cubic_gamma(theta, dy, dp, stp, sty, flip_if_greater=True)
            p = (gamma - dp) + theta
            q = ((gamma - dp) + gamma) + dy
            stpf = stp + (p / q) * (sty - stp)
        elif stp > stx:
            stpf = ls.stmax
        else:
            stpf = ls.stmin
    if fp > fx:
        sty, fy, dy = stp, fp, dp
    else:
        if sgnd < 0:
            sty, fy, dy = stx, fx, dx
        stx, fx, dx = stp, fp, dp
    return stx, fx, dx, sty, fy, dy, stpf
