"""What every round of a run shares, built once: device, data, model with masks, loaders.

``build_context(config)`` seeds, loads the data, builds the model (with all-ones
``torch.nn.utils.prune`` masks on the prunable layers, so the state-dict layout never
changes), and makes the loaders. It raises a ``GradscopeError`` before anything is written.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

from gradscope import GradscopeError
from gradscope import pruning as P
from gradscope.config import RunConfig
from gradscope.train import distributed as D


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise GradscopeError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GradscopeError(f"--device {name} asked for, but no CUDA GPU is available")
    if dev.type not in ("cpu", "cuda"):
        raise GradscopeError(f"--device {name}: only cpu and cuda devices are supported")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainContext:
    """The run's fixed parts. ``model`` is the module (masks attached; its state_dict is what is
    saved); ``net`` is what is called (DDP-wrapped under torchrun, ``torch.compile``d with
    --compile, else the model itself); ``dist``: this process's rank (gradscope.train.distributed)."""

    device: torch.device
    data: object  # gradscope.data.DataBundle
    model: nn.Module
    net: nn.Module
    layers: dict  # prunable layer name -> module
    train_loader: object
    val_loader: Optional[object]
    test_loader: object
    channels_last: bool
    dist: D.DistEnv = field(default_factory=D.DistEnv)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    @property
    def total_prunable(self) -> int:
        return sum(m.weight_orig.numel() for m in self.layers.values())

    @property
    def n_val(self) -> int:
        return len(self.data.val_y)


def build_context(c: RunConfig) -> TrainContext:
    """Device, data, model, masks and loaders of run config ``c`` (see module docstring)."""
    from gradscope.data import BatchLoader, imagefiles, load_dataset_from_config  # noqa: PLC0415
    from gradscope.models import get_model  # noqa: PLC0415

    if c.train.threads:
        torch.set_num_threads(c.train.threads)
    dist, device = D.setup(resolve_device(c.train.device))
    seed_everything(c.train.seed)
    with imagefiles.progress(c.train.progress):
        data = load_dataset_from_config(c.data, c.train.seed)
    seed_everything(c.train.seed)
    model = D.sync_batchnorm(get_model(c.model.model, data.input_shape, data.num_classes), device)
    channels_last = bool(c.train.channels_last and len(data.input_shape) == 3
                         and any(isinstance(m, nn.Conv2d) for m in model.modules()))
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    layers = P.prunable_layers(model, c.prune.prune_first, c.prune.prune_last, c.prune.prune_bn)
    P.attach_masks(layers)
    P.check_schedule(sum(m.weight_orig.numel() for m in layers.values()), c.prune.rounds, c.prune.prune_rate)
    net = D.wrap(model, device)
    if c.train.compile:
        from gradscope.compile_env import prepare_compile  # noqa: PLC0415

        prepare_compile()  # Inductor's cache under gradscope's cache folder
    net = torch.compile(net) if c.train.compile else net
    why = D.check_batch(c.data.batch_size, len(data.train_y))
    if why:
        raise GradscopeError(why)
    common = dict(mean=data.mean, std=data.std, device=device, channels_last=channels_last,
                  rank=dist.rank, world_size=dist.world_size)
    train_loader = BatchLoader(data.train_x, data.train_y, c.data.batch_size, shuffle=True,
                               augment=data.augment if c.data.augment else "none",
                               seed=c.train.seed, drop_last=len(data.train_y) >= c.data.batch_size,
                               **common)  # no tiny last batch: it would skew gradient statistics
    if len(train_loader) == 0:
        raise GradscopeError("the training set is empty (check --train-subset / --val-fraction)")
    val_loader = BatchLoader(data.val_x, data.val_y, 512, shuffle=False, **common) if len(data.val_y) else None
    test_loader = BatchLoader(data.test_x, data.test_y, 512, shuffle=False, **common)
    if ":" in c.model.model:  # a user's model: one forward now, so a bad one fails before training
        from gradscope.models.registry import check_forward  # noqa: PLC0415

        check_forward(model, c.model.model, next(iter(test_loader))[0][:2], data.num_classes)
    return TrainContext(device, data, model, net, layers, train_loader, val_loader, test_loader, channels_last, dist)
