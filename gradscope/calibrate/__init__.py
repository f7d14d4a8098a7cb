"""Narrowing -> SILO S-curve parameters (``calibrate_run``), and the closed-loop ``silo-auto``.

Importing this package registers ``silo-auto`` in the schedule registry.
"""
from gradscope.calibrate.auto import SiloAuto, SiloAutoCalibration, register
from gradscope.calibrate.core import (ADAMW_WARNING, DEFAULT_BOUNDS, MIN_POINTS, STATUS_WORDS, Calibration, calibrate_points,
                                      calibrate_run, check_calibrate_options, describe_calibration,
                                      estimate_prune_rate, fit_s_curve, format_calibration, implied_max_lr,
                                      narrowing_points, pruned_fraction, rise_test, t_quantile)

register()

__all__ = [
    "ADAMW_WARNING", "DEFAULT_BOUNDS", "MIN_POINTS", "STATUS_WORDS", "Calibration", "SiloAuto", "SiloAutoCalibration", "calibrate_points",
    "calibrate_run", "check_calibrate_options", "describe_calibration", "estimate_prune_rate", "fit_s_curve",
    "format_calibration", "implied_max_lr", "narrowing_points", "pruned_fraction", "register", "rise_test",
    "t_quantile",
]
