"""``RoundLR``: one pruning round's LR as a closed form of the step, stepped per batch.

Its state is plain numbers and strings (peak, total steps, shape name and parameters), so
it pickles, ``state_dict``/``load_state_dict`` round-trip, and a scheduler rebuilt on a new
optimizer after a crash continues with exactly the LRs the old one would have given.
"""
from __future__ import annotations

import math
from typing import Any

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from gradscope import GradscopeError
from gradscope.schedules.shapes import get_shape


class RoundLR(LRScheduler):
    """LR of step t of a round = ``SHAPES[shape].fn(t, total_steps, peak, **shape_params)``.

    Param groups are scaled by their initial LR as torch schedulers do: the group with the
    largest initial LR follows the closed form exactly, group g gets ``initial_lr_g / max``
    of it (a single-group optimizer, as the trainer builds, gets the closed form itself).
    A shape that cycles momentum (one-cycle, triangular) sets each group's ``momentum`` (SGD)
    or ``betas[0]`` (Adam/AdamW); an optimizer with neither raises, as torch's OneCycleLR does.
    Step 0's LR is set on construction; call ``step()`` after each ``optimizer.step()``.
    Stepping more than ``total_steps`` times raises, as OneCycleLR does (a round that
    silently ran on at its last LR would hide a wrong step count).

    ``shape_total``/``offset``: the round runs steps ``offset .. offset+total_steps−1`` of a
    schedule ``shape_total`` steps long (LR rewinding with a retraining budget shorter than
    the original training: the last t epochs of the original T); default: the round itself.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, peak: float, shape: str,
                 shape_params: dict | None = None, round: int = 0, name: str = "",
                 last_epoch: int = -1, shape_total: int | None = None, offset: int = 0) -> None:
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise GradscopeError(f"RoundLR needs total_steps >= 1, got {total_steps!r}")
        if isinstance(peak, bool) or not isinstance(peak, (int, float)) or not (math.isfinite(peak) and peak > 0):
            raise GradscopeError(f"RoundLR needs a positive finite peak LR, got {peak!r}")
        shape_total = total_steps if shape_total is None else shape_total
        if (isinstance(offset, bool) or not isinstance(offset, int) or offset < 0
                or not isinstance(shape_total, int) or offset + total_steps > shape_total):
            raise GradscopeError(f"RoundLR: steps {offset}..{offset + total_steps - 1} are not inside a "
                                 f"schedule of {shape_total!r} steps")
        self._shape = get_shape(shape)
        # Only plain values are stored (see module docstring).
        self.name = str(name)
        self.round = int(round)
        self.total_steps = int(total_steps)
        self.shape_total = int(shape_total)
        self.offset = int(offset)
        self.peak = float(peak)
        self.shape = str(shape)
        self.shape_params = {k: (list(v) if isinstance(v, (list, tuple)) else v)
                             for k, v in self._shape.resolve(shape_params).items()}
        if self._shape.check_total is not None:
            self._shape.check_total(self.shape_total, **self.shape_params)
        if self.momentum_at(0) is not None and not ({"momentum", "betas"} & set(optimizer.defaults)):
            raise GradscopeError(f"shape {self.shape!r} cycles the momentum, but {type(optimizer).__name__} has "
                                 "neither momentum nor betas; set cycle_momentum false or use SGD/AdamW")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int) -> float:
        """The closed-form LR at optimizer step ``step`` (0-based) of this round."""
        return self._shape.lr(step + self.offset, self.shape_total, self.peak, self.shape_params)

    def momentum_at(self, step: int) -> float | None:
        """The shape's momentum at ``step`` (None when the shape leaves momentum alone)."""
        if self._shape.momentum is None:
            return None
        return self._shape.momentum(step + self.offset, self.shape_total, **self.shape_params)

    def _ratios(self) -> list[float]:
        init = [float(g.get("initial_lr", g["lr"])) for g in self.optimizer.param_groups]
        top = max(init) if init else 0.0
        return [v / top if top > 0 else 1.0 for v in init]

    def _set_momentum(self, step: int) -> None:
        m = self.momentum_at(step)
        if m is None:
            return
        for g in self.optimizer.param_groups:
            if "betas" in g:
                g["betas"] = (m, *tuple(g["betas"])[1:])
            elif "momentum" in g:
                g["momentum"] = m

    def get_lr(self) -> list[float]:
        # last_epoch == total_steps is reached by the step after the round's last optimizer
        # step (its LR is never used); one more is a step the round does not have.
        if self.last_epoch > self.total_steps:
            raise GradscopeError(f"RoundLR of round {self.round} stepped {self.last_epoch} times; the round "
                                 f"has {self.total_steps} steps (as torch's OneCycleLR, stepping past them raises)")
        self._set_momentum(self.last_epoch)
        lr = self.lr_at(self.last_epoch)
        return [lr * r for r in self._ratios()]

    _get_closed_form_lr = get_lr

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d.pop("_shape", None)  # a table entry: looked up again by name
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        self._shape = get_shape(self.shape)

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().state_dict().items() if k != "_shape"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state and put the restored step's LR into the optimizer right away."""
        super().load_state_dict(state_dict)
        self._shape = get_shape(self.shape)
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = list(lrs)
