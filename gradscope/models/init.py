"""Weight initialisation shared by all models (seeded by the caller's ``torch.manual_seed``)."""
from __future__ import annotations

from torch import nn


def kaiming_init(model: nn.Module) -> nn.Module:
    """Kaiming-normal (fan_in, ReLU gain) conv/linear weights, zero biases; BatchNorm weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def reinitialize(model: nn.Module, generator) -> nn.Module:
    """Fresh random weights for a model whose layers may carry pruning masks (writes
    ``weight_orig``): ``model.reinitialize(generator)`` if the model defines it, else
    Kaiming as ``kaiming_init`` (the init of gradscope's registered ReLU models)."""
    import torch  # noqa: PLC0415

    if hasattr(model, "reinitialize"):
        model.reinitialize(generator)
        return model
    with torch.no_grad():
        for m in model.modules():
            w = getattr(m, "weight_orig", getattr(m, "weight", None))
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(w, nonlinearity="relu", generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(w)
                nn.init.zeros_(m.bias)
    return model
