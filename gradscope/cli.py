"""The ``gradscope`` command: measure how weight-gradient distributions change under iterative
pruning, calibrate SILO learning-rate schedules from the measurement, and compare schedules.

Thin: parses flags into configs and calls the library. Every user error is a
``GradscopeError``, printed as one line with exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from gradscope import GradscopeError, JobsPending, __version__
from gradscope.config import add_run_arguments, run_config_from_args

DESCRIPTION = ("gradscope: record per-layer weight-gradient statistics across iterative pruning "
               "rounds, fit how they change, calibrate SILO's max_lr S-curve from them, and compare "
               "LR schedules (SILO, baselines, the Oracle).")
PROFILE_DEFAULTS = {"record": True, "out": "runs/profile", "rounds": 8, "epochs": 5, "schedule": "lth"}
PROFILE_MAX_LR = 0.05  # profile's peak for fixed-peak schedules: a fixed LR does not confound the measurement
PRUNE_DEFAULTS = {"out": "runs/prune"}
# The Oracle's defaults match `profile`'s, so that a profile and an Oracle run measure the same training.
ORACLE_DEFAULTS = {"out": "runs/oracle", "rounds": 8, "epochs": 5, "schedule": "lth"}
ORACLE_BATCHED_CUDA = 8  # candidates trained at once on a GPU by default (bench/bench_batched.py: 2.0x at K = 8)


def run_file(path: str) -> str:
    """A run file path from RUN.h5 or a run directory holding run.h5."""
    from gradscope.paths import RunPaths  # noqa: PLC0415

    if os.path.isdir(path):
        h5 = RunPaths(path).run_h5
        if not h5.exists():
            raise GradscopeError(f"{path} is a directory without a run.h5 (was it recorded? "
                                 "`gradscope profile` records; `gradscope prune` does not)")
        return str(h5)
    return path


def _cmd_prune(ns) -> int:
    from gradscope.train import PruningRun
    cfg = run_config_from_args(ns)
    PruningRun(cfg).run()
    if _is_main():
        print(f"run written to {cfg.out}")
    return 0


def _cmd_profile(ns) -> int:
    from gradscope.fit.run import fed_words, pooled_activations
    from gradscope.store import open_run
    from gradscope.train import PruningRun
    cfg = run_config_from_args(ns)
    cfg.record.record = True
    _fixed_peak_default(cfg)
    PruningRun(cfg).run()
    if not _is_main():  # under torchrun, rank 0 wrote the run file and prints
        return 0
    path = f"{cfg.out}/run.h5"
    with open_run(path) as r:
        table = r.round_summary(relu_only=True)
        fed = fed_words(pooled_activations(r))
    table = table.rename(columns={"std": "grad_std"})
    cols = [c for c in ("round", "sparsity", "val_acc", "test_acc", "grad_std", "std_ratio") if c in table]
    print(f"\nGradient spread of unpruned {fed} layers' weights per round (view: survivors; all windows pooled):")
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nrecorded to {path}  (next: gradscope fit {path})")
    return 0


def _is_main() -> bool:
    from gradscope.train.distributed import is_main
    return is_main()


def _fixed_peak_default(cfg) -> None:
    """profile and oracle: a fixed-peak schedule without --max-lr gets PROFILE_MAX_LR."""
    from gradscope.schedules import SCHEDULES
    if cfg.schedule.max_lr is None and cfg.schedule.schedule_file is None \
            and "max_lr" in SCHEDULES.get(cfg.schedule.schedule).cls.PEAK_PARAMS:
        cfg.schedule.max_lr = PROFILE_MAX_LR


def _cmd_oracle(ns) -> int:
    from gradscope.schedules import schedule_from_config
    from gradscope.train import PruningRun
    from gradscope.train.oracle import (OracleRounds, default_grid, make_executor, oracle_slope,
                                        oracle_summary, parse_grid)
    cfg = run_config_from_args(ns)
    _fixed_peak_default(cfg)
    grid = parse_grid(ns.grid) if ns.grid else default_grid(schedule_from_config(cfg.schedule), ns.grid_points)
    if ns.ray or ns.ray_address:
        from gradscope.train.ray_jobs import RayExecutor
        if ns.workers != 1:
            raise GradscopeError("--ray and --workers exclude each other (Ray schedules the candidates itself)")
        if (ns.batched or 1) > 1:
            raise GradscopeError("--ray and --batched exclude each other (batched candidates run in this process)")
        executor = RayExecutor(ns.ray_address, num_cpus_per_job=cfg.train.threads or 1,
                               num_gpus_per_job=ns.gpus_per_candidate)
    else:
        batched = ns.batched
        if batched is None:  # default: batched on a GPU (one small model leaves it idle), off on a CPU
            from gradscope.train.context import resolve_device
            on_gpu = ns.workers == 1 and resolve_device(cfg.train.device).type == "cuda"
            batched = ORACLE_BATCHED_CUDA if on_gpu else 1
        executor = make_executor(ns.workers, batched)
    rounds = OracleRounds(grid, seeds=ns.seeds, executor=executor, max_extend=ns.max_extend)
    PruningRun(cfg, rounds=rounds).run()
    t = oracle_summary(cfg.out)
    n_val = int(t["n_val"].iloc[0]) if len(t) else 0
    print(f"\nOracle per round ({ns.seeds} seeds per max_lr; validation: {n_val} images, so one candidate's "
          f"accuracy has a standard error of about {100 * 0.5 / max(n_val, 1) ** 0.5:.2g} points at 50 %):")
    print(t.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    try:
        print("\n" + oracle_slope(cfg.out, x="sparsity").sentence())
    except GradscopeError as e:
        print(f"\nslope test: {e}")
    return 0


def _cmd_oracle_candidate(ns) -> int:
    from gradscope.train.oracle import run_candidate
    r = run_candidate(ns.out, ns.round, ns.max_lr, ns.seed, model=ns.model)
    print(f"round {r['round']} max_lr {r['max_lr']:.6g} seed {r.get('seed', 0)}: val_acc {r['val_acc']:.4f} "
          f"test_acc {r['test_acc']:.4f}")
    return 0


def _cmd_fit(ns) -> int:
    from gradscope.fit import TREND_WORDING, check_fit_options, fit_run, narrowing_heading
    from gradscope.fit.run import format_narrowing, format_trend
    models = tuple(m for m in ns.models.split(",") if m)
    path = run_file(ns.run)
    check_fit_options(per=ns.per, models=models, bootstrap=ns.bootstrap, seed=ns.seed, view=ns.view,
                      window=ns.window, statistic=ns.statistic)
    res = fit_run(path, per=ns.per, models=models, bootstrap=ns.bootstrap, seed=ns.seed, store=not ns.no_store,
                  view=ns.view, window=ns.window)
    fmt = lambda v: f"{v:.4g}"  # noqa: E731
    n = format_narrowing(res, statistic=ns.statistic, layer="pooled")
    print(narrowing_heading(res, ns.statistic) + ":")
    cols = ["round", "sparsity", "scale", "ratio", "ratio_lo", "ratio_hi"] + \
        (["resolution"] if ns.statistic in ("iqr", "mad") else [])
    print(n[[c for c in cols if c in n]].to_string(index=False, float_format=fmt))
    t = format_trend(res, statistic=ns.statistic)
    print(f"\nTrend: {TREND_WORDING}:")
    print(t.to_string(index=False, float_format=fmt) if len(t) else "(none: a trend needs 3 or more usable rounds)")
    best = res.pooled["best"].value_counts().to_dict() if "best" in res.pooled else {}
    if best:
        print("\nbest model by AIC (pooled, count of rounds):", ", ".join(f"{k}: {v}" for k, v in best.items()))
    if not ns.no_store:
        print(f"\nfit tables stored in {path} under /derived (raw data untouched)")
    return 0


def _cmd_calibrate(ns) -> int:
    from gradscope.calibrate import calibrate_run, check_calibrate_options, describe_calibration, format_calibration
    check_calibrate_options(statistic=ns.statistic, lo=ns.lo, gamma=ns.gamma, x=ns.x, p=ns.p,
                            rounds_planned=ns.rounds_planned, view=ns.view, window=ns.window)
    path = run_file(ns.run)
    if ns.output:
        parent = os.path.dirname(os.path.abspath(ns.output))
        if not os.path.isdir(parent):
            raise GradscopeError(f"-o {ns.output}: directory {parent} does not exist")
    cal = calibrate_run(path, gamma=ns.gamma, statistic=ns.statistic, lo=ns.lo, x=ns.x, p=ns.p,
                        rounds_planned=ns.rounds_planned, fix_lo=ns.fix_lo, view=ns.view, window=ns.window)
    fmt = lambda v: f"{v:.4g}"  # noqa: E731
    lines = describe_calibration(cal)
    print(lines[0])
    print("\nMeasured points (max_lr that keeps max_lr * scale constant):")
    print(cal.points.to_string(index=False, float_format=fmt))
    print("\nFitted SILO S-curve (value, standard error, confidence interval):")
    print(format_calibration(cal).to_string(index=False, float_format=fmt))
    print("\n" + "\n".join(lines[1:]))
    print("\nPredicted max_lr per round (95 % band):")
    print(cal.predict(ns.rounds_planned).to_string(index=False, float_format=fmt))
    if ns.output:
        cal.to_file(ns.output, force=ns.force)
        print(f"\nwrote {ns.output}  (status {cal.status}; use: gradscope prune --schedule silo "
              f"--schedule-file {ns.output})")
    return 0


def _cmd_list(ns) -> int:
    import gradscope.calibrate  # noqa: F401 - registers silo-auto
    from gradscope.data import list_datasets
    from gradscope.models import list_models
    from gradscope.pruning import STRATEGIES
    from gradscope.schedules import list_schedules
    from gradscope.train.rewind import REWINDS
    print("models:         ", ", ".join(list_models()), "(or module:callable)")
    print("datasets:       ", ", ".join(list_datasets()))
    print("schedules:      ", ", ".join(list_schedules()))
    print("prune methods:  ", ", ".join(STRATEGIES.names()))
    print("rewind modes:   ", ", ".join(REWINDS.names()))
    return 0


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _pos_int(s: str) -> int:
    v = _nonneg_int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _finite_float(s: str, positive: bool) -> float:
    import math
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not (math.isfinite(v) and (v > 0 if positive else v >= 0)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}" if positive
                                         else f"must be a number >= 0, got {s}")
    return v


def _pos_float(s: str) -> float:
    return _finite_float(s, positive=True)


def _nonneg_float(s: str) -> float:
    return _finite_float(s, positive=False)


def _fraction(s: str) -> float:
    v = _pos_float(s)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {s}")
    return v


class Parser(argparse.ArgumentParser):
    """argparse with gradscope's error format: one line ``gradscope: error: ...``, exit 2."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        cmd = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        where = f"{cmd}: " if cmd else ""
        self.exit(2, f"gradscope: error: {where}{message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="gradscope", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"gradscope {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    s = sub.add_parser("prune", help="iterative pruning with rewinding (prints a per-round table)")
    add_run_arguments(s, PRUNE_DEFAULTS)
    s.set_defaults(func=_cmd_prune)

    s = sub.add_parser("profile", help="iterative pruning with the gradient recorder; writes RUN_DIR/run.h5",
                       description=f"Iterative pruning with the gradient recorder on. Fixed-peak schedules "
                                   f"default to --max-lr {PROFILE_MAX_LR} here, so that a rising LR does not "
                                   f"confound the measurement.")
    add_run_arguments(s, PROFILE_DEFAULTS)
    s.set_defaults(func=_cmd_profile)

    s = sub.add_parser("oracle", help="per round, grid-search max_lr and continue from the best (validation) candidate",
                       description="Per round, train every max_lr of a grid with several seeds from the round's "
                                   "start state, locate the best max_lr with a confidence interval, and continue "
                                   "from the grid's best. Size the validation set for the effect you look for "
                                   "(--val-size N: a candidate's accuracy has a standard error of about "
                                   "sqrt(p(1-p)/N), 1.6 points at N=1000 and p=0.5); cost = grid points x seeds "
                                   "rounds of training per round.")
    add_run_arguments(s, ORACLE_DEFAULTS)
    s.add_argument("--grid", default=None, help="comma-separated max_lr values (default: geometric lo/2 ... 2*hi)")
    s.add_argument("--grid-points", type=_pos_int, default=7, help="points of the default geometric grid (default: 7)")
    s.add_argument("--seeds", type=_pos_int, default=3,
                   help="training seeds per max_lr (data order, augmentation): the optimum's CI covers "
                        "training noise only with several (default: 3)")
    s.add_argument("--max-extend", type=_nonneg_int, default=3,
                   help="grid points added beyond an edge when the best is at the edge (default: 3)")
    s.add_argument("--workers", type=_nonneg_int, default=1,
                   help="candidates at a time: 1 = one after the other here; N > 1 = N at a time on a local "
                        "Ray instance (needs gradscope[ray]); 0 = print the candidate commands for another "
                        "scheduler and stop (exit 0) (default: 1)")
    s.add_argument("--batched", type=_nonneg_int, default=None, metavar="K",
                   help="train K candidates at a time as one vmapped model in this process (SGD models "
                        "without dropout; others run one by one); 0 or 1 = off (default: "
                        f"{ORACLE_BATCHED_CUDA} on a GPU, off on a CPU)")
    s.add_argument("--ray", action="store_true",
                   help="run the candidates as Ray tasks (pip install 'gradscope[ray]'); each gets --threads CPUs")
    s.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster (implies --ray; default: start Ray on this machine)")
    s.add_argument("--gpus-per-candidate", type=_nonneg_float, default=0.0, metavar="F",
                   help="GPUs Ray reserves per candidate with --ray, e.g. 0.25 for four per GPU (default: 0)")
    s.set_defaults(func=_cmd_oracle)

    s = sub.add_parser("oracle-candidate", help="train one Oracle candidate (for cluster schedulers)")
    s.add_argument("--out", required=True, help="the Oracle run directory")
    s.add_argument("--round", type=_nonneg_int, required=True)
    s.add_argument("--max-lr", type=_pos_float, required=True)
    s.add_argument("--seed", type=_nonneg_int, default=0, help="candidate seed (default: 0, the run's own)")
    s.add_argument("--model", default=None, help="confirm the run's user model (module:callable) may be imported")
    s.set_defaults(func=_cmd_oracle_candidate)

    s = sub.add_parser("fit", help="fit the recorded gradient distributions; print the narrowing per round")
    s.add_argument("run", metavar="RUN", help="RUN.h5 or a run directory")
    s.add_argument("--per", choices=("round", "window"), default="round", help="fit per round (default) or per window")
    s.add_argument("--models", default="normal,laplace,t,gennorm", help="comma-separated distribution families "
                   "(default: normal,laplace,t,gennorm)")
    s.add_argument("--statistic", default="std",
                   help="statistic whose narrowing is printed: std, meanabs (exact), iqr, mad (from the histogram), "
                        "or a fitted family's scale (default: std)")
    s.add_argument("--bootstrap", type=_nonneg_int, default=200, help="bootstrap replicates for confidence intervals (default: 200)")
    s.add_argument("--seed", type=_nonneg_int, default=0, help="(default: 0)")
    s.add_argument("--view", default="survivors", help="survivors, all or relative (see docs/method.md) (default: survivors)")
    s.add_argument("--window", default="all", help="all epochs of a round, or only the last (default: all)")
    s.add_argument("--no-store", action="store_true", help="do not store the fit tables in the run file")
    s.set_defaults(func=_cmd_fit)

    s = sub.add_parser("calibrate", help="SILO S-curve parameters from the measured narrowing")
    s.add_argument("run", metavar="RUN", help="RUN.h5 or a run directory")
    s.add_argument("-o", "--output", default=None, help="write the parameters (JSON, or YAML by extension)")
    s.add_argument("--lo", type=_pos_float, default=None, help="max_lr of round 0 (default: the run's)")
    s.add_argument("--p", "--prune-rate", dest="p", type=_fraction, default=None,
                   help="prune rate per round (default: the run's config, else estimated from measured sparsity)")
    s.add_argument("--gamma", type=_pos_float, default=1.0, help="exponent: max_lr(k) = lo * (scale0/scale_k)^gamma (default: 1)")
    s.add_argument("--statistic", default="std",
                   help="spread statistic: std, meanabs, iqr, mad, or a fitted family (normal, laplace, t, gennorm) "
                        "(default: std)")
    s.add_argument("--view", default="all",
                   help="survivors, all or relative (see docs/method.md); 'all' (pruned weights as zero "
                        "gradients) predicted the Oracle best in docs/findings.md (default: all)")
    s.add_argument("--window", default="all", help="all epochs of a round, or only the last (default: all)")
    s.add_argument("--force", action="store_true",
                   help="write -o even when the data do not support a rising S-curve (status flat/falling)")
    s.add_argument("--x", choices=("planned", "measured"), default="planned",
                   help="pruned fraction: planned 1-(1-p)^(k-lag) or measured sparsity (default: planned)")
    s.add_argument("--rounds-planned", type=_pos_int, default=None, help="predict max_lr up to this many rounds")
    s.add_argument("--fix-lo", action="store_true", help="pin lo to round 0's max_lr")
    s.set_defaults(func=_cmd_calibrate)

    s = sub.add_parser("list", help="known models, datasets, schedules, prune methods and rewind modes")
    s.set_defaults(func=_cmd_list)

    for register in _EXTRA:
        register(sub)
    p.commands = sub.choices  # name -> subparser, for errors about a command's arguments
    return p


def _register_plot(sub) -> None:
    from gradscope.plot.commands import register
    register(sub)


def _register_store(sub) -> None:
    from gradscope.store.commands import register
    register(sub)


def _register_export(sub) -> None:
    from gradscope.export import register
    register(sub)


_EXTRA: list = [_register_plot, _register_store, _register_export]  # subcommands that live with their module


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if extra:
        parser.commands[ns.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(ns.func(ns) or 0)
    except JobsPending as e:
        print(str(e))
        return 0
    except GradscopeError as e:
        print(f"gradscope: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradscope: interrupted; start the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
