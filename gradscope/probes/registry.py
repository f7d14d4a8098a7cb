"""The probe registry: what each probe measures (its function), which number of its result a
predictor reads, and that number's implied-max_lr rule with one constant fitted on round 0.

Cockpit (f-dangel/cockpit) splits a quantity's *what* (``cockpit/quantities/``: the
computation) from its *when* (a track schedule). Here the *what* is a probe function
``probe(model, masks, loader, config) -> dict`` in its own module, registered below; the
*when* is ``gradscope.probes.callback.ProbeCallback`` (round start, after one epoch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from gradscope import GradscopeError
from gradscope.probes import bn_norm, eps_opt, lr_free, lr_range, noise_scale, norm_drop, sharpness
from gradscope.registry import Registry


def _ratio(v_k: float, v_0: float, max_lr0: float) -> float:
    return max_lr0 * v_k / v_0


def _inverse(v_k: float, v_0: float, max_lr0: float) -> float:
    return max_lr0 * v_0 / v_k


@dataclass(frozen=True)
class ProbeSpec:
    """A probe: ``fn`` measures; ``value(result, variant)`` is the number a predictor reads;
    ``implied(v_k, v_0, max_lr0)`` the max_lr it implies (the constant max_lr0/v_0 or
    max_lr0·v_0 is fitted on round 0, or on round 1 for norm-drop, which ``needs`` a pruning);
    ``random``: repeats with other seeds differ."""

    name: str
    fn: Callable[..., dict]
    value: Callable[[dict, str], Optional[float]]
    implied: Callable[[float, float, float], float]
    rule: str  # the implied rule in words
    label: str = "value"  # what value() is, for printing
    variants: tuple = ("",)
    random: bool = True
    needs: tuple = field(default=())  # RoundInfo fields the probe reads from its config


def _lr_value(r: dict, variant: str) -> Optional[float]:
    v = variant or "valley"
    if v == "divergence":
        return r.get("divergence_lr")
    if v not in lr_range.RULES:
        raise GradscopeError(f"unknown lr-range rule {v!r}; known: {', '.join(lr_range.RULES + ('divergence',))}")
    return (r.get("suggestions") or {}).get(v)


def _nd_value(r: dict, variant: str) -> Optional[float]:
    return r.get("estimate")


PROBES: Registry[ProbeSpec] = Registry("probe", "--probes")
PROBES.register("lr-range", ProbeSpec(
    "lr-range", lr_range.probe, _lr_value, _ratio,
    "max_lr(k) = max_lr(0) * suggestion(k) / suggestion(0)", "suggested LR (fastai valley)",
    ("valley", *lr_range.RULES[1:], "divergence")))
def _sharp_value(r: dict, variant: str) -> Optional[float]:
    if variant == "bn-blocks":  # the sharpest BatchNorm block, scale-free (lambda_b * ||w_b||^2)
        vals = [b.get("lambda_norm_sq") for b in (r.get("blocks") or {}).values()]
        vals = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
        return max(vals) if vals else None
    return r.get("lambda_max")


PROBES.register("sharpness", ProbeSpec(
    "sharpness", sharpness.probe, _sharp_value, _inverse,
    "max_lr(k) = max_lr(0) * lambda_max(0) / lambda_max(k) (a constant share of the stability limit 2(1+beta)/lambda; "
    "variant bn-blocks: s = max over BatchNorm-fed blocks of lambda_b * ||w_b||^2 in place of lambda_max)",
    "lambda_max of the loss Hessian (surviving weights)", ("", "bn-blocks")))
PROBES.register("bn-norm", ProbeSpec(
    "bn-norm", bn_norm.probe, lambda r, v: r.get("ratio"), _ratio,
    "max_lr(k) = max_lr(0) * r(k) / r(0) (keeps round 0's BatchNorm effective LR)",
    "kept squared-norm ratio r of BN-fed layers (pooled by parameter count)", random=False))
PROBES.register("noise-scale", ProbeSpec(
    "noise-scale", noise_scale.probe, lambda r, v: r.get("lr_factor"), _ratio,
    "max_lr(k) = max_lr(0) * f(k) / f(0), f = 1 / (1 + B_simple / B) (McCandlish's optimal-LR factor)",
    "LR factor 1/(1 + B_simple/B)"))
PROBES.register("eps-opt", ProbeSpec(
    "eps-opt", eps_opt.probe, lambda r, v: r.get("eps_opt"), _ratio,
    "max_lr(k) = max_lr(0) * eps_opt(k) / eps_opt(0), eps_opt = eps_max / (1 + B_noise / B) (McCandlish's optimal step)",
    "McCandlish's eps_opt at the batch size"))
PROBES.register("lr-free", ProbeSpec(
    "lr-free", lr_free.probe, lambda r, v: r.get("step_lr"), _ratio,
    "max_lr(k) = max_lr(0) * s(k) / s(0), s = D-Adaptation SGD's step d*lr/|g0| (Prodigy's d*lr for AdamW) after "
    "a short masked probe",
    "LR-free optimizer's step size (D-Adaptation SGD / Prodigy)"))
PROBES.register("norm-drop", ProbeSpec(
    "norm-drop", norm_drop.probe, _nd_value, _ratio,
    "max_lr(k) = max_lr(0) * e(k) / e(1), e = norm_drop / sqrt(step pruned) (ALLR's estimate, unclipped; "
    "round 0 has no norm drop, so the constant is fitted on round 1)",
    "ALLR estimate norm_drop/sqrt(step pruned)", random=False, needs=("norm_drop", "step_pruned")))

PRESETS = {"cheap": ("bn-norm", "norm-drop", "noise-scale"),
           "all": ("lr-range", "sharpness", "bn-norm", "noise-scale", "norm-drop", "eps-opt", "lr-free")}


def parse_probes(text: Optional[str]) -> list[str]:
    """``--probes`` text (names and preset names, comma-separated) -> registered names, in order."""
    if text is None or not str(text).strip():
        return []
    out: list[str] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            names = PRESETS[part.lower()] if part.lower() in PRESETS else (PROBES.key(part),)
        except GradscopeError as e:
            raise GradscopeError(f"{e}; presets: {', '.join(f'{k} ({chr(44).join(v)})' for k, v in PRESETS.items())}") from None
        for n in names:
            if n not in out:
                out.append(n)
    return out


def split_predictor(name: str) -> tuple[ProbeSpec, str]:
    """``"lr-range:steep"`` -> (the lr-range spec, "steep"); a bare name takes the first variant."""
    base, _, variant = str(name).partition(":")
    spec = PROBES.get(base)
    if variant and variant not in spec.variants:
        raise GradscopeError(f"predictor {name!r}: {spec.name} has no variant {variant!r}; known: "
                             f"{', '.join(v for v in spec.variants if v) or 'none'}")
    return spec, variant or spec.variants[0]


def cv(values) -> Optional[float]:
    """Coefficient of variation (sample std / |mean|) of repeated measurements; None if undefined."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    if m == 0:
        return None
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return s / abs(m)
