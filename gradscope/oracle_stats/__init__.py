"""The Oracle's statistics, one idea per module (docs/method.md, "The Oracle's statistics").

* ``round``: one round's optimum of an accuracy grid, paired bootstrap over seeds and
  validation examples; the fitted accuracy at any max_lr.
* ``slope``: slope of log(optimum) on sparsity, within one trajectory or over several
  (random-slope model).
* ``verdict``: the slope against flat and SILO's preset rise; multiplicity over configurations.
* ``power``: trajectories x seeds needed to tell x3.3 from x1 per unit of sparsity.
* ``regret``: predictors scored by accuracy lost on the Oracle's fitted curve.
"""
from gradscope.oracle_stats.power import POWER_FACTOR, PowerLine, power_line
from gradscope.oracle_stats.regret import OracleRound, round_regrets, score_predictions
from gradscope.oracle_stats.round import OptimumEstimate, fit_optimum, fitted_accuracy, local_optimum
from gradscope.oracle_stats.slope import (SlopeCI, SlopeResult, Trajectory, random_effects, slope_over_trajectories,
                                          slope_test, trajectory, trajectory_from_correct)
from gradscope.oracle_stats.verdict import (VERDICTS, Verdict, judge, reference_slope, silo_max_lr,
                                            silo_reference_slope, verdict, verdict_table)

__all__ = ["POWER_FACTOR", "PowerLine", "power_line", "OracleRound", "round_regrets", "score_predictions",
           "OptimumEstimate", "fit_optimum", "fitted_accuracy", "local_optimum", "SlopeCI", "SlopeResult",
           "Trajectory", "random_effects", "slope_over_trajectories", "slope_test", "trajectory",
           "trajectory_from_correct", "VERDICTS", "Verdict", "judge", "reference_slope", "silo_max_lr",
           "silo_reference_slope", "verdict", "verdict_table"]
