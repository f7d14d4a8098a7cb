"""Synthetic probes with a known answer, for the silo-auto --predictor tests: their value is a
fixed function of the round's density (kept fraction of the prunable weights), so the implied
max_lr curve is known exactly. ``register()`` adds them to gradscope's probe registry; run as a
script, it registers them and runs the gradscope CLI (the kill-and-resume subprocesses)."""
from __future__ import annotations

import sys


def _density(masks) -> float:
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return kept / total if total else 1.0


def rise(model, masks, loader, config) -> dict:
    """1 / density: the implied max_lr (rule max_lr(0) * v_k / v_0) grows as 1 / density."""
    return {"value": 1.0 / _density(masks), "passes": 0}


def flat(model, masks, loader, config) -> dict:
    """A constant: the implied max_lr is round 0's every round."""
    return {"value": 2.0, "passes": 0}


def register() -> None:
    from gradscope.probes.registry import PROBES, ProbeSpec, _ratio

    PROBES.register("test-rise", ProbeSpec("test-rise", rise, lambda r, v: r.get("value"), _ratio,
                                           "max_lr(k) = max_lr(0) * v(k) / v(0)", "1/density", random=False))
    PROBES.register("test-flat", ProbeSpec("test-flat", flat, lambda r, v: r.get("value"), _ratio,
                                           "max_lr(k) = max_lr(0) * v(k) / v(0)", "constant 2", random=False))


if __name__ == "__main__":
    register()
    from gradscope.cli import main

    sys.exit(main(sys.argv[1:]))
