"""A plain training loop extended by callbacks (OpenLTH style): one epoch, and evaluation.

No host synchronisation per step: losses and correct counts are summed on the device and
read once per epoch.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from gradscope.progress import bar_size

from gradscope.callbacks import TrainState, call_all


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when ``amp``; a no-op context elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_epoch(state: TrainState, loader: Iterable, callbacks: Sequence = (), *, amp: bool = False,
                progress: bool = False, desc: str = "") -> float:
    """Train ``state.model`` for one pass over ``loader``; return the mean train loss."""
    model, opt, sched = state.model, state.optimizer, state.scheduler
    device = torch.device(state.device)
    model.train()
    loss_sum = torch.zeros((), device=device)
    n = 0
    it = tqdm(loader, desc=desc, leave=False, disable=not progress, mininterval=1.0, **bar_size())
    for b, (x, y) in enumerate(it):
        state.batch = b
        with autocast_for(device, amp):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        state.loss = loss
        call_all(callbacks, "on_after_backward", state)
        opt.step()
        if sched is not None:
            sched.step()
        state.step += 1
        loss_sum += loss.detach().float() * y.shape[0]
        n += y.shape[0]
        call_all(callbacks, "on_step_end", state)
    return float(loss_sum) / max(n, 1)


@torch.no_grad()
def correct_per_example(model: nn.Module, loader: Iterable, device, amp: bool = False) -> torch.Tensor:
    """Bool [N] on the CPU: was each example of ``loader`` (in its order) classified correctly."""
    device = torch.device(device)
    was = model.training
    model.eval()
    out = []
    for x, y in loader:
        with autocast_for(device, amp):
            out.append(model(x).argmax(1) == y)
    model.train(was)
    return torch.cat(out).cpu() if out else torch.zeros(0, dtype=torch.bool)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device, amp: bool = False) -> float:
    """Top-1 accuracy of ``model`` over ``loader``."""
    device = torch.device(device)
    was = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    for x, y in loader:
        with autocast_for(device, amp):
            out = model(x)
        correct += (out.argmax(1) == y).sum()
        n += y.shape[0]
    model.train(was)
    return float(correct) / max(n, 1)
