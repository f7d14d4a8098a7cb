"""One small registry of pruning strategies: name -> (scores, mask rule)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch
from torch import nn

from gradscope.pruning.masks import (check_sparsity, global_masks, layerwise_masks, magnitude_scores,
                                     random_scores)
from gradscope.pruning.model import current_masks, effective_weights, set_masks
from gradscope import GradscopeError
from gradscope.registry import Registry


@dataclass(frozen=True)
class Strategy:
    """How to score weights (from the effective weights and a seed; with ``needs_previous``,
    also the weights one epoch before the round's end) and turn scores into masks."""

    scores: Callable[..., dict]  # (weights, seed) or, with needs_previous, (weights, seed, previous)
    masks: Callable[[Mapping, Mapping, float], dict]
    sparsity_check: str  # "global" or "layerwise": how exactly the target must be met
    needs_previous: bool = False


def movement_scores(weights: Mapping[str, torch.Tensor], previous: Mapping[str, torch.Tensor]) -> dict:
    """|w_T − w_{T−1}|: the last epoch's weight movement (released SILO, resnet_20_cifar_10.py
    l.391-434; w_{T−1} is the state saved after epoch T−1, l.240-241)."""
    return {k: (w.detach().float().cpu() - previous[k].float().cpu()).abs() for k, w in weights.items()}


def movement_magnitude_scores(weights: Mapping[str, torch.Tensor], previous: Mapping[str, torch.Tensor]) -> dict:
    """|w_T − w_{T−1}|·|w_T|: the score of vgg_19_cifar_10.py l.395-424 (thresholded per layer there)."""
    return {k: s * weights[k].detach().float().cpu().abs() for k, s in movement_scores(weights, previous).items()}


STRATEGIES: Registry[Strategy] = Registry("prune method", "--prune-method")
STRATEGIES.register("global", Strategy(lambda w, seed: magnitude_scores(w), global_masks, "global"))
STRATEGIES.register("layerwise", Strategy(lambda w, seed: magnitude_scores(w), layerwise_masks, "layerwise"))
STRATEGIES.register("random", Strategy(
    lambda w, seed: random_scores(w, torch.Generator().manual_seed(seed)), global_masks, "global"))

# One global threshold over |Δw| (resnet_20_cifar_10.py), per-layer over |Δw|·|w| (vgg_19_cifar_10.py).
STRATEGIES.register("delta", Strategy(lambda w, seed, prev: movement_scores(w, prev), global_masks, "global",
                                      needs_previous=True))
STRATEGIES.register("delta-weight-layerwise", Strategy(lambda w, seed, prev: movement_magnitude_scores(w, prev),
                                                       layerwise_masks, "layerwise", needs_previous=True))

PRUNE_METHODS = tuple(STRATEGIES.names())  # older name


def prune_step(layers: Mapping[str, nn.Module], method: str, target: float, seed: int = 0,
               previous: Optional[Mapping[str, torch.Tensor]] = None) -> float:
    """Prune ``layers`` in place to ``target`` sparsity with ``method``; return the achieved sparsity.

    ``previous``: the layers' effective weights one epoch before the round's end (for the
    ``delta`` strategies; a GradscopeError if they need it and it is missing)."""
    s = STRATEGIES.get(method)
    weights = effective_weights(layers)
    if s.needs_previous:
        if previous is None or set(previous) != set(weights):
            raise GradscopeError(f"prune method {method!r} needs the weights of the epoch before the round's "
                                 "last (train the round with at least one epoch first)")
        scores = s.scores(weights, seed, previous)
    else:
        scores = s.scores(weights, seed)
    new = s.masks(scores, current_masks(layers), target)
    set_masks(layers, new)
    return check_sparsity(current_masks(layers), target, s.sparsity_check)
