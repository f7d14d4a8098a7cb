"""The Oracle: per round, grid-search ``max_lr`` from the round's starting state.

Each candidate trains one branch of round k with the base schedule's shape and a forced
peak, and is a self-contained job (``gradscope oracle-candidate``), so a process pool, a
cluster scheduler or several GPUs can run them; finished candidates are never run again.
The best candidate by **validation** accuracy continues to the next round. Test accuracy is
recorded for reporting only.

Optimal interval (our definition): the grid values whose validation accuracy is within one
standard error of a difference of two binomial proportions of the best one,
``acc_best - acc <= sqrt(2 * p(1-p) / n_val)`` with ``p = acc_best``.
"""
from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from gradscope import GradscopeError
from gradscope.callbacks import TrainState
from gradscope.config import RunConfig
from gradscope.train.checkpoint import load_torch, save_json, save_torch
from gradscope.train.runner import PruningRun


def geometric_grid(lo: float, hi: float, points: int = 7) -> list[float]:
    """``points`` values from lo/2 to 2·hi, evenly spaced in log."""
    if not (lo > 0 and hi >= lo and points >= 2):
        raise GradscopeError(f"bad Oracle grid: lo={lo}, hi={hi}, points={points} (need 0 < lo <= hi, points >= 2)")
    return [float(v) for v in np.geomspace(lo / 2, 2 * hi, points)]


def choose_candidate(candidates: Sequence[dict], n_val: int) -> tuple[dict, tuple[float, float], list[float]]:
    """Best candidate by val_acc (ties: the smaller max_lr) and the optimal interval of max_lr."""
    if not candidates:
        raise GradscopeError("the Oracle has no finished candidate to choose from")
    ranked = sorted(candidates, key=lambda c: (-c["val_acc"], c["max_lr"]))
    best = ranked[0]
    p = best["val_acc"]
    noise = math.sqrt(2 * p * (1 - p) / max(n_val, 1))
    inside = sorted(c["max_lr"] for c in candidates if best["val_acc"] - c["val_acc"] <= noise + 1e-12)
    return best, (inside[0], inside[-1]), inside


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def candidate_path(out: Path, k: int, max_lr: float) -> Path:
    return Path(out) / "oracle" / f"round_{k}" / f"lr_{_fmt(max_lr)}.pt"


def run_candidate(out: str, k: int, max_lr: float, threads: Optional[int] = None) -> dict:
    """Train one candidate of round ``k`` from its saved start state; save and return its result."""
    out = Path(out)
    dest = candidate_path(out, k, max_lr)
    if dest.exists():
        return load_torch(dest, what="Oracle candidate result", required=("result",))["result"]
    start = out / "oracle" / f"round_{k}" / "start.pt"
    if not start.exists():
        raise GradscopeError(f"{start} is missing: run `gradscope oracle` with this --out first")
    if threads:
        torch.set_num_threads(threads)
    cfg = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
    cfg.train.progress = False
    cfg.record.record = False
    run = PruningRun(cfg, log=lambda s: None)
    run._setup()
    ck = load_torch(start, what="Oracle round start state", required=("model", "results", "round_extra"))
    run.model.load_state_dict(ck["model"])
    run.results, run.round_extra, run.epochs_log = ck["results"], ck["round_extra"], []
    factory = run.factory_for_round(k).with_peak(max_lr)
    res = run.train_round(k, 0, factory, callbacks=[], checkpoint=False)
    result = {"round": k, "max_lr": max_lr, **{m: res["metrics"][m] for m in ("val_acc", "test_acc", "train_loss")}}
    save_torch({"result": result, "model": run.model.state_dict(), "ri": res["ri"]}, dest)
    return result


class OracleRun(PruningRun):
    """A PruningRun whose every round is the best of a grid of ``max_lr`` candidates."""

    def __init__(self, config: RunConfig, grid: Sequence[float], workers: int = 1, **kw):
        super().__init__(config, **kw)
        if config.record.record:
            raise GradscopeError("the Oracle does not record gradients; drop --record")
        self.grid = [float(v) for v in grid]
        if not self.grid or min(self.grid) <= 0:
            raise GradscopeError("the Oracle grid must hold positive max_lr values")
        self.workers = workers

    def train_round(self, k, start_epoch, factory, callbacks, opt_state=None, sched_state=None,
                    checkpoint=True, desc=""):
        if not checkpoint:  # a candidate: plain training
            return super().train_round(k, start_epoch, factory, callbacks, opt_state, sched_state, False, desc)
        rdir = self.out / "oracle" / f"round_{k}"
        if not (rdir / "start.pt").exists():
            save_torch({"model": self.model.state_dict(), "results": self.results,
                        "round_extra": self.round_extra}, rdir / "start.pt")
        todo = [v for v in self.grid if not candidate_path(self.out, k, v).exists()]
        if todo and self.workers == 0:
            cmds = "\n".join(f"  gradscope oracle-candidate --out {self.out} --round {k} --max-lr {_fmt(v)}" for v in todo)
            raise GradscopeError(f"round {k} waits for {len(todo)} Oracle candidates; run them, then this command "
                                 f"again:\n{cmds}")
        if todo and self.workers > 1:
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            import multiprocessing as mp
            with ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn")) as ex:
                list(ex.map(run_candidate, [str(self.out)] * len(todo), [k] * len(todo), todo, [threads] * len(todo)))
        else:
            for v in todo:
                self.log(f"  oracle round {k}: max_lr {_fmt(v)}")
                run_candidate(str(self.out), k, v)
        cands = [load_torch(candidate_path(self.out, k, v), what="Oracle candidate result",
                            required=("result", "model", "ri")) for v in self.grid]
        best, interval, inside = choose_candidate([c["result"] for c in cands], len(self.data.val_y))
        chosen = next(c for c in cands if c["result"] is best)
        self.model.load_state_dict(chosen["model"])
        save_json({"round": k, "candidates": [c["result"] for c in cands], "best_max_lr": best["max_lr"],
                   "optimal_interval": list(interval), "within_noise": inside},
                  rdir / "candidates.json")
        self.round_extra.setdefault(k, {})["oracle"] = {"best_max_lr": best["max_lr"], "interval": list(interval)}
        metrics = {"round": k, "epoch": self.cfg.train.epochs - 1, **{m: best[m] for m in ("train_loss", "val_acc", "test_acc")},
                   "lr": best["max_lr"], "time_s": 0.0}
        self.epochs_log.append(metrics)
        ri = chosen["ri"]
        self.state = TrainState(model=self.net, device=self.device, round=k, metrics=metrics,
                                schedule=ri["schedule"], config=self.cfg.to_dict())
        return {"ri": ri, "metrics": metrics}


def oracle_table(out: str | Path):
    """All candidates of all rounds (round, max_lr, val_acc, test_acc, best, in_interval)."""
    import pandas as pd
    rows = []
    for f in sorted(Path(out, "oracle").glob("round_*/candidates.json"), key=lambda p: int(p.parent.name.split("_")[1])):
        d = json.loads(f.read_text())
        for c in d["candidates"]:
            rows.append({**c, "best": c["max_lr"] == d["best_max_lr"], "in_interval": c["max_lr"] in d["within_noise"]})
    return pd.DataFrame(rows)
