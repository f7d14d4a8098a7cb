"""The model registry: ``get_model(name, input_shape, num_classes)``.

Registered models are ReLU networks initialised with Kaiming (fan-in), and GELU Vision
Transformers registered with ``init=False`` (they keep their own truncated-normal init). A name ``module:callable``
imports a user's builder, called with ``(input_shape, num_classes)``.
"""
from __future__ import annotations

import importlib
from typing import Callable

import torch
from torch import nn

from gradscope import GradscopeError
from gradscope.models.cifar_resnet import CifarResNet
from gradscope.models.init import kaiming_init
from gradscope.models.small import LeNet300100, SmallCNN
from gradscope.models.vgg import PLANS, CifarVGG
from gradscope.models.vgg_silo import build as vgg19_silo
from gradscope.models.vit import deit_tiny, vit_tiny
from gradscope.registry import Registry

Shape = tuple[int, int, int]
Builder = Callable[[Shape, int], nn.Module]
MODELS: Registry[Builder] = Registry("model", "--model")


def register(name: str, min_side: int = 1, init: bool = True):
    """``@register(name, min_side=..., init=True)`` on a builder ``(input_shape, num_classes) -> Module``."""
    return MODELS.register(name, min_side=min_side, init=init)


def list_models() -> list[str]:
    return MODELS.names()


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
# The released SILO VGG-19 (its own init); _narrow: conv channels x1/8, classifier 4096 -> 256, for CPUs
register("vgg19_silo", min_side=32, init=False)(lambda s, k: vgg19_silo(s, k))
register("vgg19_silo_narrow", min_side=32, init=False)(
    lambda s, k: vgg19_silo(s, k, classifier_width=1 / 16, conv_width=1 / 8))
register("vit_tiny", min_side=4, init=False)(vit_tiny)
register("deit_tiny", min_side=4, init=False)(deit_tiny)


def _user_builder(spec: str) -> Builder:
    """``package.module:callable`` -> the callable (imported now), or one clear error."""
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise GradscopeError(f"--model {spec!r}: a user model is given as module:callable, e.g. my_pkg.models:build")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - the user's import error, one line
        raise GradscopeError(f"--model {spec!r}: cannot import {mod_name!r} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); is it on PYTHONPATH?") from None
    fn = mod
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise GradscopeError(f"--model {spec!r}: {mod_name} has no attribute {attr!r}")
    if not callable(fn):
        raise GradscopeError(f"--model {spec!r}: {attr} is not callable")
    return fn


def check_forward(model: nn.Module, name: str, x: torch.Tensor, num_classes: int) -> None:
    """One forward pass on a batch ``x`` in eval mode (BatchNorm statistics untouched): a model
    whose forward raises, or whose output is not ``[batch, num_classes]``, is one clear error
    before anything is trained or written. KeyboardInterrupt passes (the CLI says how to resume)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except SystemExit as e:
        raise GradscopeError(f"--model {name!r}: its forward pass raised SystemExit({e.code!r})") from None
    except Exception as e:  # noqa: BLE001 - the user's code: one line, what it said
        raise GradscopeError(f"--model {name!r}: its forward pass on a batch of shape {tuple(x.shape)} failed: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape != (x.shape[0], num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise GradscopeError(f"--model {name!r} returns {got} for a batch of {x.shape[0]}; the dataset has "
                             f"{num_classes} classes, so it must return logits of shape [batch, {num_classes}]")


def get_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build model ``name`` for inputs ``(C, H, W)`` and ``num_classes`` outputs."""
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise GradscopeError(f"input_shape must be (channels, height, width), got {tuple(input_shape)}")
    if int(num_classes) != num_classes or num_classes < 2:
        raise GradscopeError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    c, h, w = (int(v) for v in input_shape)
    if ":" in name:
        build = _user_builder(name)
        try:
            model = build((c, h, w), int(num_classes))
        except SystemExit as e:  # the user's code must not end the run silently (exit 0)
            raise GradscopeError(f"--model {name!r}: calling it with (input_shape={(c, h, w)}, num_classes={num_classes}) "
                                 f"raised SystemExit({e.code!r}); a model builder must return a module") from None
        except Exception as e:  # noqa: BLE001 - the user's code: one line, what was called and what it said
            raise GradscopeError(f"--model {name!r}: calling it with (input_shape={(c, h, w)}, num_classes={num_classes}) "
                                 f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        if not isinstance(model, nn.Module):
            raise GradscopeError(f"--model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    key = MODELS.key(name)
    meta = MODELS.meta(key)
    if min(h, w) < meta["min_side"]:
        raise GradscopeError(f"{key} needs images of at least {meta['min_side']}x{meta['min_side']}, got {h}x{w}; "
                             f"pick another model (e.g. small_cnn or resnet20)")
    model = MODELS.get(key)((c, h, w), int(num_classes))
    return kaiming_init(model) if meta["init"] else model
