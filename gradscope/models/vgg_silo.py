"""The released SILO scripts' "VGG-19": torchvision-style ``vgg19_bn`` (Martin1937/SILO,
``archs/cifar10/vgg.py`` l.25-78; ``vgg_19_cifar_10.py`` l.116-117, 129).

Conv3x3(+bias)-BN-ReLU blocks in plan E with five max-pools, ``AdaptiveAvgPool2d((7, 7))``
and a 25088→4096→4096→classes classifier with ReLU and dropout and **no BatchNorm** (85.7 %
of the 139.6 M weights at full width). ``classifier_width`` scales the two hidden widths
(4096) and ``conv_width`` the conv channels, so a CPU can run a narrow one; 1.0 and 1.0 is
the released model. Initialised as the released script does (``weight_init``, l.456-495:
Xavier-normal conv/linear weights, N(0, 1) biases, BatchNorm weight N(1, 0.02), bias 0), not
as the class's own ``_initialize_weights``, which the script overrides.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import init

PLAN_E = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class VGG19Silo(nn.Module):
    """vgg19_bn as released, with width factors (see module docstring)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, classifier_width: float = 1.0,
                 conv_width: float = 1.0, head: str = "released", plan=PLAN_E) -> None:
        super().__init__()
        if not (classifier_width > 0 and conv_width > 0):
            raise ValueError("width factors must be positive")
        layers: list[nn.Module] = []
        c = in_channels
        for v in plan:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                w = max(1, int(round(v * conv_width)))
                layers += [nn.Conv2d(c, w, kernel_size=3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
                c = w
        hidden = max(1, int(round(4096 * classifier_width)))
        self.features = nn.Sequential(*layers)
        if head == "gap":  # gradscope's CIFAR VGG head (global average pool, one linear): no FC block
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.classifier = nn.Sequential(nn.Linear(c, num_classes))
        elif head in ("released", "pooled-fc"):
            # "pooled-fc": the released FC block fed by the 1x1-pooled features instead of their
            # 7x7 copies (analysis/recipe_models.py says why a narrow CPU model needs it)
            side = 7 if head == "released" else 1
            self.avgpool = nn.AdaptiveAvgPool2d((side, side))
            self.classifier = nn.Sequential(
                nn.Linear(c * side * side, hidden), nn.ReLU(), nn.Dropout(),
                nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(),
                nn.Linear(hidden, num_classes))
        else:
            raise ValueError(f"head must be 'released', 'pooled-fc' or 'gap', got {head!r}")
        # ReLU(inplace=True) in the release; not in place here (gradscope's recorder and
        # forward hooks; the arithmetic is identical)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    init_kind = "released"  # which init ``reinitialize`` repeats (set by the builders)

    def reinitialize(self, generator: torch.Generator | None = None) -> None:
        """The released reinit (l.171-174): ``weight_init`` again, masks kept (or Kaiming again
        for a model built with it, as the factorial study's one-ingredient variants are)."""
        if self.init_kind == "kaiming":
            _kaiming(self, generator)
        else:
            released_init(self, generator)


@torch.no_grad()
def released_init(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """The released scripts' ``weight_init`` (l.456-495) on every module; writes the trainable
    tensor (``weight_orig`` of a pruned module), so masks stay as they are."""
    def w(m: nn.Module) -> torch.Tensor:
        return m.weight_orig if hasattr(m, "weight_orig") else m.weight

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            init.xavier_normal_(w(m), generator=generator)
            if m.bias is not None:
                init.normal_(m.bias, generator=generator)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            init.normal_(w(m), mean=1.0, std=0.02, generator=generator)
            init.constant_(m.bias, 0.0)
    return model


def build(input_shape: tuple[int, int, int], num_classes: int, classifier_width: float = 1.0,
          conv_width: float = 1.0, head: str = "released") -> nn.Module:
    """A released-init ``VGG19Silo`` for ``(C, H, W)`` inputs (seeded by the caller)."""
    return released_init(VGG19Silo(input_shape[0], num_classes, classifier_width, conv_width, head))


@torch.no_grad()
def _kaiming(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """gradscope's init (``models.init.kaiming_init``) on the trainable tensors."""
    for m in model.modules():
        w = getattr(m, "weight_orig", getattr(m, "weight", None))
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            init.kaiming_normal_(w, nonlinearity="relu", generator=generator)
            if m.bias is not None:
                init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            init.ones_(w)
            init.zeros_(m.bias)
    model.init_kind = "kaiming"
    return model


def narrow_gap(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """``vgg19_silo_narrow``'s convs with a global-average-pool head and Kaiming init: the
    factorial study's default-recipe model (``--model gradscope.models.vgg_silo:narrow_gap``)."""
    return _kaiming(VGG19Silo(input_shape[0], num_classes, conv_width=1 / 8, head="gap"))


def narrow_fc(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """``vgg19_silo_narrow`` (the released FC block) with Kaiming init: the study's "FC-heavy
    model" ingredient alone (``--model gradscope.models.vgg_silo:narrow_fc``)."""
    return _kaiming(VGG19Silo(input_shape[0], num_classes, classifier_width=1 / 16, conv_width=1 / 8))


def full_gap(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Full-width convs, global-average-pool head, Kaiming init (the study's default model on a GPU)."""
    return _kaiming(VGG19Silo(input_shape[0], num_classes, head="gap"))


def full_fc(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The released vgg19_bn with Kaiming init (the study's "FC-heavy model" ingredient on a GPU)."""
    return _kaiming(VGG19Silo(input_shape[0], num_classes))
