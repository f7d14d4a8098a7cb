"""Pure learning-rate math: the SILO S-curve of peaks over rounds, and within-round shapes.

Every function here is a closed form of its arguments (no state), so schedulers built on
them survive pickling, ``state_dict`` round-trips and mid-round resumes exactly.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
from scipy.special import expit, logit

from gradscope.rounds import pruned_fraction

__all__ = [
    "s_curve", "planned_pruned_fraction", "allr_peak",
    "warmup_step_lr", "one_cycle_lr", "one_cycle_momentum", "triangular_lr", "triangular_momentum",
    "cosine_lr", "linear_lr", "constant_lr", "bimp_linear_lr", "silo_released_lr", "milestone_step",
]


# ----------------------------------------------------------------------------- peaks
def s_curve(x, lo: float, hi: float, beta: float, midpoint: float = 0.5):
    """SILO's S-curve ``lo + (hi - lo)·sigmoid(β·(logit(x) − logit(midpoint)))``.

    With midpoint 0.5 this is the released ``lo + (hi−lo)·x^β/(x^β + (1−x)^β)``; x ≤ 0 gives
    ``lo`` and x ≥ 1 gives ``hi``. Vectorised over numpy arrays; a scalar in gives a float out.
    """
    xa = np.asarray(x, dtype=float)
    inner = np.clip(xa, 1e-300, 1.0 - 1e-16)  # keep logit finite; ends are set below
    frac = expit(beta * (logit(inner) - logit(midpoint)))
    frac = np.where(xa <= 0.0, 0.0, np.where(xa >= 1.0, 1.0, frac))
    out = lo + (hi - lo) * frac
    return float(out) if out.ndim == 0 else out


def planned_pruned_fraction(k, p: float, lag: int = 1):
    """Pruned fraction SILO uses in round k: ``1 − (1 − p)^(k − lag)``, 0 for k ≤ lag.

    Round 0 is the dense net; each later round prunes a fraction p of the remaining weights,
    so round k has pruned ``1 − (1 − p)^k``; the lag looks back ``lag`` rounds
    (``gradscope.rounds.pruned_fraction`` with a lag).
    """
    return pruned_fraction(k, p, lag)


def allr_peak(norm_drop: float, step_pruned: float, max_lr: float, retrain_ratio: float = 1.0) -> float:
    """ALLR peak (Zimmer et al. 2023): ``clip(norm_drop/√s · η_max, min(ratio, 1)·η_max, η_max)``.

    ``norm_drop = ‖θ−θ_pruned‖/‖θ‖``, ``s`` = fraction pruned in this step, ``ratio`` =
    T_retrain/T_orig. When nothing was pruned (s = 0) the estimate is taken as 0 (lower bound).
    """
    low = min(retrain_ratio, 1.0) * max_lr
    est = 0.0 if step_pruned <= 0 else norm_drop / math.sqrt(step_pruned) * max_lr
    return float(min(max(est, low), max_lr))


# ----------------------------------------------------------------------------- shapes
# Each shape maps (t, total, peak, **params) -> lr for step t = 0..total-1 of a round.
# Steps past the end of the round hold the last step's value.

def _clamp_step(t: int, total: int) -> int:
    return min(max(int(t), 0), total - 1)


def _warmup_steps(warmup: float, total: int) -> int:
    return int(round(warmup * total))


def milestone_step(m: float, total: int) -> int:
    """The first step at the LR after a drop at fraction ``m`` of ``total`` steps: ``floor(m·total)``.

    Floor, as ``torch.optim.lr_scheduler.MultiStepLR`` on whole epochs: with one step per
    epoch a drop at 0.5 of 5 epochs lands on epoch 2 (round() would give 2 for 5 and 3 for 7,
    banker's rounding moving T = 5, 9, 13 one way and 3, 7, 11 the other). The 1e-9 absorbs
    float error so that a fraction written as ``136/182`` lands on epoch 136 exactly.
    """
    return int(math.floor(m * total + 1e-9))


def warmup_step_lr(t: int, total: int, peak: float, warmup: float = 0.0,
                   milestones: Sequence[float] = (0.5, 0.75),
                   factors: Sequence[float] = (0.1, 0.01), warmup_start: int = 1) -> float:
    """Linear warm-up then step decay, all as fractions of the round's ``total`` steps.

    Warm-up over the first ``W = round(warmup·total)`` steps: ``peak·(t+s)/W`` with
    ``s = warmup_start``; s = 1 (gradscope's default) starts near 0 and peaks at step W−1;
    s = 0 is open_lth's ``lr·min(1, it/W)`` (``training/optimizers.py`` l.46-48): 0 at step 0,
    the peak at step W. From step ``milestone_step(m_i, total)`` (floor) on the LR is
    ``peak·factors[i]`` (factors are absolute multipliers of the peak, e.g. 0.1 then 0.01).
    """
    t = _clamp_step(t, total)
    w = _warmup_steps(warmup, total)
    lr = peak * min(1.0, (t + warmup_start) / w) if w > 0 else peak
    for m, f in zip(milestones, factors):
        if t >= milestone_step(m, total):
            lr = peak * f
    return float(lr)


def _one_cycle_phases(total: int, pct_start: float, three_phase: bool) -> list[float]:
    """End steps of the 1cycle phases, as ``torch.optim.lr_scheduler.OneCycleLR`` computes them."""
    if three_phase:
        return [float(pct_start * total) - 1, float(2 * pct_start * total) - 2, total - 1]
    return [float(pct_start * total) - 1, total - 1]


def _phase_value(t: int, ends: Sequence[float], values: Sequence[tuple[float, float]], anneal: str) -> float:
    start_step = 0.0
    for i, (end_step, (a, b)) in enumerate(zip(ends, values)):
        if t <= end_step or i == len(ends) - 1:
            span = end_step - start_step
            pct = (t - start_step) / span if span != 0 else 1.0
            if anneal == "cos":
                return float(b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1))
            return float((b - a) * pct + a)
        start_step = end_step
    raise AssertionError("unreachable")


def one_cycle_lr(t: int, total: int, peak: float, pct_start: float = 0.3,
                 div_factor: float = 25.0, final_div_factor: float = 1e4,
                 anneal: str = "cos", three_phase: bool = False, **momentum: float) -> float:
    """The 1cycle policy, step for step the formula of ``torch.optim.lr_scheduler.OneCycleLR``.

    ``momentum`` (cycle_momentum, base_momentum, max_momentum) does not change the LR; see
    ``one_cycle_momentum``.
    """
    t = _clamp_step(t, total)
    initial = peak / div_factor
    min_lr = initial / final_div_factor
    values = ([(initial, peak), (peak, initial), (initial, min_lr)] if three_phase
              else [(initial, peak), (peak, min_lr)])
    return _phase_value(t, _one_cycle_phases(total, pct_start, three_phase), values, anneal)


def one_cycle_momentum(t: int, total: int, pct_start: float = 0.3, base_momentum: float = 0.85,
                       max_momentum: float = 0.95, anneal: str = "cos", three_phase: bool = False) -> float:
    """OneCycleLR's momentum at step t: max -> base while the LR rises, then back to max."""
    t = _clamp_step(t, total)
    values = ([(max_momentum, base_momentum), (base_momentum, max_momentum), (max_momentum, max_momentum)]
              if three_phase else [(max_momentum, base_momentum), (base_momentum, max_momentum)])
    return _phase_value(t, _one_cycle_phases(total, pct_start, three_phase), values, anneal)


def _triangle(t: int, total: int, cycles: int) -> float:
    """0 at the cycle's ends, 1 at its middle: CyclicLR's triangular scale at step t."""
    half = total / (2.0 * cycles)
    cycle = math.floor(1 + t / (2 * half))
    x = abs(t / half - 2 * cycle + 1)
    return max(0.0, 1.0 - x)


def triangular_lr(t: int, total: int, peak: float, cycles: int = 1, div_factor: float = 10.0,
                  **momentum: Any) -> float:
    """Triangular cyclical LR (Smith): ``cycles`` triangles per round between peak/div and peak.

    Same formula as ``CyclicLR(mode='triangular')`` with ``step_size_up = total/(2·cycles)``.
    ``momentum`` (cycle_momentum, base_momentum, max_momentum) does not change the LR; see
    ``triangular_momentum``.
    """
    t = _clamp_step(t, total)
    base = peak / div_factor
    return float(base + (peak - base) * _triangle(t, total, cycles))


def triangular_momentum(t: int, total: int, cycles: int = 1, base_momentum: float = 0.8,
                        max_momentum: float = 0.9) -> float:
    """CyclicLR's momentum (its defaults 0.8-0.9): max where the LR is lowest, base at its peak."""
    t = _clamp_step(t, total)
    return float(max_momentum - (max_momentum - base_momentum) * _triangle(t, total, cycles))


def cosine_lr(t: int, total: int, peak: float, warmup: float = 0.0, eta_min: float = 0.0) -> float:
    """Optional linear warm-up (as in warmup-step), then cosine annealing to ``eta_min``.

    Without warm-up this is ``CosineAnnealingLR(T_max=total, eta_min)``'s closed form.
    """
    t = _clamp_step(t, total)
    w = min(_warmup_steps(warmup, total), total - 1)
    if t < w:
        return float(peak * (t + 1) / w)
    span = total - w
    return float(eta_min + (peak - eta_min) * (1 + math.cos(math.pi * (t - w) / span)) / 2)


def linear_lr(t: int, total: int, peak: float, warmup: float = 0.0, end_factor: float = 0.0) -> float:
    """Optional linear warm-up, then linear decay from the peak towards ``peak·end_factor``.

    With no warm-up and end_factor 0 this is the linear LR restarting (LLR) of Zimmer et al.
    """
    t = _clamp_step(t, total)
    w = min(_warmup_steps(warmup, total), total - 1)
    if t < w:
        return float(peak * (t + 1) / w)
    frac = (t - w) / (total - w)
    return float(peak * (1.0 - (1.0 - end_factor) * frac))


def constant_lr(t: int, total: int, peak: float) -> float:
    """The peak at every step."""
    return float(peak)


def bimp_linear_lr(t: int, total: int, peak: float, warmup: float = 0.1) -> float:
    """BIMP's LLR/ALLR retraining LR (Zimmer et al., ``runners/baseRunner.py`` l.526, 551-563, 595-608).

    ``W = int(warmup·n)`` (BIMP: ``int(0.1 * n_total_iterations)``); steps 0..W rise as
    ``CosineAnnealingLR(T_max=W, eta_min=peak)`` from an LR of 0, i.e. ``peak·(1−cos(πt/W))/2``
    (0 at step 0, the peak at step W); step W+1 holds the peak (BIMP's SequentialLR switches
    at milestone W+1) and ``LinearLR`` then decays, ``peak·(1 − (t−W−1)/(n−W))``. Without
    warm-up (W = 0) it is ``LinearLR`` alone: ``peak·(1 − t/n)``.
    """
    t = _clamp_step(t, total)
    w = int(warmup * total)
    if w <= 0:
        return float(peak * (1.0 - t / total))
    if t <= w:
        return float(peak * (1.0 - math.cos(math.pi * t / w)) / 2.0)
    return float(peak * max(0.0, 1.0 - (t - w - 1) / (total - w)))


def silo_released_lr(t: int, total: int, peak: float, epochs: int = 50, ramp_steps: int = 20000,
                     ramp_cap: bool = True, hold_epoch: Optional[int] = None,
                     drop_epochs: Sequence[int] = (25, 32), factors: Sequence[float] = (0.1, 0.01)) -> float:
    """The within-round LR of the released SILO scripts (Martin1937/SILO), per optimizer step.

    ``resnet_20_cifar_10.py`` l.36-41, 333-341 (the defaults): the LR grows by
    ``peak/ramp_steps`` per iteration (``it = t+1``, counted over the round), up to iteration
    ``ramp_steps`` (``ramp_cap``), and is ``peak·factors[i]`` from epoch ``drop_epochs[i]`` on.
    ``vgg_19_cifar_10.py`` l.38-41, 336-345: ramp_steps 10000 without a cap, ``hold_epoch``
    14 (the peak from epoch 14), drops at 80 and 120 of 160. The round's ``total`` steps must
    be ``epochs`` whole epochs (steps per epoch = total/epochs), as the released loop counts
    epochs; the caller checks that (``shapes``).
    """
    t = _clamp_step(t, total)
    spe = total // int(epochs)
    epoch, it = t // spe, t + 1
    lr = peak * (min(it, ramp_steps) if ramp_cap else it) / ramp_steps
    if hold_epoch is not None and epoch >= hold_epoch:
        lr = peak
    for d, f in zip(drop_epochs, factors):
        if epoch >= d:
            lr = peak * f
    return float(lr)
