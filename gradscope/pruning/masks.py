"""Pruning math as small pure functions: scores -> masks, sparsity bookkeeping.

Masks are bool tensors keyed by layer name (True = kept). Nothing here touches a module.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from gradscope import GradscopeError
from gradscope.rounds import pruned_fraction

Masks = dict[str, torch.Tensor]


def target_sparsity(round_: int, prune_rate: float) -> float:
    """Pruned fraction after ``round_`` rounds of pruning ``prune_rate`` of what remains."""
    return float(pruned_fraction(round_, prune_rate))


def check_schedule(total: int, rounds: int, prune_rate: float) -> None:
    """Refuse a prune rate or round count that would prune every weight."""
    if not 0.0 < prune_rate < 1.0:
        raise GradscopeError(f"--prune-rate must be in (0, 1) (a fraction of the remaining weights); got {prune_rate}")
    if rounds < 1:
        raise GradscopeError(f"--rounds must be at least 1; got {rounds}")
    last = target_sparsity(rounds - 1, prune_rate)
    if round(total * last) >= total:
        raise GradscopeError(
            f"{rounds} rounds at prune rate {prune_rate} would prune all {total} prunable weights "
            f"(100 % sparsity); use fewer rounds or a lower --prune-rate")


def magnitude_scores(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: w.detach().abs().float() for k, w in weights.items()}


def random_scores(weights: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {k: torch.rand(w.shape, generator=generator) for k, w in weights.items()}


def _keep_top(scores: torch.Tensor, mask: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Keep exactly the ``n_keep`` highest-scoring entries among those still kept."""
    s = torch.where(mask, scores, torch.full_like(scores, -math.inf)).flatten()
    keep = torch.zeros_like(s, dtype=torch.bool)
    if n_keep > 0:
        keep[torch.topk(s, n_keep, sorted=False).indices] = True
    return keep.view_as(mask)


def global_masks(scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], target: float) -> Masks:
    """Prune globally (one threshold for all layers) until ``target`` of all weights are pruned."""
    names = list(scores)
    total = sum(masks[n].numel() for n in names)
    n_keep = total - int(round(total * target))
    kept_now = sum(int(masks[n].sum()) for n in names)
    n_keep = min(n_keep, kept_now)
    flat_s = torch.cat([scores[n].flatten().cpu() for n in names])
    flat_m = torch.cat([masks[n].flatten().cpu() for n in names])
    keep = _keep_top(flat_s, flat_m, n_keep)
    out, i = {}, 0
    for n in names:
        k = masks[n].numel()
        out[n] = keep[i:i + k].view(masks[n].shape)
        i += k
    return out


def layerwise_masks(scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], target: float) -> Masks:
    """Prune each layer separately until ``target`` of its weights are pruned."""
    out = {}
    for n, s in scores.items():
        m = masks[n].cpu()
        n_keep = min(m.numel() - int(round(m.numel() * target)), int(m.sum()))
        out[n] = _keep_top(s.cpu(), m, max(n_keep, 1))
    return out


def sparsity(masks: Mapping[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    """Global and per-layer pruned fraction."""
    per = {n: 1.0 - float(m.sum()) / m.numel() for n, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    pruned = sum(m.numel() - int(m.sum()) for m in masks.values())
    return (pruned / total if total else 0.0), per


def check_sparsity(masks: Mapping[str, torch.Tensor], target: float, method: str) -> float:
    """Raise if the achieved sparsity misses the target (pruning nothing by mistake is common)."""
    achieved, per = sparsity(masks)
    total = sum(m.numel() for m in masks.values())
    if method == "layerwise":
        for n, s in per.items():
            tol = 1.5 / masks[n].numel()
            if abs(s - target) > tol:
                raise GradscopeError(f"layer {n}: achieved sparsity {s:.4f} != target {target:.4f}")
    tol = (len(masks) + 1) / total if method == "layerwise" else 1.5 / total
    if abs(achieved - target) > tol:
        raise GradscopeError(f"achieved sparsity {achieved:.4f} != target {target:.4f}")
    return achieved
