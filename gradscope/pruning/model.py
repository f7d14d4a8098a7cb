"""Applying masks to a model with ``torch.nn.utils.prune``, and rewinding weights.

Every prunable layer carries ``weight_orig`` (the parameter) and ``weight_mask`` (a buffer)
from the start of a run, all-ones in round 0, so that the state-dict layout never changes
across rounds and pruned weights are exactly zero with exactly zero gradient.
Rewinding goes through state dicts, never ``copy.deepcopy`` of a pruned module.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.nn.utils import prune

from gradscope import GradscopeError

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def weight_param(module: nn.Module) -> torch.Tensor:
    """The trainable weight tensor: ``weight_orig`` if pruned with torch's prune, else ``weight``."""
    return module.weight_orig if hasattr(module, "weight_orig") else module.weight


def weight_mask(module: nn.Module) -> torch.Tensor | None:
    """The bool mask (True = kept) of a pruned module, or None for an unpruned one."""
    m = getattr(module, "weight_mask", None)
    return None if m is None else m.bool()


NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def prunable_layers(model: nn.Module, prune_first: bool = True, prune_last: bool = True,
                    prune_bn: bool = False) -> dict[str, nn.Module]:
    """Conv/linear layers in definition order, optionally without the first and/or last.

    ``prune_bn``: BatchNorm weights (γ) too, as the released SILO code prunes every parameter
    whose name contains "weight" (a pruned γ silences its channel: the output is β alone)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]
    if not layers:
        raise GradscopeError("the model has no conv or linear layer to prune")
    keep = layers[(0 if prune_first else 1): (len(layers) if prune_last else len(layers) - 1)]
    if not keep:
        raise GradscopeError("no prunable layer is left after excluding the first/last layer")
    if prune_bn:
        names = {n for n, _ in keep}
        return {n: m for n, m in model.named_modules()
                if n in names or (isinstance(m, NORMS) and m.weight is not None)}
    return dict(keep)


def attach_masks(layers: Mapping[str, nn.Module]) -> None:
    """Give each layer an all-ones ``torch.nn.utils.prune`` mask (idempotent)."""
    for m in layers.values():
        if not hasattr(m, "weight_mask"):
            prune.custom_from_mask(m, "weight", torch.ones_like(m.weight, dtype=torch.bool))


def current_masks(layers: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {n: m.weight_mask.detach().bool().cpu().clone() for n, m in layers.items()}


def effective_weights(layers: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {n: (weight_param(m) * m.weight_mask).detach() for n, m in layers.items()}


@torch.no_grad()
def refresh_weights(modules) -> None:
    """Recompute ``weight = weight_orig * weight_mask`` now (prune's hook does it only at the next
    forward), after masks or ``weight_orig`` were written directly."""
    for m in modules:
        if hasattr(m, "weight_mask"):
            m.weight = weight_param(m) * m.weight_mask


@torch.no_grad()
def set_masks(layers: Mapping[str, nn.Module], masks: Mapping[str, torch.Tensor]) -> None:
    """Write new masks into the layers' ``weight_mask`` buffers and refresh ``weight``."""
    for n, m in layers.items():
        m.weight_mask.copy_(masks[n].to(m.weight_mask.device, m.weight_mask.dtype))
    refresh_weights(layers.values())


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers under their unpruned names (``x.weight_orig`` -> ``x.weight``), masks left out."""
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("weight_mask"):
            continue
        out[k[: -len("_orig")] if k.endswith("weight_orig") else k] = v.detach().cpu().clone()
    return out


@torch.no_grad()
def load_plain_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Rewind: load a ``plain_state`` into the model, keeping its current masks."""
    sd = model.state_dict()
    for k, v in state.items():
        key = k + "_orig" if (k + "_orig") in sd else k
        if key not in sd:
            raise GradscopeError(f"rewind state has {k!r}, which the model lacks")
        sd[key].copy_(v)
    refresh_weights(model.modules())


@torch.no_grad()
def parameter_norm_sq(model: nn.Module) -> float:
    """‖θ‖² as BIMP's ALLR computes it (``utilities/utilities.py`` l.18-27): every module's
    ``weight`` (as the forward sees it, masked) and ``bias``, nothing else (a bare parameter such
    as a ViT's position embedding is not counted)."""
    total = 0.0
    for mod in model.modules():
        for name in ("weight", "bias"):
            if name == "weight" and hasattr(mod, "weight_mask"):
                p = weight_param(mod) * mod.weight_mask
            else:
                p = getattr(mod, name, None)
            if isinstance(p, torch.Tensor):
                total += float(p.double().pow(2).sum())
    return total


def norm_drop(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor],
              total_sq: float | None = None) -> float:
    """ALLR's ‖θ − θ_pruned‖ / ‖θ‖: the change over the prunable weights, divided by the norm of
    ``total_sq`` (all parameters, BIMP's definition) or, without it, of the prunable weights."""
    num = sum(float(((before[n] - after[n]) ** 2).sum()) for n in before)
    den = total_sq if total_sq is not None else sum(float((before[n] ** 2).sum()) for n in before)
    return (num / den) ** 0.5 if den > 0 else 0.0
