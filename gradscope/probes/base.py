"""What every probe shares: the model as a pure function of cloned parameters, masks as a
per-parameter projection, fixed probe batches, and a guard that puts back what a probe touched.

A probe never steps the run's model: it clones the parameters and buffers and calls the model
through ``torch.func.functional_call``, so the model's weights, BatchNorm running statistics,
gradients and the run's optimizer cannot change. What functional calls do leave behind
(``torch.nn.utils.prune`` writes ``module.weight`` as a plain attribute in its forward
pre-hook; train/eval flags; the four RNG streams) is saved and restored by ``preserved``.
Masks are enforced twice: the pruned modules' own ``weight = weight_orig * weight_mask`` hook,
and an explicit ``p * mask`` on every masked parameter, so external masks work too.
Probes run in the parameters' dtype (no autocast) with BatchNorm in train mode and dropout off
(a Hessian-vector product of a loss that changes from call to call is not one).
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from gradscope import GradscopeError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def loss_of(config: Mapping[str, Any]) -> LossFn:
    """The probe's loss: ``config["loss"]`` (a callable of (output, target)) or cross-entropy."""
    return config.get("loss") or nn.functional.cross_entropy


# ----------------------------------------------------------------------------- state guard
def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st:
        torch.cuda.set_rng_state_all(st["cuda"])


def _is_prune_hook(h) -> bool:
    from torch.nn.utils.prune import BasePruningMethod  # noqa: PLC0415

    return isinstance(h, BasePruningMethod)


@contextlib.contextmanager
def _instruments_muted(model: nn.Module) -> Iterator[None]:
    """Forward hooks of the run's instruments (the recorder's layer discovery, a user's) do not
    see a probe's forward passes: module and global forward (pre-)hooks are set aside for the
    probe, except ``torch.nn.utils.prune``'s mask hooks, and put back as they were."""
    from torch.nn.modules import module as M  # noqa: PLC0415

    saved = []
    for m in model.modules():
        saved.append((m, m._forward_hooks, m._forward_pre_hooks))
        m._forward_hooks = type(m._forward_hooks)()
        m._forward_pre_hooks = type(m._forward_pre_hooks)(
            (k, h) for k, h in saved[-1][2].items() if _is_prune_hook(h))
    g_post, g_pre = M._global_forward_hooks, M._global_forward_pre_hooks
    M._global_forward_hooks, M._global_forward_pre_hooks = type(g_post)(), type(g_pre)()
    try:
        yield
    finally:
        M._global_forward_hooks, M._global_forward_pre_hooks = g_post, g_pre
        for m, post, pre in saved:
            m._forward_hooks, m._forward_pre_hooks = post, pre


@contextlib.contextmanager
def preserved(model: nn.Module, seed: int = 0) -> Iterator[None]:
    """Run a probe: train mode (BatchNorm on batch statistics; dropout off), RNGs seeded with
    ``seed``, the instruments' forward hooks set aside; on exit every module's train/eval flag,
    hooks, prune's ``weight`` attributes and the torch, CUDA, numpy and python RNG states are as
    they were. (Probes step no ``torch.optim`` optimizer: its global step hooks, e.g. the
    recorder's step counter, would fire.)"""
    flags = {m: m.training for m in model.modules()}
    weights = {m: m.__dict__["weight"] for m in model.modules() if "weight" in m.__dict__}
    rng = _rng_state()
    mute = _instruments_muted(model)
    mute.__enter__()
    try:
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        model.train()
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()
        yield
    finally:
        mute.__exit__(None, None, None)
        for m, w in weights.items():
            m.__dict__["weight"] = w
        for m, t in flags.items():
            m.training = t
        _set_rng_state(rng)


# ----------------------------------------------------------------------------- masks
def param_masks(model: nn.Module, masks: Optional[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-parameter float masks (1 = surviving) from per-module masks ``{module name: bool}``.

    The masked parameter is ``weight_orig`` for a ``torch.nn.utils.prune``d module, else
    ``weight``. A name that is not a module, a shape mismatch and a 100 %-pruned layer are
    errors (a probe on a layer without a surviving weight measures nothing)."""
    mods = dict(model.named_modules())
    params = dict(model.named_parameters())
    out = {}
    for name, m in (masks or {}).items():
        mod = mods.get(name)
        if mod is None:
            raise GradscopeError(f"probe masks name {name!r}, which is not a module of the model")
        pname = f"{name}.weight_orig" if f"{name}.weight_orig" in params else f"{name}.weight"
        if pname not in params:
            raise GradscopeError(f"probe masks name {name!r}, which has no weight")
        p = params[pname]
        m = torch.as_tensor(m).to(p.device)
        if tuple(m.shape) != tuple(p.shape):
            raise GradscopeError(f"the mask of {name!r} has shape {tuple(m.shape)}, its weight {tuple(p.shape)}")
        if not bool(m.any()):
            raise GradscopeError(f"layer {name!r} is 100 % pruned (no surviving weight): the probes measure the "
                                 "surviving weights, and this layer passes nothing on; prune less")
        out[pname] = m.to(p.dtype)
    return out


class Functional:
    """The model as a pure function of (cloned) parameters, with masks enforced.

    ``params``: detached clones of the trainable parameters (leaves; a probe may step them);
    ``buffers``: clones of the buffers (BatchNorm's running statistics move in the clones only).
    """

    def __init__(self, model: nn.Module, masks: Optional[Mapping[str, torch.Tensor]], loss: LossFn):
        self.model, self.loss_fn = model, loss
        self.masks = param_masks(model, masks)
        self.params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.names = list(self.params)

    def masked(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: (v * self.masks[n] if n in self.masks else v) for n, v in params.items()}

    def loss(self, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.model, ({**self.buffers, **self.masked(params)}), (x,), strict=False)
        return self.loss_fn(out, y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output at the (masked) cloned parameters."""
        return functional_call(self.model, ({**self.buffers, **self.masked(self.params)}), (x,), strict=False)

    def project(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Zero the pruned coordinates (the iteration vector lives on the surviving weights)."""
        return self.masked(tensors)

    def surviving(self) -> int:
        return int(sum(float(self.masks[n].sum()) if n in self.masks else p.numel() for n, p in self.params.items()))


# ----------------------------------------------------------------------------- batches
def take_batches(loader: Iterable, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` batches of ``loader`` (fewer if it is shorter; none is an error)."""
    out = []
    for b in loader:
        out.append((b[0], b[1]))
        if len(out) >= n:
            break
    if not out:
        raise GradscopeError("the probe's loader gave no batch")
    return out


def equal_batches(loader: Iterable, n: int, name: str) -> tuple[list, int]:
    """At least 2 (up to ``n`` >= 2) batches of one size, and that size, for the estimators
    that compare batch gradients (noise-scale, eps-opt; probe ``name`` in the messages)."""
    batches = take_batches(loader, n)
    if len(batches) < 2:
        raise GradscopeError(f"{name} needs at least 2 batches; the training set gives one (lower --batch-size)")
    sizes = {int(b[1].shape[0]) for b in batches}
    if len(sizes) != 1:
        raise GradscopeError(f"{name} needs equal batch sizes, got {sorted(sizes)}")
    return batches, sizes.pop()


def fwd_bwd_seconds(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], loss: LossFn,
                    masks=None, repeats: int = 3) -> float:
    """Median wall time of one forward+backward pass on ``batch`` (the probes' unit of cost),
    on a functional copy (the model's gradients are not touched)."""
    f = Functional(model, masks, loss)
    ps = {n: p.requires_grad_(True) for n, p in f.params.items()}
    ts = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        torch.autograd.grad(f.loss(ps, *batch), list(ps.values()), allow_unused=True)
        _sync(batch[0].device)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts[1:]))  # the first pass warms up


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- layers followed by BN
def bn_followed(model: nn.Module, example: torch.Tensor, forward: Optional[Callable] = None) -> dict[str, str]:
    """``{conv/linear name: BatchNorm name}`` for each layer whose output feeds a BatchNorm
    directly, found by one traced forward pass (``forward(example)``, default the model; no
    grad, eval mode, train flags restored). Probes trace through ``Functional.forward`` so that
    even this pass sees the masked weights."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, tuple] = {}  # id -> (name, tensor): the tensor is kept so its id stays unique
    pairs: dict[str, str] = {}
    hooks = []

    def after(mod, inp, out):
        if isinstance(out, torch.Tensor):
            produced[id(out)] = (names[mod], out)

    def before_bn(mod, inp):
        src = produced.get(id(inp[0])) if inp and isinstance(inp[0], torch.Tensor) else None
        if src is not None:
            pairs.setdefault(src[0], names[mod])

    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            hooks.append(m.register_forward_hook(after))
        elif isinstance(m, BN_TYPES):
            hooks.append(m.register_forward_pre_hook(before_bn))
    flags = {m: m.training for m in model.modules()}
    weights = {m: m.__dict__["weight"] for m in model.modules() if "weight" in m.__dict__}
    try:
        model.eval()
        with torch.no_grad():
            (forward or model)(example)
    finally:
        for h in hooks:
            h.remove()
        for m, t in flags.items():
            m.training = t
        for m, w in weights.items():
            m.__dict__["weight"] = w
    return pairs


def finite(v: float, what: str) -> float:
    if not math.isfinite(v):
        raise GradscopeError(f"{what} is not finite ({v}); the network at this round's start gives a non-finite "
                             "loss, so no probe can measure it")
    return v
