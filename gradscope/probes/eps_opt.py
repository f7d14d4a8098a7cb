"""``eps-opt``: McCandlish et al. (2018)'s optimal step size of plain SGD at the training batch
size B, from the local quadratic model of the loss on the surviving weights:

    ε_max = |G|² / (GᵀHG),   B_noise = tr(HΣ) / (GᵀHG),   ε_opt(B) = ε_max / (1 + B_noise / B)

(their eqs. 2.6-2.8; Σ is the per-example gradient covariance). From ``batches`` = n training
batches of size B (BatchNorm on each batch's statistics, as in training): per-batch gradients
g_i, their mean Ḡ and deviations d_i = g_i − Ḡ, Cov(g_i) = Σ/B. With H the Hessian of the mean
loss over the first ``hessian_batches`` of them (exact Hessian-vector products, double
backward, the sharpness probe's ``HVP``):

    tr(HΣ)  = B/(n−1) · Σ_i d_iᵀ H d_i          (n Hessian-vector products)
    tr(Σ)   = B/(n−1) · Σ_i |d_i|²
    GᵀHG    = ḠᵀHḠ − tr(HΣ)/(nB),   |G|² = |Ḡ|² − tr(Σ)/(nB)   (E ḠᵀHḠ = GᵀHG + tr(HΣ)/(nB))

Why not a library: the quantities are a few lines on top of the Hessian-vector products the
sharpness probe already makes on the masked functional copy (torch.func transforms refuse
BatchNorm's in-place running-stat update in train mode; see ``sharpness``). H estimated from the
same batches as the deviations is correlated with them; ``hessian_batches`` < n weakens that.
With GᵀHG ≤ 0 (the gradient points along negative curvature) the quadratic model has no
optimal step: ε is None and the record says why. ε_opt is a step of SGD without momentum;
with momentum β the comparable LR is (1−β)·ε_opt, a constant factor the implied-max_lr rule's
round-0 constant absorbs.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from gradscope import GradscopeError
from gradscope.probes.base import Functional, equal_batches, finite, loss_of
from gradscope.probes.sharpness import HVP

DEFAULTS = {"batches": 4, "hessian_batches": None}


def _dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    return float(sum((a[n].double() * b[n].double()).sum() for n in a))


def probe(model: torch.nn.Module, masks: Optional[Mapping[str, torch.Tensor]], loader, config: Mapping[str, Any]) -> dict:
    """ε_opt at the batch size, ε_max, B_noise, tr(HΣ), GᵀHG, |G|², tr(Σ), B_simple."""
    c = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    n = int(c["batches"])
    if n < 2:
        raise GradscopeError("eps-opt needs at least 2 batches (gradient deviations between batches)")
    f = Functional(model, masks, loss_of(c))
    batches, b = equal_batches(loader, n, "eps-opt")
    n = len(batches)
    m = min(int(c["hessian_batches"] or n), n)
    hvp = HVP(f, batches[:m])
    params, names = hvp.params, list(hvp.params)
    grads = []
    for x, y in batches:
        loss = f.loss(params, x, y)
        finite(float(loss.detach()), "the loss")
        g = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
        grads.append(f.project({k: (gi.detach() if gi is not None else torch.zeros_like(params[k]))
                                for k, gi in zip(names, g)}))
    mean = {k: sum(g[k] for g in grads) / n for k in names}
    devs = [{k: g[k] - mean[k] for k in names} for g in grads]
    tr_hs = b / (n - 1) * sum(_dot(d, f.project(hvp(d))) for d in devs)
    tr_s = b / (n - 1) * sum(_dot(d, d) for d in devs)
    ghg = _dot(mean, f.project(hvp(mean))) - tr_hs / (n * b)
    g2 = _dot(mean, mean) - tr_s / (n * b)
    note = None
    if ghg <= 0 or g2 <= 0:
        eps_max = b_noise = eps = None
        note = ("G^T H G <= 0: the gradient points along non-positive curvature, the quadratic model has no "
                "optimal step" if ghg <= 0 else "|G|^2 estimate <= 0: the gradient is below the noise at this batch count")
    else:
        eps_max, b_noise = g2 / ghg, tr_hs / ghg
        eps = eps_max / (1 + b_noise / b)
    return {"eps_opt": eps, "eps_max": eps_max, "b_noise": b_noise, "trace_h_sigma": tr_hs, "gHg": ghg,
            "grad_sq": g2, "trace_sigma": tr_s, "b_simple": (tr_s / g2) if g2 > 0 else None, "batch_size": b,
            "batches": n, "hessian_batches": m, "hvps": hvp.count, "note": note,
            "passes": float(n + 2 * hvp.count * m + m)}  # an HVP ~ 2 forward+backward passes per batch
