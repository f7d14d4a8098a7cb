"""What a pruning round is told before it trains (``RoundInfo``) and what it gives back
(``RoundResult``, with one ``EpochMetrics`` per epoch).

Typed, plain values only (numbers, strings, dicts of them), so they are saved as JSON and in
checkpoints with ``asdict`` and read back with ``from_dict``. This module imports nothing of
gradscope but its error class, so schedules, the recorder and the trainer can all speak it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from gradscope import GradscopeError


def _fraction(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
        raise GradscopeError(f"RoundInfo.{name} must be a fraction in [0, 1], got {v!r}")
    return float(v)


@dataclass
class RoundInfo:
    """What a schedule or an instrument may know of round ``round`` before it trains.

    ``sparsity``: measured global pruned fraction of the prunable weights in this round (after
    its pruning); ``prev_sparsity``: the same for the previous round (0 for rounds 0 and 1);
    ``norm_drop`` = ‖θ−θ_pruned‖/‖θ‖ and ``step_pruned`` = fraction pruned in this round's
    pruning step (ALLR's inputs, from round 1 on).
    """

    round: int
    sparsity: float
    prev_sparsity: float
    prune_rate: float
    steps_per_epoch: int
    epochs: int
    norm_drop: Optional[float] = None
    step_pruned: Optional[float] = None
    target_sparsity: Optional[float] = None
    layer_sparsity: dict = field(default_factory=dict)
    rewind_point: str = "-"

    def __post_init__(self) -> None:
        if isinstance(self.round, bool) or int(self.round) != self.round or self.round < 0:
            raise GradscopeError(f"RoundInfo.round must be a non-negative integer, got {self.round!r}")
        self.round = int(self.round)
        for key in ("sparsity", "prev_sparsity", "prune_rate"):
            setattr(self, key, _fraction(key, getattr(self, key)))

    @property
    def total_steps(self) -> int:
        """Optimizer steps in this round."""
        return int(self.steps_per_epoch) * int(self.epochs)

    @property
    def density(self) -> float:
        """Fraction of the prunable weights still alive."""
        return 1.0 - self.sparsity

    @classmethod
    def for_steps(cls, round: int, total_steps: int, *, sparsity: float = 0.0, prev_sparsity: float = 0.0,
                  prune_rate: float = 0.2, **kw: Any) -> "RoundInfo":
        """The obvious constructor for a plain loop: round ``round`` of ``total_steps`` steps."""
        return cls(round=round, sparsity=sparsity, prev_sparsity=prev_sparsity, prune_rate=prune_rate,
                   steps_per_epoch=int(total_steps), epochs=1, **kw)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RoundInfo":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class EpochMetrics:
    """One epoch of one round."""

    round: int
    epoch: int
    train_loss: float
    val_acc: float
    test_acc: float
    lr: float
    time_s: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RoundResult:
    """What training round ``round`` gave: the last epoch's metrics and every epoch's."""

    info: RoundInfo
    schedule: dict  # the schedule's parameters for this round, with its ``max_lr``
    epochs: list[EpochMetrics] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # e.g. the Oracle's choice

    @property
    def round(self) -> int:
        return self.info.round

    @property
    def max_lr(self) -> float:
        return float(self.schedule["max_lr"])

    @property
    def last(self) -> Optional[EpochMetrics]:
        return self.epochs[-1] if self.epochs else None

    def metric(self, name: str) -> Optional[float]:
        return None if self.last is None else getattr(self.last, name)

    @property
    def time_s(self) -> float:
        return float(sum(e.time_s for e in self.epochs))

    def row(self) -> dict:
        """The per-round table row (rounds.json, the printed table)."""
        i = self.info
        return {"round": i.round, "sparsity": i.sparsity, "target_sparsity": i.target_sparsity,
                "max_lr": self.max_lr, "train_loss": self.metric("train_loss"),
                "val_acc": self.metric("val_acc"), "test_acc": self.metric("test_acc"),
                "time_s": self.time_s, "rewind_point": i.rewind_point, "norm_drop": i.norm_drop,
                **{k: v for k, v in self.extra.items() if isinstance(v, (int, float, str)) or v is None}}

    def to_dict(self) -> dict:
        return {"info": self.info.to_dict(), "schedule": dict(self.schedule),
                "epochs": [e.to_dict() for e in self.epochs], "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: dict) -> "RoundResult":
        return cls(RoundInfo.from_dict(d["info"]), dict(d["schedule"]),
                   [EpochMetrics(**e) for e in d.get("epochs", [])], dict(d.get("extra", {})))


def pruned_fraction(k, p: float, lag: int = 0):
    """Planned pruned fraction of round k when each round prunes a fraction p of what remains:
    ``1 − (1 − p)^(k − lag)``, 0 for k ≤ lag (round 0 is the dense net). Vectorised over k.

    The one place this is computed: pruning targets use lag 0, SILO's x uses its lag.
    """
    import numpy as np  # noqa: PLC0415 - keep this module's import light

    ka = np.asarray(k, dtype=float)
    out = 1.0 - (1.0 - float(p)) ** np.maximum(ka - lag, 0.0)
    return float(out) if out.ndim == 0 else out


def finite_or_none(v: Any) -> Optional[float]:
    """``float(v)`` if it is a finite number, else None (for tables and JSON)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
