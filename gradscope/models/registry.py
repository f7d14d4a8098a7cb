"""The model registry: ``get_model(name, input_shape, num_classes)``; ReLU networks and GELU ViTs."""
from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from gradscope import GradscopeError
from gradscope.models.cifar_resnet import CifarResNet
from gradscope.models.init import kaiming_init
from gradscope.models.small import LeNet300100, SmallCNN
from gradscope.models.vgg import PLANS, CifarVGG
from gradscope.models.vit import deit_tiny, vit_tiny

Shape = tuple[int, int, int]
_REGISTRY: dict[str, Callable[[Shape, int], nn.Module]] = {}
_MIN_SIDE: dict[str, int] = {}
_INIT: dict[str, Optional[Callable[[nn.Module], nn.Module]]] = {}  # None: the model initialises itself


def register(name: str, min_side: int = 1, init: Optional[Callable[[nn.Module], nn.Module]] = kaiming_init):
    def deco(fn):
        _REGISTRY[name] = fn
        _MIN_SIDE[name] = min_side
        _INIT[name] = init
        return fn
    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _torchvision_resnet(arch: str, shape: Shape, num_classes: int) -> nn.Module:
    """torchvision ResNet adapted to small images: conv1 is 3x3 stride 1 and there is no
    max-pool, for 32x32 and for 64x64 inputs alike (as in common CIFAR/Tiny-ImageNet ports).
    Keeps torchvision's ``ReLU(inplace=True)``."""
    import torchvision

    m = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    m.conv1 = nn.Conv2d(shape[0], 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    return m


for _depth in (20, 32, 56):
    register(f"resnet{_depth}")(lambda s, k, d=_depth: CifarResNet(d, s[0], k))
for _name, _plan in PLANS.items():
    register(_name, min_side=16)(lambda s, k, p=_plan: CifarVGG(p, s[0], k))
register("resnet18")(lambda s, k: _torchvision_resnet("resnet18", s, k))
register("resnet50")(lambda s, k: _torchvision_resnet("resnet50", s, k))
register("lenet_300_100")(lambda s, k: LeNet300100(s, k))
register("small_cnn")(lambda s, k: SmallCNN(s, k))
register("vit_tiny", min_side=4, init=None)(vit_tiny)  # patch 4; ViT init, not Kaiming
register("deit_tiny", min_side=4, init=None)(deit_tiny)


def get_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build model ``name`` for inputs ``(C, H, W)`` and ``num_classes`` outputs, Kaiming-initialised
    unless it brings its own initialisation (the ViTs)."""
    key = name.lower().strip()
    if key not in _REGISTRY:
        raise GradscopeError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise GradscopeError(f"input_shape must be (channels, height, width), got {tuple(input_shape)}")
    if int(num_classes) != num_classes or num_classes < 2:
        raise GradscopeError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    c, h, w = (int(v) for v in input_shape)
    if min(h, w) < _MIN_SIDE[key]:
        raise GradscopeError(f"{key} needs images of at least {_MIN_SIDE[key]}x{_MIN_SIDE[key]}, got {h}x{w}; "
                             f"pick another model (e.g. small_cnn or resnet20)")
    model = _REGISTRY[key]((c, h, w), int(num_classes))
    return _INIT[key](model) if _INIT[key] is not None else model
