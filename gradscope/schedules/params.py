"""Schedule parameters: validators and the one rule for layering parameters on defaults.

``layer(base, override)`` is how every source of parameters combines (registry defaults,
presets, a schedule file, CLI flags, ``with_params``): the override wins; an override that
names a ``preset`` resets what the base said (except a forced peak); an override that changes
the ``shape`` drops the base's parameters of the old shape.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import numpy as np

from gradscope import GradscopeError

META = ("name", "preset", "shape", "forced_peak")  # parameters that are not a peak rule's or a shape's


def num(key: str, v: Any, lo: float = -math.inf, hi: float = math.inf,
        lo_open: bool = False, hi_open: bool = False) -> float:
    """``v`` as a finite float in the given interval, else a GradscopeError naming ``key``."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise GradscopeError(f"schedule parameter {key!r} must be a number, got {v!r}")
    v = float(v)
    bad = (not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi))
    if bad:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise GradscopeError(f"schedule parameter {key!r} must be in {rng}, got {v!r}")
    return v


# A peak LR outside this range is a typo: float32 underflows below, every step diverges above.
LR_MIN, LR_MAX = 1e-12, 1e3


def lr(key: str, v: Any) -> float:
    """``v`` as a learning rate in [LR_MIN, LR_MAX]."""
    return num(key, v, LR_MIN, LR_MAX)


def integer(key: str, v: Any, lo: int = 0, hi: Optional[int] = None) -> int:
    """``v`` as an int in [lo, hi] (an integral float is accepted)."""
    ok = not isinstance(v, bool) and isinstance(v, (int, np.integer, float)) and \
        (not isinstance(v, float) or math.isfinite(v)) and int(v) == v and v >= lo and (hi is None or v <= hi)
    if not ok:
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise GradscopeError(f"schedule parameter {key!r} must be an integer {rng}, got {v!r}")
    return int(v)


def boolean(key: str, v: Any) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise GradscopeError(f"schedule parameter {key!r} must be true or false, got {v!r}")
    return bool(v)


def choice(key: str, v: Any, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if v not in allowed:
        raise GradscopeError(f"schedule parameter {key!r} must be one of {', '.join(allowed)}, got {v!r}")
    return str(v)


def fractions(key: str, v: Any, lo_open: bool = True) -> list[float]:
    """A number or list of numbers, each a fraction in (0, 1]."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise GradscopeError(f"schedule parameter {key!r} must be a list of numbers, got {v!r}")
    return [num(key, x, 0.0, 1.0, lo_open=lo_open) for x in v]


def positives(key: str, v: Any) -> list[float]:
    """A number or list of numbers, each > 0."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise GradscopeError(f"schedule parameter {key!r} must be a list of numbers, got {v!r}")
    return [num(key, x, 0.0, lo_open=True) for x in v]


def layer(base: dict, override: dict, peak_names: Iterable[str]) -> dict:
    """``override`` on top of ``base`` under the rules in the module docstring."""
    base = dict(base)
    if override.get("preset") is not None:  # a preset replaces what the base said
        base = {k: v for k, v in base.items() if k == "forced_peak"}
    if "shape" in override and override["shape"] != base.get("shape", override["shape"]):
        keep = set(peak_names) | set(META)
        base = {k: v for k, v in base.items() if k in keep}
    return {**base, **override}
