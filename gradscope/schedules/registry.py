"""The schedule registry: name -> (factory class, defaults, the rewinding its paper implies)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from gradscope import GradscopeError
from gradscope.registry import Registry
from gradscope.schedules import params as V
from gradscope.schedules.factories import (SILO_PRESETS, AllrSchedule, FixedPeakSchedule, LrrSchedule,
                                           ScheduleFactory, SiloSchedule)


@dataclass(frozen=True)
class ScheduleEntry:
    cls: type
    defaults: dict = field(default_factory=dict)
    rewind: str = "init"  # weight rewinding the schedule's recipe implies (--rewind default)
    note: str = ""


SCHEDULES: Registry[ScheduleEntry] = Registry("schedule", "--schedule")
SCHEDULES.hint("silo-auto", "provided by gradscope.calibrate: import it first")

_WARMUP_STEP = {"shape": "warmup-step", "milestones": [0.5, 0.75], "factors": [0.1, 0.01]}

# ResNet-20 constants (preset resnet20) except p, which follows the run's prune rate.
SCHEDULES.register("silo", ScheduleEntry(
    SiloSchedule, {k: v for k, v in SILO_PRESETS["resnet20"].items() if k != "p"} | {"p": None},
    note="SILO / S-Cyc: S-curved peak over rounds (Liu et al.)"))
_RENDA = {"max_lr": 0.1, "shape": "warmup-step", "warmup": 0.0, "milestones": [0.5, 136 / 182],
          "factors": [0.1, 0.01]}
SCHEDULES.register("lth", ScheduleEntry(
    FixedPeakSchedule, {"max_lr": 0.1, **_WARMUP_STEP, "warmup": 0.1, "warmup_start": 0},
    note="Frankle & Carbin: warm-up (open_lth's lr*min(1, it/W)) then step decay, same peak every "
         "round, weights rewound"))
SCHEDULES.register("lrr", ScheduleEntry(
    LrrSchedule, dict(_RENDA),
    rewind="lr", note="Renda et al. LR rewinding: the last t epochs of the original T-epoch schedule "
                      "(drops at epochs 91 and 136 of 182; T = orig_epochs, default the round's) on the "
                      "trained weights"))
SCHEDULES.register("slr", ScheduleEntry(
    FixedPeakSchedule, dict(_RENDA),
    rewind="lr", note="Le & Hua 2021 scaled LR restarting: the whole original schedule squeezed into "
                      "each round, on the trained weights"))
SCHEDULES.register("clr", ScheduleEntry(
    FixedPeakSchedule, {"max_lr": 0.1, "shape": "one-cycle", "pct_start": 0.1, "div_factor": 100.0,
                        "final_div_factor": 100.0},
    note="Le & Hua: OneCycleLR(max_lr=0.1, pct_start=0.1, div_factor=100, final_div_factor=100), "
         "momentum cycled 0.95 -> 0.85 -> 0.95"))
SCHEDULES.register("cosine", ScheduleEntry(FixedPeakSchedule, {"max_lr": 0.1, "shape": "cosine"},
                                           note="cosine annealing with a fixed peak"))
SCHEDULES.register("finetune", ScheduleEntry(FixedPeakSchedule, {"max_lr": 0.001, "shape": "constant"},
                                             rewind="finetune", note="fine-tuning at the final small LR"))
SCHEDULES.register("constant", ScheduleEntry(FixedPeakSchedule, {"max_lr": 0.01, "shape": "constant"}))
SCHEDULES.register("allr", ScheduleEntry(
    AllrSchedule, {"shape": "bimp-linear", "warmup": 0.1},
    rewind="lr", note="ALLR (Zimmer et al., BIMP): peak from the pruning's relative norm drop, "
                      "BIMP's cosine warm-up from 0 then linear decay, on the trained weights"))


def register_schedule(name: str, cls: type, defaults: Optional[dict] = None, rewind: str = "init") -> None:
    """Register a ScheduleFactory subclass under ``name`` (e.g. ``silo-auto`` by calibrate)."""
    if not (isinstance(cls, type) and issubclass(cls, ScheduleFactory)):
        raise TypeError("register_schedule needs a ScheduleFactory subclass")
    SCHEDULES.register(name, ScheduleEntry(cls, dict(defaults or {}), rewind))


def list_schedules() -> list[str]:
    """Names accepted by ``get_schedule`` (``silo-auto`` once gradscope.calibrate is imported)."""
    return SCHEDULES.names()


def implied_rewind(name: str) -> str:
    """The weight rewinding schedule ``name``'s recipe implies (init, lr or finetune)."""
    return SCHEDULES.get(name).rewind


def get_schedule(name: Optional[str] = None, /, **params: Any) -> ScheduleFactory:
    """The factory registered as ``name`` with its defaults overridden by ``params``.

    ``params`` may hold ``name`` too, so ``get_schedule(**factory.params())`` rebuilds it.
    """
    if name is None:
        if "name" not in params:
            raise GradscopeError("get_schedule needs a schedule name")
        name = params["name"]
    if "name" in params and params.pop("name") != name:
        raise GradscopeError(f"parameter 'name' does not match schedule {name!r}")
    key = SCHEDULES.key(name)
    entry = SCHEDULES.get(key)
    return entry.cls(name=key, **V.layer(entry.defaults, params, entry.cls.PEAK_PARAMS))
