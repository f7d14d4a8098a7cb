"""Finding the conv/linear layers and which elementwise activation each one feeds.

Forward passes are observed with forward hooks on the conv/linear modules (who produced which
tensor) and a TorchFunctionMode (which torch functions consumed it). The trail of a layer's
output follows normalisations (BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm),
residual adds and subtractions, multiplication/division (by a scalar or by another tensor, e.g.
a gate ``x * sigmoid(y)``: both factors are followed), pooling, interpolation,
concatenation, slicing/indexing, chunk/split and layout-only ops (view, reshape, permute,
squeeze, ...) until an elementwise activation consumes it (``ACTIVATIONS``: relu, gelu, silu,
tanh, sigmoid, leaky_relu, elu, hardswish, ...; functional, Tensor-method and nn.Module forms
alike). It stops at anything else (another layer, matmul, softmax, reductions). This sees
functional calls and dynamic control flow that torch.fx cannot trace, and needs no backward
hooks (which in-place ReLUs break). Observation never raises into the user's forward.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from gradscope import GradscopeError

PATHS = ("direct", "norm", "residual")  # ordered from most to least direct
MAX_FORWARDS = 8  # forwards observed (before recording starts) while some layer has not run yet

# torch function name -> canonical activation name (elementwise activations only)
_ACT_NAMES: dict[str, str] = {}
for _canon, _names in {
        "relu": ("relu", "relu_"), "relu6": ("relu6", "relu6_"), "gelu": ("gelu", "gelu_"),
        "silu": ("silu", "silu_"), "mish": ("mish", "mish_"), "tanh": ("tanh", "tanh_"),
        "sigmoid": ("sigmoid", "sigmoid_"), "leaky_relu": ("leaky_relu", "leaky_relu_"),
        "elu": ("elu", "elu_"), "selu": ("selu", "selu_"), "celu": ("celu", "celu_"),
        "hardswish": ("hardswish", "hardswish_"), "hardsigmoid": ("hardsigmoid", "hardsigmoid_"),
        "hardtanh": ("hardtanh", "hardtanh_"), "softplus": ("softplus",), "softsign": ("softsign",),
        "prelu": ("prelu",), "rrelu": ("rrelu", "rrelu_"), "logsigmoid": ("logsigmoid",),
        "tanhshrink": ("tanhshrink",), "hardshrink": ("hardshrink",), "softshrink": ("softshrink",),
        "threshold": ("threshold", "threshold_")}.items():
    for _n in _names:
        _ACT_NAMES[_n] = _canon
ACTIVATIONS: tuple[str, ...] = tuple(sorted(set(_ACT_NAMES.values())))
RELU_FAMILY = frozenset({"relu", "relu6"})  # what ``layers="relu"`` and ``relu_fed`` mean
_CLAMP = {"clamp", "clamp_", "clamp_min", "clamp_min_", "clip", "clip_"}  # clamp(min=0) is a ReLU

_NORM = {"batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm", "local_response_norm"}
_ADD = {"add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__isub__",
        "__rsub__", "rsub", "subtract"}
_MUL = {"mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply", "div", "div_", "__truediv__",
        "__itruediv__", "__div__", "true_divide", "divide"}
_SAME = {  # the output holds (a rearrangement, subset, pooling or rescaling of) the input's values
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "contiguous", "clone", "to", "type",
    "type_as", "float", "half", "double", "bfloat16", "permute", "transpose", "transpose_", "t", "t_",
    "swapaxes", "swapdims", "movedim", "moveaxis", "squeeze", "squeeze_", "unsqueeze", "unsqueeze_",
    "expand", "expand_as", "repeat", "narrow", "select", "__getitem__", "index_select", "flip", "roll",
    "pad", "constant_pad_nd", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle",
    "dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "identity", "neg", "neg_", "__neg__", "negative", "positive", "__pos__",
    "max_pool1d", "max_pool2d", "max_pool3d", "_max_pool1d", "_max_pool2d", "_max_pool3d",
    "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices", "adaptive_max_pool3d_with_indices",
    "lp_pool1d", "lp_pool2d", "lp_pool3d", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear"}
_SPLIT = {"chunk", "split", "split_with_sizes", "unbind", "tensor_split", "hsplit", "vsplit", "dsplit",
          "unsafe_chunk", "unsafe_split"}
_CAT = {"cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "column_stack"}

# the trail follows these ops (documented in the README's recorder section and tested one by one)
FOLLOWED_OPS: tuple[str, ...] = tuple(sorted(_NORM | _ADD | _MUL | _SAME | _SPLIT | _CAT | {"__setitem__", "copy_"}))


@dataclass
class LayerInfo:
    """A conv/linear layer and the activations its output reaches.

    ``activations`` maps each activation it feeds to the most direct path (index in PATHS);
    ``activation``/``path`` name the most direct one ("" / "none" if it feeds none);
    ``relu_fed``/``relu_path`` do the same for the ReLU family (kept for compatibility).
    ``seen``: the layer ran in an observed forward pass. ``rule``: the selection rule that
    chose it for recording ("" when not recorded).
    """

    name: str
    index: int
    kind: str
    shape: tuple
    numel: int
    activations: dict = field(default_factory=dict)
    seen: bool = False
    rule: str = ""
    activation: str = ""
    module: Any = field(default=None, repr=False, compare=False)

    @property
    def relu_fed(self) -> bool:
        return any(a in RELU_FAMILY for a in self.activations)

    @property
    def relu_path(self) -> str:
        ranks = [r for a, r in self.activations.items() if a in RELU_FAMILY]
        return PATHS[min(ranks)] if ranks else "none"

    def most_direct(self) -> str:
        """The activation reached by the most direct path (ties: ReLU family first, then by name)."""
        if not self.activations:
            return ""
        return min(self.activations, key=lambda a: (self.activations[a], a not in RELU_FAMILY, a))

    def path_to(self, activation: str) -> str:
        r = self.activations.get(activation)
        return "none" if r is None else PATHS[r]

    def row(self, recorded: bool) -> dict:
        act = self.activation or self.most_direct()
        return {"layer": self.name, "index": self.index, "kind": self.kind,
                "shape": "x".join(str(s) for s in self.shape), "numel": self.numel,
                "relu_fed": self.relu_fed, "relu_path": self.relu_path, "recorded": recorded,
                "activation": act, "path": self.path_to(act) if act else "none",
                "rule": self.rule if recorded else ""}


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


def _tensors(x) -> list:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for t in x if isinstance(t, torch.Tensor)]
    return []


def _first_tensor(x):
    t = _tensors(x)
    return t[0] if t else None


def _arg(args, kwargs, i: int, name: str, default=None):
    return args[i] if len(args) > i else kwargs.get(name, default)


def _is_zero(v) -> bool:
    try:
        return v is not None and float(v) == 0.0
    except (TypeError, ValueError, RuntimeError):
        return False


def _activation(name: str, args, kwargs) -> Optional[str]:
    """The canonical activation ``name(args)`` computes, or None if it is not one."""
    if name in _CLAMP:  # clamp(x, min=0) with no upper bound is a ReLU
        lo, hi = _arg(args, kwargs, 1, "min"), _arg(args, kwargs, 2, "max")
        return "relu" if _is_zero(lo) and hi is None else None
    act = _ACT_NAMES.get(name)
    if act == "hardtanh":
        lo, hi = _arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0)
        if _is_zero(lo) and float(hi) == 6.0:
            return "relu6"  # nn.ReLU6 is hardtanh(0, 6)
    return act


def _mixing_operand(t) -> bool:
    """A tensor that adds values of its own (a skip connection), not a scalar or a learned bias."""
    return isinstance(t, torch.Tensor) and t.numel() > 1 and not isinstance(t, nn.Parameter)


class _Tracker(TorchFunctionMode):
    """Follows tensors produced by conv/linear layers to the activations that consume them."""

    def __init__(self):
        super().__init__()
        self.origins: dict[int, dict[int, int]] = {}  # id(tensor) -> {layer index: path rank}
        self.keep: list = []  # keep tensors alive so ids are not reused during the pass
        self.found: dict[int, dict[str, int]] = {}  # layer index -> {activation: best path rank}

    def _get(self, t) -> dict:
        return self.origins.get(id(t), {}) if isinstance(t, torch.Tensor) else {}

    def _set(self, t, org: dict, replace: bool = False) -> None:
        if not isinstance(t, torch.Tensor) or not (org or replace):
            return
        if replace:  # an in-place op changed what the tensor holds
            self.origins[id(t)] = {}
        cur = self.origins.setdefault(id(t), {})
        for k, r in org.items():
            cur[k] = min(cur.get(k, r), r)
        self.keep.append(t)

    def module_output(self, index: int, out) -> None:
        t = _first_tensor(out)
        if t is not None:
            self.origins[id(t)] = {index: 0}  # a layer's output is a new origin
            self.keep.append(t)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self._observe(getattr(func, "__name__", ""), args, kwargs, out)
        except Exception:  # noqa: BLE001 - observation must never break the user's forward
            pass
        return out

    def _observe(self, name: str, args, kwargs, out) -> None:
        x = _arg(args, kwargs, 0, "input")
        act = _activation(name, args, kwargs)
        if act is not None:
            for k, r in self._get(x).items():
                acts = self.found.setdefault(k, {})
                acts[act] = min(acts.get(act, r), r)
            if isinstance(x, torch.Tensor) and out is x:  # in place: x now holds the activation
                self.origins.pop(id(x), None)
            return
        res = _first_tensor(out)
        inplace = isinstance(x, torch.Tensor) and res is x
        if name in _NORM:
            self._set(res, {k: max(r, 1) for k, r in self._get(x).items()}, replace=inplace)
        elif name in _ADD or name in _MUL:
            other = _arg(args, kwargs, 1, "other")
            ox, oo = self._get(x), self._get(other)
            mixed = (_mixing_operand(other) and _mixing_operand(x)) if name in _ADD else bool(ox and oo)
            org: dict = {}
            for src in (ox, oo):
                for k, r in src.items():
                    org[k] = min(org.get(k, 2), 2 if mixed else r)
            self._set(res, org, replace=inplace)
        elif name in _SAME:
            self._set(res, self._get(x), replace=inplace)
        elif name in _SPLIT:
            org = self._get(x)
            for t in _tensors(out):
                self._set(t, org)
        elif name in _CAT:
            org = {}
            for t in _tensors(x):
                for k, r in self._get(t).items():
                    org[k] = min(org.get(k, r), r)
            self._set(res, org)
        elif name == "__setitem__":  # target[idx] = value: target now also holds value's values
            self._set(x, self._get(_arg(args, kwargs, 2, "value")))
        elif name == "copy_":
            self._set(x, self._get(_arg(args, kwargs, 1, "src")), replace=True)


def _fp16_autocast() -> bool:
    for dev in ("cuda", "cpu", "xpu", "mps"):
        try:
            if torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) == torch.float16:
                return True
        except (RuntimeError, TypeError, AttributeError):  # device type unknown to this torch
            continue
    return False


class LayerDiscovery:
    """Observes the model's forward passes and tags each conv/linear layer with what it feeds.

    Every forward is observed until every layer has run once or ``max_forwards`` were seen;
    ``freeze()`` ends observation (the recorder calls it at its first step, so every forward
    before then counts). Layers that had not run by then keep a light pre-hook: if one runs
    later, its forward is observed and ``on_late(info)`` is called, so the recorder can warn.
    """

    def __init__(self, model: nn.Module, infos: Optional[list[LayerInfo]] = None, *,
                 max_forwards: int = MAX_FORWARDS):
        self.model = model
        self.infos = infos if infos is not None else conv_linear_layers(model)
        self.max_forwards = int(max_forwards)
        self.forwards = 0
        self.fp16_autocast = False
        self.frozen = False
        self.on_late: Optional[Callable[[LayerInfo], None]] = None
        self._tracker: Optional[_Tracker] = None
        self._depth = 0
        self._late: set[int] = set()
        self._late_active = False
        self._mod_handles = [i.module.register_forward_hook(self._module_hook(i.index)) for i in self.infos]
        self._model_handles = [model.register_forward_pre_hook(self._pre),
                               model.register_forward_hook(self._post, always_call=True)]
        self._late_handles: list = []

    # ------------------------------------------------------------------ hooks
    def _observing(self) -> bool:
        return not self.frozen and self.forwards < self.max_forwards and not all(i.seen for i in self.infos)

    def _module_hook(self, index: int):
        def hook(mod, inp, out):
            self.infos[index].seen = True
            if self._tracker is not None:
                self._tracker.module_output(index, out)
        return hook

    def _late_hook(self, index: int):
        def hook(mod, inp):
            if index in self._late and self._depth > 0 and self._tracker is None:
                self._start()  # observe the rest of this forward from here on
        return hook

    def _start(self) -> None:
        self._tracker = _Tracker()
        self._tracker.__enter__()

    def _pre(self, mod, inp):
        self._depth += 1
        if self._depth == 1 and not self.frozen:
            self.fp16_autocast = self.fp16_autocast or _fp16_autocast()
            if self._observing():
                self._start()

    def _post(self, mod, inp, out):
        self._depth = max(self._depth - 1, 0)
        if self._depth > 0 or self._tracker is None:
            return
        tr, self._tracker = self._tracker, None
        tr.__exit__(None, None, None)
        if not self.frozen:
            self.forwards += 1
        for k, acts in tr.found.items():
            if self.frozen and k not in self._late:
                continue  # the layer table is fixed: only late layers learn what they feed
            cur = self.infos[k].activations
            for a, r in acts.items():
                cur[a] = min(cur.get(a, r), r)
        tr.origins.clear()
        tr.keep.clear()
        if not self.frozen and all(i.seen for i in self.infos):
            self._unhook()  # every layer has run: nothing left to learn (and no hooks left for torch.compile)
        if self.frozen:
            newly = [i for i in self.infos if i.index in self._late and i.seen]
            self._late -= {i.index for i in newly}
            for info in newly:
                if self.on_late is not None:
                    self.on_late(info)
            if not self._late:
                self.remove()

    # ------------------------------------------------------------------ control
    def dry_run(self, example_input) -> None:
        """One observed forward on ``example_input`` in eval mode without gradients (BatchNorm
        statistics and the model's train/eval flags are left as they were)."""
        modes = {m: m.training for m in self.model.modules()}
        try:
            self.model.eval()
            with torch.no_grad():
                if isinstance(example_input, (tuple, list)):
                    self.model(*example_input)
                else:
                    self.model(example_input)
        finally:
            for m, t in modes.items():
                m.training = t

    def freeze(self, on_late: Optional[Callable[[LayerInfo], None]] = None) -> list[LayerInfo]:
        """End observation; keep watching only the layers that have not run yet."""
        if self._tracker is not None:  # frozen inside a forward (should not happen): finish it
            self._tracker.__exit__(None, None, None)
            self._tracker = None
        self.frozen = True
        self.on_late = on_late
        for h in self._mod_handles:
            h.remove()
        self._mod_handles = []
        self._late = {i.index for i in self.infos if not i.seen}
        if not self._late or on_late is None:
            self.remove()
        else:
            for i in self.infos:
                if i.index in self._late:
                    self._late_handles.append(i.module.register_forward_pre_hook(self._late_hook(i.index)))
                    self._mod_handles.append(i.module.register_forward_hook(self._module_hook(i.index)))
        return self.infos

    def _unhook(self) -> None:
        for h in self._mod_handles + self._model_handles + self._late_handles:
            h.remove()
        self._mod_handles, self._model_handles, self._late_handles = [], [], []

    def remove(self) -> None:
        """Remove every hook (safe to call twice)."""
        if self._tracker is not None:
            self._tracker.__exit__(None, None, None)
            self._tracker = None
        self._unhook()
        self._late = set()


def find_layers(model: nn.Module, example_input) -> list[LayerInfo]:
    """Conv/linear layers of ``model``, tagged with the activations they feed, from a dry run on
    ``example_input`` (eval mode, no gradients: BatchNorm statistics are not touched)."""
    disc = LayerDiscovery(model)
    try:
        disc.dry_run(example_input)
    finally:
        disc.remove()
    disc.frozen = True
    return disc.infos


Rule = Union[str, Sequence[str]]


def _rules(layers: Rule) -> tuple[str, ...]:
    """Validate ``layers=``: "all", an activation name, or a list of activation names."""
    names = (layers,) if isinstance(layers, str) else tuple(layers) if isinstance(layers, Iterable) else None
    if not names or not all(isinstance(n, str) for n in names):
        raise GradscopeError(f"layers must be 'all', an activation name or a list of them, got {layers!r}")
    names = tuple(n.strip().lower() for n in names)
    bad = [n for n in names if n != "all" and n not in ACTIVATIONS]
    if bad:
        raise GradscopeError(f"layers={layers!r}: unknown activation {bad[0]!r}; use 'all' or one of "
                             f"{', '.join(ACTIVATIONS)}")
    if "all" in names and len(names) > 1:
        raise GradscopeError(f"layers={layers!r}: 'all' already selects every layer; pass it alone")
    return names


def _matches(info: LayerInfo, rule: str) -> bool:
    if rule == "relu":
        return info.relu_fed
    return rule in info.activations


def select_layers(infos: list[LayerInfo], layers: Rule = "relu", include: Optional[str] = None,
                  exclude: Optional[str] = None, *, skip: Optional[dict] = None) -> list[LayerInfo]:
    """The layers to record and the rule that chose each (``info.rule``, ``info.activation``).

    layers: "all", or the activation(s) the layer must feed ("relu" = ReLU or ReLU6, "gelu",
    "silu", ...); include / exclude: name regexes applied on top. ``skip``: {layer index:
    reason} of layers never to record (frozen weights, a Parameter shared with an earlier layer).
    """
    rules = _rules(layers)
    try:
        inc = re.compile(include) if include else None
        exc = re.compile(exclude) if exclude else None
    except re.error as e:
        raise GradscopeError(f"bad layer name pattern: {e}") from None
    skip = skip or {}
    for i in infos:
        i.rule, i.activation = "", ""
    if rules != ("all",) and not any(_matches(i, r) for i in infos for r in rules):
        fed = sorted({a for i in infos for a in i.activations})
        have = (f"this model's layers feed: {', '.join(fed)}; pass layers={fed[0]!r} or layers='all'"
                if fed else "no layer feeds an elementwise activation that discovery could follow; "
                "pass layers='all' (--layers all) to record every layer")
        raise GradscopeError(f"no conv/linear layer of this model feeds {' or '.join(rules)} "
                             f"(layers={layers!r}); {have}")
    out = []
    for i in infos:
        if i.index in skip or (inc is not None and not inc.search(i.name)) or (exc is not None and exc.search(i.name)):
            continue
        rule = next((r for r in rules if r == "all" or _matches(i, r)), None)
        if rule is None:
            continue
        i.rule = rule
        if rule == "all":
            i.activation = i.most_direct()
        elif rule == "relu":
            i.activation = min((a for a in i.activations if a in RELU_FAMILY), key=lambda a: (i.activations[a], a))
        else:
            i.activation = rule
        out.append(i)
    if not out:
        why = f"; not recordable: {', '.join(f'{infos[k].name} ({v})' for k, v in skip.items())}" if skip else ""
        raise GradscopeError(f"include={include!r} / exclude={exclude!r} leave no layer to record{why}; "
                             f"layers are: {', '.join(i.name for i in infos)}")
    return out
