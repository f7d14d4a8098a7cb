"""``noise-scale``: the simple gradient noise scale B_simple = tr(Σ)/|G|² (McCandlish et al.
2018), from their two-batch estimator, on the surviving weights.

With minibatch gradients of size B_small (one training batch each, BatchNorm on its batch
statistics) and their mean over n batches as the gradient of size B_big = n·B_small,
E|G_B|² = |G|² + tr(Σ)/B gives the unbiased estimates
  |G|²  = (B_big |G_big|² − B_small |G_small|²) / (B_big − B_small),
  tr(Σ) = (|G_small|² − |G_big|²) / (1/B_small − 1/B_big),
with |G_small|² the mean over the n small batches (their appendix A). The big-batch gradient is
the mean of the small ones, not one pass over n·B examples, so that BatchNorm sees the
training batch size throughout. The ratio of the two estimates is biased for few batches; n is
``batches`` (default 8). ε_opt's B_noise (which needs tr(HΣ)) is not computed.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from gradscope import GradscopeError
from gradscope.probes.base import Functional, equal_batches, finite, loss_of

DEFAULTS = {"batches": 8}


def probe(model: torch.nn.Module, masks: Optional[Mapping[str, torch.Tensor]], loader, config: Mapping[str, Any]) -> dict:
    """B_simple, |G|², tr(Σ), the batch size, and the implied LR factor 1/(1 + B_simple/B)."""
    c = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    n = int(c["batches"])
    if n < 2:
        raise GradscopeError("noise-scale needs at least 2 batches (the two-batch estimator)")
    f = Functional(model, masks, loss_of(c))
    batches, b_small = equal_batches(loader, n, "noise-scale")
    params = {k: p.requires_grad_(True) for k, p in f.params.items()}
    names = list(params)
    total = None
    sq_small = 0.0
    for x, y in batches:
        loss = f.loss(params, x, y)
        finite(float(loss.detach()), "the loss")
        g = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
        g = f.project({k: (gi if gi is not None else torch.zeros_like(params[k])) for k, gi in zip(names, g)})
        vec = torch.cat([g[k].reshape(-1).double() for k in names])
        sq_small += float(vec.pow(2).sum())
        total = vec if total is None else total + vec
    n = len(batches)
    sq_small /= n
    sq_big = float((total / n).pow(2).sum())
    b_big = n * b_small
    g2 = (b_big * sq_big - b_small * sq_small) / (b_big - b_small)
    tr = (sq_small - sq_big) / (1 / b_small - 1 / b_big)
    b_simple = tr / g2 if g2 > 0 else None
    return {"b_simple": b_simple, "grad_sq": g2, "trace_sigma": tr, "batch_size": b_small, "batches": n,
            "lr_factor": (1 / (1 + b_simple / b_small)) if b_simple is not None and b_simple > 0 else None,
            "note": None if g2 > 0 else "|G|^2 estimate <= 0: the gradient is below the noise at this batch count",
            "passes": float(n)}
