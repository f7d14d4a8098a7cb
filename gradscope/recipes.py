"""Named recipes: sets of run-config defaults that reproduce another codebase's training.

``--recipe NAME`` makes these the defaults of the other flags (a flag given on the command
line still wins). Each value is checked against the released file it comes from in
docs/recipe-silo-code.md, point by point, with what gradscope does differently.
"""
from __future__ import annotations

from gradscope import GradscopeError

# Config field -> value (field names are unique across RunConfig's sections).
_SILO_COMMON = {
    "prune_rate": 0.2,          # --prune_percent 20
    "rounds": 25,               # --prune_iterations 25
    "prune_bn": True,           # every parameter whose name contains "weight" (BN gamma included)
    "prune_first": True, "prune_last": True,
    "rewind": "reinit",         # --prune_type reinit (the default)
    "batch_size": 64,           # --batch_size 64
    "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4,  # SGD(lr, momentum=0.9, weight_decay=5e-4)
    "schedule": "silo",
    "dataset": "cifar10",
    "amp": False,               # the released scripts train in float32
}

RECIPES: dict[str, dict] = {
    # The recipe: the released VGG-19 model with resnet_20_cifar_10.py's pruning rule
    # (one global |Δw| threshold) and LR (max_lr/20000 per iteration, x0.1 at 25, x0.01 at 32 of 50).
    "silo-code": {**_SILO_COMMON, "model": "vgg19_silo", "prune_method": "delta",
                  "preset": "released-resnet20", "epochs": 50},
    # vgg_19_cifar_10.py as released: per-layer |Δw|·|w| threshold, 160 epochs, its own LR.
    "silo-code-vgg19": {**_SILO_COMMON, "model": "vgg19_silo", "prune_method": "delta-weight-layerwise",
                        "preset": "released-vgg19", "epochs": 160},
}


def recipe_defaults(name: str) -> dict:
    """The config defaults recipe ``name`` sets; unknown name -> one error listing the known ones."""
    if name not in RECIPES:
        raise GradscopeError(f"unknown recipe {name!r} (recipes: {', '.join(RECIPES)})")
    return dict(RECIPES[name])


def describe_recipe(name: str, config) -> str:
    """One line: the recipe and the values it set that the run uses."""
    flat = {k: v for sec in config.to_dict().values() if isinstance(sec, dict) for k, v in sec.items()}
    used = [f"{k}={flat[k]}" for k, v in RECIPES[name].items() if flat.get(k) == v]
    return f"recipe {name}: " + ", ".join(used) + " (docs/recipe-silo-code.md)"
