"""LR schedules for iterative pruning: SILO / S-Cyc (S-curved peak over rounds) and baselines.

``get_schedule(name, **params)`` gives a ``ScheduleFactory``; per round the runner calls
``factory.build(optimizer, RoundInfo(...))`` for a per-batch ``RoundLR`` scheduler.
Math lives in ``curves`` (pure functions); ``silo-auto`` is registered by gradscope.calibrate.
"""
from gradscope.schedules.curves import (SHAPES, allr_peak, constant_lr, cosine_lr, linear_lr,
                                        one_cycle_lr, planned_pruned_fraction, s_curve,
                                        triangular_lr, warmup_step_lr)
from gradscope.schedules.factories import (SHAPE_DEFAULTS, SILO_PRESETS, AllrSchedule,
                                           FixedPeakSchedule, RoundInfo, ScheduleFactory,
                                           SiloSchedule, get_schedule, list_schedules,
                                           planned_round_info, register_schedule,
                                           schedule_from_config)
from gradscope.schedules.scheduler import RoundLR

__all__ = [
    "SHAPES", "SHAPE_DEFAULTS", "SILO_PRESETS", "AllrSchedule", "FixedPeakSchedule", "RoundInfo",
    "RoundLR", "ScheduleFactory", "SiloSchedule", "allr_peak", "constant_lr", "cosine_lr",
    "get_schedule", "linear_lr", "list_schedules", "one_cycle_lr", "planned_pruned_fraction",
    "planned_round_info", "register_schedule", "s_curve", "schedule_from_config",
    "triangular_lr", "warmup_step_lr",
]
