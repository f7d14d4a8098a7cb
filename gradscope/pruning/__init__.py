"""Unstructured pruning: masks as pure functions (``masks``), applied with torch's prune (``model``)."""
from gradscope.pruning.masks import (check_schedule, check_sparsity, global_masks, layerwise_masks,
                                     magnitude_scores, random_scores, sparsity, target_sparsity)
from gradscope.pruning.model import (attach_masks, current_masks, effective_weights, load_plain_state,
                                     norm_drop, parameter_norm_sq, plain_state, prunable_layers, refresh_weights, set_masks, weight_mask,
                                     weight_param)
from gradscope.pruning.registry import PRUNE_METHODS, STRATEGIES, Strategy, prune_step

__all__ = ["PRUNE_METHODS", "STRATEGIES", "Strategy", "attach_masks", "check_schedule", "check_sparsity", "current_masks",
           "effective_weights", "global_masks", "layerwise_masks", "load_plain_state", "magnitude_scores",
           "norm_drop", "parameter_norm_sq", "plain_state", "prunable_layers", "prune_step", "refresh_weights", "random_scores", "set_masks",
           "sparsity", "target_sparsity", "weight_mask", "weight_param"]
