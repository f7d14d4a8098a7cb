"""Within-round LR shapes as a table: ``Shape(fn, defaults, validate)`` beside their math.

A shape maps ``(t, total, peak, **params)`` to the LR of step t of a round (``curves``);
``defaults`` are its parameters (fractions are of the round's steps) and ``validate``
normalises a full parameter dict or raises a GradscopeError. One-cycle and triangular also
cycle the momentum (``momentum``), as torch's ``OneCycleLR`` and ``CyclicLR`` do by default.
``bimp-linear`` is BIMP's LLR/ALLR shape; ``silo-released`` the released SILO scripts' LR
(docs/recipe-silo-code.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

from gradscope import GradscopeError
from gradscope.schedules import curves as C
from gradscope.schedules import params as V


@dataclass(frozen=True)
class Shape:
    name: str
    fn: Callable[..., float]
    defaults: Mapping[str, Any]
    validate: Callable[[dict], dict] = field(default=lambda p: dict(p))
    momentum: Optional[Callable[..., Optional[float]]] = None  # (t, total, **params) -> momentum or None
    check_total: Optional[Callable[..., None]] = None  # (total, **params) -> None or GradscopeError

    def resolve(self, params: Optional[dict] = None) -> dict:
        """Defaults filled in, unknown names refused, values validated and normalised."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise GradscopeError(f"unknown parameter(s) {', '.join(unknown)} for shape {self.name!r} "
                                 f"(its parameters: {', '.join(self.defaults) or 'none'})")
        return self.validate({**self.defaults, **params})

    def lr(self, t: int, total: int, peak: float, params: dict) -> float:
        return self.fn(t, total, peak, **params)


def _warmup(p: dict) -> dict:
    p["warmup"] = V.num("warmup", p["warmup"], 0.0, 1.0, hi_open=True)
    return p


def _check_warmup_step(p: dict) -> dict:
    p = _warmup(p)
    ms, fs = V.fractions("milestones", p["milestones"]), V.positives("factors", p["factors"])
    if len(ms) != len(fs):
        raise GradscopeError(f"schedule parameters 'milestones' and 'factors' must have the same length, got {ms} and {fs}")
    if ms != sorted(ms):
        raise GradscopeError(f"schedule parameter 'milestones' must be increasing, got {ms}")
    if ms and p["warmup"] > ms[0]:
        raise GradscopeError(f"schedule parameter 'warmup' ({p['warmup']}) must end before the first milestone ({ms[0]})")
    p["milestones"], p["factors"] = ms, fs
    p["warmup_start"] = V.integer("warmup_start", p["warmup_start"], 0)
    if p["warmup_start"] > 1:
        raise GradscopeError("schedule parameter 'warmup_start' must be 0 (open_lth: 0 at step 0) "
                             f"or 1 (peak one step earlier), got {p['warmup_start']}")
    return p


def _check_one_cycle(p: dict) -> dict:
    p["pct_start"] = V.num("pct_start", p["pct_start"], 0.0, 1.0, lo_open=True, hi_open=True)
    p["div_factor"] = V.num("div_factor", p["div_factor"], 0.0, lo_open=True)
    p["final_div_factor"] = V.num("final_div_factor", p["final_div_factor"], 0.0, lo_open=True)
    p["anneal"] = V.choice("anneal", p["anneal"], ("cos", "linear"))
    p["three_phase"] = V.boolean("three_phase", p["three_phase"])
    if p["three_phase"] and p["pct_start"] >= 0.5:
        raise GradscopeError("schedule parameter 'pct_start' must be below 0.5 with three_phase")
    return _momentum_range(p)


def _momentum_range(p: dict) -> dict:
    p["cycle_momentum"] = V.boolean("cycle_momentum", p["cycle_momentum"])
    p["base_momentum"] = V.num("base_momentum", p["base_momentum"], 0.0, 1.0, hi_open=True)
    p["max_momentum"] = V.num("max_momentum", p["max_momentum"], 0.0, 1.0, hi_open=True)
    if p["base_momentum"] > p["max_momentum"]:
        raise GradscopeError("schedule parameter 'base_momentum' must not exceed 'max_momentum'")
    return p


def _check_triangular(p: dict) -> dict:
    p["cycles"] = V.integer("cycles", p["cycles"], 1)
    p["div_factor"] = V.num("div_factor", p["div_factor"], 1.0)
    return _momentum_range(p)


def _check_bimp(p: dict) -> dict:
    p["warmup"] = V.num("warmup", p["warmup"], 0.0, 1.0, hi_open=True)
    return p


def _check_silo_released(p: dict) -> dict:
    p["epochs"] = V.integer("epochs", p["epochs"], 1)
    p["ramp_steps"] = V.integer("ramp_steps", p["ramp_steps"], 1)
    p["ramp_cap"] = V.boolean("ramp_cap", p["ramp_cap"])
    if p["hold_epoch"] is not None:
        p["hold_epoch"] = V.integer("hold_epoch", p["hold_epoch"], 0)
    ds = p["drop_epochs"]
    ds = [ds] if isinstance(ds, (int, float)) and not isinstance(ds, bool) else ds
    if not isinstance(ds, (list, tuple)):
        raise GradscopeError(f"schedule parameter 'drop_epochs' must be a list of epochs, got {ds!r}")
    ds = [V.integer("drop_epochs", d, 0) for d in ds]
    fs = V.positives("factors", p["factors"])
    if len(ds) != len(fs):
        raise GradscopeError(f"schedule parameters 'drop_epochs' and 'factors' must have the same length, got {ds} and {fs}")
    if ds != sorted(ds):
        raise GradscopeError(f"schedule parameter 'drop_epochs' must be increasing, got {ds}")
    p["drop_epochs"], p["factors"] = ds, fs
    return p


def _check_total_epochs(total: int, epochs: int, **_: Any) -> None:
    """silo-released counts epochs: the round must be ``epochs`` whole epochs long."""
    if total % epochs:
        raise GradscopeError(f"shape 'silo-released' counts epochs: the round's {total} steps are not "
                             f"{epochs} whole epochs; set its 'epochs' parameter to the run's --epochs")


def _check_cosine(p: dict) -> dict:
    p = _warmup(p)
    p["eta_min"] = V.num("eta_min", p["eta_min"], 0.0)
    return p


def _check_linear(p: dict) -> dict:
    p = _warmup(p)
    p["end_factor"] = V.num("end_factor", p["end_factor"], 0.0, 1.0)
    return p


def _one_cycle_momentum(t: int, total: int, pct_start: float, anneal: str, three_phase: bool,
                        cycle_momentum: bool, base_momentum: float, max_momentum: float, **_: Any) -> Optional[float]:
    if not cycle_momentum:
        return None
    return C.one_cycle_momentum(t, total, pct_start, base_momentum, max_momentum, anneal, three_phase)


def _triangular_momentum(t: int, total: int, cycles: int = 1, cycle_momentum: bool = False,
                         base_momentum: float = 0.8, max_momentum: float = 0.9, **_: Any) -> Optional[float]:
    # defaults: a scheduler state saved before triangular cycled momentum resumes without cycling
    if not cycle_momentum:
        return None
    return C.triangular_momentum(t, total, cycles, base_momentum, max_momentum)


def _table(*shapes: Shape) -> Mapping[str, Shape]:
    return MappingProxyType({s.name: s for s in shapes})


SHAPES: Mapping[str, Shape] = _table(
    Shape("warmup-step", C.warmup_step_lr, MappingProxyType(
        {"warmup": 0.0, "milestones": [0.5, 0.75], "factors": [0.1, 0.01], "warmup_start": 1}), _check_warmup_step),
    Shape("one-cycle", C.one_cycle_lr, MappingProxyType(
        {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4, "anneal": "cos", "three_phase": False,
         "cycle_momentum": True, "base_momentum": 0.85, "max_momentum": 0.95}), _check_one_cycle,
        _one_cycle_momentum),
    Shape("triangular", C.triangular_lr, MappingProxyType(
        {"cycles": 1, "div_factor": 10.0, "cycle_momentum": True, "base_momentum": 0.8, "max_momentum": 0.9}),
        _check_triangular, _triangular_momentum),
    Shape("cosine", C.cosine_lr, MappingProxyType({"warmup": 0.0, "eta_min": 0.0}), _check_cosine),
    Shape("linear", C.linear_lr, MappingProxyType({"warmup": 0.0, "end_factor": 0.0}), _check_linear),
    Shape("constant", C.constant_lr, MappingProxyType({})),
    Shape("bimp-linear", C.bimp_linear_lr, MappingProxyType({"warmup": 0.1}), _check_bimp),
    Shape("silo-released", C.silo_released_lr, MappingProxyType(
        {"epochs": 50, "ramp_steps": 20000, "ramp_cap": True, "hold_epoch": None, "drop_epochs": [25, 32],
         "factors": [0.1, 0.01]}), _check_silo_released, check_total=_check_total_epochs),
)


def get_shape(name: str) -> Shape:
    if name not in SHAPES:
        raise GradscopeError(f"unknown shape {name!r} (shapes: {', '.join(SHAPES)})")
    return SHAPES[name]
