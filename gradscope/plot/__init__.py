"""Figures (``ax=`` in, Axes out) and the self-contained HTML report.

``draw_*`` take plain tables/arrays; ``plot_*`` take a run (RUN.h5 or RUN_DIR) and read what
they need. ``gradscope plot KIND`` and ``gradscope report`` live in ``gradscope.plot.commands``.
Names load lazily, so the CLI can register its commands without importing matplotlib/torch.
"""
from importlib import import_module

_WHERE = {
    **dict.fromkeys(["draw_accuracy", "draw_calibration", "draw_histograms", "draw_narrowing", "draw_spread",
                     "integer_ticks", "label_identical", "new_axes", "round_histograms", "series_styles"],
                    "gradscope.plot.figures"),
    **dict.fromkeys(["RunSource", "calibration_data", "layer_depth", "oracle_intervals", "plot_accuracy",
                     "plot_calibration", "plot_histograms", "plot_narrowing", "plot_run_schedules", "plot_schedule",
                     "plot_spread", "resolve_run", "run_config", "run_fit", "run_rounds", "run_schedules",
                     "schedule_factories",
                     "schedule_from_file", "view_label"], "gradscope.plot.runs"),
    **dict.fromkeys(["plot_peaks", "plot_schedules"], "gradscope.plot.schedules"),
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'gradscope.plot' has no attribute {name!r}")


def __dir__():
    return __all__
