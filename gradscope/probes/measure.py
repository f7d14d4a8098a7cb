"""One probe measured as the runner records it: ``repeats`` runs with different probe seeds
(different batches), each under ``preserved`` (the run's state put back), timed; the spread
of the predictor's number over the repeats (CV) and the cost in forward+backward-pass
equivalents (measured wall time / one measured forward+backward at the training batch size)
and as a share of one Oracle round (grid points x seeds x epochs x steps per epoch passes)."""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np
import torch

from gradscope.probes.base import _sync, fwd_bwd_seconds, loss_of, preserved, take_batches
from gradscope.probes.registry import PROBES, cv


def repeat_seed(base: int, r: int) -> int:
    """The probe seed of repeat ``r`` (repeat 0 draws the same batches every round)."""
    return int(np.random.SeedSequence([int(base), int(r), 0x9B0BE]).generate_state(1)[0])


def measure(name: str, model: torch.nn.Module, masks: Optional[Mapping[str, torch.Tensor]],
            loaders: Callable[[int], Iterable], config: Mapping[str, Any], *, repeats: int = 3,
            seed: int = 0, fb_seconds: Optional[float] = None, oracle_passes: Optional[float] = None) -> dict:
    """Run probe ``name`` ``repeats`` times (``loaders(seed)`` gives each repeat's batches);
    return the first repeat's result with the repeats' values, CV, time and cost."""
    spec = PROBES.get(name)
    n = repeats if spec.random else 1
    results, seconds, seeds = [], [], []
    for r in range(n):
        s = repeat_seed(seed, r)
        loader = loaders(s)
        with preserved(model, s):
            t0 = time.perf_counter()
            res = spec.fn(model, masks, loader, {**config, "seed": s})
            _sync(next(model.parameters()).device)
            seconds.append(time.perf_counter() - t0)
        results.append(res)
        seeds.append(s)
    if fb_seconds is None:
        with preserved(model, seed):
            fb_seconds = fwd_bwd_seconds(model, take_batches(loaders(seed), 1)[0], loss_of(config), masks)
    values = {v or "value": [spec.value(res, v) for res in results] for v in spec.variants}
    sec = float(np.median(seconds))
    fb_equiv = sec / fb_seconds if fb_seconds > 0 else None
    return {"probe": name, "result": results[0], "values": values,
            "cv": {k: cv(vs) for k, vs in values.items()}, "repeats": n, "seeds": seeds,
            "seconds": seconds, "fb_seconds": fb_seconds, "fb_equiv": fb_equiv,
            "passes_counted": results[0].get("passes"),
            "oracle_round_passes": oracle_passes,
            "share_of_oracle_round": (fb_equiv / oracle_passes) if fb_equiv is not None and oracle_passes else None}
