"""Where is the best ``max_lr``? Pure statistics of an Oracle's accuracy grid.

``fit_optimum`` takes, for one round, per-example validation correctness of every candidate
(grid value x seed) and returns the optimum of a concave local quadratic of mean accuracy
against log(max_lr), with a bootstrap CI over seeds and validation examples, beside the grid
argmax and the SILO papers' "optimal interval". ``slope_test`` asks whether the optimum moves
with sparsity: the slope of log(optimum) against a covariate, with a bootstrap CI.

Method (docs/method.md): the window is the grid argmax and its neighbour on each side; a
quadratic in log(max_lr) is fitted by least squares to the window's mean accuracies; its
vertex, when the quadratic is concave and the vertex inside the window, is the optimum; else
the replicate's argmax. Resampling: validation examples with replacement (paired across
candidates: every candidate is scored on the same examples) and, per grid value, the seeds
with replacement. In simulations (tests/test_optimum.py, docs/method.md) the 95 % interval
covers the true optimum in 95-100 % of runs: conservative when validation-example noise
dominates, because each seed's accuracy already carries the examples' binomial noise. With
one seed the interval reflects validation noise only. An optimum at the edge of the grid is
reported as a bound (status "edge-low"/"edge-high"), never as a value.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np

from gradscope import GradscopeError

WINDOW = 1  # grid neighbours each side of the argmax: three-point parabolic interpolation of the peak


@dataclass
class OptimumEstimate:
    """One round's best max_lr. ``status``: "interior" (a value with a CI); "edge-low" / "edge-high"
    (the best is at an end of the grid, or is there in more than (1-level)/2 of the bootstrap
    replicates: only a bound is known, extend the grid); "flat" (no grid value beats the others
    beyond noise: replicates put the best at both ends)."""

    status: str
    optimum: Optional[float]  # fitted optimum (None unless interior)
    lo: Optional[float]  # CI of the optimum (level ``level``)
    hi: Optional[float]
    argmax: float  # grid value with the best mean validation accuracy
    interval: tuple[float, float]  # SILO's optimal interval: grid values within noise of the best
    level: float = 0.95
    mean_acc: dict = field(default_factory=dict)  # max_lr -> mean validation accuracy over seeds
    se_acc: dict = field(default_factory=dict)  # max_lr -> its standard error (seeds and examples)
    boot_log_opt: Optional[np.ndarray] = field(default=None, repr=False)  # bootstrap replicates of log(optimum)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("boot_log_opt")
        d["interval"] = list(self.interval)
        d["mean_acc"] = {f"{k:.6g}": v for k, v in self.mean_acc.items()}
        d["se_acc"] = {f"{k:.6g}": v for k, v in self.se_acc.items()}
        return d


def _vertex(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    """Vertex of the least-squares quadratic through (x, y) if concave and inside [min x, max x]."""
    if len(x) < 3:
        return None
    a, b, _ = np.polyfit(x, y, 2)
    if not a < 0:
        return None
    v = -b / (2 * a)
    return float(v) if x.min() <= v <= x.max() else None


def _local_optimum(logx: np.ndarray, mean: np.ndarray) -> float:
    """log max_lr of the optimum of one accuracy curve (the module docstring's rule)."""
    i = int(np.argmax(mean))
    lo, hi = max(0, i - WINDOW), min(len(logx), i + WINDOW + 1)
    v = _vertex(logx[lo:hi], mean[lo:hi])
    return float(logx[i]) if v is None else v


def _interval(grid: np.ndarray, mean: np.ndarray, n_val: int) -> tuple[float, float]:
    """SILO's optimal interval: grid values within one SE of a difference of two binomial
    proportions of the best, ``acc_best - acc <= sqrt(2 p (1-p) / n_val)``."""
    i = int(np.argmax(mean))
    p = float(mean[i])
    noise = math.sqrt(2 * p * (1 - p) / max(n_val, 1))
    inside = grid[mean >= p - noise - 1e-12]
    return float(inside.min()), float(inside.max())


def fit_optimum(grid: Sequence[float], correct: np.ndarray, *, n_boot: int = 1000, level: float = 0.95,
                seed: int = 0) -> OptimumEstimate:
    """Optimum of one round from ``correct[g, s, i]`` (bool: candidate at ``grid[g]`` with seed ``s``
    classified validation example ``i`` correctly). ``grid`` is sorted, positive, distinct."""
    grid = np.asarray(grid, float)
    c = np.asarray(correct)
    if c.ndim != 3 or c.shape[0] != len(grid):
        raise GradscopeError(f"correct must be [grid values, seeds, examples], got shape {c.shape} for {len(grid)} grid values")
    if len(grid) < 3:
        raise GradscopeError("the Oracle needs at least 3 grid values to locate an optimum")
    if np.any(np.diff(grid) <= 0) or grid[0] <= 0:
        raise GradscopeError("grid values must be positive and increasing")
    if not 0 < level < 1:
        raise GradscopeError(f"level must be in (0, 1), got {level}")
    G, S, N = c.shape
    if N < 1 or S < 1:
        raise GradscopeError("no validation examples or no seeds to estimate the optimum from")
    c = c.astype(np.float64)
    logx = np.log(grid)
    per_seed = c.mean(axis=2)  # [G, S]
    mean = per_seed.mean(axis=1)
    rng = np.random.default_rng(seed)
    flat = c.reshape(G * S, N)
    boots = np.empty(n_boot)
    boot_means = np.empty((n_boot, G))
    boot_argmax = np.empty(n_boot, dtype=np.int64)
    for b in range(n_boot):
        w = np.bincount(rng.integers(0, N, N), minlength=N).astype(np.float64) / N
        acc = (flat @ w).reshape(G, S)  # per candidate accuracy on the resampled examples
        pick = rng.integers(0, S, (G, S))  # per grid value, seeds with replacement
        resampled = np.take_along_axis(acc, pick, axis=1).mean(axis=1)
        boot_means[b] = resampled
        boot_argmax[b] = int(np.argmax(resampled))
        boots[b] = _local_optimum(logx, resampled)
    se = boot_means.std(axis=0, ddof=1) if n_boot > 1 else np.zeros(G)
    i = int(np.argmax(mean))
    interval = _interval(grid, mean, N)
    est = dict(argmax=float(grid[i]), interval=interval, level=level,
               mean_acc={float(g): float(m) for g, m in zip(grid, mean)},
               se_acc={float(g): float(s) for g, s in zip(grid, se)}, boot_log_opt=boots)
    a = (1 - level) / 2
    p_low, p_high = float(np.mean(boot_argmax == 0)), float(np.mean(boot_argmax == G - 1))
    if (p_low > a and p_high > a) or (interval[0] <= grid[0] and interval[1] >= grid[-1]):
        return OptimumEstimate("flat", None, None, None, **est)
    if i == 0 or i == G - 1:
        return OptimumEstimate("edge-low" if i == 0 else "edge-high", None, None, None, **est)
    if p_low > a or p_high > a:  # the best may lie at or beyond an end: a bound only
        return OptimumEstimate("edge-low" if p_low > a else "edge-high", None, None, None, **est)
    lo, hi = np.quantile(boots, [a, 1 - a])
    return OptimumEstimate("interior", float(math.exp(_local_optimum(logx, mean))), float(math.exp(lo)),
                           float(math.exp(hi)), **est)


@dataclass
class SlopeResult:
    """Slope of log(optimal max_lr) against ``x`` (e.g. sparsity or round), with its CI."""

    slope: float
    lo: float
    hi: float
    verdict: str  # "rises" | "flat" | "falls"
    factor_per_unit: float  # exp(slope): the optimum's multiplier per unit of x
    x_name: str = "x"
    level: float = 0.95
    n_rounds: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def sentence(self) -> str:
        lo, hi = math.exp(self.lo), math.exp(self.hi)
        return (f"optimal max_lr {self.verdict} with {self.x_name}: x{self.factor_per_unit:.3g} per unit "
                f"({self.level:.0%} CI x{lo:.3g} .. x{hi:.3g}, {self.n_rounds} rounds)")


def slope_test(x: Sequence[float], boot_log_opt: Sequence[np.ndarray], *, level: float = 0.95,
               x_name: str = "x", point_log_opt: Optional[Sequence[float]] = None) -> SlopeResult:
    """OLS slope of log(optimum) on ``x`` over rounds (of ``point_log_opt``, else the median over
    replicates), each round's optimum resampled from its bootstrap replicates (rounds are
    independent), and the slope's percentile CI over replicates. Use interior optima only.
    "rises" / "falls": the CI excludes 0 on that side; "flat": it includes 0."""
    x = np.asarray(x, float)
    if len(x) != len(boot_log_opt) or len(x) < 3:
        raise GradscopeError("the slope test needs the optimum of at least 3 rounds")
    if np.ptp(x) == 0:
        raise GradscopeError(f"the slope test needs rounds with different {x_name}")
    B = min(len(b) for b in boot_log_opt)
    Y = np.stack([np.asarray(b, float)[:B] for b in boot_log_opt], axis=1)  # [B, rounds]
    xc = x - x.mean()
    slopes = (Y - Y.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)
    point = float(np.median(slopes)) if point_log_opt is None else \
        float(np.asarray(point_log_opt, float) @ xc / (xc @ xc))
    a = (1 - level) / 2
    lo, hi = (float(v) for v in np.quantile(slopes, [a, 1 - a]))
    verdict = "rises" if lo > 0 else "falls" if hi < 0 else "flat"
    return SlopeResult(point, lo, hi, verdict, math.exp(point), x_name, level, len(x))
