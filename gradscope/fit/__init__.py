"""Distribution fits of recorded gradient histograms, and how they narrow over rounds.

Pure math in ``families`` / ``binned`` / ``core``; the run-file glue in ``run``.
"""
from gradscope.fit.core import (MODELS, MOMENT_STATS, STATUSES, fit_histograms, fit_samples,
                                moment_spreads, narrowing_table, trend_slope, trend_table)
from gradscope.fit.families import FAMILIES, get_family
from gradscope.fit.run import (FitResult, fit_run, fit_tables, format_narrowing, format_summary,
                               format_trend, load_windows, open_source, sparsity_by_round)

__all__ = [
    "FAMILIES", "MODELS", "MOMENT_STATS", "STATUSES", "FitResult", "fit_histograms", "fit_run",
    "fit_samples", "fit_tables", "format_narrowing", "format_summary", "format_trend",
    "get_family", "load_windows", "moment_spreads", "narrowing_table", "open_source",
    "sparsity_by_round", "trend_slope", "trend_table",
]
