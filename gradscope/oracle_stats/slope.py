"""Does the best max_lr move with sparsity? The slope of log(optimum) on sparsity, with a CI.

Within one trajectory (one pruning seed) ``slope_test`` bootstraps the OLS slope by pairing
each round's bootstrap replicates (rounds are independent): its CI covers the Oracle's
within-round noise only. Across trajectories ``slope_over_trajectories`` treats each
trajectory's slope as the configuration's slope plus a trajectory effect (a random-slope
model) and combines the per-trajectory slopes as a random-effects meta-analysis:
DerSimonian-Laird between-trajectory variance, Hartung-Knapp(-Sidik-Jonkman) variance with
the max(1, q) safeguard, Student-t quantile with T-1 degrees of freedom. Why this and not a
bootstrap over trajectories: see docs/method.md, "The Oracle's statistics".
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy import stats

from gradscope import GradscopeError
from gradscope.oracle_stats.round import OptimumEstimate, fit_optimum


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


def _centred(x: np.ndarray) -> np.ndarray:
    """OLS slope weights c with slope = c @ y."""
    xc = x - x.mean()
    return xc / (xc @ xc)


def slope_test(x: Sequence[float], boot_log_opt: Sequence[np.ndarray], *, level: float = 0.95,
               x_name: str = "x", point_log_opt: Optional[Sequence[float]] = None) -> SlopeResult:
    """OLS slope of log(optimum) on ``x`` over rounds (of ``point_log_opt``, else the median over
    replicates), each round's optimum resampled from its bootstrap replicates (rounds are
    independent), and the slope's percentile CI over replicates. Use interior optima only.
    "rises" / "falls": the CI excludes 0 on that side; "flat": it includes 0. One trajectory:
    the CI does not include the spread between trajectories (``slope_over_trajectories``)."""
    x = np.asarray(x, float)
    if len(x) != len(boot_log_opt) or len(x) < 3:
        raise GradscopeError("the slope test needs the optimum of at least 3 rounds")
    if np.ptp(x) == 0:
        raise GradscopeError(f"the slope test needs rounds with different {x_name}")
    B = min(len(b) for b in boot_log_opt)
    Y = np.stack([np.asarray(b, float)[:B] for b in boot_log_opt], axis=1)  # [B, rounds]
    c = _centred(x)
    slopes = Y @ c
    point = float(np.median(slopes)) if point_log_opt is None else float(np.asarray(point_log_opt, float) @ c)
    a = (1 - level) / 2
    lo, hi = (float(v) for v in np.quantile(slopes, [a, 1 - a]))
    verdict = "rises" if lo > 0 else "falls" if hi < 0 else "flat"
    return SlopeResult(point, lo, hi, verdict, math.exp(point), x_name, level, len(x))


# ----------------------------------------------------------------------------- trajectories
@dataclass
class Trajectory:
    """One pruning trajectory's rounds with an interior optimum: sparsity ``x``, the point log
    optimum, its bootstrap replicates ``boots[B, rounds]`` and each round's bootstrap variance
    of log(optimum), split into the validation examples' share and the seeds' share."""

    name: str
    x: np.ndarray
    point: np.ndarray
    boots: np.ndarray
    var_examples: np.ndarray
    var_seeds: np.ndarray  # NaN where one seed was run (the seeds' share is then unknown)
    n_seeds: int
    skipped: int = 0  # rounds left out (edge or flat optimum)

    @property
    def usable(self) -> bool:
        return len(self.x) >= 3 and np.ptp(self.x) > 0

    def slope(self) -> float:
        return float(self.point @ _centred(self.x))

    def replicate_slopes(self) -> np.ndarray:
        return self.boots @ _centred(self.x)

    def within_var(self, seeds: Optional[float] = None, val_factor: float = 1.0) -> float:
        """Variance of this trajectory's slope from within-round noise, with ``seeds`` seeds per
        candidate (default: as run; ``math.inf``: the validation examples' share alone) and
        ``val_factor`` times the validation examples:
        Σ c_r² (var_examples_r / val_factor + var_seeds_r · n_seeds / seeds)."""
        c2 = _centred(self.x) ** 2
        vs = np.nan_to_num(self.var_seeds, nan=0.0)
        s = self.n_seeds if seeds is None else seeds
        return float(c2 @ (self.var_examples / val_factor + vs * self.n_seeds / s))


def trajectory(name: str, sparsity: Sequence[float], estimates: Sequence[OptimumEstimate]) -> Trajectory:
    """A ``Trajectory`` from one Oracle run's per-round estimates (interior rounds kept)."""
    if len(sparsity) != len(estimates):
        raise GradscopeError(f"trajectory {name!r}: {len(sparsity)} sparsities for {len(estimates)} rounds")
    keep = [i for i, e in enumerate(estimates) if e.status == "interior"]
    if not keep:
        return Trajectory(name, np.zeros(0), np.zeros(0), np.zeros((1, 0)), np.zeros(0), np.zeros(0),
                          max((e.n_seeds for e in estimates), default=0), len(estimates))
    for i in keep:
        if estimates[i].boot_log_opt is None:
            raise GradscopeError(f"trajectory {name!r}: round {i} has no bootstrap replicates")
    B = min(len(estimates[i].boot_log_opt) for i in keep)
    return Trajectory(
        name, np.asarray([sparsity[i] for i in keep], float),
        np.log([estimates[i].optimum for i in keep]),
        np.stack([np.asarray(estimates[i].boot_log_opt, float)[:B] for i in keep], axis=1),
        np.asarray([estimates[i].var_log_opt.get("examples", np.nan) for i in keep], float),
        np.asarray([estimates[i].var_log_opt.get("seeds", np.nan) for i in keep], float),
        int(min(estimates[i].n_seeds for i in keep)), len(estimates) - len(keep))


def trajectory_from_correct(name: str, sparsity: Sequence[float], grids: Sequence[Sequence[float]],
                            corrects: Sequence[np.ndarray], *, n_boot: int = 1000, seed: int = 0) -> Trajectory:
    """A ``Trajectory`` from raw per-round correctness arrays ``correct[g, s, i]`` (``fit_optimum``
    per round, round r with bootstrap seed ``seed + r``)."""
    est = [fit_optimum(g, c, n_boot=n_boot, seed=seed + r) for r, (g, c) in enumerate(zip(grids, corrects))]
    return trajectory(name, sparsity, est)


@dataclass
class SlopeCI:
    """The slope of log(optimum) on sparsity for one configuration, and what its CI covers.

    ``scope``: "over trajectories" (random-slope model across T >= 2 pruning seeds: the CI
    includes the spread between trajectories) or "within-trajectory only" (one trajectory:
    within-round noise only). ``tau2``: between-trajectory variance of the slope (NaN with one
    trajectory); ``within_var``: the mean within-trajectory variance of a trajectory's slope."""

    slope: float
    lo: float
    hi: float
    level: float
    scope: str
    n_trajectories: int
    n_rounds: int
    tau2: float
    within_var: float
    dof: Optional[int]
    per_trajectory: list = field(default_factory=list)  # (name, slope, within-trajectory SE)
    skipped: list = field(default_factory=list)  # trajectories with < 3 interior rounds
    x_name: str = "sparsity"

    @property
    def factor(self) -> float:
        return math.exp(self.slope)

    def to_dict(self) -> dict:
        return asdict(self)

    def sentence(self) -> str:
        """One labelled line: the factor per unit of x, its CI, level, scope."""
        if self.scope == "over trajectories":
            scope = (f"over {self.n_trajectories} trajectories (pruning seeds), random-slope model, "
                     f"t with {self.dof} dof; {self.n_rounds} interior rounds")
        else:
            scope = (f"within-trajectory only: 1 trajectory, {self.n_rounds} interior rounds; "
                     f"the spread between pruning seeds is not in this CI")
        return (f"slope of log(optimum max_lr) on {self.x_name}: x{self.factor:.3g} per unit "
                f"({self.level:.0%} CI x{math.exp(self.lo):.3g} .. x{math.exp(self.hi):.3g}; {scope})")


def random_effects(est: Sequence[float], var: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """Random-effects combination of T >= 2 estimates with within variances ``var``: DerSimonian-
    Laird tau², Hartung-Knapp variance with the max(1, q) safeguard, t quantile with T-1 dof.
    Returns (estimate, lo, hi, tau²)."""
    b = np.asarray(est, float)
    v = np.maximum(np.asarray(var, float), 1e-12)
    T = len(b)
    if T < 2:
        raise GradscopeError("a random-effects combination needs at least 2 trajectories")
    w = 1 / v
    fixed = (w @ b) / w.sum()
    Q = float(w @ (b - fixed) ** 2)
    tau2 = max(0.0, (Q - (T - 1)) / (w.sum() - (w ** 2).sum() / w.sum()))
    ws = 1 / (v + tau2)
    mu = float((ws @ b) / ws.sum())
    q = float(ws @ (b - mu) ** 2) / (T - 1)
    se = math.sqrt(max(q, 1.0) / ws.sum())
    t = float(stats.t.ppf(1 - (1 - level) / 2, T - 1))
    return mu, mu - t * se, mu + t * se, tau2


def slope_over_trajectories(trajs: Sequence[Trajectory], *, level: float = 0.95) -> SlopeCI:
    """The configuration's slope of log(optimum) on sparsity from one or more trajectories.

    T >= 2 usable trajectories (>= 3 interior rounds at distinct sparsities each):
    ``random_effects`` of the per-trajectory OLS slopes with their bootstrap variances, so the
    CI includes the between-trajectory spread. One: ``slope_test``'s percentile CI, labelled
    "within-trajectory only"."""
    if not 0 < level < 1:
        raise GradscopeError(f"level must be in (0, 1), got {level}")
    ok = [t for t in trajs if t.usable]
    skipped = [t.name for t in trajs if not t.usable]
    if not ok:
        raise GradscopeError("the slope test needs at least one trajectory with 3 or more rounds with an interior "
                             f"optimum at different sparsities; got {len(trajs)} "
                             f"{'trajectory' if len(trajs) == 1 else 'trajectories'} without one")
    slopes = [t.slope() for t in ok]
    within = [float(np.var(t.replicate_slopes(), ddof=1)) for t in ok]
    per = [(t.name, s, math.sqrt(v)) for t, s, v in zip(ok, slopes, within)]
    rounds = int(sum(len(t.x) for t in ok))
    if len(ok) == 1:
        t = ok[0]
        r = slope_test(t.x, list(t.boots.T), level=level, x_name="sparsity", point_log_opt=t.point)
        return SlopeCI(r.slope, r.lo, r.hi, level, "within-trajectory only", 1, rounds, float("nan"),
                       within[0], None, per, skipped)
    mu, lo, hi, tau2 = random_effects(slopes, within, level)
    return SlopeCI(mu, lo, hi, level, "over trajectories", len(ok), rounds, tau2, float(np.mean(within)),
                   len(ok) - 1, per, skipped)
