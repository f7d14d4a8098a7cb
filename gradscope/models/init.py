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
