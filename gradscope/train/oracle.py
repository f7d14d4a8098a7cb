"""The Oracle: per round, grid-search ``max_lr`` (several seeds per value) from the round's
starting state, locate the optimum with a confidence interval, and continue from the best.

Every candidate (round, max_lr, seed) is a self-contained, resumable job
(``gradscope oracle-candidate``): the round's start state is saved once, a candidate's result
once it finished, and finished candidates never run again; an ``Executor`` runs the jobs
(in this process, printed for another scheduler, or as Ray tasks). Per round the
statistics of ``gradscope.oracle_stats`` give the optimum of validation accuracy against
log(max_lr) with a paired bootstrap CI over seeds (whole rows across the grid) and validation
examples, beside the grid argmax
and the SILO papers' "optimal interval" (grid values within one binomial SE of a difference
of the best). When the best is at an edge of the grid, the grid is extended by one step on
that side (up to ``max_extend`` times); an edge is never reported as an optimum. The grid
argmax (seed 0's model) continues to the next round. Test accuracy is recorded, never used.
``oracle_report`` is the summary ``gradscope oracle`` prints: the optima per round, the slope
of log(optimum) on sparsity (over trajectories when several runs are given), the verdict
against flat and SILO's rise, and the power line.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import torch

from gradscope import GradscopeError, JobsPending, faults
from gradscope.callbacks import TrainState, call_all
from gradscope.config import RunConfig
from gradscope.oracle_stats import (OptimumEstimate, OracleRound, Trajectory, fit_optimum, judge, power_line,
                                    slope_test, trajectory)
from gradscope.paths import RunPaths, fmt_lr
from gradscope.rounds import EpochMetrics, RoundInfo, RoundResult
from gradscope.train.checkpoint import load_torch, save_json, save_torch
from gradscope.train.rewind import rewind_mode, round_schedule
from gradscope.train.trainer import Diverged

DEFAULT_SEEDS = 3
DEFAULT_BOOT = 1000


def plural(n: int, word: str, many: Optional[str] = None) -> str:
    """``"1 seed"``, ``"3 seeds"``."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


class CandidatesPending(JobsPending):
    """Some candidates of a round must run elsewhere first (``--workers 0``): not an error."""


# ----------------------------------------------------------------------------- grids
def geometric_grid(lo: float, hi: float, points: int = 7) -> list[float]:
    """``points`` values from lo/2 to 2·hi, evenly spaced in log."""
    if not (lo > 0 and hi >= lo and points >= 2):
        raise GradscopeError(f"bad Oracle grid: lo={lo}, hi={hi}, points={points} (need 0 < lo <= hi, points >= 2)")
    return [float(v) for v in np.geomspace(lo / 2, 2 * hi, points)]


def default_grid(schedule, points: int = 7) -> list[float]:
    """A geometric grid around a schedule's range: lo/2 .. 2·hi, or max_lr/4 .. 4·max_lr."""
    p = schedule.params()
    if p.get("lo") is not None:
        return geometric_grid(p["lo"], p["hi"], points)
    if p.get("max_lr") is not None:
        return geometric_grid(p["max_lr"] / 2, p["max_lr"] * 2, points)
    raise GradscopeError("give --grid, or a schedule with lo/hi or max_lr to centre the grid on")


def parse_grid(text: str) -> list[float]:
    """``"0.01,0.03"`` -> [0.01, 0.03]; positive finite values only, sorted, distinct."""
    try:
        grid = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GradscopeError(f"--grid takes comma-separated numbers, got {text!r}") from None
    if not grid or any(not (math.isfinite(v) and v > 0) for v in grid):
        raise GradscopeError(f"--grid needs positive max_lr values, got {text!r}")
    return sorted(set(grid))


def choose_candidate(candidates: Sequence[dict], n_val: int) -> tuple[dict, tuple[float, float], list[float]]:
    """Best candidate by val_acc (ties: the smaller max_lr) and SILO's optimal interval of max_lr
    (one seed per value; ``gradscope.optimum.fit_optimum`` handles several)."""
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


# ----------------------------------------------------------------------------- jobs
def candidate_seed(base: int, seed: int) -> int:
    """The data-order seed of candidate seed ``seed`` (seed 0 is the run's own)."""
    if seed == 0:
        return int(base)
    return int(np.random.SeedSequence([int(base), int(seed), 0x0AC1E]).generate_state(1)[0])


def candidate_path(out, k: int, max_lr: float, seed: int = 0):
    return RunPaths(out).candidate(k, max_lr, seed if seed else None)


@dataclass(frozen=True)
class CandidateJob:
    """One Oracle candidate: round ``round`` trained from its start state with peak ``max_lr``."""

    out: str
    round: int
    max_lr: float
    seed: int = 0
    model: Optional[str] = None  # a user model (module:callable) this job may import; see run_candidate

    @property
    def path(self):
        return candidate_path(self.out, self.round, self.max_lr, self.seed)

    @property
    def done(self) -> bool:
        return self.path.exists()

    def command(self) -> str:
        """The job as a command line; ``--out`` absolute (a cluster job starts in another folder)."""
        model = f" --model {shlex.quote(self.model)}" if self.model else ""
        return (f"gradscope oracle-candidate --out {shlex.quote(os.path.abspath(self.out))} --round {self.round} "
                f"--max-lr {fmt_lr(self.max_lr)} --seed {self.seed}{model}")

    def run(self, threads: Optional[int] = None) -> dict:
        return run_candidate(self.out, self.round, self.max_lr, self.seed, threads, model=self.model)


def run_candidate(out: str, k: int, max_lr: float, seed: int = 0, threads: Optional[int] = None,
                  model: Optional[str] = None) -> dict:
    """Train one candidate of round ``k`` from its saved start state; save and return its result.

    A run directory may come from elsewhere: a user model (``module:callable``) named in its
    config is imported only when ``model`` names the same model (``--model`` on the command
    line), so opening a run never imports code on the run's say-so."""
    from gradscope.train.loop import correct_per_example  # noqa: PLC0415
    from gradscope.train.trainer import RoundTrainer  # noqa: PLC0415

    dest = candidate_path(out, k, max_lr, seed)
    if dest.exists():
        return check_result(load_torch(dest, what="Oracle candidate result", required=("result",))["result"], dest)
    cfg, ctx, info, base = _open_round(out, k, threads, model)
    factory = base.with_peak(max_lr)
    s = candidate_seed(cfg.train.seed, seed)
    ctx.train_loader.seed = s
    torch.manual_seed(s)
    t0 = time.perf_counter()
    try:
        res = RoundTrainer(ctx, cfg.train, cfg.to_dict()).train(info, factory)
        epochs = [e.to_dict() for e in res.epochs]
        last = res.last
        correct = correct_per_example(ctx.net, ctx.val_loader, ctx.device, cfg.train.amp) \
            if ctx.val_loader is not None else torch.zeros(0, dtype=torch.bool)
        result = {"round": k, "max_lr": max_lr, "seed": seed, "val_acc": last.val_acc, "test_acc": last.test_acc,
                  "train_loss": last.train_loss, "diverged": False}
    except Diverged as d:  # a legitimate outcome of a too-large max_lr: nothing right
        epochs = []
        correct = torch.zeros(ctx.n_val, dtype=torch.bool)
        result = _diverged_result(k, max_lr, seed, d.loss)
    result["time_s"] = time.perf_counter() - t0
    result["device"] = ctx.device.type
    result["config_sha256"] = run_config_hash(RunPaths(out))
    _save_candidate(dest, result, ctx.model.state_dict(), epochs, correct)
    return result


def _diverged_result(k: int, max_lr: float, seed: int, loss: float) -> dict:
    return {"round": k, "max_lr": max_lr, "seed": seed, "val_acc": 0.0, "test_acc": 0.0,
            "train_loss": float(loss) if math.isfinite(loss) else None, "diverged": True}


def _save_candidate(dest, result: dict, model_state: dict, epochs: list, correct: torch.Tensor) -> None:
    """A candidate's result file (what ``OracleRounds`` reads), then its fault point."""
    save_torch({"result": result, "model": model_state, "epochs": epochs,
                "val_correct": correct.to(torch.uint8)}, dest)
    faults.point("candidate", result["round"], fmt_lr(result["max_lr"]), result["seed"])


def run_config_hash(paths: RunPaths) -> Optional[str]:
    """The config hash (runner.config_hash) of the run whose config.json is at ``paths``, None if unreadable."""
    from gradscope.train.runner import config_hash  # noqa: PLC0415 - the runner imports this module

    try:
        return config_hash(json.loads(paths.config.read_text()))
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return None


def check_oracle_dir(paths: RunPaths) -> None:
    """Refuse to write Oracle files through a symlinked ``RUN/oracle`` (or round folder) or one that
    leads out of the run directory: the Oracle writes only inside its own run."""
    root = paths.root.resolve()
    for d in (paths.oracle, *sorted(paths.oracle.glob("round_*"))):
        if d.is_symlink() or (d.exists() and not d.resolve().is_relative_to(root)):
            raise GradscopeError(f"{d} is a symlink or leads out of {paths.root}: the Oracle writes only inside its "
                                 "run directory; replace it with a real folder or use another --out")


def _check_start(ck: dict, start, k: int, expected: Optional[str]) -> None:
    """A round start state must be round ``k``'s of this run (config hash, where stored)."""
    info = ck.get("info")
    rk = info.get("round") if isinstance(info, dict) else None
    if rk != k:
        raise GradscopeError(f"{start} is the start state of round {rk!r}, not of round {k}: delete it to let "
                             "`gradscope oracle` write it again")
    saved = ck.get("config_sha256")
    if saved is not None and expected is not None and saved != expected:
        raise GradscopeError(f"{start} belongs to another run (its config hash differs from "
                             f"{RunPaths(start.parent.parent.parent).config}): delete that round's folder or use "
                             "another --out")


def _open_round(out: str, k: int, threads: Optional[int], model: Optional[str]):
    """Config, context (the round's start state loaded), RoundInfo and schedule factory of
    round ``k`` of the Oracle run ``out``, for its candidates."""
    from gradscope.schedules import schedule_from_config  # noqa: PLC0415
    from gradscope.train.context import build_context  # noqa: PLC0415

    paths = RunPaths(out)
    start = paths.oracle_start(k)
    if not start.exists():
        raise GradscopeError(f"{start} is missing: run `gradscope oracle` with this --out first")
    if not paths.config.exists():
        raise GradscopeError(f"{paths.config} is missing: {out} is not an Oracle run directory")
    try:
        cfg = RunConfig.from_dict(json.loads(paths.config.read_text()))
    except (ValueError, TypeError, AttributeError):
        raise GradscopeError(f"{paths.config} is not a gradscope run config") from None
    if model is not None and model != cfg.model.model:
        raise GradscopeError(f"--model {model} does not match the model of {out} ({cfg.model.model}), which its "
                             "round start state was saved from; drop --model or pass that one")
    if ":" in cfg.model.model and model != cfg.model.model:
        raise GradscopeError(f"{out} uses the user model {cfg.model.model!r}; gradscope imports it only when you "
                             f"name it: add --model {cfg.model.model}")
    cfg.train.progress = False
    cfg.record.record = False
    if threads:
        cfg.train.threads = threads
    ctx = build_context(cfg)
    ck = load_torch(start, what="Oracle round start state", required=("model", "info"))
    _check_start(ck, start, k, run_config_hash(paths))
    try:
        ctx.model.load_state_dict(ck["model"])
    except (RuntimeError, TypeError, KeyError, AttributeError) as e:
        raise GradscopeError(f"{start} (the round start state) does not fit the run's model {cfg.model.model}: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    info = RoundInfo.from_dict(ck["info"])
    mode = rewind_mode(cfg)
    return cfg, ctx, info, round_schedule(schedule_from_config(cfg.schedule), mode, k)


def run_candidates_batched(out: str, k: int, specs: Sequence[tuple[float, int]], threads: Optional[int] = None,
                           model: Optional[str] = None) -> list[dict]:
    """Train the (max_lr, seed) candidates ``specs`` of round ``k`` as one vmapped model
    (``gradscope.train.batched.train_batched``) and write each one's result file, the same file
    ``run_candidate`` writes (equal to float tolerance). Finished candidates are skipped;
    a run whose candidates cannot be batched (AdamW, dropout, ...) runs them one by one."""
    from gradscope.train.batched import train_batched, unbatchable  # noqa: PLC0415

    todo = [(float(v), int(s)) for v, s in specs if not candidate_path(out, k, v, s).exists()]
    if not todo:
        return [run_candidate(out, k, v, s, threads, model) for v, s in specs]
    cfg, ctx, info, base = _open_round(out, k, threads, model)
    if unbatchable(ctx.model, cfg.train) or len(todo) == 1:
        return [run_candidate(out, k, v, s, threads, model) for v, s in specs]
    t0 = time.perf_counter()
    try:
        outs = train_batched(ctx, cfg.train, info, [base.with_peak(v) for v, _ in todo],
                             [candidate_seed(cfg.train.seed, s) for _, s in todo])
    except torch.cuda.OutOfMemoryError:  # K copies do not fit (the CUDA default is K = 8): one by one
        import warnings  # noqa: PLC0415

        del ctx
        torch.cuda.empty_cache()
        warnings.warn(f"gradscope: {len(todo)} batched Oracle candidates do not fit in GPU memory; training "
                      f"them one after the other (use a smaller --batched)", RuntimeWarning)
        return [run_candidate(out, k, v, s, threads, model) for v, s in specs]
    share = (time.perf_counter() - t0) / len(todo)
    for (v, s), o in zip(todo, outs):
        if o.diverged:
            result = _diverged_result(k, v, s, o.diverged[1])
        else:
            last = o.epochs[-1]
            result = {"round": k, "max_lr": v, "seed": s, "val_acc": last.val_acc, "test_acc": last.test_acc,
                      "train_loss": last.train_loss, "diverged": False}
        result.update(time_s=share, device=ctx.device.type, batched=len(todo),
                      config_sha256=run_config_hash(RunPaths(out)))
        _save_candidate(candidate_path(out, k, v, s), result, o.state, [e.to_dict() for e in o.epochs],
                        o.val_correct)
    return [load_torch(candidate_path(out, k, v, s), what="Oracle candidate result", required=("result",))["result"]
            for v, s in specs]


RESULT_KEYS = ("round", "max_lr", "val_acc", "test_acc")


def check_result(r: Any, path) -> dict:
    """A candidate's ``result`` as written by run_candidate (a dict with numeric round, max_lr and
    accuracies), else one clear GradscopeError naming the file."""
    bad = not isinstance(r, dict) or any(not isinstance(r.get(k), (int, float)) or isinstance(r.get(k), bool)
                                         for k in RESULT_KEYS)
    if bad:
        what = type(r).__name__ if not isinstance(r, dict) else \
            f"a dict lacking numeric {[k for k in RESULT_KEYS if not isinstance(r.get(k), (int, float))]}"
        raise GradscopeError(f"{path} is not a gradscope Oracle candidate file: its 'result' is {what}; delete it "
                             "to run that candidate again")
    return r


def _check_candidate(r: dict, path, k: int, max_lr: float, seed: int, expected: Optional[str]) -> None:
    """A candidate file must hold the (round, max_lr, seed) its name says, of this run (config hash, where stored)."""
    if r["round"] != k or not math.isclose(r["max_lr"], max_lr, rel_tol=1e-9) or r.get("seed", seed) != seed:
        raise GradscopeError(f"{path} holds round {r['round']}, max_lr {r['max_lr']:g}, seed {r.get('seed')}, not "
                             f"round {k}, max_lr {max_lr:g}, seed {seed}: delete it to run that candidate again")
    saved = r.get("config_sha256")
    if saved is not None and expected is not None and saved != expected:
        raise GradscopeError(f"{path} was trained by another run (its config hash differs): delete it to run that "
                             "candidate again")


class Executor(Protocol):
    """Runs Oracle candidate jobs; each job writes its own result file."""

    def run(self, jobs: Sequence[CandidateJob], log: Callable[[str], None]) -> None: ...


def candidate_line(job: CandidateJob, r: dict) -> str:
    """The line printed when a candidate finished (sequential and Ray modes alike)."""
    diverged = " diverged," if r.get("diverged") else ""
    return (f"  oracle round {job.round}: max_lr {fmt_lr(job.max_lr)} seed {job.seed}:{diverged} "
            f"val_acc {r['val_acc']:.4f} ({r.get('time_s', float('nan')):.1f} s, {r.get('device', '?')})")


class InProcess:
    """One job after the other in this process."""

    def run(self, jobs, log):
        for j in jobs:
            log(candidate_line(j, j.run()))


class Batched:
    """K jobs at a time as one vmapped model in this process (``run_candidates_batched``); each
    job's result file is the one it would write alone. Pays where one small model leaves a
    device idle (a GPU); on a CPU see bench/bench_oracle_exec.py."""

    def __init__(self, k: int):
        if int(k) != k or k < 2:
            raise GradscopeError(f"--batched needs K >= 2 candidates at a time (1: one after the other), got {k}")
        self.k = int(k)

    def run(self, jobs, log):
        for i in range(0, len(jobs), self.k):
            chunk = jobs[i:i + self.k]
            log(f"  oracle round {chunk[0].round}: {len(chunk)} candidates batched: " +
                ", ".join(f"max_lr {fmt_lr(j.max_lr)} seed {j.seed}" for j in chunk))
            run_candidates_batched(chunk[0].out, chunk[0].round, [(j.max_lr, j.seed) for j in chunk],
                                   model=chunk[0].model)


class PrintJobs:
    """Hand the jobs to another scheduler: print their commands and stop (exit 0)."""

    def run(self, jobs, log):
        cmds = "\n".join(j.command() for j in jobs)
        raise CandidatesPending(f"round {jobs[0].round} waits for {plural(len(jobs), 'Oracle candidate')}; run "
                                f"{'it' if len(jobs) == 1 else 'them (each is independent)'}, then this command "
                                f"again:\n{cmds}")


def make_executor(workers: int = 1, batched: int = 1) -> Executor:
    """0: print the jobs; 1: in this process (``batched`` K > 1: K at a time as one vmapped model);
    N > 1: N at a time on a local Ray instance (``gradscope.train.ray_jobs``; it replaced a
    process pool that measured slower than sequential)."""
    if int(workers) != workers or workers < 0:
        raise GradscopeError(f"--workers must be 0 (print the candidate commands) or a positive number, got {workers}")
    if int(batched) != batched or batched < 0:
        raise GradscopeError(f"--batched must be a whole number of candidates (0 or 1: off), got {batched}")
    if batched > 1:
        if workers != 1:
            raise GradscopeError("--batched and --workers exclude each other (batched candidates run in this process)")
        return Batched(batched)
    if workers > 1:
        from gradscope.train.ray_jobs import RayExecutor  # noqa: PLC0415

        return RayExecutor(num_cpus_per_job=max(1, (os.cpu_count() or 1) // int(workers)))
    return PrintJobs() if workers == 0 else InProcess()


def load_candidates(out, k: int, grid: Sequence[float], seeds: int) -> tuple[list[dict], list[dict], np.ndarray]:
    """Round ``k``'s finished candidates: their results, seed 0's files (by grid value) and the
    correctness array ``[grid, seeds, examples]``."""
    cands = [[load_torch(candidate_path(out, k, v, s), what="Oracle candidate result",
                         required=("result", "model", "epochs", "val_correct"))
              for s in range(seeds)] for v in grid]
    results = [check_result(c["result"], candidate_path(out, k, v, s))
               for v, row in zip(grid, cands) for s, c in enumerate(row)]
    expected = run_config_hash(RunPaths(out))
    for v, row in zip(grid, cands):
        for s, c in enumerate(row):
            _check_candidate(c["result"], candidate_path(out, k, v, s), k, v, s, expected)
    correct = np.stack([np.stack([np.asarray(c["val_correct"], bool) for c in row]) for row in cands])
    return results, [row[0] for row in cands], correct


# ----------------------------------------------------------------------------- rounds
class OracleRounds:
    """A round strategy (``PruningRun(..., rounds=OracleRounds(grid))``): every round grid-searches
    max_lr with ``seeds`` seeds per value and continues from the grid argmax."""

    def __init__(self, grid: Sequence[float], seeds: int = DEFAULT_SEEDS, executor: Optional[Executor] = None,
                 max_extend: int = 3, n_boot: int = DEFAULT_BOOT, workers: Optional[int] = None):
        self.grid = sorted(set(float(v) for v in grid))
        if len(self.grid) < 3 or min(self.grid) <= 0:
            raise GradscopeError("the Oracle grid needs at least 3 positive max_lr values")
        if int(seeds) != seeds or seeds < 1:
            raise GradscopeError(f"--seeds must be a positive integer, got {seeds}")
        if int(max_extend) != max_extend or max_extend < 0:
            raise GradscopeError(f"--max-extend must be >= 0, got {max_extend}")
        from gradscope.train.distributed import env  # noqa: PLC0415

        if env().active:
            raise GradscopeError("the Oracle does not run under torchrun: its candidates are separate jobs "
                                 "(use --ray, --workers N or --workers 0 to spread them)")
        self.seeds, self.max_extend, self.n_boot = int(seeds), int(max_extend), int(n_boot)
        self.executor = executor if executor is not None else make_executor(1 if workers is None else workers)

    def analyse(self, out: str, k: int, grid: Sequence[float]) -> tuple[OptimumEstimate, list[dict], list[dict]]:
        results, seed0, correct = load_candidates(out, k, grid, self.seeds)
        return fit_optimum(grid, correct, n_boot=self.n_boot, seed=k), results, seed0

    def train_round(self, run, info: RoundInfo, schedule, callbacks, *, done, opt_state, sched_state) -> RoundResult:
        k, paths, out = info.round, run.paths, str(run.paths.root)
        if run.cfg.record.record:
            raise GradscopeError("the Oracle does not record gradients; drop --record")
        if run.ctx.n_val < 1:
            raise GradscopeError("the Oracle chooses by validation accuracy: it needs a validation set "
                                 "(--val-fraction > 0 or --val-size)")
        state = TrainState(model=run.ctx.net, device=run.ctx.device, round=k, info=info,
                           steps_per_epoch=run.ctx.steps_per_epoch, epochs=run.cfg.train.epochs,
                           config=run.cfg.to_dict())
        call_all(callbacks, "on_round_start", state)
        check_oracle_dir(paths)
        if not paths.oracle_start(k).exists():
            save_torch({"model": run.ctx.model.state_dict(), "info": info.to_dict(),
                        "config_sha256": run_config_hash(paths)}, paths.oracle_start(k))
            faults.point("oracle-start", k)
        grid = list(self.grid)
        user_model = run.cfg.model.model if ":" in run.cfg.model.model else None  # named by this command
        while True:
            todo = [CandidateJob(out, k, v, s, user_model) for v in grid for s in range(self.seeds)]
            todo = [j for j in todo if not j.done]
            if todo:
                self.executor.run(todo, run.log)
            est, results, seed0 = self.analyse(out, k, grid)
            if est.status not in ("edge-low", "edge-high") or len(grid) - len(self.grid) >= self.max_extend:
                break
            step = grid[1] / grid[0] if est.status == "edge-low" else grid[-1] / grid[-2]
            grid = ([grid[0] / step] + grid) if est.status == "edge-low" else (grid + [grid[-1] * step])
            run.log(f"  oracle round {k}: best at the {est.status[5:]} edge; extending the grid to "
                    f"{fmt_lr(grid[0])} .. {fmt_lr(grid[-1])}")
        best_i = grid.index(est.argmax)
        chosen = seed0[best_i]
        run.ctx.model.load_state_dict(chosen["model"])
        summary = choice_record(k, info.sparsity, grid, self.seeds, est, results, run.ctx.device.type)
        cost = summary["cost_s"]
        device = summary["device"]
        save_json(summary, paths.oracle_choice(k))
        faults.point("oracle-choice", k)
        epochs = [EpochMetrics(**e) for e in chosen["epochs"]]
        # time_s: the round took every candidate's training, not only the chosen one's (it
        # overrides the chosen candidate's epochs' time in RoundResult.row())
        extra = {"oracle_status": est.status, "oracle_optimum": est.optimum, "oracle_lo": est.lo,
                 "oracle_hi": est.hi, "oracle_argmax": est.argmax, "oracle_cost_s": cost, "time_s": cost}
        res = RoundResult(info, schedule.with_peak(est.argmax).round_params(info), epochs, extra=extra)
        if not epochs:
            raise GradscopeError(f"every seed-0 candidate at max_lr {fmt_lr(est.argmax)} of round {k} diverged; "
                                 "lower the --grid")
        run.log(f"  oracle round {k}: {describe(est)}; cost {cost / 3600:.3g} {device.upper()}-hours")
        state.metrics = epochs[-1].to_dict()
        call_all(callbacks, "on_round_end", state)
        return res


def choice_record(k: int, sparsity: float, grid: Sequence[float], seeds: int, est: OptimumEstimate,
                  results: Sequence[dict], device: str = "cpu") -> dict:
    """Round ``k``'s candidates.json: the candidates, the choice, the optimum and its bootstrap."""
    p, n_val = est.mean_acc[est.argmax], est.n_val
    return {
        "round": k, "sparsity": sparsity, "grid": list(grid), "seeds": seeds, "n_val": n_val,
        "val_se_points": 100 * math.sqrt(max(p * (1 - p), 1e-12) / max(n_val, 1)),
        "candidates": list(results), "best_max_lr": est.argmax, "optimal_interval": list(est.interval),
        "within_noise": [v for v in grid if est.interval[0] <= v <= est.interval[1]],
        "optimum": est.to_dict(), "boot_log_opt": [float(v) for v in est.boot_log_opt],
        # the replicates' mean-accuracy curves: regret scoring carries the Oracle's bootstrap with them
        "boot_acc": [[round(float(v), 6) for v in row] for row in est.boot_acc],
        "cost_s": float(sum(r.get("time_s", 0.0) for r in results)),
        "device": results[0].get("device", device) if results else device}


def describe(est: OptimumEstimate) -> str:
    """One line: what the round's Oracle found (a value with its CI, a bound, or flat)."""
    if est.status == "interior":
        return (f"optimum max_lr {fmt_lr(est.optimum)} ({est.level:.0%} CI {fmt_lr(est.lo)} .. {fmt_lr(est.hi)}; "
                f"grid argmax {fmt_lr(est.argmax)})")
    if est.status == "flat":
        return f"flat: no max_lr of the grid beats the others beyond noise (argmax {fmt_lr(est.argmax)})"
    side = "at most" if est.status == "edge-low" else "at least"
    return f"best at the grid's edge: optimum {side} {fmt_lr(est.argmax)} (no value reported)"


# ----------------------------------------------------------------------------- reading
def _choices(out) -> list[dict]:
    rows = []
    for f in RunPaths(out).oracle_choices():
        try:
            rows.append(json.loads(f.read_text()))
        except ValueError:
            raise GradscopeError(f"{f} is not valid JSON") from None
    return rows


def oracle_table(out):
    """All candidates of all rounds (round, max_lr, seed, val_acc, test_acc, best, in_interval)."""
    import pandas as pd  # noqa: PLC0415

    rows = []
    for d in _choices(out):
        for c in d["candidates"]:
            rows.append({"seed": 0, **c, "best": c["max_lr"] == d["best_max_lr"],
                         "in_interval": c["max_lr"] in d["within_noise"]})
    return pd.DataFrame(rows)


def oracle_summary(out):
    """Per round: sparsity, status, optimum with CI, grid argmax, SILO interval, seeds, n_val, cost
    (the candidates' training time; the optimum's CI is the paired bootstrap's)."""
    import pandas as pd  # noqa: PLC0415

    rows = []
    for d in _choices(out):
        o = d.get("optimum") or {}
        nan = float("nan")  # not None: a column of numbers whatever the statuses
        rows.append({"round": d["round"], "sparsity": d.get("sparsity"), "status": o.get("status", "-"),
                     "optimum": o.get("optimum") or nan, "ci_lo": o.get("lo") or nan, "ci_hi": o.get("hi") or nan,
                     "argmax": d["best_max_lr"], "interval_lo": d["optimal_interval"][0],
                     "interval_hi": d["optimal_interval"][1], "seeds": d.get("seeds", 1),
                     "n_val": d.get("n_val"), "cost_h": d.get("cost_s", float("nan")) / 3600,
                     "device": d.get("device", "-")})
    return pd.DataFrame(rows)


def _estimate(out, d: dict) -> OptimumEstimate:
    """A round's ``OptimumEstimate`` from its candidates.json, with the bootstrap replicates; a
    file written before the replicates' curves were kept is re-analysed from its candidates."""
    o, grid = d.get("optimum") or {}, [float(v) for v in d["grid"]]
    if "boot_acc" not in d or "n_seeds" not in o:
        k = int(d["round"])
        try:
            _, _, correct = load_candidates(out, k, grid, int(d.get("seeds", 1)))
        except GradscopeError as e:
            raise GradscopeError(f"round {k} of {out} predates the kept bootstrap curves and cannot be "
                                 f"re-analysed: {e}") from None
        return fit_optimum(grid, correct, n_boot=len(d.get("boot_log_opt") or []) or DEFAULT_BOOT, seed=k)
    return OptimumEstimate(
        o["status"], o.get("optimum"), o.get("lo"), o.get("hi"), float(o["argmax"]), tuple(o["interval"]),
        float(o.get("level", 0.95)), dict(zip(grid, o["mean_acc"].values())), dict(zip(grid, o["se_acc"].values())),
        np.asarray(d["boot_log_opt"], float), np.asarray(d["boot_acc"], float), int(o["n_seeds"]), int(o["n_val"]),
        dict(o.get("var_log_opt") or {}), o.get("resampling", ""))


def oracle_rounds(out, name: Optional[str] = None) -> list[OracleRound]:
    """Every analysed round of an Oracle run as ``OracleRound``s (trajectory ``name``, default
    the run directory), the input of ``gradscope.oracle_stats.score_predictions``."""
    name = str(out) if name is None else name
    return [OracleRound(name, int(d["round"]), float(d["sparsity"]), _estimate(out, d)) for d in _choices(out)]


def oracle_trajectory(out, name: Optional[str] = None) -> Trajectory:
    """The run's rounds as one ``Trajectory`` for the slope (interior rounds kept)."""
    rs = oracle_rounds(out, name)
    return trajectory(str(out) if name is None else name, [r.sparsity for r in rs], [r.estimate for r in rs])


def _run_config(out) -> Optional[RunConfig]:
    f = RunPaths(out).config
    if not f.exists():
        return None
    try:
        return RunConfig.from_dict(json.loads(f.read_text()))
    except (ValueError, TypeError, AttributeError):
        raise GradscopeError(f"{f} is not a gradscope run config") from None


SAME_CONFIGURATION = (("model", lambda c: c.model.model), ("dataset", lambda c: c.data.dataset),
                      ("prune rate", lambda c: c.prune.prune_rate), ("epochs", lambda c: c.train.epochs),
                      ("schedule", lambda c: c.schedule.schedule), ("optimizer", lambda c: c.train.optimizer))


def check_trajectories(outs: Sequence) -> list:
    """Oracle runs to pool as trajectories of one configuration: each has rounds, and they differ
    only where pruning seeds make them differ (never in model, data, prune rate, epochs, schedule),
    and not in ``--seed``. Returns their configs (None where a run has none)."""
    cfgs = []
    for o in outs:
        if not RunPaths(o).oracle_choices():
            raise GradscopeError(f"{o} holds no analysed Oracle round (oracle/round_K/candidates.json)")
        cfgs.append(_run_config(o))
    base = cfgs[0]
    for o, c in zip(outs[1:], cfgs[1:]):
        if base is None or c is None:
            continue
        for what, get in SAME_CONFIGURATION:
            if get(c) != get(base):
                raise GradscopeError(f"{o} is not the same configuration as {outs[0]} ({what} {get(c)!r} vs "
                                     f"{get(base)!r}); pool only Oracle runs that differ in --seed")
        if c.train.seed == base.train.seed:
            raise GradscopeError(f"{o} has the same --seed ({c.train.seed}) as {outs[0]}: the same pruning "
                                 "trajectory twice; pool runs with different --seed")
    return cfgs


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def oracle_report(out, others: Sequence = (), *, level: float = 0.95, preset: str = "resnet20") -> str:
    """The Oracle summary: paired-bootstrap optima per round, the slope of log(optimum) on sparsity
    (over trajectories when ``others`` name more runs of the configuration, else labelled
    within-trajectory only), the verdict against flat and SILO's rise, and the power line."""
    outs = [out, *others]
    cfgs = check_trajectories(outs)
    t = oracle_summary(out)
    seeds = int(t["seeds"].iloc[0])
    n_val = int(t["n_val"].iloc[0])
    rounds = oracle_rounds(out)
    boots = len(rounds[0].estimate.boot_log_opt) if rounds and rounds[0].estimate.boot_log_opt is not None else 0
    lines = [f"Oracle per round ({out}: {plural(seeds, 'seed')} per max_lr; validation: {n_val} images, so one "
             f"candidate's accuracy has a standard error of about {100 * 0.5 / max(n_val, 1) ** 0.5:.2g} points "
             f"at 50 %; optimum and {level:.0%} CI from a paired bootstrap, {boots} replicates, over seeds "
             f"(whole rows across max_lr) and validation examples; cost_h = the candidates' training hours):",
             t.to_string(index=False, float_format=lambda v: f"{v:.4g}")]
    if seeds == 1:
        lines.append("note: 1 seed per max_lr: the CIs cover validation-example noise only, not training "
                     "(seed) noise; run --seeds 3 or more")
    trajs = [trajectory(str(o), [r.sparsity for r in rs], [r.estimate for r in rs])
             for o, rs in zip(outs, [rounds] + [oracle_rounds(o) for o in others])]
    prune_rate = cfgs[0].prune.prune_rate if cfgs[0] is not None else 0.2
    if len(outs) > 1:
        lines.append(f"\ntrajectories (pruning seeds) pooled: {len(outs)}")
        for tr in trajs:
            lines.append(f"  {tr.name}: {plural(len(tr.x), 'interior round')}"
                         + (f", slope x{math.exp(tr.slope()):.3g} per unit sparsity" if tr.usable else
                            " (fewer than 3: left out of the slope)"))
    try:
        v = judge({"this configuration": trajs}, level=level, prune_rate=prune_rate, preset=preset)[0]
    except GradscopeError as e:
        counts = {}
        for o in outs:
            for st in oracle_summary(o)["status"]:
                counts[st] = counts.get(st, 0) + 1
        seen = ", ".join(f"{n} {st}" for st, n in sorted(counts.items()))
        lines += [f"\nslope test: {e}", "verdict: cannot tell (no slope)",
                  f"power: cannot be estimated from these rounds ({seen}): it needs a trajectory with 3 or more "
                  f"interior optima; a flat round needs a larger validation set (--val-size; here {n_val} images) "
                  f"or more seeds, an edge round a wider --grid"]
        return "\n".join(lines)
    lines += ["\n" + v.ci.sentence(), v.sentence(), power_line(trajs, v.ci.tau2).sentence()]
    return "\n".join(lines)


def oracle_slope(out, x: str = "sparsity"):
    """The slope test over the rounds whose optimum is interior: does the best max_lr rise? (One
    trajectory: within-trajectory only; ``oracle_report`` pools trajectories and judges.)"""
    ds = [d for d in _choices(out) if (d.get("optimum") or {}).get("status") == "interior"]
    if len(ds) < 3:
        raise GradscopeError(f"the slope test needs at least 3 rounds with an interior optimum; {out} has {len(ds)}")
    xs = [d["sparsity"] if x == "sparsity" else d["round"] for d in ds]
    return slope_test(xs, [np.asarray(d["boot_log_opt"]) for d in ds], x_name=x,
                      point_log_opt=[math.log(d["optimum"]["optimum"]) for d in ds])
