"""Finding the conv/linear layers and which of them feed a ReLU.

One forward pass (a dry run on ``example_input``, or the first real forward) is observed with
forward hooks on the conv/linear modules (who produced which tensor) and a TorchFunctionMode
(which torch functions consumed it). Origins flow through BatchNorm, residual adds and
layout-only ops; a ReLU (nn.ReLU, inplace or not, F.relu, torch.relu, Tensor.relu_, ReLU6)
consuming a tensor marks its origin layers. This sees functional calls and dynamic control
flow that torch.fx cannot trace, and needs no backward hooks (which in-place ReLUs break).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from gradscope import GradscopeError

PATHS = ("direct", "bn", "residual")  # ordered from most to least direct
_RELU = {"relu", "relu_", "relu6"}
_BN = {"batch_norm"}
_ADD = {"add", "add_", "__add__", "__iadd__", "__radd__"}
_SAME = {"dropout", "dropout_", "view", "reshape", "flatten", "contiguous", "clone", "to", "permute",
         "transpose", "max_pool1d", "max_pool2d", "max_pool3d", "_max_pool1d", "_max_pool2d", "_max_pool3d",
         "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices", "identity",
         "float", "half", "bfloat16", "type_as"}


@dataclass
class LayerInfo:
    """A conv/linear layer; ``relu_path`` is how its output reaches a ReLU ("none" if it does not)."""

    name: str
    index: int
    kind: str
    shape: tuple
    numel: int
    relu_fed: bool = False
    relu_path: str = "none"
    module: Any = field(default=None, repr=False, compare=False)

    def row(self, recorded: bool) -> dict:
        return {"layer": self.name, "index": self.index, "kind": self.kind,
                "shape": "x".join(str(s) for s in self.shape), "numel": self.numel,
                "relu_fed": self.relu_fed, "relu_path": self.relu_path, "recorded": recorded}


def conv_linear_layers(model: nn.Module) -> list[LayerInfo]:
    """Every conv/linear module with a weight, in module order."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)) and getattr(mod, "weight", None) is not None:
            kind = "linear" if isinstance(mod, nn.Linear) else "conv"
            shape = tuple(mod.weight.shape)
            out.append(LayerInfo(name, len(out), kind, shape, int(mod.weight.numel()), module=mod))
    if not out:
        raise GradscopeError("the model has no conv or linear layer to record")
    return out


def _first_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    return None


class _Tracker(TorchFunctionMode):
    """Follows tensors produced by conv/linear layers to the ReLUs that consume them."""

    def __init__(self, infos: list[LayerInfo]):
        super().__init__()
        self.infos = infos
        self.origins: dict[int, dict[int, int]] = {}  # id(tensor) -> {layer index: path rank}
        self.keep: list = []  # keep tensors alive so ids are not reused during the pass
        self.found: dict[int, int] = {}  # layer index -> best path rank

    def _get(self, t) -> dict:
        return self.origins.get(id(t), {}) if isinstance(t, torch.Tensor) else {}

    def _set(self, t, org: dict, replace: bool = False) -> None:
        if t is None or not (org or replace):
            return
        if replace:  # an in-place op changed what the tensor holds
            self.origins[id(t)] = {}
        cur = self.origins.setdefault(id(t), {})
        for k, r in org.items():
            cur[k] = min(cur.get(k, r), r)
        self.keep.append(t)

    def module_output(self, index: int, out) -> None:
        self._set(_first_tensor(out), {index: 0})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self._observe(getattr(func, "__name__", ""), args, kwargs, out)
        except Exception:  # noqa: BLE001 - observation must never break the user's forward
            pass
        return out

    def _observe(self, name: str, args, kwargs, out) -> None:
        if name in _RELU or (name == "hardtanh" and float(kwargs.get("min_val", args[1] if len(args) > 1 else -1)) == 0.0):
            for k, r in self._get(args[0] if args else kwargs.get("input")).items():
                self.found[k] = min(self.found.get(k, r), r)
        elif name in _BN:
            org = self._get(args[0] if args else kwargs.get("input"))
            self._set(_first_tensor(out), {k: max(r, 1) for k, r in org.items()})
        elif name in _ADD:
            org: dict = {}
            for a in list(args) + list(kwargs.values()):
                for k, r in self._get(a).items():
                    org[k] = 2
            res = _first_tensor(out)
            self._set(res, org, replace=bool(args) and res is args[0])
        elif name in _SAME and args:
            self._set(_first_tensor(out), self._get(args[0]))


class _Discovery:
    """Hooks that observe one forward pass, then mark ``infos`` and remove themselves."""

    def __init__(self, model: nn.Module, infos: list[LayerInfo], on_done: Optional[Callable] = None):
        self.model, self.infos, self.on_done = model, infos, on_done
        self.tracker: Optional[_Tracker] = None
        self.done = False
        self.handles = [info.module.register_forward_hook(self._module_hook(info.index)) for info in infos]
        self.handles.append(model.register_forward_pre_hook(self._pre))
        self.handles.append(model.register_forward_hook(self._post, always_call=True))

    def _module_hook(self, index: int):
        def hook(mod, inp, out):
            if self.tracker is not None:
                self.tracker.module_output(index, out)
        return hook

    def _pre(self, mod, inp):
        if self.tracker is None and not self.done:
            self.tracker = _Tracker(self.infos)
            self.tracker.__enter__()

    def _post(self, mod, inp, out):
        if self.tracker is None:
            return
        tr, self.tracker = self.tracker, None
        tr.__exit__(None, None, None)
        for k, r in tr.found.items():
            self.infos[k].relu_fed = True
            self.infos[k].relu_path = PATHS[r]
        tr.origins.clear()
        tr.keep.clear()
        self.done = True
        self.remove()
        if self.on_done is not None:
            self.on_done(self.infos)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def find_layers(model: nn.Module, example_input) -> list[LayerInfo]:
    """Conv/linear layers of ``model``, tagged relu_fed/relu_path from a dry run on ``example_input``.

    The dry run is in eval mode without gradients, so BatchNorm statistics are not touched.
    """
    infos = conv_linear_layers(model)
    disc = _Discovery(model, infos)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(example_input, (tuple, list)):
                model(*example_input)
            else:
                model(example_input)
    finally:
        disc.remove()
        for m, t in modes.items():
            m.training = t
    return infos


def lazy_find_layers(model: nn.Module, on_done: Callable[[list[LayerInfo]], None]) -> _Discovery:
    """Observe the model's next forward pass (it runs unchanged) and call ``on_done(infos)``."""
    return _Discovery(model, conv_linear_layers(model), on_done)


def select_layers(infos: list[LayerInfo], layers: str = "relu", include: Optional[str] = None,
                  exclude: Optional[str] = None) -> list[LayerInfo]:
    """The layers to record: ReLU-fed ones (``layers="relu"``) or all, filtered by name regexes."""
    if layers not in ("relu", "all"):
        raise GradscopeError(f"layers must be 'relu' or 'all', got {layers!r}")
    try:
        inc = re.compile(include) if include else None
        exc = re.compile(exclude) if exclude else None
    except re.error as e:
        raise GradscopeError(f"bad layer name pattern: {e}") from None
    if layers == "relu" and not any(i.relu_fed for i in infos):
        raise GradscopeError("no conv/linear layer of this model feeds a ReLU; pass layers='all' "
                             "(--layers all) to record every layer")
    out = [i for i in infos if (layers == "all" or i.relu_fed)
           and (inc is None or inc.search(i.name)) and (exc is None or not exc.search(i.name))]
    if not out:
        raise GradscopeError(f"include={include!r} / exclude={exclude!r} leave no layer to record; "
                             f"layers are: {', '.join(i.name for i in infos)}")
    return out
