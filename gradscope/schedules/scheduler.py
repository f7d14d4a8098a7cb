"""``RoundLR``: one pruning round's LR as a closed form of the step, stepped per batch.

Its state is plain numbers and strings (peak, total steps, shape name and parameters), so
it pickles, ``state_dict``/``load_state_dict`` round-trip, and a scheduler rebuilt on a new
optimizer after a crash continues with exactly the LRs the old one would have given.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from gradscope.schedules.curves import SHAPES


class RoundLR(LRScheduler):
    """LR of step t of a round = ``SHAPES[shape](t, total_steps, peak, **shape_params)``.

    Every param group gets that same value (groups are not scaled by their initial lr).
    Step 0's LR is set on construction; call ``step()`` after each ``optimizer.step()``.
    Steps past ``total_steps`` keep the round's last LR (no "Tried to step N times").
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, peak: float, shape: str,
                 shape_params: dict | None = None, round: int = 0, name: str = "",
                 last_epoch: int = -1) -> None:
        # Only plain values are stored (see module docstring); the factory has validated them.
        self.name = str(name)
        self.round = int(round)
        self.total_steps = int(total_steps)
        self.peak = float(peak)
        self.shape = str(shape)
        self.shape_params = {k: (list(v) if isinstance(v, (list, tuple)) else v)
                             for k, v in (shape_params or {}).items()}
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int) -> float:
        """The closed-form LR at optimizer step ``step`` (0-based) of this round."""
        return SHAPES[self.shape](step, self.total_steps, self.peak, **self.shape_params)

    def get_lr(self) -> list[float]:
        return [self.lr_at(self.last_epoch)] * len(self.optimizer.param_groups)

    _get_closed_form_lr = get_lr

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state and put the restored step's LR into the optimizer right away."""
        super().load_state_dict(state_dict)
        lr = self.lr_at(self.last_epoch)
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = [lr] * len(self.optimizer.param_groups)
