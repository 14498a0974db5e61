"""Fitting scaling laws to sweep results.

- :func:`fit_chinchilla`: ``L(N, D) = E + A/N**alpha + B/D**beta`` as Hoffmann et al. (2022)
  fit it: the Huber loss (δ = 1e-3) between the predicted and observed *log* loss, the
  prediction written as ``LSE(a - alpha·log N, b - beta·log D, e)`` with ``A = e**a``,
  ``B = e**b``, ``E = e**e``, minimised with L-BFGS-B from their grid of initialisations
  (by default from its 16 points with the lowest objective; ``starts=None``: every one of
  the 4,500), the best optimum kept. Bootstrap resamples of the points give confidence
  intervals for every parameter.
- :func:`fit_power_law`: a Kaplan-style single-variable law ``L(x) = (x_c/x)**alpha_x`` by
  least squares in log space.
- :func:`compute_frontier`: the lower envelope of loss against compute.
- :func:`fit_isoflops`: Chinchilla's approach 2, a parabola in ``log N`` per compute budget
  and the exponents of ``N_opt ∝ C**a``, ``D_opt ∝ C**b``.

Everything is deterministic for a given seed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from triform.errors import TriformError
from triform.scaling.laws import ChinchillaLaw

# Hoffmann et al.'s grid of initialisations (appendix D.2): alpha, beta in {0, 0.5, ..., 2},
# e in {-1, -0.5, ..., 1}, a and b in {0, 5, ..., 25}.
HOFFMANN_GRID = {
    "alpha": tuple(np.arange(0.0, 2.01, 0.5)),
    "beta": tuple(np.arange(0.0, 2.01, 0.5)),
    "e": tuple(np.arange(-1.0, 1.01, 0.5)),
    "a": tuple(np.arange(0.0, 25.01, 5.0)),
    "b": tuple(np.arange(0.0, 25.01, 5.0)),
}
HUBER_DELTA = 1e-3
# L-BFGS runs from this many grid points, the best by objective value where they start
# (running all 4,500 costs minutes and, in our tests, finds the same optimum).
STARTS = 16
# Bootstrap refits start from the full-data optimum and the best few grid points.
BOOTSTRAP_STARTS = 2
PARAMETERS = ("E", "A", "B", "alpha", "beta")


@dataclass(frozen=True)
class PowerLaw:
    """``L(x) = (x_c / x)**exponent`` (Kaplan et al.'s form, e.g. ``(N_c/N)**alpha_N``).

    The scale is kept as ``log_scale = ln x_c``: with the small exponents of small sweeps
    ``x_c`` itself can exceed the floating-point range."""

    exponent: float
    log_scale: float
    points: int

    @property
    def scale(self) -> float:
        """``x_c`` (``inf`` when beyond the float range)."""
        return math.exp(self.log_scale) if self.log_scale < 709 else math.inf

    def __call__(self, x: Any) -> Any:
        return np.exp(self.exponent * (self.log_scale - np.log(np.asarray(x, dtype=float))))

    def to_dict(self) -> dict[str, Any]:
        scale = self.scale if math.isfinite(self.scale) else None
        return {
            "exponent": self.exponent,
            "scale": scale,
            "log10_scale": self.log_scale / math.log(10),
            "points": self.points,
        }


@dataclass
class ChinchillaFit:
    """The fitted law, its bootstrap intervals and how the fit went."""

    law: ChinchillaLaw
    objective: float
    points: int
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    level: float = 0.95
    bootstrap: int = 0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """``E``, ``A``, ``B``, ``alpha``, ``beta`` at the top level, plus the intervals."""
        return {
            **self.law.to_dict(),
            "intervals": {key: list(value) for key, value in self.intervals.items()},
            "level": self.level,
            "bootstrap": self.bootstrap,
            "seed": self.seed,
            "points": self.points,
            "huber_objective": self.objective,
        }


def _huber_objective(
    theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """Sum of Huber(δ) over log-loss residuals, divided by δ (same minimiser, and values
    of order one so that L-BFGS's tolerances mean something); with its gradient."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # (3, P)
    top = terms.max(axis=0)
    weights = np.exp(terms - top)  # (3, P)
    total = weights.sum(axis=0)
    residual = top + np.log(total) - log_loss  # (P,)
    weights /= total  # softmax: d LSE / d term
    small = np.abs(residual) <= delta
    value = np.where(small, 0.5 * residual**2, delta * (np.abs(residual) - 0.5 * delta)).sum()
    slope = np.clip(residual, -delta, delta) / delta  # d huber / d residual, over δ
    grad = np.array(
        [
            (slope * weights[0]).sum(),
            (slope * weights[1]).sum(),
            (slope * weights[2]).sum(),
            -(slope * weights[0] * log_n).sum(),
            -(slope * weights[1] * log_d).sum(),
        ]
    )
    return value / delta, grad


def _grid(grid: dict[str, tuple[float, ...]]) -> np.ndarray:
    """Initialisations as rows of ``(a, b, e, alpha, beta)``."""
    rows = itertools.product(grid["a"], grid["b"], grid["e"], grid["alpha"], grid["beta"])
    return np.array(list(rows), dtype=float)


def _screen(
    starts: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray, delta: float
) -> np.ndarray:
    """Indices of ``starts`` (rows of ``(a, b, e, alpha, beta)``) from the best objective
    value to the worst; the same sum as :func:`_huber_objective`, for all rows at once."""
    a, b, e, alpha, beta = (starts[:, i : i + 1] for i in range(5))  # (S, 1) each
    terms = np.stack(
        [a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(starts), len(log_n)))]
    )  # (3, S, P)
    residual = np.logaddexp.reduce(terms, axis=0) - log_loss  # (S, P)
    small = np.abs(residual) <= delta
    values = np.where(small, 0.5 * residual**2, delta * (np.abs(residual) - 0.5 * delta))
    return np.argsort(values.sum(axis=1), kind="stable")


def _minimise(
    starts: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray, delta: float
) -> tuple[np.ndarray, float]:
    best, best_value = starts[0], np.inf
    # alpha, beta >= 0; A and B below e**700 so that they stay floats
    bounds = [(None, 700.0), (None, 700.0), (None, 700.0), (0.0, None), (0.0, None)]
    # L-BFGS-B's small BLAS calls run far slower when OpenBLAS spreads them over threads.
    with threadpool_limits(limits=1):
        for start in starts:
            result = _lbfgs(start, bounds, log_n, log_d, log_loss, delta)
            if np.isfinite(result.fun) and result.fun < best_value:
                best, best_value = result.x, float(result.fun)
    return best, best_value


def _lbfgs(start, bounds, log_n, log_d, log_loss, delta):
    return minimize(
        _huber_objective,
        start,
        args=(log_n, log_d, log_loss, delta),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-8},
    )


def _law(theta: np.ndarray) -> ChinchillaLaw:
    a, b, e, alpha, beta = (float(v) for v in theta)
    return ChinchillaLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)


def fit_chinchilla(
    params: Any,
    tokens: Any,
    loss: Any,
    *,
    bootstrap: int = 0,
    seed: int = 0,
    level: float = 0.95,
    delta: float = HUBER_DELTA,
    grid: dict[str, tuple[float, ...]] | None = None,
    starts: int | None = STARTS,
) -> ChinchillaFit:
    """Fit ``L(N, D) = E + A/N**alpha + B/D**beta`` to points ``(params, tokens, loss)``.

    L-BFGS-B runs from the ``starts`` initialisations of ``grid`` (default Hoffmann et
    al.'s) with the lowest objective (``None``: from every one of them, as they did).
    ``bootstrap`` resamples (with replacement, from ``numpy.random.default_rng(seed)``)
    are refitted for percentile intervals at ``level``; each refit starts from the
    full-data optimum and the :data:`BOOTSTRAP_STARTS` grid points best on that resample.
    """
    log_n, log_d, log_loss = (np.log(np.asarray(x, dtype=float)) for x in (params, tokens, loss))
    if not (log_n.shape == log_d.shape == log_loss.shape) or log_n.ndim != 1:
        raise TriformError("params, tokens and loss must be 1-D and of the same length")
    if len(log_n) < 5:
        raise TriformError(f"the Chinchilla law has 5 parameters; {len(log_n)} points are too few")
    if not (np.isfinite(log_n).all() and np.isfinite(log_d).all() and np.isfinite(log_loss).all()):
        raise TriformError("params, tokens and loss must be positive and finite")
    if starts is not None and starts < 1:
        raise TriformError(f"starts must be None (the whole grid) or >= 1, got {starts}")
    if bootstrap < 0 or not 0 < level < 1:
        raise TriformError(f"need bootstrap >= 0 and 0 < level < 1, got {bootstrap}, {level}")
    initial = _grid(grid or HOFFMANN_GRID)
    data = (log_n, log_d, log_loss, delta)
    ranked = _screen(initial, *data)
    theta, value = _minimise(initial[ranked[:starts]], *data)
    fit = ChinchillaFit(_law(theta), value, len(log_n), level=level, bootstrap=bootstrap, seed=seed)
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        samples = np.empty((bootstrap, len(PARAMETERS)))
        for i in range(bootstrap):
            pick = rng.integers(0, len(log_n), size=len(log_n))
            resample = (log_n[pick], log_d[pick], log_loss[pick], delta)
            best = initial[_screen(initial, *resample)[:BOOTSTRAP_STARTS]]
            law = _law(_minimise(np.vstack([theta, best]), *resample)[0])
            samples[i] = [getattr(law, key) for key in PARAMETERS]
        tail = 100 * (1 - level) / 2
        low, high = np.percentile(samples, [tail, 100 - tail], axis=0)
        fit.intervals = {
            key: (float(lo), float(hi)) for key, lo, hi in zip(PARAMETERS, low, high, strict=True)
        }
    return fit


def fit_power_law(x: Any, loss: Any) -> PowerLaw:
    """``L = (x_c/x)**alpha`` by least squares on ``log L = alpha·log x_c - alpha·log x``."""
    log_x, log_loss = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(loss, dtype=float))
    if len(np.unique(log_x)) < 2:
        raise TriformError("a power law needs at least two distinct x values")
    slope, intercept = np.polyfit(log_x, log_loss, 1)
    exponent = -float(slope)
    if exponent == 0:
        raise TriformError("the loss does not change with x: no power law to fit")
    return PowerLaw(exponent, float(intercept / exponent), len(log_x))


def compute_frontier(flops: Any, loss: Any) -> np.ndarray:
    """Indices of the compute frontier: in order of compute, the points whose loss is below
    that of every point with less compute (the lower envelope Kaplan's ``L(C_min)`` uses)."""
    flops, loss = np.asarray(flops, dtype=float), np.asarray(loss, dtype=float)
    order = np.lexsort((loss, flops))  # by compute, ties by loss
    frontier, best = [], np.inf
    for index in order:
        if loss[index] < best:
            frontier.append(int(index))
            best = loss[index]
    return np.array(frontier, dtype=int)


@dataclass(frozen=True)
class IsoFlopCurve:
    """One compute budget: ``loss = c2·x**2 + c1·x + c0`` in ``x = log N`` (and in log D)."""

    flops: float
    coefficients: tuple[float, float, float]
    n_opt: float
    d_opt: float
    loss_opt: float


@dataclass(frozen=True)
class IsoFlopFit:
    """The parabolas per budget and ``N_opt = k_n·C**a``, ``D_opt = k_d·C**b``."""

    curves: list[IsoFlopCurve]
    a: float | None
    b: float | None
    k_n: float | None
    k_d: float | None
    left_out: tuple[tuple[float, str], ...] = ()  # (budget, why) of budgets with no optimum

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "k_n": self.k_n,
            "k_d": self.k_d,
            "budgets": [
                {"flops": c.flops, "n_opt": c.n_opt, "d_opt": c.d_opt, "loss_opt": c.loss_opt}
                for c in self.curves
            ],
            "left_out": [{"flops": flops, "why": why} for flops, why in self.left_out],
        }


def fit_isoflops(budget: Any, params: Any, tokens: Any, loss: Any) -> IsoFlopFit:
    """Chinchilla's approach 2 on points grouped by compute ``budget``.

    Each budget with at least three model sizes gets a parabola of loss in ``log N``; its
    vertex is ``N_opt`` and the parabola in ``log D`` over the same points gives ``D_opt``
    (both read off the data, so no FLOPs convention enters). Budgets whose parabola opens
    downwards, or whose vertex lies outside the sizes tried (the loss still falls, or rises,
    at the ends: the optimum was not bracketed), are left out and listed in ``left_out``
    rather than extrapolated. With two or more
    budgets, ``a`` and ``b`` are the slopes of ``log N_opt`` and ``log D_opt`` in ``log C``.
    """
    budget, params, tokens, loss = (
        np.asarray(x, dtype=float) for x in (budget, params, tokens, loss)
    )
    curves, left_out = [], []
    for flops in np.unique(budget):
        mask = budget == flops
        if len(np.unique(params[mask])) < 3:
            continue
        log_n, log_d, values = np.log(params[mask]), np.log(tokens[mask]), loss[mask]
        c2, c1, c0 = np.polyfit(log_n, values, 2)
        d2, d1, _ = np.polyfit(log_d, values, 2)
        if c2 <= 0 or d2 <= 0:
            left_out.append((float(flops), "the parabola opens downwards"))
            continue
        x_opt = -c1 / (2 * c2)
        if not log_n.min() <= x_opt <= log_n.max():
            side = "smallest" if x_opt < log_n.min() else "largest"
            left_out.append((float(flops), f"the optimum lies beyond the {side} size tried"))
            continue
        curves.append(
            IsoFlopCurve(
                float(flops),
                (float(c2), float(c1), float(c0)),
                float(np.exp(x_opt)),
                float(np.exp(-d1 / (2 * d2))),
                float(c0 - c1**2 / (4 * c2)),
            )
        )
    a = b = k_n = k_d = None
    if len(curves) >= 2:
        log_c = np.log([c.flops for c in curves])
        a, log_kn = np.polyfit(log_c, np.log([c.n_opt for c in curves]), 1)
        b, log_kd = np.polyfit(log_c, np.log([c.d_opt for c in curves]), 1)
        a, b, k_n, k_d = float(a), float(b), float(np.exp(log_kn)), float(np.exp(log_kd))
    return IsoFlopFit(curves, a, b, k_n, k_d, tuple(left_out))
