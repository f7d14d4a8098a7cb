"""``RoundTrainer``: train one pruning round — optimizer, per-batch schedule, epochs, evaluation.

Built once per run on a ``TrainContext``; ``train(info, schedule, callbacks)`` trains round
``info.round`` and returns a typed ``RoundResult``. It knows nothing of pruning, rewinding,
checkpoints or files: the runner (``PruningRun``) sequences rounds and persists them, the
Oracle calls it once per candidate, and instruments attach as callbacks.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, Optional, Sequence

import torch

from gradscope import GradscopeError
from gradscope.callbacks import TrainState, call_all
from gradscope.config import TrainConfig
from gradscope.data import epoch_key
from gradscope.rounds import EpochMetrics, RoundInfo, RoundResult
from gradscope.train import distributed as D
from gradscope.train.context import TrainContext
from gradscope.train.loop import evaluate, train_epoch

DIVERGED_LOSS = 1e3  # an epoch's mean cross-entropy above this is divergence (chance is ln C < 10)


class Diverged(GradscopeError):
    """Training diverged (non-finite or exploding loss); the round's result is meaningless."""

    def __init__(self, message: str, info: RoundInfo, epoch: int, loss: float):
        super().__init__(message)
        self.info, self.epoch, self.loss = info, epoch, loss


def progress_enabled(setting: Optional[bool]) -> bool:
    """tqdm bars: as set, else on only when stderr is a terminal (a piped log gets per-round lines)."""
    return bool(setting) if setting is not None else bool(getattr(sys.stderr, "isatty", lambda: False)())


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """One group, or two when the model names parameters exempt from weight decay (a ViT's
    ``no_weight_decay()``: norms, biases, embeddings), as ViTs are trained."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    if not skip:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if n not in skip], "weight_decay": weight_decay},
            {"params": [p for n, p in named if n in skip], "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """SGD (momentum, L2 weight decay) or AdamW (beta1 = momentum, decoupled weight decay)."""
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(cfg.momentum, 0.999))
    raise GradscopeError(f"unknown --optimizer {cfg.optimizer!r}; known: sgd, adamw")


def _evaluate(ctx: TrainContext, loader, amp: bool) -> float:
    """Top-1 accuracy on ``loader``; under torchrun each rank evaluates its part and they are merged."""
    return D.merge_accuracy(evaluate(ctx.net, loader, ctx.device, amp), loader.examples)


class RoundTrainer:
    """Trains rounds on one context with one training config (see module docstring)."""

    def __init__(self, ctx: TrainContext, cfg: TrainConfig, config_dict: Optional[dict] = None):
        self.ctx, self.cfg = ctx, cfg
        self.config_dict = config_dict or {}
        self.progress = progress_enabled(cfg.progress)

    def round_info(self, k: int, **kw) -> RoundInfo:
        """A RoundInfo of round k on this context (steps and epochs filled in)."""
        return RoundInfo(round=k, steps_per_epoch=self.ctx.steps_per_epoch, epochs=self.cfg.epochs, **kw)

    def train(self, info: RoundInfo, schedule, callbacks: Sequence = (), *,
              done: Sequence[EpochMetrics] = (), opt_state: Optional[dict] = None,
              sched_state: Optional[dict] = None, desc: str = "",
              on_state: Optional[Callable[[TrainState], None]] = None) -> RoundResult:
        """Train round ``info.round`` with ``schedule`` (a ScheduleFactory) from epoch ``len(done)``.

        ``done``: epochs already trained (a resume), whose optimizer/scheduler states are
        ``opt_state``/``sched_state``. ``on_state`` sees the TrainState before any hook runs.
        Calls the callbacks' round, epoch and step hooks, ending with ``on_round_end``.
        """
        ctx, c = self.ctx, self.cfg
        peak = schedule.peak_lr(info)
        optimizer = make_optimizer(ctx.model, c, peak)
        scheduler = schedule.build(optimizer, info)
        start = len(done)
        if start and opt_state is not None:
            optimizer.load_state_dict(opt_state)
        if start and sched_state is not None:
            scheduler.load_state_dict(sched_state)
        params = schedule.round_params(info)
        state = TrainState(model=ctx.net, optimizer=optimizer, scheduler=scheduler, device=ctx.device,
                           round=info.round, epoch=start, step=start * ctx.steps_per_epoch,
                           steps_per_epoch=ctx.steps_per_epoch, epochs=c.epochs, info=info,
                           schedule=params, config=self.config_dict, resumed=start > 0)
        if on_state is not None:
            on_state(state)
        epochs = list(done)
        call_all(callbacks, "on_round_start", state)
        for e in range(start, c.epochs):
            state.epoch = e
            call_all(callbacks, "on_epoch_start", state)
            ctx.train_loader.set_epoch(epoch_key(info.round, e))
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            loss = train_epoch(state, ctx.train_loader, callbacks, amp=c.amp, progress=bool(self.progress),
                               desc=f"{desc}round {info.round} epoch {e + 1}/{c.epochs}")
            loss = D.average(loss)  # under torchrun: over all ranks (identical, so all agree on divergence)
            if not math.isfinite(loss) or loss > DIVERGED_LOSS:
                raise Diverged(f"training diverged in round {info.round}, epoch {e}: mean loss {loss:.4g} "
                               f"(max_lr {params['max_lr']:.4g} is probably too high)", info, e, loss)
            val = _evaluate(ctx, ctx.val_loader, c.amp) if ctx.val_loader is not None else math.nan
            last = e == c.epochs - 1
            every = c.test_every == "epoch" or getattr(c, "report_best_test", False)
            test = _evaluate(ctx, ctx.test_loader, c.amp) if (last or every) else None
            m = EpochMetrics(round=info.round, epoch=e, train_loss=loss, val_acc=val, test_acc=test,
                             lr=lr, time_s=time.perf_counter() - t0)
            epochs.append(m)
            state.metrics = m.to_dict()
            call_all(callbacks, "on_epoch_end", state)
        if epochs:
            state.metrics = epochs[-1].to_dict()
        call_all(callbacks, "on_round_end", state)
        return RoundResult(info, params, epochs)
