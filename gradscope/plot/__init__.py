"""Figures (``ax=`` in, Axes out) and the self-contained HTML report.

``draw_*`` take plain tables/arrays; ``plot_*`` take a run (RUN.h5 or RUN_DIR) and read what
they need. ``gradscope plot KIND`` and ``gradscope report`` live in ``gradscope.plot.commands``.
"""
from gradscope.plot.figures import (draw_accuracy, draw_calibration, draw_histograms, draw_narrowing,
                                    new_axes, round_histograms)
from gradscope.plot.runs import (RunSource, calibration_data, oracle_intervals, plot_accuracy,
                                 plot_calibration, plot_histograms, plot_narrowing, plot_schedule,
                                 resolve_run, run_config, run_fit, run_rounds, schedule_factories)
from gradscope.plot.schedules import plot_peaks, plot_schedules

__all__ = [
    "RunSource", "calibration_data", "draw_accuracy", "draw_calibration", "draw_histograms",
    "draw_narrowing", "new_axes", "oracle_intervals", "plot_accuracy", "plot_calibration",
    "plot_histograms", "plot_narrowing", "plot_peaks", "plot_schedule", "plot_schedules",
    "resolve_run", "round_histograms", "run_config", "run_fit", "run_rounds", "schedule_factories",
]
