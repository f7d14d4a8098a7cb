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
import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from gradscope import GradscopeError


def plain_module(model: nn.Module, keep_orig: bool = False) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A copy of ``model`` with its torch prune masks made permanent (``prune.remove``: plain
    ``x.weight`` parameters, pruned entries zero) and those masks by parameter name.
    ``keep_orig``: the plain weight holds ``weight_orig`` (pruned entries as they are, not
    zeroed), so that weight decay and momentum treat them exactly as torch's pruned model does."""
    from torch.nn.utils import prune  # noqa: PLC0415

    # a pruned module's ``weight`` is a computed (non-leaf) tensor after a forward pass, which
    # deepcopy refuses: copy it as a detached tensor (the pre-hook recomputes it anyway)
    memo = {id(mod.weight): mod.weight.detach().clone() for mod in model.modules()
            if hasattr(mod, "weight_orig") and isinstance(getattr(mod, "weight", None), torch.Tensor)}
    m = copy.deepcopy(model, memo)
    masks = {}
    for name, mod in m.named_modules():
        if hasattr(mod, "weight_orig") and hasattr(mod, "weight_mask"):
            masks[f"{name}.weight" if name else "weight"] = mod.weight_mask.detach().clone()
            orig = mod.weight_orig.detach().clone()
            prune.remove(mod, "weight")
            if keep_orig:
                with torch.no_grad():
                    mod.weight.copy_(orig)
    return m, masks


class BatchedCandidates:
    """K copies of ``model`` (same start, optionally different masks) trained together with SGD.

    ``momentum``/``weight_decay``/``nesterov`` as ``torch.optim.SGD`` (L2 in the gradient).
    ``masks``: per parameter name, one mask for all candidates or [K, ...]; default: the
    model's torch prune masks (plain models: none).
    """

    def __init__(self, model: nn.Module, k: int, *, momentum: float = 0.9, weight_decay: float = 5e-4,
                 nesterov: bool = False, masks: Optional[dict[str, torch.Tensor]] = None,
                 keep_orig: bool = False):
        if int(k) != k or k < 1:
            raise GradscopeError(f"K candidates must be a positive integer, got {k}")
        self.k, self.momentum, self.wd, self.nesterov = int(k), float(momentum), float(weight_decay), nesterov
        base, own = plain_module(model, keep_orig)
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
        self._forward_own = vmap(one, in_dims=(0, 0, 0))  # each candidate its own batch

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def effective(self) -> dict[str, torch.Tensor]:
        """Parameters as the forward pass sees them (pruned weights exactly zero)."""
        return {n: (p * self.masks[n] if n in self.masks else p) for n, p in self.params.items()}

    def forward(self, x: torch.Tensor, own: bool = False) -> torch.Tensor:
        """Logits [K, B, classes] of every candidate on the shared batch ``x`` (or, ``own``, on
        its own batch ``x[i]`` of x [K, B, ...])."""
        return (self._forward_own if own else self._forward)(self.effective(), self.buffers, x)

    def train(self, mode: bool = True) -> "BatchedCandidates":
        self.base.train(mode)
        return self

    def step(self, x: torch.Tensor, y: torch.Tensor, lrs: torch.Tensor, amp_dtype=None) -> torch.Tensor:
        """One SGD step of every candidate on batch (x, y); ``lrs`` [K]; returns the K losses (on device).
        x [K, B, ...] with y [K, B]: candidate i trains on its own batch (x[i], y[i])."""
        self.base.train()
        own = y.dim() == 2
        ctx = torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None else _null()
        with ctx:
            logits = self.forward(x, own)
        yy = y.flatten() if own else y.repeat(self.k)
        losses = nn.functional.cross_entropy(logits.float().flatten(0, 1), yy,
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

    def raw_state(self, i: int) -> dict[str, torch.Tensor]:
        """Candidate ``i``'s parameters as trained (unmasked, ``weight_orig`` with ``keep_orig``) and buffers."""
        out = {n: p[i].detach().clone() for n, p in self.params.items()}
        out.update({n: b[i].clone() for n, b in self.buffers.items()})
        return out

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
    return factory_lrs([factory.with_peak(float(v)) for v in max_lrs], info)


def factory_lrs(factories: Sequence, info):
    """``schedule_lrs`` for K schedule factories (one per candidate)."""
    opts, scheds = [], []
    for f in factories:
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


# ----------------------------------------------------------------------------- Oracle rounds
def unbatchable(model: nn.Module, cfg) -> Optional[str]:
    """Why the candidates of a run cannot train as one batched model (None: they can). The
    batched step is SGD with one weight decay, and vmap cannot draw per-candidate dropout."""
    if cfg.optimizer != "sgd":
        return f"--optimizer {cfg.optimizer} (the batched step is SGD)"
    if hasattr(model, "no_weight_decay") and set(model.no_weight_decay()):
        return "the model exempts parameters from weight decay"
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return "the model uses dropout"
    return None


@dataclass
class Outcome:
    """What one candidate of ``train_batched`` gives back (as ``RoundTrainer`` + the Oracle would)."""

    epochs: list  # EpochMetrics; [] when it diverged
    diverged: Optional[tuple]  # (epoch, mean loss) where it diverged, else None
    state: dict  # its model's state_dict, in the layout of ``ctx.model`` (weight_orig, weight_mask)
    val_correct: torch.Tensor  # bool [n_val]: each validation example right


def _to_model_state(ctx_model: nn.Module, raw: dict, masked: set) -> dict:
    """A candidate's raw parameters/buffers as a state dict of the torch-pruned ``ctx_model``."""
    from gradscope import InternalError  # noqa: PLC0415

    sd = {k: v.detach().clone() for k, v in ctx_model.state_dict().items()}
    for n, v in raw.items():
        key = n + "_orig" if n in masked else n
        if key not in sd:
            raise InternalError(f"batched candidate state {n!r} has no place in the model's state dict")
        sd[key] = v.to(sd[key].dtype)
    return sd


@torch.no_grad()
def _correct(bc: BatchedCandidates, loader, amp_dtype) -> torch.Tensor:
    """Bool [K, N]: each candidate right on each example of ``loader`` (eval mode)."""
    out = []
    for x, y in loader:
        with torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None else _null():
            out.append(bc.predict(x).argmax(-1) == y)
    return torch.cat(out, 1).cpu() if out else torch.zeros(bc.k, 0, dtype=torch.bool)


def train_batched(ctx, cfg, info, factories: Sequence, seeds: Sequence[int]) -> list[Outcome]:
    """Train K candidates of round ``info.round`` from ``ctx.model``'s state as one vmapped model.

    Candidate i has schedule ``factories[i]`` (its max_lr) and the data order of seed
    ``seeds[i]`` (the train loader re-seeded, as ``run_candidate`` does); masks are the
    model's. Per epoch as ``RoundTrainer``: the mean train loss (divergence: non-finite or above
    ``DIVERGED_LOSS`` stops that candidate there), validation accuracy, test accuracy at the
    last epoch (or every epoch with test_every "epoch"). ``time_s`` of an epoch is the batch's
    wall time divided by K (each candidate's share).
    """
    from gradscope.data import epoch_key  # noqa: PLC0415
    from gradscope.rounds import EpochMetrics  # noqa: PLC0415
    from gradscope.train.trainer import DIVERGED_LOSS  # noqa: PLC0415

    why = unbatchable(ctx.model, cfg)
    if why:
        raise GradscopeError(f"these candidates cannot be batched: {why}; run them one by one (--batched 1)")
    k = len(factories)
    if len(seeds) != k or k < 1:
        raise GradscopeError(f"train_batched needs one seed per schedule, got {len(seeds)} and {k}")
    device = ctx.device
    amp = torch.bfloat16 if (cfg.amp and device.type == "cuda") else None
    bc = BatchedCandidates(ctx.model, k, momentum=cfg.momentum, weight_decay=cfg.weight_decay, keep_orig=True)
    loaders = []
    for s in seeds:
        ld = copy.copy(ctx.train_loader)
        ld.seed = int(s)
        loaders.append(ld)
    next_lrs = factory_lrs(factories, info)
    diverged: list = [None] * k
    frozen: dict = {}
    epochs: list = [[] for _ in range(k)]

    def accuracy(loader):
        c = _correct(bc, loader, amp)
        n = c.shape[1]
        return [int(v) / n for v in c.sum(1).tolist()] if n else [math.nan] * k

    for e in range(cfg.epochs):
        for ld in loaders:
            ld.set_epoch(epoch_key(info.round, e))
        t0 = time.perf_counter()
        loss_sum = torch.zeros(k, device=device, dtype=torch.float64)
        n, first_lrs = 0, None
        for batches in zip(*loaders):
            x = torch.stack([b[0] for b in batches])
            y = torch.stack([b[1] for b in batches])
            lrs = next_lrs()
            if first_lrs is None:
                first_lrs = lrs.tolist()
            for i in frozen:
                lrs[i] = 0.0
            losses = bc.step(x, y, lrs.to(device), amp_dtype=amp)
            loss_sum += losses.double() * y.shape[1]
            n += y.shape[1]
        means = (loss_sum / max(n, 1)).tolist()
        for i, v in enumerate(means):
            if i not in frozen and (not math.isfinite(v) or v > DIVERGED_LOSS):
                diverged[i] = (e, v)
                frozen[i] = bc.raw_state(i)
        last = e == cfg.epochs - 1
        val = accuracy(ctx.val_loader) if ctx.val_loader is not None else [math.nan] * k
        test = accuracy(ctx.test_loader) if (last or cfg.test_every == "epoch") else [None] * k
        dt = (time.perf_counter() - t0) / k
        for i in range(k):
            if i not in frozen:
                epochs[i].append(EpochMetrics(round=info.round, epoch=e, train_loss=means[i], val_acc=val[i],
                                              test_acc=test[i], lr=first_lrs[i] if first_lrs else math.nan,
                                              time_s=dt))
        if len(frozen) == k:
            break
    correct = _correct(bc, ctx.val_loader, amp) if ctx.val_loader is not None else torch.zeros(k, 0, dtype=torch.bool)
    masked = set(bc.masks)
    out = []
    for i in range(k):
        raw = frozen.get(i) or bc.raw_state(i)
        out.append(Outcome(epochs=[] if diverged[i] else epochs[i], diverged=diverged[i],
                           state=_to_model_state(ctx.model, raw, masked),
                           val_correct=torch.zeros(ctx.n_val, dtype=torch.bool) if diverged[i] else correct[i]))
    return out
