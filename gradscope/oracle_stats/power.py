"""How many trajectories x seeds would tell SILO's rise (x3.3 per unit of sparsity) from a flat
optimum (x1) with 80 % power, from the variances the Oracle measured.

Model (docs/method.md): a trajectory's slope = the configuration's slope + a trajectory effect
(variance tau², estimated across trajectories) + within-trajectory noise, whose variance is
Σ_r c_r² (v_examples,r · N0/N + v_seeds,r · S0/S) for S seeds per candidate and N validation
examples (c_r: the OLS weights of the rounds' sparsities; v: each round's bootstrap variance of
log(optimum), split into the validation examples' share and the seeds' share measured at S0
seeds and N0 examples). The test is the
across-trajectory t test (T - 1 dof) of the analysis; its power is exact under normality
(noncentral t).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import stats

from gradscope import GradscopeError
from gradscope.oracle_stats.slope import Trajectory

POWER_FACTOR = 3.3  # SILO's preset rise per unit of sparsity over rounds 0-6 at p = 0.2 (issue 19)
SEED_OPTIONS = (1, 2, 3, 4, 6, 8, 12, 16)
MAX_TRAJECTORIES = 1000
VAL_FACTOR = 4  # the power line also says what 4x the validation examples would need


def t_test_power(effect: float, se1: float, T: np.ndarray, alpha: float) -> np.ndarray:
    """Power of the two-sided t test (T-1 dof) of a mean over T trajectories whose slopes have
    standard deviation ``se1`` each, at true difference ``effect``."""
    T = np.asarray(T, float)
    df = T - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect / (se1 / np.sqrt(T))
    return stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)


def trajectories_needed(effect: float, se1: float, alpha: float = 0.05, power: float = 0.8) -> Optional[int]:
    """The least T >= 2 with that power (None: more than MAX_TRAJECTORIES)."""
    if not se1 > 0:  # no noise at all: two trajectories tell any effect
        return 2
    T = np.arange(2, MAX_TRAJECTORIES + 1)
    ok = np.nonzero(t_test_power(effect, se1, T, alpha) >= power)[0]
    return int(T[ok[0]]) if len(ok) else None


@dataclass
class PowerLine:
    """What the measured variances say about the design needed (see module docstring)."""

    factor: float
    power: float
    alpha: float
    tau2: float  # between-trajectory variance of the slope (NaN: unknown, taken as 0)
    within_sd: float  # within-trajectory SD of one trajectory's slope at the seeds run
    examples_sd: float  # the validation examples' share alone (no seed can remove it)
    seeds_run: int
    needed: dict  # seeds -> trajectories needed (None: > MAX_TRAJECTORIES)
    needed_more_val: Optional[int] = None  # at the seeds run with VAL_FACTOR x the validation examples

    def best(self) -> tuple[int, Optional[int]]:
        """(seeds, trajectories) with the fewest candidate trainings (trajectories x seeds)."""
        ok = [(t * s, s, t) for s, t in self.needed.items() if t is not None]
        if not ok:
            return self.seeds_run, None
        _, s, t = min(ok)
        return s, t

    def sentence(self) -> str:
        """The power line printed with every Oracle summary."""
        s, t = self.best()
        here = self.needed.get(self.seeds_run)
        plural = "trajectory" if t == 1 else "trajectories"
        design = (f"{t} {plural} x {s} seed{'s' if s != 1 else ''}" if t is not None
                  else f"more than {MAX_TRAJECTORIES} trajectories at any seed count")
        at_run = (f"; at {self.seeds_run} seed{'s' if self.seeds_run != 1 else ''}: "
                  f"{here if here is not None else f'> {MAX_TRAJECTORIES}'} trajectories") if s != self.seeds_run else ""
        tau = ("between-trajectory variance unknown with 1 trajectory, taken as 0, so this is a lower bound"
               if math.isnan(self.tau2) else f"between-trajectory SD of the slope {math.sqrt(self.tau2):.3g} (DerSimonian-Laird estimate)")
        seeds = (" (1 seed run: the seeds' share is unknown and taken as 0)" if self.seeds_run == 1 else "")
        val = self.needed_more_val
        more_val = (f"; with {VAL_FACTOR}x the validation examples at {self.seeds_run} seed"
                    f"{'s' if self.seeds_run != 1 else ''}: "
                    f"{val if val is not None else f'> {MAX_TRAJECTORIES}'} trajectories") if val != here else ""
        return (f"power: telling x{self.factor:.3g} from x1 per unit sparsity with {self.power:.0%} power "
                f"(two-sided {self.alpha:.3g}) needs {design}{at_run}{more_val} [{tau}; within-trajectory SD of a "
                f"trajectory's slope {self.within_sd:.3g} at {self.seeds_run} seed{'s' if self.seeds_run != 1 else ''}, "
                f"validation examples alone {self.examples_sd:.3g}{seeds}; slopes in log max_lr per unit sparsity]")


def power_line(trajs: Sequence[Trajectory], tau2: float, *, factor: float = POWER_FACTOR, alpha: float = 0.05,
               power: float = 0.8, seed_options: Sequence[int] = SEED_OPTIONS) -> PowerLine:
    """The design needed to tell ``factor`` per unit of sparsity from x1, from the measured
    within-trajectory variances of ``trajs`` (their rounds' sparsities and bootstrap variance
    split) and the between-trajectory variance ``tau2`` (NaN with one trajectory: taken as 0)."""
    ok = [t for t in trajs if t.usable]
    if not ok:
        raise GradscopeError("the power line needs a trajectory with 3 or more interior rounds")
    if not (factor > 0 and 0 < power < 1 and 0 < alpha < 1):
        raise GradscopeError(f"bad power settings: factor {factor}, power {power}, alpha {alpha}")
    S0 = int(min(t.n_seeds for t in ok))
    tau = 0.0 if math.isnan(tau2) else float(tau2)
    effect = math.log(factor)
    needed = {}
    for s in sorted(set(seed_options) | {S0}):
        w = float(np.mean([t.within_var(s) for t in ok]))
        needed[int(s)] = trajectories_needed(effect, math.sqrt(tau + w), alpha, power)
    within = float(np.mean([t.within_var() for t in ok]))
    examples = float(np.mean([t.within_var(math.inf) for t in ok]))  # infinitely many seeds
    more_val = trajectories_needed(effect, math.sqrt(tau + float(np.mean([t.within_var(None, VAL_FACTOR) for t in ok]))),
                                   alpha, power)
    return PowerLine(factor, power, alpha, float(tau2), math.sqrt(within), math.sqrt(examples), S0, needed, more_val)
