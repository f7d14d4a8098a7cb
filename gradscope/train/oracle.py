"""The Oracle: per round, grid-search ``max_lr`` from the round's starting state.

Each candidate trains one branch of round k with the run schedule's shape and a forced peak,
and is a self-contained, resumable job (``gradscope oracle-candidate``): its start state is
saved once per round, its result once it finished, and finished candidates never run again.
The best candidate by **validation** accuracy continues to the next round; test accuracy is
recorded for reporting only.

Optimal interval (our definition): the grid values whose validation accuracy is within one
standard error of a difference of two binomial proportions of the best one,
``acc_best - acc <= sqrt(2 * p(1-p) / n_val)`` with ``p = acc_best``.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from gradscope import GradscopeError, JobsPending
from gradscope.callbacks import TrainState, call_all
from gradscope.config import RunConfig
from gradscope.paths import RunPaths, fmt_lr
from gradscope.rounds import EpochMetrics, RoundInfo, RoundResult
from gradscope.train.checkpoint import load_torch, save_json, save_torch
from gradscope.train.rewind import rewind_mode, round_schedule
from gradscope.train.trainer import Diverged


class CandidatesPending(JobsPending):
    """Some candidates of a round must run elsewhere first (``--workers 0``): not an error."""


def geometric_grid(lo: float, hi: float, points: int = 7) -> list[float]:
    """``points`` values from lo/2 to 2·hi, evenly spaced in log."""
    if not (lo > 0 and hi >= lo and points >= 2):
        raise GradscopeError(f"bad Oracle grid: lo={lo}, hi={hi}, points={points} (need 0 < lo <= hi, points >= 2)")
    return [float(v) for v in np.geomspace(lo / 2, 2 * hi, points)]


def default_grid(schedule, points: int = 7) -> list[float]:
    """A geometric grid around a schedule's range: lo/2 .. 2·hi, or max_lr/2 .. 2·max_lr."""
    p = schedule.params()
    lo, hi = p.get("lo") or p.get("max_lr"), p.get("hi") or p.get("max_lr")
    if lo is None:
        raise GradscopeError("give --grid, or a schedule with lo/hi or max_lr to centre the grid on")
    return geometric_grid(lo, hi, points)


def parse_grid(text: str) -> list[float]:
    """``"0.01,0.03"`` -> [0.01, 0.03]; positive finite values only."""
    try:
        grid = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GradscopeError(f"--grid takes comma-separated numbers, got {text!r}") from None
    if not grid or any(not (math.isfinite(v) and v > 0) for v in grid):
        raise GradscopeError(f"--grid needs positive max_lr values, got {text!r}")
    return sorted(set(grid))


def choose_candidate(candidates: Sequence[dict], n_val: int) -> tuple[dict, tuple[float, float], list[float]]:
    """Best candidate by val_acc (ties: the smaller max_lr) and the optimal interval of max_lr."""
    if not candidates:
        raise GradscopeError("the Oracle has no finished candidate to choose from")
    if n_val < 1:
        raise GradscopeError("the Oracle chooses by validation accuracy: it needs a validation set "
                             "(--val-fraction > 0 or --val-size)")
    ranked = sorted(candidates, key=lambda c: (-c["val_acc"], c["max_lr"]))
    best = ranked[0]
    p = best["val_acc"]
    noise = math.sqrt(2 * p * (1 - p) / n_val)
    inside = sorted(c["max_lr"] for c in candidates if best["val_acc"] - c["val_acc"] <= noise + 1e-12)
    return best, (inside[0], inside[-1]), inside


def candidate_path(out, k: int, max_lr: float) -> Path:
    return RunPaths(out).candidate(k, max_lr)


def run_candidate(out: str, k: int, max_lr: float, threads: Optional[int] = None) -> dict:
    """Train one candidate of round ``k`` from its saved start state; save and return its result."""
    from gradscope.schedules import schedule_from_config  # noqa: PLC0415
    from gradscope.train.context import build_context  # noqa: PLC0415
    from gradscope.train.trainer import RoundTrainer  # noqa: PLC0415

    paths = RunPaths(out)
    dest = paths.candidate(k, max_lr)
    if dest.exists():
        return load_torch(dest)["result"]
    start = paths.oracle_start(k)
    if not start.exists():
        raise GradscopeError(f"{start} is missing: run `gradscope oracle` with this --out first")
    if not paths.config.exists():
        raise GradscopeError(f"{paths.config} is missing: {out} is not an Oracle run directory")
    if threads:
        torch.set_num_threads(threads)
    cfg = RunConfig.from_dict(json.loads(paths.config.read_text()))
    cfg.train.progress = False
    cfg.record.record = False
    if threads:
        cfg.train.threads = threads
    ctx = build_context(cfg)
    ck = load_torch(start)
    ctx.model.load_state_dict(ck["model"])
    info = RoundInfo.from_dict(ck["info"])
    mode = rewind_mode(cfg)
    factory = round_schedule(schedule_from_config(cfg.schedule), mode, k)
    t0 = time.perf_counter()
    try:
        res = RoundTrainer(ctx, cfg.train, cfg.to_dict()).train(info, factory.with_peak(max_lr))
        epochs = [e.to_dict() for e in res.epochs]
        last = res.last
        result = {"round": k, "max_lr": max_lr, "val_acc": last.val_acc, "test_acc": last.test_acc,
                  "train_loss": last.train_loss, "diverged": False}
    except Diverged as d:  # a legitimate outcome of a too-large max_lr: chance-level, recorded
        epochs = []
        result = {"round": k, "max_lr": max_lr, "val_acc": 0.0, "test_acc": 0.0,
                  "train_loss": float(d.loss) if math.isfinite(d.loss) else None, "diverged": True}
    result["time_s"] = time.perf_counter() - t0
    save_torch({"result": result, "model": ctx.model.state_dict(), "epochs": epochs}, dest)
    return result


class OracleRounds:
    """A round strategy (``PruningRun(..., rounds=OracleRounds(grid))``): every round is the
    best of a grid of ``max_lr`` candidates, each an independent job."""

    def __init__(self, grid: Sequence[float], workers: int = 1):
        self.grid = [float(v) for v in grid]
        if not self.grid or min(self.grid) <= 0:
            raise GradscopeError("the Oracle grid must hold positive max_lr values")
        if int(workers) != workers or workers < 0:
            raise GradscopeError(f"--workers must be 0 (print the candidate commands) or a positive number, got {workers}")
        self.workers = int(workers)

    def _run_all(self, run, k: int, todo: list[float]) -> None:
        out = str(run.paths.root)
        if self.workers == 0:
            cmds = "\n".join(f"gradscope oracle-candidate --out {out} --round {k} --max-lr {fmt_lr(v)}" for v in todo)
            raise CandidatesPending(f"round {k} waits for {len(todo)} Oracle candidates; run them, then this "
                                    f"command again:\n{cmds}")
        if self.workers > 1:
            import multiprocessing as mp  # noqa: PLC0415
            from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

            threads = max(1, (os.cpu_count() or 1) // self.workers)
            with ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn")) as ex:
                list(ex.map(run_candidate, [out] * len(todo), [k] * len(todo), todo, [threads] * len(todo)))
        else:
            for v in todo:
                run.log(f"  oracle round {k}: max_lr {fmt_lr(v)}")
                run_candidate(out, k, v)

    def train_round(self, run, info: RoundInfo, schedule, callbacks, *, done, opt_state, sched_state) -> RoundResult:
        k, paths = info.round, run.paths
        if run.cfg.record.record:
            raise GradscopeError("the Oracle does not record gradients; drop --record")
        state = TrainState(model=run.ctx.net, device=run.ctx.device, round=k, info=info,
                           steps_per_epoch=run.ctx.steps_per_epoch, epochs=run.cfg.train.epochs,
                           config=run.cfg.to_dict())
        call_all(callbacks, "on_round_start", state)
        if not paths.oracle_start(k).exists():
            save_torch({"model": run.ctx.model.state_dict(), "info": info.to_dict()}, paths.oracle_start(k))
        todo = [v for v in self.grid if not paths.candidate(k, v).exists()]
        if todo:
            self._run_all(run, k, todo)
        cands = [load_torch(paths.candidate(k, v)) for v in self.grid]
        results = [c["result"] for c in cands]
        best, interval, inside = choose_candidate(results, run.ctx.n_val)
        chosen = cands[results.index(best)]
        run.ctx.model.load_state_dict(chosen["model"])
        cost = float(sum(r.get("time_s", 0.0) for r in results))
        save_json({"round": k, "candidates": results, "best_max_lr": best["max_lr"],
                   "optimal_interval": list(interval), "within_noise": inside, "n_val": run.ctx.n_val,
                   "cost_s": cost}, paths.oracle_choice(k))
        epochs = [EpochMetrics(**e) for e in chosen["epochs"]]
        res = RoundResult(info, schedule.with_peak(best["max_lr"]).round_params(info), epochs,
                          extra={"oracle_lo": interval[0], "oracle_hi": interval[1], "oracle_cost_s": cost})
        state.metrics = epochs[-1].to_dict() if epochs else {}
        call_all(callbacks, "on_round_end", state)
        return res


def oracle_table(out):
    """All candidates of all rounds (round, max_lr, val_acc, test_acc, best, in_interval)."""
    import pandas as pd  # noqa: PLC0415

    rows = []
    for f in RunPaths(out).oracle_choices():
        d = json.loads(f.read_text())
        for c in d["candidates"]:
            rows.append({**c, "best": c["max_lr"] == d["best_max_lr"], "in_interval": c["max_lr"] in d["within_noise"]})
    return pd.DataFrame(rows)
