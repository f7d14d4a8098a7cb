"""Schedule factories: "the LR schedule for round k at sparsity s", for the round runner.

A factory = a peak rule (SILO S-curve, fixed peak, ALLR) + a within-round shape
(``curves.SHAPES``). ``build`` returns a per-batch ``RoundLR`` for one round. Factories are
plain objects (pickle, ``params()`` is JSON-able) and are rebuilt from ``params()`` by
``get_schedule(**params)``.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from gradscope import GradscopeError
from gradscope.schedules.curves import SHAPES, allr_peak, planned_pruned_fraction, s_curve
from gradscope.rounds import RoundInfo
from gradscope.schedules.scheduler import RoundLR

__all__ = [
    "RoundInfo", "planned_round_info", "ScheduleFactory", "SiloSchedule", "FixedPeakSchedule",
    "AllrSchedule", "SHAPE_DEFAULTS", "SILO_PRESETS", "get_schedule", "list_schedules",
    "register_schedule", "schedule_from_config",
]


# ----------------------------------------------------------------------------- round info
def planned_round_info(k: int, prune_rate: float, steps_per_epoch: int = 1, epochs: int = 1,
                       norm_drop: Optional[float] = None) -> RoundInfo:
    """The RoundInfo of round k when exactly ``prune_rate`` of the remaining weights is pruned
    per round (for plots, previews and tests; the runner passes measured values instead)."""
    sp = float(planned_pruned_fraction(k, prune_rate, 0))
    prev = float(planned_pruned_fraction(k, prune_rate, 1))
    return RoundInfo(round=k, sparsity=sp, prev_sparsity=prev, prune_rate=prune_rate,
                     steps_per_epoch=steps_per_epoch, epochs=epochs,
                     norm_drop=norm_drop if k > 0 else None,
                     step_pruned=prune_rate if k > 0 else None)


# ----------------------------------------------------------------------------- validation
def _num(key: str, v: Any, lo: float = -math.inf, hi: float = math.inf,
         lo_open: bool = False, hi_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise GradscopeError(f"schedule parameter {key!r} must be a number, got {v!r}")
    v = float(v)
    bad = (not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi))
    if bad:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise GradscopeError(f"schedule parameter {key!r} must be in {rng}, got {v!r}")
    return v


def _int(key: str, v: Any, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer, float)) or int(v) != v or v < lo:
        raise GradscopeError(f"schedule parameter {key!r} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise GradscopeError(f"schedule parameter {key!r} must be true or false, got {v!r}")
    return bool(v)


def _fractions(key: str, v: Any) -> list[float]:
    if isinstance(v, (int, float)):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise GradscopeError(f"schedule parameter {key!r} must be a list of numbers, got {v!r}")
    return [_num(key, x, 0.0, 1.0, lo_open=True) for x in v]


# Within-round shapes: their parameters and defaults (fractions are of the round's steps).
SHAPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "warmup-step": {"warmup": 0.0, "milestones": [0.5, 0.75], "factors": [0.1, 0.01]},
    "one-cycle": {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4,
                  "anneal": "cos", "three_phase": False},
    "triangular": {"cycles": 1, "div_factor": 10.0},
    "cosine": {"warmup": 0.0, "eta_min": 0.0},
    "linear": {"warmup": 0.0, "end_factor": 0.0},
    "constant": {},
}
assert set(SHAPE_DEFAULTS) == set(SHAPES)


def _check_shape_params(shape: str, sp: dict) -> dict:
    """Validate and normalise one shape's parameters (defaults already filled in)."""
    out = dict(sp)
    if "warmup" in out:
        out["warmup"] = _num("warmup", out["warmup"], 0.0, 1.0, hi_open=True)
    if shape == "warmup-step":
        ms, fs = _fractions("milestones", out["milestones"]), out["factors"]
        fs = [_num("factors", f, 0.0, lo_open=True) for f in (fs if isinstance(fs, (list, tuple)) else [fs])]
        if len(ms) != len(fs):
            raise GradscopeError(f"schedule parameters 'milestones' and 'factors' must have the same length, got {ms} and {fs}")
        if ms != sorted(ms):
            raise GradscopeError(f"schedule parameter 'milestones' must be increasing, got {ms}")
        if ms and out["warmup"] > ms[0]:
            raise GradscopeError(f"schedule parameter 'warmup' ({out['warmup']}) must end before the first milestone ({ms[0]})")
        out["milestones"], out["factors"] = ms, fs
    elif shape == "one-cycle":
        out["pct_start"] = _num("pct_start", out["pct_start"], 0.0, 1.0, lo_open=True, hi_open=True)
        out["div_factor"] = _num("div_factor", out["div_factor"], 0.0, lo_open=True)
        out["final_div_factor"] = _num("final_div_factor", out["final_div_factor"], 0.0, lo_open=True)
        if out["anneal"] not in ("cos", "linear"):
            raise GradscopeError(f"schedule parameter 'anneal' must be 'cos' or 'linear', got {out['anneal']!r}")
        out["three_phase"] = _bool("three_phase", out["three_phase"])
        if out["three_phase"] and out["pct_start"] >= 0.5:
            raise GradscopeError("schedule parameter 'pct_start' must be below 0.5 with three_phase")
    elif shape == "triangular":
        out["cycles"] = _int("cycles", out["cycles"], 1)
        out["div_factor"] = _num("div_factor", out["div_factor"], 1.0)
    elif shape == "cosine":
        out["eta_min"] = _num("eta_min", out["eta_min"], 0.0)
    elif shape == "linear":
        out["end_factor"] = _num("end_factor", out["end_factor"], 0.0, 1.0)
    return out


_META = ("name", "preset", "shape", "forced_peak")


# ----------------------------------------------------------------------------- factories
class ScheduleFactory:
    """Base class: a peak rule (``_peak``) plus a within-round shape.

    Subclasses declare ``PEAK_PARAMS`` (name -> default), optional ``PRESETS`` and
    ``DEFAULT_SHAPE``, and implement ``_peak(info)`` and ``_check()``. Parameters live as
    attributes (peak params), ``shape``, ``shape_params`` and ``forced_peak``.
    """

    name: str = ""
    PEAK_PARAMS: dict[str, Any] = {}
    PRESETS: dict[str, dict[str, Any]] = {}
    DEFAULT_SHAPE: str = "warmup-step"

    def __init__(self, name: Optional[str] = None, **params: Any) -> None:
        if name is not None:
            self.name = str(name)
        self._configure(params)

    # -- parameters
    def _configure(self, params: dict) -> None:
        params = dict(params)
        preset = params.pop("preset", None)
        base: dict = {}
        if preset is not None:
            if preset not in self.PRESETS:
                known = ", ".join(sorted(self.PRESETS)) or "none"
                raise GradscopeError(f"unknown preset {preset!r} for schedule {self.name!r} (presets: {known})")
            base = dict(self.PRESETS[preset])
        merged = _merge(base, params, self.PEAK_PARAMS)
        shape = merged.pop("shape", self.DEFAULT_SHAPE)
        if shape not in SHAPES:
            raise GradscopeError(f"unknown shape {shape!r} (shapes: {', '.join(SHAPES)})")
        forced = merged.pop("forced_peak", None)
        peak = {k: merged.pop(k, d) for k, d in self.PEAK_PARAMS.items()}
        unknown = sorted(k for k in merged if k not in SHAPE_DEFAULTS[shape])
        if unknown:
            allowed = sorted([*self.PEAK_PARAMS, *SHAPE_DEFAULTS[shape], "shape", "preset", "forced_peak"])
            raise GradscopeError(f"unknown parameter(s) {', '.join(unknown)} for schedule {self.name!r} "
                                 f"with shape {shape!r} (allowed: {', '.join(allowed)})")
        self.preset = preset
        self.shape = shape
        self.shape_params = _check_shape_params(shape, {**SHAPE_DEFAULTS[shape], **merged})
        self.forced_peak = None if forced is None else _num("forced_peak", forced, 0.0, lo_open=True)
        for k, v in peak.items():
            setattr(self, k, v)
        self._check()

    def _check(self) -> None:
        """Validate (and normalise) the peak parameters; raise GradscopeError."""

    def params(self) -> dict:
        """All parameters, JSON-able; ``get_schedule(**f.params())`` rebuilds an equal factory."""
        out = {"name": self.name, "preset": self.preset}
        out.update({k: getattr(self, k) for k in self.PEAK_PARAMS})
        out["shape"] = self.shape
        out.update(copy.deepcopy(self.shape_params))
        if self.forced_peak is not None:
            out["forced_peak"] = self.forced_peak
        return out

    def with_params(self, **kw: Any) -> "ScheduleFactory":
        """A copy with some parameters changed (validated); subclasses' extra state is kept.

        Changing ``shape`` resets the shape parameters not given to the new shape's
        defaults; giving ``preset`` resets the parameters not given to that preset.
        """
        current = self.params()
        current.pop("name")
        if "preset" in kw:
            current = {k: v for k, v in current.items() if k == "forced_peak"}
        new = copy.copy(self)
        new._configure(_merge(current, kw, self.PEAK_PARAMS))
        return new

    def with_peak(self, max_lr: Optional[float]) -> "ScheduleFactory":
        """A copy that keeps the within-round shape but uses ``max_lr`` as the peak of every
        round (the Oracle's grid search); ``with_peak(None)`` restores the peak rule."""
        return self.with_params(forced_peak=max_lr)

    # -- per round
    def _peak(self, info: RoundInfo) -> float:
        raise NotImplementedError

    def peak_lr(self, info: RoundInfo) -> float:
        """Peak (max) LR of the round described by ``info``."""
        if self.forced_peak is not None:
            return float(self.forced_peak)
        return float(self._peak(info))

    def round_params(self, info: RoundInfo) -> dict:
        """``params()`` plus this round's ``max_lr`` (what the runner stores per round)."""
        return {**self.params(), "max_lr": self.peak_lr(info)}

    def build(self, optimizer, info: RoundInfo) -> RoundLR:
        """The per-batch LR scheduler of this round (sets the optimizer's LR for step 0)."""
        total = _check_steps(info)
        return RoundLR(optimizer, total_steps=total, peak=self.peak_lr(info), shape=self.shape,
                       shape_params=self.shape_params, round=info.round, name=self.name)

    def lrs(self, info: RoundInfo) -> np.ndarray:
        """The LR at every step of the round (closed form, no optimizer needed)."""
        total, peak, fn = _check_steps(info), self.peak_lr(info), SHAPES[self.shape]
        return np.array([fn(t, total, peak, **self.shape_params) for t in range(total)])

    def __repr__(self) -> str:
        kv = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "name")
        return f"{type(self).__name__}({self.name!r}, {kv})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.params() == self.params()

    __hash__ = None  # mutable


def _merge(base: dict, override: dict, peak_params: dict) -> dict:
    """``{**base, **override}``, but a new ``shape`` in override drops base's shape params."""
    if "shape" in override and override["shape"] != base.get("shape", override["shape"]):
        base = {k: v for k, v in base.items() if k in peak_params or k in _META}
    return {**base, **override}


def _check_steps(info: RoundInfo) -> int:
    if not isinstance(info, RoundInfo):
        raise GradscopeError(f"expected a RoundInfo, got {type(info).__name__}")
    for key in ("steps_per_epoch", "epochs"):
        v = getattr(info, key)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise GradscopeError(f"RoundInfo.{key} must be a positive integer, got {v!r}")
    return info.total_steps


# Released SILO constants (Liu et al.). p = 0.2 as released; warm-up length for ResNet-20 is
# our choice (not stated), VGG-19's is ~14 of 160 epochs. Drops at epochs 25/32 of 50 and
# 80/120 of 160, as fractions of the round.
SILO_PRESETS: dict[str, dict[str, Any]] = {
    "resnet20": {"lo": 0.03, "hi": 0.07, "beta": 5.0, "midpoint": 0.5, "lag": 1, "p": 0.2,
                 "shape": "warmup-step", "warmup": 0.1, "milestones": [0.5, 0.64],
                 "factors": [0.1, 0.01]},
    "vgg19": {"lo": 0.04, "hi": 0.10, "beta": 5.0, "midpoint": 0.5, "lag": 1, "p": 0.2,
              "shape": "warmup-step", "warmup": 0.0875, "milestones": [0.5, 0.75],
              "factors": [0.1, 0.01]},
}


class SiloSchedule(ScheduleFactory):
    """SILO / S-Cyc: round k's peak is ``s_curve(x_k, lo, hi, beta, midpoint)``.

    ``x_k = planned_pruned_fraction(k, p, lag)`` (p None: the run's ``info.prune_rate``), or
    with ``use_measured`` the measured pruned fraction: ``info.prev_sparsity`` for lag 1,
    ``info.sparsity`` for lag 0. Parameters: lo, hi, beta, midpoint, lag, p, use_measured,
    preset (resnet20 | vgg19), shape and the shape's parameters. Subclass it (silo-auto) and
    change parameters with ``with_params(lo=..., ...)``.
    """

    name = "silo"
    PEAK_PARAMS = {"lo": 0.03, "hi": 0.07, "beta": 5.0, "midpoint": 0.5, "lag": 1, "p": None,
                   "use_measured": False}
    PRESETS = SILO_PRESETS
    DEFAULT_SHAPE = "warmup-step"

    def _check(self) -> None:
        self.lo = _num("lo", self.lo, 0.0, lo_open=True)
        self.hi = _num("hi", self.hi, 0.0, lo_open=True)
        if self.hi < self.lo:
            raise GradscopeError(f"schedule parameter 'hi' ({self.hi}) must be >= 'lo' ({self.lo})")
        self.beta = _num("beta", self.beta, 0.0, lo_open=True)
        self.midpoint = _num("midpoint", self.midpoint, 0.0, 1.0, lo_open=True, hi_open=True)
        self.lag = _int("lag", self.lag, 0)
        if self.p is not None:
            self.p = _num("p", self.p, 0.0, 1.0, lo_open=True, hi_open=True)
        self.use_measured = _bool("use_measured", self.use_measured)
        if self.use_measured and self.lag > 1:
            raise GradscopeError("schedule parameter 'lag' must be 0 or 1 with use_measured "
                                 "(RoundInfo carries this and the previous round's sparsity only)")

    def pruned_fraction(self, info: RoundInfo) -> float:
        """The x the S-curve is evaluated at for this round."""
        if self.use_measured:
            return float(info.prev_sparsity if self.lag == 1 else info.sparsity)
        p = self.p if self.p is not None else info.prune_rate
        return float(planned_pruned_fraction(info.round, p, self.lag))

    def _peak(self, info: RoundInfo) -> float:
        return float(s_curve(self.pruned_fraction(info), self.lo, self.hi, self.beta, self.midpoint))


class FixedPeakSchedule(ScheduleFactory):
    """The same peak ``max_lr`` every round (lth, lrr, clr, cosine, finetune, constant)."""

    name = "constant"
    PEAK_PARAMS = {"max_lr": 0.01}
    DEFAULT_SHAPE = "constant"

    def _check(self) -> None:
        self.max_lr = _num("max_lr", self.max_lr, 0.0, lo_open=True)

    def _peak(self, info: RoundInfo) -> float:
        return self.max_lr


class AllrSchedule(ScheduleFactory):
    """ALLR (Zimmer et al. 2023): peak from the relative norm drop of this round's pruning.

    ``peak = allr_peak(info.norm_drop, info.step_pruned, max_lr, info.epochs/orig_epochs)``;
    round 0 uses ``max_lr``. ``orig_epochs`` None: same as this round (lower clip = max_lr).
    Default shape: linear decay to 0 (LLR).
    """

    name = "allr"
    PEAK_PARAMS = {"max_lr": 0.1, "orig_epochs": None}
    DEFAULT_SHAPE = "linear"

    def _check(self) -> None:
        self.max_lr = _num("max_lr", self.max_lr, 0.0, lo_open=True)
        if self.orig_epochs is not None:
            self.orig_epochs = _int("orig_epochs", self.orig_epochs, 1)

    def _peak(self, info: RoundInfo) -> float:
        if info.round == 0:
            return self.max_lr
        if info.norm_drop is None or info.step_pruned is None:
            raise GradscopeError("schedule 'allr' needs RoundInfo.norm_drop and step_pruned from round 1 on")
        nd = _num("norm_drop", info.norm_drop, 0.0)
        s = _num("step_pruned", info.step_pruned, 0.0, 1.0)
        ratio = 1.0 if self.orig_epochs is None else info.epochs / self.orig_epochs
        return allr_peak(nd, s, self.max_lr, ratio)


# ----------------------------------------------------------------------------- registry
_REGISTRY: dict[str, tuple[type, dict[str, Any]]] = {
    # ResNet-20 constants (preset resnet20) except p, which follows the run's prune rate.
    "silo": (SiloSchedule, {k: v for k, v in SILO_PRESETS["resnet20"].items() if k != "p"} | {"p": None}),
    # Frankle & Carbin: warm-up then step decay, same peak every round (our fractions).
    "lth": (FixedPeakSchedule, {"max_lr": 0.1, "shape": "warmup-step", "warmup": 0.1,
                                "milestones": [0.5, 0.75], "factors": [0.1, 0.01]}),
    # Renda et al.: the original schedule re-run each round, no warm-up.
    "lrr": (FixedPeakSchedule, {"max_lr": 0.1, "shape": "warmup-step", "warmup": 0.0,
                                "milestones": [0.5, 0.75], "factors": [0.1, 0.01]}),
    # Le & Hua: OneCycleLR(max_lr=0.1, pct_start=0.1, div_factor=100, final_div_factor=100).
    "clr": (FixedPeakSchedule, {"max_lr": 0.1, "shape": "one-cycle", "pct_start": 0.1,
                                "div_factor": 100.0, "final_div_factor": 100.0}),
    "cosine": (FixedPeakSchedule, {"max_lr": 0.1, "shape": "cosine"}),
    # Fine-tuning at the original schedule's final LR.
    "finetune": (FixedPeakSchedule, {"max_lr": 0.001, "shape": "constant"}),
    "constant": (FixedPeakSchedule, {"max_lr": 0.01, "shape": "constant"}),
    "allr": (AllrSchedule, {}),
}
_RESERVED = {"silo-auto": "gradscope.calibrate"}


def register_schedule(name: str, cls: type, defaults: Optional[dict] = None) -> None:
    """Register a ScheduleFactory subclass under ``name`` (e.g. ``silo-auto`` by calibrate)."""
    if not (isinstance(cls, type) and issubclass(cls, ScheduleFactory)):
        raise TypeError("register_schedule needs a ScheduleFactory subclass")
    _REGISTRY[name] = (cls, dict(defaults or {}))


def list_schedules() -> list[str]:
    """Names accepted by ``get_schedule`` (``silo-auto`` once gradscope.calibrate is imported)."""
    return sorted(_REGISTRY)


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
    if name not in _REGISTRY:
        hint = f" ({name} is provided by {_RESERVED[name]}: import it first)" if name in _RESERVED else ""
        raise GradscopeError(f"unknown schedule {name!r}{hint}; known: {', '.join(list_schedules())}")
    cls, defaults = _REGISTRY[name]
    if params.get("preset") is not None:  # a preset replaces the registry defaults
        defaults = {}
    return cls(name=name, **_merge(defaults, params, cls.PEAK_PARAMS))


# ScheduleConfig field -> schedule parameter (flags whose value is not None override the file).
_FLAG_PARAMS = {"max_lr": "max_lr", "lo": "lo", "hi": "hi", "beta": "beta", "midpoint": "midpoint",
                "lag": "lag", "shape": "shape", "preset": "preset", "silo_p": "p",
                "measured_sparsity": "use_measured"}


def _read_schedule_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise GradscopeError(f"schedule file {path} does not exist")
    text = p.read_text()
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error becomes one clear message
        raise GradscopeError(f"schedule file {path} is not valid {'YAML' if p.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GradscopeError(f"schedule file {path} must hold a mapping of parameter names to values")
    return data


_FILE_NOTES = ("uncertainty", "source", "prediction", "points", "notes")


def schedule_from_config(cfg) -> ScheduleFactory:
    """The factory for a ``ScheduleConfig``: parameters from ``cfg.schedule_file`` (JSON/YAML),
    then the flags that are not None. A file made from ``factory.params()`` works as is."""
    params: dict[str, Any] = {}
    if getattr(cfg, "schedule_file", None):
        params.update(_read_schedule_file(cfg.schedule_file))
        fname = params.pop("name", params.pop("schedule", cfg.schedule))
        for key in _FILE_NOTES:  # what `gradscope calibrate` writes beside the parameters
            params.pop(key, None)
        if fname != cfg.schedule and not (fname == "silo" and cfg.schedule == "silo-auto"):
            raise GradscopeError(f"schedule file {cfg.schedule_file} is for schedule {fname!r} "
                                 f"but the schedule is {cfg.schedule!r}; pass --schedule {fname}")
    flags = {param: getattr(cfg, field) for field, param in _FLAG_PARAMS.items()
             if getattr(cfg, field, None) is not None}
    if "preset" in flags:  # a preset flag resets what the file said, then later flags apply
        params = {k: v for k, v in params.items() if k == "forced_peak"}
    if cfg.schedule not in _REGISTRY:
        return get_schedule(cfg.schedule)  # raises the unknown-name error
    return get_schedule(cfg.schedule, **_merge(params, flags, _REGISTRY[cfg.schedule][0].PEAK_PARAMS))
