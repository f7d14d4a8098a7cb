"""Schedule factories: "the LR schedule for round k at sparsity s".

A factory = a peak rule (SILO S-curve, fixed peak, ALLR) + a within-round shape
(``shapes.SHAPES``). ``build(optimizer, info)`` returns the per-batch ``RoundLR`` of one
round; ``scheduler(optimizer, round=k, total_steps=n)`` does the same for a plain loop.
Factories are plain objects (pickle; ``params()`` is JSON-able) rebuilt from ``params()`` by
``gradscope.schedules.get_schedule(**params)``.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import numpy as np

from gradscope import GradscopeError
from gradscope.rounds import RoundInfo
from gradscope.schedules import params as V
from gradscope.schedules.curves import allr_peak, planned_pruned_fraction, s_curve
from gradscope.schedules.scheduler import RoundLR
from gradscope.schedules.shapes import get_shape

__all__ = ["ScheduleFactory", "SiloSchedule", "FixedPeakSchedule", "LrrSchedule", "AllrSchedule", "SILO_PRESETS",
           "planned_round_info"]


def planned_round_info(k: int, prune_rate: float, steps_per_epoch: int = 1, epochs: int = 1,
                       norm_drop: Optional[float] = None) -> RoundInfo:
    """The RoundInfo of round k when exactly ``prune_rate`` of the remaining weights is pruned
    per round (for plots, previews and tests; the runner passes measured values instead)."""
    sp = float(planned_pruned_fraction(k, prune_rate, 0))
    prev = float(planned_pruned_fraction(k, prune_rate, 1))
    return RoundInfo(round=k, sparsity=sp, prev_sparsity=prev, prune_rate=prune_rate,
                     steps_per_epoch=steps_per_epoch, epochs=epochs,
                     norm_drop=norm_drop if k > 0 else None,
                     step_pruned=prune_rate if k > 0 else None, target_sparsity=sp)


def _check_steps(info: RoundInfo) -> int:
    if not isinstance(info, RoundInfo):
        raise GradscopeError(f"expected a RoundInfo, got {type(info).__name__}")
    for key in ("steps_per_epoch", "epochs"):
        v = getattr(info, key)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise GradscopeError(f"RoundInfo.{key} must be a positive integer, got {v!r}")
    return info.total_steps


# ----------------------------------------------------------------------------- base
class ScheduleFactory:
    """Base class: a peak rule (``_peak``) plus a within-round shape.

    Subclasses declare ``PEAK_PARAMS`` (name -> default), optional ``PRESETS`` and
    ``DEFAULT_SHAPE``, and implement ``_peak(info)`` and ``_check()``. Parameters live as
    attributes (peak params), ``shape``, ``shape_params`` and ``forced_peak``.
    """

    name: str = ""
    PEAK_PARAMS: dict[str, Any] = {}
    PRESETS: dict[str, dict[str, Any]] = {}
    ALIASES: dict[str, Any] = {}  # old parameter name -> function(value) -> {new name: value}
    DEFAULT_SHAPE: str = "warmup-step"

    def __init__(self, name: Optional[str] = None, **params: Any) -> None:
        if name is not None:
            self.name = str(name)
        self._configure(params)

    # -- parameters
    def _configure(self, params: dict) -> None:
        params = dict(params)
        for old, conv in self.ALIASES.items():
            if old in params:
                params.update(conv(params.pop(old)))
        preset = params.pop("preset", None)
        base: dict = {}
        if preset is not None:
            if preset not in self.PRESETS:
                known = ", ".join(sorted(self.PRESETS)) or "none"
                raise GradscopeError(f"unknown preset {preset!r} for schedule {self.name!r} (presets: {known})")
            base = dict(self.PRESETS[preset])
        merged = V.layer(base, params, self.PEAK_PARAMS)
        shape = get_shape(merged.pop("shape", self.DEFAULT_SHAPE))
        forced = merged.pop("forced_peak", None)
        peak = {k: merged.pop(k, d) for k, d in self.PEAK_PARAMS.items()}
        unknown = sorted(k for k in merged if k not in shape.defaults)
        if unknown:
            allowed = sorted([*self.PEAK_PARAMS, *shape.defaults, "shape", "preset", "forced_peak"])
            raise GradscopeError(f"unknown parameter(s) {', '.join(unknown)} for schedule {self.name!r} "
                                 f"with shape {shape.name!r} (allowed: {', '.join(allowed)})")
        self.preset = preset
        self.shape = shape.name
        self.shape_params = shape.resolve(merged)
        self.forced_peak = None if forced is None else V.num("forced_peak", forced, 0.0, lo_open=True)
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
        new = copy.copy(self)
        new._configure(V.layer(current, kw, self.PEAK_PARAMS))
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

    def span(self, info: RoundInfo) -> tuple[int, int]:
        """(steps of the schedule the round runs a part of, the round's first step in it):
        ``(total_steps, 0)``, the whole shape over the round, except where a subclass says."""
        total = _check_steps(info)
        ep = self.shape_params.get("epochs")
        if self.shape == "silo-released" and info.epochs > 1 and ep != info.epochs:
            raise GradscopeError(f"shape 'silo-released' counts epochs as released ({ep} per round), but the round "
                                 f"has {info.epochs}; pass the shape parameter epochs={info.epochs} (and "
                                 "drop_epochs, ramp_steps for that length) or train --epochs "
                                 f"{ep}")
        return total, 0

    def build(self, optimizer, info: RoundInfo) -> RoundLR:
        """The per-batch LR scheduler of this round (sets the optimizer's LR for step 0)."""
        total = _check_steps(info)
        shape_total, offset = self.span(info)
        return RoundLR(optimizer, total_steps=total, peak=self.peak_lr(info), shape=self.shape,
                       shape_params=self.shape_params, round=info.round, name=self.name,
                       shape_total=shape_total, offset=offset)

    def scheduler(self, optimizer, *, round: int, total_steps: int, sparsity: Optional[float] = None,
                  prune_rate: float = 0.2, **info: Any) -> RoundLR:
        """``build`` for a plain loop: round ``round`` of ``total_steps`` optimizer steps.

        ``sparsity`` defaults to the planned ``1-(1-prune_rate)^round`` (pass the measured
        one if you have it); further RoundInfo fields (prev_sparsity, norm_drop, ...) by name.
        """
        if sparsity is None:
            sparsity = float(planned_pruned_fraction(round, prune_rate, 0))
            info.setdefault("prev_sparsity", float(planned_pruned_fraction(round, prune_rate, 1)))
        return self.build(optimizer, RoundInfo.for_steps(round, total_steps, sparsity=sparsity,
                                                         prune_rate=prune_rate, **info))

    def lrs(self, info: RoundInfo) -> np.ndarray:
        """The LR at every step of the round (closed form, no optimizer needed)."""
        total, peak, shape = _check_steps(info), self.peak_lr(info), get_shape(self.shape)
        shape_total, offset = self.span(info)
        if shape.check_total is not None:
            shape.check_total(shape_total, **self.shape_params)
        return np.array([shape.lr(t + offset, shape_total, peak, self.shape_params) for t in range(total)])

    def __repr__(self) -> str:
        kv = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "name")
        return f"{type(self).__name__}({self.name!r}, {kv})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.params() == self.params()

    __hash__ = None  # mutable


# ----------------------------------------------------------------------------- SILO
# Released SILO constants (Liu et al., docs/references.md; Martin1937/SILO). p = 0.2 as
# released. resnet20/vgg19 approximate the released within-round LR as fractions of the
# round: a linear warm-up over 10 % / 8.75 % (14 of 160 epochs), then max_lr, drops at epochs
# 25/32 of 50 and 80/120 of 160. The released warm-up is stated in the code, not a fraction:
# resnet_20_cifar_10.py l.36-41, 333-336 adds max_lr/20000 per iteration (so at 563 steps per
# epoch the LR never exceeds 0.70·max_lr before the drop at epoch 25), vgg_19_cifar_10.py
# l.38-41, 338-341 max_lr/10000 per iteration until epoch 14. released-resnet20 and
# released-vgg19 are those LRs step for step (shape silo-released; docs/recipe-silo-code.md).
_RELEASED_RESNET20 = {"shape": "silo-released", "epochs": 50, "ramp_steps": 20000, "ramp_cap": True,
                      "hold_epoch": None, "drop_epochs": [25, 32], "factors": [0.1, 0.01]}
_RELEASED_VGG19 = {"shape": "silo-released", "epochs": 160, "ramp_steps": 10000, "ramp_cap": False,
                   "hold_epoch": 14, "drop_epochs": [80, 120], "factors": [0.1, 0.01]}
SILO_PRESETS: dict[str, dict[str, Any]] = {
    "resnet20": {"lo": 0.03, "hi": 0.07, "beta": 5.0, "midpoint": 0.5, "lag": 1, "p": 0.2,
                 "shape": "warmup-step", "warmup": 0.1, "milestones": [0.5, 0.64],
                 "factors": [0.1, 0.01]},
    "vgg19": {"lo": 0.04, "hi": 0.10, "beta": 5.0, "midpoint": 0.5, "lag": 1, "p": 0.2,
              "shape": "warmup-step", "warmup": 0.0875, "milestones": [0.5, 0.75],
              "factors": [0.1, 0.01]},
    # cal(x, beta=5, alpha=0.04, offset=0.03) (resnet_20 l.44-49), max_lr 0.03 until round 1 (delay 1)
    "released-resnet20": {"lo": 0.03, "hi": 0.07, "beta": 5.0, "midpoint": 0.5, "lag": 1, "p": 0.2,
                          **_RELEASED_RESNET20},
    # cal(x, beta=5, alpha=0.06, offset=0.04) (vgg_19 l.46-51), max_lr 0.04 until round 1
    "released-vgg19": {"lo": 0.04, "hi": 0.10, "beta": 5.0, "midpoint": 0.5, "lag": 1, "p": 0.2,
                       **_RELEASED_VGG19},
}

X_MODES = ("planned", "measured")


class SiloSchedule(ScheduleFactory):
    """SILO / S-Cyc: round k's peak is ``s_curve(x_k, lo, hi, beta, midpoint)``.

    ``x="planned"``: ``x_k = 1-(1-p)^(k-lag)`` (p None: the run's ``info.prune_rate``);
    ``x="measured"``: the measured pruned fraction, ``info.prev_sparsity`` for lag 1,
    ``info.sparsity`` for lag 0. Parameters: lo, hi, beta, midpoint, lag, p, x, preset
    (resnet20 | vgg19), shape and the shape's parameters. ``use_measured=True`` is read as
    ``x="measured"`` (older files).
    """

    name = "silo"
    PEAK_PARAMS = {"lo": 0.03, "hi": 0.07, "beta": 5.0, "midpoint": 0.5, "lag": 1, "p": None,
                   "x": "planned"}
    PRESETS = SILO_PRESETS
    ALIASES = {"use_measured": lambda v: {"x": "measured" if V.boolean("use_measured", v) else "planned"}}
    DEFAULT_SHAPE = "warmup-step"

    def _check(self) -> None:
        self.lo = V.lr("lo", self.lo)
        self.hi = V.lr("hi", self.hi)
        if self.hi < self.lo:
            raise GradscopeError(f"schedule parameter 'hi' ({self.hi}) must be >= 'lo' ({self.lo})")
        self.beta = V.num("beta", self.beta, 0.0, lo_open=True)
        self.midpoint = V.num("midpoint", self.midpoint, 0.0, 1.0, lo_open=True, hi_open=True)
        self.lag = V.integer("lag", self.lag, 0, 10_000)
        if self.p is not None:
            self.p = V.num("p", self.p, 0.0, 1.0, lo_open=True, hi_open=True)
        self.x = V.choice("x", self.x, X_MODES)
        if self.x == "measured" and self.lag > 1:
            raise GradscopeError("schedule parameter 'lag' must be 0 or 1 with x='measured' "
                                 "(RoundInfo carries this and the previous round's sparsity only)")

    @property
    def use_measured(self) -> bool:
        return self.x == "measured"

    def pruned_fraction(self, info: RoundInfo) -> float:
        """The x the S-curve is evaluated at for this round."""
        if self.x == "measured":
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
        self.max_lr = V.lr("max_lr", self.max_lr)

    def _peak(self, info: RoundInfo) -> float:
        return self.max_lr


class LrrSchedule(FixedPeakSchedule):
    """LR rewinding (Renda et al. 2020): retraining runs the **last** t epochs of the original
    T-epoch schedule (BIMP's LRW, ``runners/baseRunner.py`` l.531-533, 573-576).

    ``orig_epochs`` = T (None: the round's own epochs, so every round re-runs the whole
    schedule, which is the same thing when all rounds are as long as the original training).
    Round 0 is the original training: the whole schedule over its own epochs. From round 1 a
    round of t ≤ T epochs runs steps ``(T−t)·spe .. T·spe−1`` of the T-epoch schedule. The
    whole schedule squeezed into t epochs is ``slr`` (Le & Hua 2021).
    """

    name = "lrr"
    PEAK_PARAMS = {"max_lr": 0.1, "orig_epochs": None}

    def _check(self) -> None:
        super()._check()
        if self.orig_epochs is not None:
            self.orig_epochs = V.integer("orig_epochs", self.orig_epochs, 1)

    def span(self, info: RoundInfo) -> tuple[int, int]:
        total = _check_steps(info)
        if info.round == 0 or self.orig_epochs is None or self.orig_epochs == info.epochs:
            return total, 0
        if info.epochs > self.orig_epochs:
            raise GradscopeError(f"schedule 'lrr': a round of {info.epochs} epochs cannot rewind into the last "
                                 f"epochs of an original training of orig_epochs={self.orig_epochs}; "
                                 "orig_epochs must be at least --epochs")
        spe = int(info.steps_per_epoch)
        return self.orig_epochs * spe, (self.orig_epochs - info.epochs) * spe


class AllrSchedule(ScheduleFactory):
    """ALLR (Zimmer et al. 2023, BIMP): peak from the relative norm drop of this round's pruning.

    ``peak = allr_peak(info.norm_drop, info.step_pruned, max_lr, info.epochs/orig_epochs)``
    with ``norm_drop = ‖θ−θ_pruned‖/‖θ‖``, ‖θ‖ over the modules' ``weight`` and ``bias`` as
    BIMP computes it (``utilities/utilities.py`` l.18-27); round 0 uses ``max_lr``. ``orig_epochs`` None: the original training
    is as long as a retraining round, so the lower clip ``min(T_retrain/T_orig, 1)·max_lr``
    equals max_lr and ALLR's peak is max_lr every round — by ALLR's own formula, which adapts
    only when retraining is shorter than the original training (pass ``orig_epochs``).
    Shape ``bimp-linear``: BIMP's cosine warm-up from 0 over ``int(0.1·n)`` steps, then linear
    decay to 0 (``curves.bimp_linear_lr``).
    """

    name = "allr"
    PEAK_PARAMS = {"max_lr": 0.1, "orig_epochs": None}
    DEFAULT_SHAPE = "bimp-linear"

    def _check(self) -> None:
        self.max_lr = V.lr("max_lr", self.max_lr)
        if self.orig_epochs is not None:
            self.orig_epochs = V.integer("orig_epochs", self.orig_epochs, 1)

    def _peak(self, info: RoundInfo) -> float:
        if info.round == 0:
            return self.max_lr
        if info.norm_drop is None or info.step_pruned is None:
            raise GradscopeError("schedule 'allr' needs RoundInfo.norm_drop and step_pruned from round 1 on")
        nd = V.num("norm_drop", info.norm_drop, 0.0)
        s = V.num("step_pruned", info.step_pruned, 0.0, 1.0)
        ratio = 1.0 if self.orig_epochs is None else info.epochs / self.orig_epochs
        return allr_peak(nd, s, self.max_lr, ratio)
