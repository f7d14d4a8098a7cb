"""One small registry of pruning strategies: name -> (scores, mask rule)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from gradscope.pruning.masks import (check_sparsity, global_masks, layerwise_masks, magnitude_scores,
                                     random_scores)
from gradscope.pruning.model import current_masks, effective_weights, set_masks
from gradscope.registry import Registry


@dataclass(frozen=True)
class Strategy:
    """How to score weights (from the effective weights and a seed) and turn scores into masks."""

    scores: Callable[[Mapping[str, torch.Tensor], int], dict]
    masks: Callable[[Mapping, Mapping, float], dict]
    sparsity_check: str  # "global" or "layerwise": how exactly the target must be met


STRATEGIES: Registry[Strategy] = Registry("prune method", "--prune-method")
STRATEGIES.register("global", Strategy(lambda w, seed: magnitude_scores(w), global_masks, "global"))
STRATEGIES.register("layerwise", Strategy(lambda w, seed: magnitude_scores(w), layerwise_masks, "layerwise"))
STRATEGIES.register("random", Strategy(
    lambda w, seed: random_scores(w, torch.Generator().manual_seed(seed)), global_masks, "global"))

PRUNE_METHODS = tuple(STRATEGIES.names())  # older name


def prune_step(layers: Mapping[str, nn.Module], method: str, target: float, seed: int = 0) -> float:
    """Prune ``layers`` in place to ``target`` sparsity with ``method``; return the achieved sparsity."""
    s = STRATEGIES.get(method)
    weights = effective_weights(layers)
    new = s.masks(s.scores(weights, seed), current_masks(layers), target)
    set_masks(layers, new)
    return check_sparsity(current_masks(layers), target, s.sparsity_check)
