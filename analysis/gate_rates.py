"""Operating characteristics of the calibration gate (docs/method.md, "The calibration gate").

False-"supported" rate on pruning-only null runs (surviving gradients unchanged, only density
changes, log-normal noise per round) and power on runs whose surviving gradients narrow so
that max_lr should rise by a factor per unit of pruned fraction, for the all-weights view
(sqrt(density) removed by the gate) and the survivors view, beside the old whole-rise test.

    python analysis/gate_rates.py      # -> analysis/results/calibration/gate_rates.csv (and prints it)
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from gradscope.calibrate.gate import gate_status
from gradscope.schedules.curves import planned_pruned_fraction

OUT = Path(__file__).resolve().parent / "results" / "calibration" / "gate_rates.csv"
P, N_SIM = 0.2, 4000


def simulate(K: int, noise: float, rise: float, rng) -> tuple:
    x = np.asarray(planned_pruned_fraction(np.arange(K), P, 1), float)
    dens = (1 - P) ** np.arange(K)
    log_surv = -rise * x[None, :] + rng.normal(0, noise, (N_SIM, K))
    log_surv -= log_surv[:, :1]
    return x, -log_surv, -(log_surv + 0.5 * np.log(dens)), -0.5 * np.log(dens)


def old_rule(x, Y) -> np.ndarray:
    """The pre-gate rule: the whole implied rise's slope CI above 0 (no density split, no margin)."""
    return gate_status(x, Y, np.zeros(len(x)), min_dof=1, min_rise=0.0)


def main() -> pd.DataFrame:
    rng = np.random.default_rng(20261201)
    rows = []
    for K in (6, 8, 10):
        for noise in (0.0, 0.01, 0.03, 0.05, 0.10):
            for factor in (1.0, 1.5, 3.3):
                x, li_s, li_a, dp = simulate(K, noise, math.log(factor), rng)
                rows.append({"rounds": K, "noise_per_round": noise, "true_factor_per_unit_x": factor,
                             "supported_view_all": float(np.mean(gate_status(x, li_a, dp) == "supported")),
                             "supported_view_survivors": float(np.mean(gate_status(x, li_s, np.zeros(K)) == "supported")),
                             "old_rule_supported_view_all": float(np.mean(old_rule(x, li_a) == "supported")),
                             "simulations": N_SIM})
    df = pd.DataFrame(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(OUT, index=False)
    print(df.to_string(index=False))
    return df


if __name__ == "__main__":
    main()
