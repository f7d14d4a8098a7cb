"""Verdicts on the Oracle's slope against two hypotheses: flat (x1 per unit of sparsity) and
SILO's own rise (the released preset's slope over the same sparsities).

A CI that includes both says "cannot tell": the study did not detect a rise, and could not
have told SILO's from none. The two null hypotheses exclude each other (SILO's slope is not
0), so per configuration at most one can be wrongly rejected: testing both needs no
correction. Across m configurations each CI is taken at level 1 - (1 - level)/m (Bonferroni),
and the family size is printed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from gradscope import GradscopeError
from gradscope.oracle_stats.slope import SlopeCI, Trajectory, slope_over_trajectories

VERDICTS = ("excludes flat", "excludes SILO's rise", "excludes both", "cannot tell")


def silo_max_lr(sparsity: Sequence[float], prune_rate: float = 0.2, preset: str = "resnet20") -> np.ndarray:
    """The SILO preset's max_lr at rounds of these sparsities: its S-curve at the pruned fraction
    of the previous round (lag 1), ``x = 1 - (1 - s)/(1 - p)`` (0 for the first two rounds)."""
    from gradscope.schedules.curves import s_curve  # noqa: PLC0415 - gradscope.schedules imports torch
    from gradscope.schedules.factories import SILO_PRESETS  # noqa: PLC0415

    if preset not in SILO_PRESETS:
        raise GradscopeError(f"unknown SILO preset {preset!r} (presets: {', '.join(sorted(SILO_PRESETS))})")
    if not 0 < prune_rate < 1:
        raise GradscopeError(f"prune rate must be in (0, 1), got {prune_rate}")
    p = SILO_PRESETS[preset]
    s = np.asarray(sparsity, float)
    lag = int(p["lag"])
    x = 1 - (1 - s) / (1 - prune_rate) ** lag  # pruned fraction `lag` rounds earlier
    x = np.where(x < 1e-9, 0.0, x)
    return np.asarray(s_curve(x, p["lo"], p["hi"], p["beta"], p["midpoint"]), float).reshape(s.shape)


def silo_reference_slope(sparsity: Sequence[float], prune_rate: float = 0.2, preset: str = "resnet20") -> float:
    """OLS slope of log(SILO preset max_lr) on sparsity over these sparsities (rounds 0-6 at
    p = 0.2: log 3.30, i.e. x3.30 per unit of sparsity)."""
    s = np.asarray(sparsity, float)
    if len(s) < 2 or np.ptp(s) == 0:
        raise GradscopeError("SILO's reference slope needs rounds at 2 or more different sparsities")
    xc = s - s.mean()
    return float(np.log(silo_max_lr(s, prune_rate, preset)) @ xc / (xc @ xc))


def reference_slope(trajs: Sequence[Trajectory], prune_rate: float = 0.2, preset: str = "resnet20") -> float:
    """SILO's slope over the sparsities the slope was fitted on: per usable trajectory over its
    interior rounds, averaged."""
    vals = [silo_reference_slope(t.x, prune_rate, preset) for t in trajs if t.usable]
    if not vals:
        raise GradscopeError("no trajectory with 3 interior rounds to compare SILO's rise with")
    return float(np.mean(vals))


def verdict(lo: float, hi: float, reference: float) -> str:
    """One of ``VERDICTS`` for a CI [lo, hi] of the slope."""
    flat = lo > 0 or hi < 0
    silo = lo > reference or hi < reference
    return "excludes both" if flat and silo else "excludes flat" if flat else \
        "excludes SILO's rise" if silo else "cannot tell"


@dataclass
class Verdict:
    """A configuration's slope CI judged against flat and SILO's rise."""

    name: str
    ci: SlopeCI
    reference: float  # SILO preset's slope over the same sparsities
    preset: str
    family: int  # configurations tested together
    nominal: float  # the family's level; ci.level = 1 - (1 - nominal)/family

    @property
    def verdict(self) -> str:
        return verdict(self.ci.lo, self.ci.hi, self.reference)

    def sentence(self) -> str:
        """The verdict with what it was judged against and the multiplicity."""
        where = "above" if self.ci.lo > 0 else "below" if self.ci.hi < 0 else None
        detail = {"excludes flat": f"the optimum {'rises' if where == 'above' else 'falls'} with sparsity, "
                                   f"at a rate consistent with SILO's",
                  "excludes SILO's rise": "consistent with a flat optimum, not with SILO's rise",
                  "excludes both": ("the optimum rises, " + ("less than" if self.ci.hi < self.reference else
                                                            "more than") + " SILO's preset" if where == "above"
                                    else "the optimum falls with sparsity"),
                  "cannot tell": "the CI holds both a flat optimum and SILO's rise"}[self.verdict]
        fam = (f"family of {self.family} configurations, Bonferroni: each CI at {self.ci.level:.4g}"
               if self.family > 1 else "1 configuration, no multiplicity adjustment")
        return (f"verdict: {self.verdict} ({detail}; flat = x1, SILO preset {self.preset} over these sparsities = "
                f"x{math.exp(self.reference):.3g} per unit; {fam})")

    def row(self) -> dict:
        return {"configuration": self.name, "slope": self.ci.slope, "factor": self.ci.factor,
                "factor_lo": math.exp(self.ci.lo), "factor_hi": math.exp(self.ci.hi), "level": self.ci.level,
                "scope": self.ci.scope, "trajectories": self.ci.n_trajectories, "rounds": self.ci.n_rounds,
                "silo_factor": math.exp(self.reference), "verdict": self.verdict, "family": self.family}


def judge(configs: Mapping[str, Sequence[Trajectory]], *, level: float = 0.95, prune_rate: float = 0.2,
          preset: str = "resnet20") -> list[Verdict]:
    """Verdicts for every configuration (name -> its trajectories), each CI at the Bonferroni
    level 1 - (1 - level)/m for m configurations."""
    if not configs:
        raise GradscopeError("no configuration to judge")
    m = len(configs)
    each = 1 - (1 - level) / m
    return [Verdict(name, slope_over_trajectories(trajs, level=each), reference_slope(trajs, prune_rate, preset),
                    preset, m, level) for name, trajs in configs.items()]


def verdict_table(verdicts: Sequence[Verdict]):
    """The verdicts as a DataFrame (one row per configuration)."""
    import pandas as pd  # noqa: PLC0415

    return pd.DataFrame([v.row() for v in verdicts])
