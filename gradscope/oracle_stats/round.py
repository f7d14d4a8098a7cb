"""One round's best ``max_lr``: the optimum of an accuracy grid with a paired bootstrap CI.

``fit_optimum`` takes, for one round, per-example validation correctness of every candidate
(grid value x seed) and returns the optimum of the local quadratic of mean accuracy against
log(max_lr) through the grid argmax and its two neighbours, with a bootstrap CI, beside the
grid argmax and the SILO papers' "optimal interval". ``fitted_accuracy`` evaluates the same
fitted curve at any max_lr (what regret scoring needs).

Resampling (docs/method.md, "The Oracle's statistics"): validation examples with replacement
(paired across candidates: every candidate is scored on the same examples) and the seeds as
whole rows across the grid (paired: a candidate seed has the same data order at every max_lr,
so its deviations at neighbouring grid values correlate). The replicates' mean-accuracy
curves are kept (``boot_acc``) so that anything computed from the fitted curve carries the
Oracle's uncertainty. An optimum at the edge of the grid is reported as a bound (status
"edge-low"/"edge-high"), never as a value.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np

from gradscope import GradscopeError

WINDOW = 1  # grid neighbours each side of the argmax: three-point parabolic interpolation of the peak
_CHUNK = 4_000_000  # bootstrap: replicates x examples per chunk (bounds memory, not results)


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
    boot_acc: Optional[np.ndarray] = field(default=None, repr=False)  # [replicates, grid] mean-accuracy curves
    n_seeds: int = 0
    n_val: int = 0
    var_log_opt: dict = field(default_factory=dict)  # bootstrap variance of log(optimum): total, examples, seeds
    resampling: str = "paired seeds (whole rows across max_lr) and validation examples"

    @property
    def grid(self) -> np.ndarray:
        return np.array(sorted(self.mean_acc), float)

    @property
    def note(self) -> str:
        """What the CI does not cover (empty when nothing is left out)."""
        if self.n_seeds == 1:
            return "1 seed: the CI covers validation-example noise only, not training (seed) noise"
        return ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("boot_log_opt")
        d.pop("boot_acc")
        d["interval"] = list(self.interval)
        d["mean_acc"] = {f"{k:.6g}": v for k, v in self.mean_acc.items()}
        d["se_acc"] = {f"{k:.6g}": v for k, v in self.se_acc.items()}
        d["note"] = self.note
        return d


def _parabola(logx: np.ndarray, y: np.ndarray):
    """Per row of ``y[..., G]``: the argmax ``i`` and the quadratic through grid points i-1, i, i+1
    (coefficients a, b, c of a·u² + b·u + c in u = log max_lr); ``ok`` where that quadratic
    exists (i interior) and is concave."""
    G = y.shape[-1]
    i = np.argmax(y, axis=-1)
    j = np.clip(i, 1, G - 2)[..., None]
    x0, x1, x2 = logx[j[..., 0] - 1], logx[j[..., 0]], logx[j[..., 0] + 1]
    y0 = np.take_along_axis(y, j - 1, -1)[..., 0]
    y1 = np.take_along_axis(y, j, -1)[..., 0]
    y2 = np.take_along_axis(y, j + 1, -1)[..., 0]
    d0, d1 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
    a = (d1 - d0) / (x2 - x0)
    b = d0 - a * (x0 + x1)
    c = y0 - a * x0 ** 2 - b * x0
    ok = (i > 0) & (i < G - 1) & (a < 0)
    return i, a, b, c, ok, x0, x2


def local_optimum(logx: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log max_lr of the optimum of each accuracy curve ``y[..., G]`` and the fitted accuracy there:
    the vertex of the concave quadratic through the argmax and its neighbours when it lies in
    that window, else the argmax (an edge, or a flat top)."""
    logx = np.asarray(logx, float)
    y = np.asarray(y, float)
    i, a, b, c, ok, x0, x2 = _parabola(logx, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = -b / (2 * a)
        top = c - b ** 2 / (4 * a)
    ok = ok & (v >= x0) & (v <= x2)
    ymax = np.take_along_axis(y, i[..., None], -1)[..., 0]
    return np.where(ok, v, logx[i]), np.where(ok, top, ymax)


def fitted_accuracy(logx: np.ndarray, y: np.ndarray, log_lr: float) -> tuple[np.ndarray, bool]:
    """The fitted accuracy of each curve ``y[..., G]`` at log max_lr ``log_lr``, and whether
    ``log_lr`` lies outside the grid (then it is clamped to the nearest end).

    Inside the argmax window the curve is the same local quadratic that defines the optimum;
    elsewhere it is linear interpolation in log max_lr between grid values (the two agree at
    the window's ends, where the quadratic passes through the grid values)."""
    logx = np.asarray(logx, float)
    y = np.asarray(y, float)
    outside = bool(log_lr < logx[0] - 1e-12 or log_lr > logx[-1] + 1e-12)
    q = float(np.clip(log_lr, logx[0], logx[-1]))
    G = len(logx)
    j = int(np.clip(np.searchsorted(logx, q, side="right") - 1, 0, G - 2))
    t = (q - logx[j]) / (logx[j + 1] - logx[j])
    lin = y[..., j] * (1 - t) + y[..., j + 1] * t
    _, a, b, c, ok, x0, x2 = _parabola(logx, y)
    quad = a * q ** 2 + b * q + c
    return np.where(ok & (q >= x0) & (q <= x2), quad, lin), outside


def _interval(grid: np.ndarray, mean: np.ndarray, n_val: int) -> tuple[float, float]:
    """SILO's optimal interval: grid values within one SE of a difference of two binomial
    proportions of the best, ``acc_best - acc <= sqrt(2 p (1-p) / n_val)``."""
    i = int(np.argmax(mean))
    p = float(mean[i])
    noise = math.sqrt(2 * p * (1 - p) / max(n_val, 1))
    inside = grid[mean >= p - noise - 1e-12]
    return float(inside.min()), float(inside.max())


def check_grid(grid: Sequence[float]) -> np.ndarray:
    """The grid as an array: at least 3 values, positive, increasing (else one clear error)."""
    g = np.asarray(grid, float)
    if g.ndim != 1 or len(g) < 3:
        raise GradscopeError("the Oracle needs at least 3 grid values to locate an optimum")
    if np.any(np.diff(g) <= 0) or g[0] <= 0:
        raise GradscopeError("grid values must be positive and increasing")
    return g


def fit_optimum(grid: Sequence[float], correct: np.ndarray, *, n_boot: int = 1000, level: float = 0.95,
                seed: int = 0, paired: bool = True) -> OptimumEstimate:
    """Optimum of one round from ``correct[g, s, i]`` (bool: candidate at ``grid[g]`` with seed ``s``
    classified validation example ``i`` correctly). ``grid`` is sorted, positive, distinct.

    ``paired=False`` resamples the seeds independently at each grid value (the method before
    paired seeds, kept only to measure what pairing changes: it is wrong when seeds share data orders)."""
    grid = np.asarray(grid, float)
    c = np.asarray(correct)
    if c.ndim != 3 or c.shape[0] != len(grid):
        raise GradscopeError(f"correct must be [grid values, seeds, examples], got shape {c.shape} for {len(grid)} grid values")
    grid = check_grid(grid)
    if not 0 < level < 1:
        raise GradscopeError(f"level must be in (0, 1), got {level}")
    if int(n_boot) != n_boot or n_boot < 2:
        raise GradscopeError(f"the bootstrap needs at least 2 replicates, got {n_boot}")
    G, S, N = c.shape
    if N < 1 or S < 1:
        raise GradscopeError("no validation examples or no seeds to estimate the optimum from")
    flat = c.reshape(G * S, N).astype(np.float64)
    logx = np.log(grid)
    mean = flat.mean(axis=1).reshape(G, S).mean(axis=1)
    rng = np.random.default_rng(seed)
    boot_acc = np.empty((n_boot, G))
    ex_acc = np.empty((n_boot, G))  # examples resampled, every seed kept: the examples' share
    step = max(1, _CHUNK // N)
    inflate = math.sqrt(S / (S - 1)) if S > 1 else 1.0
    for b0 in range(0, n_boot, step):
        b1 = min(n_boot, b0 + step)
        draw = rng.integers(0, N, (b1 - b0, N)) + N * np.arange(b1 - b0)[:, None]
        w = np.bincount(draw.ravel(), minlength=(b1 - b0) * N).reshape(b1 - b0, N) / N  # example weights
        acc = (w @ flat.T).reshape(b1 - b0, G, S)
        ex_acc[b0:b1] = acc.mean(axis=2)
        if paired:  # one draw of seeds per replicate, the same row at every grid value
            pick = np.broadcast_to(rng.integers(0, S, (b1 - b0, 1, S)), acc.shape)
        else:
            pick = rng.integers(0, S, acc.shape)
        seeds_mean = np.take_along_axis(acc, pick, axis=2).mean(axis=2)
        # a mean of S resampled seeds varies (S-1)/S times as much as the mean of S new ones
        boot_acc[b0:b1] = ex_acc[b0:b1] + inflate * (seeds_mean - ex_acc[b0:b1])
    boots, _ = local_optimum(logx, boot_acc)
    ex_boots, _ = local_optimum(logx, ex_acc)
    boot_argmax = np.argmax(boot_acc, axis=1)
    se = boot_acc.std(axis=0, ddof=1)
    i = int(np.argmax(mean))
    interval = _interval(grid, mean, N)
    v_tot, v_ex = float(np.var(boots, ddof=1)), float(np.var(ex_boots, ddof=1))
    est = dict(argmax=float(grid[i]), interval=interval, level=level,
               mean_acc={float(g): float(m) for g, m in zip(grid, mean)},
               se_acc={float(g): float(s) for g, s in zip(grid, se)}, boot_log_opt=boots, boot_acc=boot_acc,
               n_seeds=S, n_val=N, var_log_opt={"total": v_tot, "examples": v_ex,
                                                "seeds": max(0.0, v_tot - v_ex) if S > 1 else float("nan")},
               resampling=("paired seeds (whole rows across max_lr) and validation examples" if paired else
                           "seeds per max_lr (unpaired) and validation examples"))
    a = (1 - level) / 2
    p_low, p_high = float(np.mean(boot_argmax == 0)), float(np.mean(boot_argmax == G - 1))
    if (p_low > a and p_high > a) or (interval[0] <= grid[0] and interval[1] >= grid[-1]):
        return OptimumEstimate("flat", None, None, None, **est)
    if i == 0 or i == G - 1:
        return OptimumEstimate("edge-low" if i == 0 else "edge-high", None, None, None, **est)
    if p_low > a or p_high > a:  # the best may lie at or beyond an end: a bound only
        return OptimumEstimate("edge-low" if p_low > a else "edge-high", None, None, None, **est)
    lo, hi = np.quantile(boots, [a, 1 - a])
    point = float(local_optimum(logx, mean)[0])
    return OptimumEstimate("interior", math.exp(point), float(math.exp(lo)), float(math.exp(hi)), **est)
