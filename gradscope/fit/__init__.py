"""Distribution fits of recorded gradient histograms, and how they narrow over rounds.

Pure math in ``families`` / ``binned`` / ``core``; the run-file glue in ``run``.
"""
from gradscope.fit.core import (BINNED_STATS, MODELS, MOMENT_STATS, STATISTICS, STATUSES, TREND_WORDING,
                                check_bootstrap, check_statistic, fit_histograms, fit_samples, moment_spreads,
                                narrowing_table, trend_slope, trend_table, trend_verdict)
from gradscope.fit.families import FAMILIES, get_family
from gradscope.fit.run import (SPREAD_QUANTILES, VIEWS, WINDOWS, FitResult, check_fit_options, check_view, check_window,
                               describe_view, fit_run, fit_tables, format_narrowing, format_summary, format_trend,
                               load_windows, narrowing_heading, open_source, read_view, select_window, spread_table,
                               sparsity_by_round)

__all__ = [
    "BINNED_STATS", "FAMILIES", "MODELS", "MOMENT_STATS", "STATISTICS", "STATUSES", "TREND_WORDING", "VIEWS",
    "WINDOWS", "FitResult", "check_bootstrap", "check_fit_options", "check_statistic", "check_view",
    "check_window", "describe_view", "fit_histograms", "fit_run", "fit_samples", "fit_tables",
    "format_narrowing", "format_summary", "format_trend", "get_family", "load_windows", "moment_spreads",
    "narrowing_heading", "narrowing_table", "open_source", "read_view", "select_window", "sparsity_by_round",
    "SPREAD_QUANTILES", "spread_table",
    "trend_slope", "trend_table", "trend_verdict",
]
