"""The callback protocol shared by the training loop and every instrument attached to it.

It lives at the top of the package, importing nothing of gradscope, so that the recorder
(lower room) and the trainer (higher room) can both speak it without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainState:
    """What a callback sees. The loop owns it and updates it in place."""

    model: Any
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None  # torch.amp.GradScaler when AMP with fp16 is on, else None
    device: Any = "cpu"
    round: int = 0  # pruning round (0 = dense)
    epoch: int = 0  # epoch within the round
    step: int = 0  # optimizer steps taken in this round (before the current one, during it)
    batch: int = 0  # batch index within the epoch
    steps_per_epoch: int = 0
    epochs: int = 0  # epochs in this round
    loss: Any = None  # the current batch loss (a tensor: do not call .item() per step)
    metrics: dict = field(default_factory=dict)  # epoch metrics, set before on_epoch_end
    info: Any = None  # the round's gradscope.rounds.RoundInfo (sparsity, target, layer sparsity, ...)
    schedule: dict = field(default_factory=dict)  # the round's schedule parameters, incl. max_lr
    config: dict = field(default_factory=dict)  # the run's full config (plain dict)
    resumed: bool = False  # True when this round/epoch continues from a checkpoint


class Callback:
    """Base class with no-op hooks; subclasses override what they need.

    Order within a step: forward, backward, ``on_after_backward`` (gradients are final and
    unscaled: AMP scale removed, accumulation complete), optimizer step, scheduler step,
    ``on_step_end``.
    """

    def on_run_start(self, state: TrainState) -> None: ...
    def on_round_start(self, state: TrainState) -> None: ...
    def on_epoch_start(self, state: TrainState) -> None: ...
    def on_after_backward(self, state: TrainState) -> None: ...
    def on_step_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState) -> None: ...
    def on_round_end(self, state: TrainState) -> None: ...
    def on_run_end(self, state: TrainState) -> None: ...


def call_all(callbacks, hook: str, state: TrainState) -> None:
    """Call ``hook`` on each callback that has it (duck typing: any object with the method)."""
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(state)
