"""Probes: pure measurements of a round's starting network that predict its max_lr.

Each probe is ``probe(model, masks, loader, config) -> dict`` in its own module (``lr_range``,
``sharpness``, ``bn_norm``, ``noise_scale``, ``norm_drop``) and leaves the model, masks,
BatchNorm statistics, RNG streams and any optimizer exactly as found (``base``). ``PROBES`` and
``PRESETS`` name them; ``measure`` runs one with repeats and cost; ``ProbeCallback`` runs them
per round in a training run; results live in RUN/probes.json (``gradscope.store.probes``).
"""
from gradscope.probes.base import Functional, bn_followed, param_masks, preserved
from gradscope.probes.measure import measure, repeat_seed
from gradscope.probes.registry import PRESETS, PROBES, ProbeSpec, cv, parse_probes, split_predictor

__all__ = ["Functional", "PRESETS", "PROBES", "ProbeSpec", "bn_followed", "cv", "measure", "param_masks",
           "parse_probes", "preserved", "repeat_seed", "split_predictor"]
