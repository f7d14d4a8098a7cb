"""``RunState``: where a pruning run stands, as plain values (what a checkpoint holds besides
the model, optimizer and scheduler tensors), and the migration of older checkpoints."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from gradscope import GradscopeError
from gradscope.rounds import EpochMetrics, RoundInfo, RoundResult

CHECKPOINT_FORMAT = 2
STAGES = ("prune", "train")  # prune: this round's pruning and rewinding are still to do


@dataclass
class RunState:
    """Round ``round`` at ``stage``; ``epochs``: epochs of this round trained so far;
    ``results``: finished rounds; ``prune``: per round, what its pruning step did;
    ``init``/``early``: weights to rewind to; ``callbacks``: stateful callbacks' states."""

    round: int = 0
    stage: str = "train"
    epochs: list[EpochMetrics] = field(default_factory=list)
    results: list[RoundResult] = field(default_factory=list)
    prune: dict[int, dict] = field(default_factory=dict)
    init: Optional[dict] = None
    early: Optional[dict] = None
    callbacks: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"round": self.round, "stage": self.stage, "epochs": [e.to_dict() for e in self.epochs],
                "results": [r.to_dict() for r in self.results], "prune": dict(self.prune),
                "init": self.init, "early": self.early, "callbacks": dict(self.callbacks)}

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        if d.get("stage") not in STAGES:
            raise GradscopeError(f"checkpoint has an unknown stage {d.get('stage')!r}")
        return cls(round=int(d["round"]), stage=d["stage"], epochs=[EpochMetrics(**e) for e in d["epochs"]],
                   results=[RoundResult.from_dict(r) for r in d["results"]],
                   prune={int(k): dict(v) for k, v in d["prune"].items()}, init=d.get("init"),
                   early=d.get("early"), callbacks=dict(d.get("callbacks") or {}))

    @property
    def prev_sparsity(self) -> float:
        return self.results[-1].info.sparsity if self.results else 0.0


def migrate_v1(ck: dict, steps_per_epoch: int, epochs: int, prune_rate: float) -> dict:
    """A checkpoint of gradscope 0.1 (``pos`` dict, result rows, ``epochs_log``) as format 2.

    Epoch metrics come from the epochs log, so a run stopped right after its last epoch keeps
    that round's metrics (0.1 lost them on resume)."""
    pos, log = ck["pos"], ck.get("epochs_log") or []

    def eps(k: int) -> list[EpochMetrics]:
        return [EpochMetrics(**{f: e.get(f) for f in ("round", "epoch", "train_loss", "val_acc", "test_acc",
                                                       "lr", "time_s")}) for e in log if e["round"] == k]

    results, prev = [], 0.0
    for r in ck.get("results") or []:
        info = RoundInfo(round=r["round"], sparsity=r["sparsity"], prev_sparsity=prev, prune_rate=prune_rate,
                         steps_per_epoch=steps_per_epoch, epochs=epochs, norm_drop=r.get("norm_drop"),
                         target_sparsity=r.get("target_sparsity"), rewind_point=r.get("rewind_point", "-"))
        results.append(RoundResult(info, {"max_lr": r["max_lr"]}, eps(r["round"])))
        prev = r["sparsity"]
    k = int(pos["round"])
    state = RunState(round=k, stage="train" if pos.get("pruned", True) else "prune",
                     epochs=eps(k)[: int(pos.get("epoch", 0))] if pos.get("pruned", True) else [],
                     results=results, prune={int(a): dict(b) for a, b in (ck.get("round_extra") or {}).items()},
                     init=ck.get("init_state"), early=ck.get("early_state"))
    return {"format": CHECKPOINT_FORMAT, "state": state.to_dict(), "model": ck["model"],
            "optimizer": ck.get("optimizer"), "scheduler": ck.get("scheduler")}
