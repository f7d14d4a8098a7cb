"""The Oracle's statistics under their first name: ``fit_optimum``, ``OptimumEstimate``,
``slope_test``, ``SlopeResult`` (kept so that existing imports work). They live in
``gradscope.oracle_stats`` with the rest (trajectories, verdicts, power, regret)."""
from gradscope.oracle_stats.round import WINDOW, OptimumEstimate, fit_optimum
from gradscope.oracle_stats.slope import SlopeResult, slope_test

__all__ = ["WINDOW", "OptimumEstimate", "fit_optimum", "SlopeResult", "slope_test"]
