"""LR schedules for iterative pruning: SILO / S-Cyc (S-curved peak over rounds) and baselines.

``get_schedule(name, **params)`` gives a ``ScheduleFactory``; per round the runner calls
``factory.build(optimizer, RoundInfo(...))`` for a per-batch ``RoundLR`` scheduler, and a
plain loop calls ``factory.scheduler(optimizer, round=k, total_steps=n)``.

Modules, one idea each: ``curves`` (pure LR math), ``shapes`` (within-round shapes as a
table), ``params`` (validation and the layering rule), ``scheduler`` (``RoundLR``),
``factories`` (peak rules), ``registry`` (names, defaults, implied rewinding), ``config_io``
(file and flags). ``silo-auto`` is registered by gradscope.calibrate.
"""
from gradscope.rounds import RoundInfo
from gradscope.schedules.config_io import load_schedule, read_schedule_file, schedule_from_config
from gradscope.schedules.curves import (allr_peak, bimp_linear_lr, constant_lr, cosine_lr, linear_lr,
                                        milestone_step, one_cycle_lr, one_cycle_momentum,
                                        planned_pruned_fraction, s_curve, silo_released_lr, triangular_lr,
                                        triangular_momentum, warmup_step_lr)
from gradscope.schedules.factories import (SILO_PRESETS, AllrSchedule, FixedPeakSchedule, LrrSchedule,
                                           ScheduleFactory, SiloSchedule, planned_round_info)
from gradscope.schedules.registry import (SCHEDULES, get_schedule, implied_rewind, list_schedules,
                                          register_schedule)
from gradscope.schedules.scheduler import RoundLR
from gradscope.schedules.shapes import SHAPES, Shape, get_shape

SHAPE_DEFAULTS = {name: dict(s.defaults) for name, s in SHAPES.items()}  # read-only view, for docs

__all__ = [
    "SCHEDULES", "SHAPES", "SHAPE_DEFAULTS", "SILO_PRESETS", "AllrSchedule", "FixedPeakSchedule", "LrrSchedule",
    "bimp_linear_lr", "milestone_step", "silo_released_lr", "triangular_momentum",
    "RoundInfo", "RoundLR", "ScheduleFactory", "Shape", "SiloSchedule", "allr_peak", "constant_lr",
    "cosine_lr", "get_schedule", "get_shape", "implied_rewind", "linear_lr", "list_schedules",
    "one_cycle_lr", "one_cycle_momentum", "planned_pruned_fraction", "planned_round_info",
    "load_schedule", "read_schedule_file", "register_schedule", "s_curve", "schedule_from_config", "triangular_lr",
    "warmup_step_lr",
]
