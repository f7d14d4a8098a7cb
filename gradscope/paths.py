"""Every file of a run directory, named once.

    RUN/config.json          the run's full config (RunConfig.to_dict())
    RUN/versions.json        package versions and the gradscope commit
    RUN/checkpoint.pt        atomic, after every epoch and at every round boundary
    RUN/round_K.pt           masks, per-epoch metrics, schedule and rewind point of round K
    RUN/rounds.json          the per-round table
    RUN/run.h5               gradient recordings (when recording)
    RUN/oracle/round_K/...   the Oracle's start state, candidates and choice per round
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.json"
VERSIONS = "versions.json"
CHECKPOINT = "checkpoint.pt"
ROUNDS = "rounds.json"
RUN_H5 = "run.h5"
ORACLE = "oracle"


def fmt_lr(v: float) -> str:
    """How a max_lr appears in file names and commands (6 significant digits)."""
    return f"{v:.6g}"


@dataclass(frozen=True)
class RunPaths:
    """The files of one run directory (nothing is created until something is written)."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def versions(self) -> Path:
        return self.root / VERSIONS

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT

    @property
    def rounds(self) -> Path:
        return self.root / ROUNDS

    @property
    def run_h5(self) -> Path:
        return self.root / RUN_H5

    def round_file(self, k: int) -> Path:
        return self.root / f"round_{int(k)}.pt"

    def round_files(self) -> list[Path]:
        """Existing round_K.pt files, by K."""
        fs = [p for p in self.root.glob("round_*.pt") if p.stem.split("_")[1].isdigit()]
        return sorted(fs, key=lambda p: int(p.stem.split("_")[1]))

    # ------------------------------------------------------------------ Oracle
    @property
    def oracle(self) -> Path:
        return self.root / ORACLE

    def oracle_round(self, k: int) -> Path:
        return self.oracle / f"round_{int(k)}"

    def oracle_start(self, k: int) -> Path:
        return self.oracle_round(k) / "start.pt"

    def oracle_choice(self, k: int) -> Path:
        return self.oracle_round(k) / "candidates.json"

    def oracle_choices(self) -> list[Path]:
        """Existing per-round Oracle choice files, by round."""
        fs = list(self.oracle.glob("round_*/candidates.json"))
        return sorted(fs, key=lambda p: int(p.parent.name.split("_")[1]))

    def candidate(self, k: int, max_lr: float, seed: int | None = None) -> Path:
        tail = "" if seed is None else f"_seed{int(seed)}"
        return self.oracle_round(k) / f"lr_{fmt_lr(max_lr)}{tail}.pt"

    def is_run_dir(self) -> bool:
        return self.rounds.exists() or self.config.exists() or self.run_h5.exists()
