"""K candidates of one small model trained at once on one device, as one vmapped model.

Oracle candidates of a round start from the same weights and masks and, for one seed, see
the same batches; they differ only in their learning rate. ``BatchedCandidates`` stacks K
copies of the parameters and buffers ([K, ...], ``torch.func.stack_module_state``), runs the
model once per batch with ``torch.func.vmap(functional_call)`` (convolutions become grouped
convolutions, BatchNorm keeps per-candidate statistics), sums the K losses (the candidates do
not interact, so each gets exactly its own gradient) and takes an SGD step with a
per-candidate learning rate. Masks are applied as ``weight_orig * mask`` inside the step, as
``torch.nn.utils.prune`` does. It pays where one small model leaves a device idle (GPU);
see bench/bench_batched.py for the CPU numbers.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from gradscope import GradscopeError


def plain_module(model: nn.Module) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A copy of ``model`` with its torch prune masks made permanent (``prune.remove``: plain
    ``x.weight`` parameters, pruned entries zero) and those masks by parameter name."""
    from torch.nn.utils import prune  # noqa: PLC0415

    m = copy.deepcopy(model)
    masks = {}
    for name, mod in m.named_modules():
        if hasattr(mod, "weight_orig") and hasattr(mod, "weight_mask"):
            masks[f"{name}.weight" if name else "weight"] = mod.weight_mask.detach().clone()
            prune.remove(mod, "weight")
    return m, masks


class BatchedCandidates:
    """K copies of ``model`` (same start, optionally different masks) trained together with SGD.

    ``momentum``/``weight_decay``/``nesterov`` as ``torch.optim.SGD`` (L2 in the gradient).
    ``masks``: per parameter name, one mask for all candidates or [K, ...]; default: the
    model's torch prune masks (plain models: none).
    """

    def __init__(self, model: nn.Module, k: int, *, momentum: float = 0.9, weight_decay: float = 5e-4,
                 nesterov: bool = False, masks: Optional[dict[str, torch.Tensor]] = None):
        if int(k) != k or k < 1:
            raise GradscopeError(f"K candidates must be a positive integer, got {k}")
        self.k, self.momentum, self.wd, self.nesterov = int(k), float(momentum), float(weight_decay), nesterov
        base, own = plain_module(model)
        self.base = base
        copies = [copy.deepcopy(base) for _ in range(self.k)]
        params, buffers = stack_module_state(copies)
        self.params = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
        self.buffers = {n: b.detach().clone() for n, b in buffers.items()}
        masks = own if masks is None else masks
        self.masks = {}
        for n, m in masks.items():
            if n not in self.params:
                raise GradscopeError(f"mask for unknown parameter {n!r}")
            p = self.params[n]
            m = m.to(p.device, p.dtype)
            self.masks[n] = m if m.shape == p.shape else m.unsqueeze(0).expand_as(p).contiguous()
        self._mom: dict[str, torch.Tensor] = {}

        def one(params, buffers, x):
            return functional_call(self.base, (params, buffers), (x,))

        self._forward = vmap(one, in_dims=(0, 0, None))

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def effective(self) -> dict[str, torch.Tensor]:
        """Parameters as the forward pass sees them (pruned weights exactly zero)."""
        return {n: (p * self.masks[n] if n in self.masks else p) for n, p in self.params.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [K, B, classes] of every candidate on the shared batch ``x``."""
        return self._forward(self.effective(), self.buffers, x)

    def train(self, mode: bool = True) -> "BatchedCandidates":
        self.base.train(mode)
        return self

    def step(self, x: torch.Tensor, y: torch.Tensor, lrs: torch.Tensor, amp_dtype=None) -> torch.Tensor:
        """One SGD step of every candidate on batch (x, y); ``lrs`` [K]; returns the K losses (on device)."""
        self.base.train()
        ctx = torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None else _null()
        with ctx:
            logits = self.forward(x)
        losses = nn.functional.cross_entropy(logits.float().flatten(0, 1), y.repeat(self.k),
                                             reduction="none").view(self.k, -1).mean(1)
        for p in self.params.values():
            p.grad = None
        losses.sum().backward()
        self._sgd(torch.as_tensor(lrs, dtype=torch.float32, device=self.device))
        return losses.detach()

    @torch.no_grad()
    def _sgd(self, lrs: torch.Tensor) -> None:
        names = [n for n, p in self.params.items() if p.grad is not None]
        ps = [self.params[n] for n in names]
        gs = [p.grad for p in ps]
        if self.wd:
            gs = torch._foreach_add(gs, ps, alpha=self.wd)
        if self.momentum:
            if not self._mom:
                self._mom = {n: g.clone() for n, g in zip(names, gs)}
            else:
                bufs = [self._mom[n] for n in names]
                torch._foreach_mul_(bufs, self.momentum)
                torch._foreach_add_(bufs, gs)
            bufs = [self._mom[n] for n in names]
            gs = torch._foreach_add(gs, bufs, alpha=self.momentum) if self.nesterov else bufs
        for p, d in zip(ps, gs):
            p.sub_(d * lrs.view(-1, *([1] * (p.dim() - 1))).to(p.dtype))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [K, B, classes] in eval mode (BatchNorm uses each candidate's running statistics)."""
        self.base.eval()
        try:
            return self.forward(x)
        finally:
            self.base.train()

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Candidate ``i``'s parameters (masked) and buffers as a plain state dict (``plain_state`` names)."""
        eff = self.effective()
        out = {n: eff[n][i].detach().clone() for n in eff}
        out.update({n: b[i].clone() for n, b in self.buffers.items()})
        return out


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def schedule_lrs(factory, info, max_lrs: Sequence[float]):
    """Per-step learning rates of K candidates: the schedule ``factory`` with each peak in ``max_lrs``
    (``ScheduleFactory.with_peak``), stepped like the trainer steps it. Returns ``next_lrs()``,
    which gives the [K] rates of the coming step and advances every schedule by one step."""
    opts, scheds = [], []
    for v in max_lrs:
        f = factory.with_peak(float(v))
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=f.peak_lr(info))
        opts.append(opt)
        scheds.append(f.build(opt, info))

    def next_lrs() -> torch.Tensor:
        lrs = torch.tensor([o.param_groups[0]["lr"] for o in opts], dtype=torch.float32)
        for o, s in zip(opts, scheds):
            o.step()
            s.step()
        return lrs

    return next_lrs
