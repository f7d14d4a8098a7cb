"""One small registry of pruning strategies: name -> (scores, mask rule)."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from gradscope import GradscopeError
from gradscope.pruning.masks import (check_sparsity, global_masks, layerwise_masks, magnitude_scores,
                                     random_scores)
from gradscope.pruning.model import current_masks, effective_weights, set_masks

PRUNE_METHODS = ("global", "layerwise", "random")


def prune_step(layers: Mapping[str, nn.Module], method: str, target: float, seed: int = 0) -> float:
    """Prune ``layers`` in place to ``target`` sparsity with ``method``; return the achieved sparsity."""
    if method not in PRUNE_METHODS:
        raise GradscopeError(f"unknown prune method {method!r}; known: {', '.join(PRUNE_METHODS)}")
    weights = effective_weights(layers)
    masks = current_masks(layers)
    if method == "random":
        scores = random_scores(weights, torch.Generator().manual_seed(seed))
        new = global_masks(scores, masks, target)
    else:
        rule = global_masks if method == "global" else layerwise_masks
        new = rule(magnitude_scores(weights), masks, target)
    set_masks(layers, new)
    return check_sparsity(current_masks(layers), target, method)
