"""The ``gradscope`` command: measure how weight-gradient distributions change under iterative
pruning, calibrate SILO learning-rate schedules from the measurement, and compare schedules.

Thin: parses flags into configs and calls the library. Every user error is a
``GradscopeError``, printed as one line with exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Optional, Sequence

from gradscope import GradscopeError, JobsPending, __version__
from gradscope.config import add_run_arguments, run_config_from_args
from gradscope.views import DEFAULT_VIEW, DEFAULT_WINDOW

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
    _say_recipe(cfg)
    PruningRun(cfg).run()
    if _is_main():
        print(f"run written to {cfg.out}")
    return 0


def _cmd_profile(ns) -> int:
    from gradscope.fit.run import describe_view, fed_words, pooled_activations
    from gradscope.store import open_run
    from gradscope.train import PruningRun
    cfg = run_config_from_args(ns)
    cfg.record.record = True
    _fixed_peak_default(cfg)
    _say_recipe(cfg)
    PruningRun(cfg).run()
    if not _is_main():  # under torchrun, rank 0 wrote the run file and prints
        return 0
    path = f"{cfg.out}/run.h5"
    with open_run(path) as r:
        table = r.round_summary(relu_only=True, view=DEFAULT_VIEW, window=DEFAULT_WINDOW)
        fed = fed_words(pooled_activations(r))
    table = table.rename(columns={"std": "grad_std"})
    cols = [c for c in ("round", "sparsity", "val_acc", "test_acc", "grad_std", "std_ratio") if c in table]
    print(f"\nGradient spread of unpruned {fed} layers' weights per round "
          f"({describe_view(DEFAULT_VIEW, DEFAULT_WINDOW)}; exact std from the moments):")
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
    from gradscope.train.oracle import (OracleRounds, check_trajectories, default_grid, make_executor,
                                        oracle_report, parse_grid)
    cfg = run_config_from_args(ns)
    if cfg.schedule.schedule == "silo-auto":
        raise GradscopeError("the Oracle grid-searches every round's max_lr, so silo-auto's own calibration "
                             f"({'--predictor ' + cfg.schedule.predictor if cfg.schedule.predictor else 'from the recorded gradients'}) "
                             "would decide nothing; give the within-round shape with a fixed-peak --schedule "
                             "(e.g. lth) instead")
    others = [o for o in (ns.trajectories or "").split(",") if o.strip()]
    if others:
        check_trajectories(others)  # before any training: a bad --trajectories fails now
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
    print("\n" + oracle_report(cfg.out, others))
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
    models = tuple(m.strip() for m in ns.models.split(","))
    if models == ("none",):  # the exact statistics (std, mean |g|) and the binned ones only: no family fitted
        models = ()
    elif models == ("",):
        raise GradscopeError("--models is empty: name at least one family to fit (e.g. --models normal,laplace), "
                             "or --models none for the exact and binned statistics only")
    if "" in models:
        raise GradscopeError(f"--models {ns.models!r} has an empty name; separate families by single commas")
    path = run_file(ns.run)
    if not ns.no_store:  # before the fit: never store into a file a symlink points to elsewhere
        from gradscope.store.diskio import check_write_target  # noqa: PLC0415

        check_write_target(path)
    check_fit_options(per=ns.per, models=models, bootstrap=ns.bootstrap, seed=ns.seed, view=ns.view,
                      window=ns.window, statistic=ns.statistic)
    res = fit_run(path, per=ns.per, models=models, bootstrap=ns.bootstrap, seed=ns.seed, store=not ns.no_store,
                  view=ns.view, window=ns.window)
    fmt = lambda v: f"{v:.4g}"  # noqa: E731
    n = format_narrowing(res, statistic=ns.statistic, layer="pooled")
    print(narrowing_heading(res, ns.statistic) + ":")
    cols = ["round", "sparsity", "scale", "ratio", "ratio_lo", "ratio_hi"] + \
        (["resolution"] if ns.statistic in ("iqr", "mad") else [])
    probes = _probe_columns(path)
    if len(probes.columns) > 1:
        n = n.merge(probes, on="round", how="left")
        cols += [c for c in probes.columns if c != "round"]
    print(n[[c for c in cols if c in n]].to_string(index=False, float_format=fmt))
    if len(probes.columns) > 1:
        print("(probe columns from RUN/probes.json, at each round's start, mean over repeats: lr_valley = fastai "
              "valley LR, lambda_max = top Hessian eigenvalue, bn_norm_r = kept squared-norm ratio, "
              "noise_lr_factor = 1/(1+B_simple/B), allr_estimate = norm_drop/sqrt(step pruned))")
    t = format_trend(res, statistic=ns.statistic)
    print(f"\nTrend: {TREND_WORDING}:")
    print(t.to_string(index=False, float_format=fmt) if len(t) else "(none: a trend needs 3 or more usable rounds)")
    best = res.pooled["best"].value_counts().to_dict() if "best" in res.pooled else {}
    if best:
        print("\nbest model by AIC (pooled, count of rounds):", ", ".join(f"{k}: {v}" for k, v in best.items()))
    if not ns.no_store:
        print(f"\nfit tables stored in {path} under /derived (raw data untouched)")
    return 0


def _probe_columns(path: str):
    """The run's probes per round (``gradscope.calibrate.predictor.probe_table``) beside RUN.h5;
    without a probes file, no columns and no import of the calibration package (it imports the
    schedules, and so torch: ~2.7 s that a fit need not pay)."""
    import pandas as pd  # noqa: PLC0415

    from gradscope.store.probes import FILENAME  # noqa: PLC0415

    run_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.lexists(os.path.join(run_dir, FILENAME)):
        return pd.DataFrame({"round": []})
    from gradscope.calibrate.predictor import probe_table  # noqa: PLC0415
    return probe_table(run_dir)


def _cmd_calibrate_predictor(ns) -> int:
    from gradscope.calibrate import describe_calibration, format_calibration
    from gradscope.calibrate.predictor import calibrate_predictor
    cal, values, (shape, note) = calibrate_predictor(ns.run, ns.predictor, at=ns.probes_at, lo=ns.lo, p=ns.p, x=ns.x)
    fmt = lambda v: f"{v:.4g}"  # noqa: E731
    lines = describe_calibration(cal)
    print(f"predictor {ns.predictor}: {cal.source['rule']}; x {ns.x}; measured at each round's {ns.probes_at}")
    print(f"\nProbe per round (value: mean over repeats; cv: over the repeats; cost in forward+backward passes):")
    print(values.to_string(index=False, float_format=fmt))
    print("\nImplied points:")
    print(cal.points.to_string(index=False, float_format=fmt))
    print("\nFitted SILO S-curve (value, standard error, confidence interval):")
    print(format_calibration(cal).to_string(index=False, float_format=fmt))
    print("\n" + "\n".join(lines[1:] + ([f"shape: {note}"] if note else [])))
    print("\nPredicted max_lr per round (95 % band):")
    print(cal.predict(ns.rounds_planned).to_string(index=False, float_format=fmt))
    if ns.output:
        cal.to_file(ns.output, force=ns.force)
        print(f"\nwrote {ns.output}  (status {cal.status})")
    return 0


def _cmd_calibrate(ns) -> int:
    if ns.predictor:
        return _cmd_calibrate_predictor(ns)
    from gradscope.calibrate import calibrate_run, check_calibrate_options, describe_calibration, format_calibration
    check_calibrate_options(statistic=ns.statistic, lo=ns.lo, gamma=ns.gamma, x=ns.x, p=ns.p,
                            rounds_planned=ns.rounds_planned, view=ns.view, window=ns.window)
    path = run_file(ns.run)
    if ns.output:
        from gradscope.atomic import check_target  # noqa: PLC0415

        parent = os.path.dirname(os.path.abspath(ns.output))
        if not os.path.isdir(parent):
            raise GradscopeError(f"-o {ns.output}: directory {parent} does not exist")
        check_target(ns.output, "the calibrated parameters")  # before the fit, not after
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


VIEW_METAVAR = "{survivors,all,relative}"
WINDOW_METAVAR = "{all,last}"
STATISTIC_METAVAR = "NAME"

# One or two real examples per command (the tutorial's), shown at the end of its --help.
EXAMPLES = {
    "prune": ["gradscope prune --rounds 8 --epochs 5 --schedule lth --max-lr 0.05 --out runs/digits-lth",
              "gradscope prune --schedule silo --schedule-file runs/silo-digits.yaml --out runs/digits-silo"],
    "profile": ["gradscope profile --out runs/digits",
                "gradscope profile --model resnet20 --dataset cifar10 --data-root DATA --epochs 3 --out runs/r20"],
    "oracle": ["gradscope oracle --rounds 4 --grid 0.02,0.05,0.1 --seeds 2 --out runs/oracle"],
    "oracle-candidate": ["gradscope oracle-candidate --out /abs/runs/oracle --round 1 --max-lr 0.05 --seed 0"],
    "fit": ["gradscope fit runs/digits/run.h5 --bootstrap 100",
            "gradscope fit runs/digits/run.h5 --window last --no-store"],
    "calibrate": ["gradscope calibrate runs/digits/run.h5 --view survivors -o runs/silo-digits.yaml"],
    "list": ["gradscope list"],
    "plot": ["gradscope plot narrowing runs/digits/run.h5 -o runs/narrowing.png",
             "gradscope plot accuracy runs/digits-silo runs/digits-lth -o runs/accuracy.png"],
    "report": ["gradscope report runs/digits/run.h5 runs/digits-silo runs/digits-lth -o runs/report.html"],
    "repair": ["gradscope repair runs/digits/run.h5 --check"],
    "export": ["gradscope export tensorboard runs/digits runs/tb"],
}
DOCS_POINTER = "More: docs/tutorial.md (a worked example) and docs/cli.md (every command and flag)."


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, but lines that start with two spaces (the examples) stay as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in text.split("\n"):
            out.append(indent + para if para.startswith("  ") or not para.strip()
                       else super()._fill_text(para, width, indent))
        return "\n".join(out)


def finish_help(commands: dict) -> None:
    """Every command's --help ends with its examples and a pointer to the docs."""
    for name, sp in commands.items():
        sp.formatter_class = HelpFormatter
        lines = ["examples:", *(f"  {e}" for e in EXAMPLES.get(name, ())), "", DOCS_POINTER]
        sp.epilog = "\n".join(lines if name in EXAMPLES else [DOCS_POINTER])


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


MAX_BOOTSTRAP = 100_000  # replicates: a CI needs a few thousand at most; 1e8 would run for days
MAX_ROUNDS_PLANNED = 10_000  # rounds: at any prune rate the net is empty long before


def _bounded(parse, hi: int):
    """An argparse type: ``parse`` and at most ``hi`` (a count past it is a typo that would run on)."""
    def check(s: str) -> int:
        v = parse(s)
        if v > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi:,}, got {v}")
        return v
    check.__name__ = parse.__name__
    return check


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


def _say_recipe(cfg) -> None:
    if cfg.prune.recipe and _is_main():
        from gradscope.recipes import describe_recipe  # noqa: PLC0415
        print(describe_recipe(cfg.prune.recipe, cfg))


def _recipe_value(recipe: str, key: str):
    from gradscope.recipes import recipe_defaults  # noqa: PLC0415
    return recipe_defaults(recipe).get(key)


def _with_recipe(defaults: dict, recipe: Optional[str]) -> dict:
    """A command's flag defaults with a recipe's on top (its flags given still win)."""
    if not recipe:
        return defaults
    from gradscope.recipes import recipe_defaults  # noqa: PLC0415
    return {**defaults, **recipe_defaults(recipe), "recipe": recipe}


_SCHEDULE_COMMANDS = ("prune", "profile", "oracle")  # the commands whose help names schedule defaults


def build_parser(recipe: Optional[str] = None, schedule_help: bool = True) -> argparse.ArgumentParser:
    """The CLI parser. ``schedule_help``: fill in the schedule defaults of prune/profile/oracle's
    help (it imports the schedules, and so torch: ~2.7 s that `gradscope fit` need not pay)."""
    p = Parser(prog="gradscope", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"gradscope {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    s = sub.add_parser("prune", help="iterative pruning with rewinding (prints a per-round table)")
    add_run_arguments(s, _with_recipe(PRUNE_DEFAULTS, recipe))
    s.set_defaults(func=_cmd_prune)

    s = sub.add_parser("profile", help="iterative pruning with the gradient recorder; writes RUN_DIR/run.h5",
                       description=f"Iterative pruning with the gradient recorder on. Fixed-peak schedules "
                                   f"default to --max-lr {PROFILE_MAX_LR} here, so that a rising LR does not "
                                   f"confound the measurement.")
    add_run_arguments(s, _with_recipe(PROFILE_DEFAULTS, recipe))
    s.set_defaults(func=_cmd_profile)

    s = sub.add_parser("oracle", help="per round, grid-search max_lr and continue from the best (validation) candidate",
                       description="Per round, train every max_lr of a grid with several seeds from the round's "
                                   "start state, locate the best max_lr with a confidence interval, and continue "
                                   "from the grid's best. Size the validation set for the effect you look for "
                                   "(--val-size N: a candidate's accuracy has a standard error of about "
                                   "sqrt(p(1-p)/N), 1.6 points at N=1000 and p=0.5); cost = grid points x seeds "
                                   "rounds of training per round.")
    add_run_arguments(s, _with_recipe(ORACLE_DEFAULTS, recipe))
    s.add_argument("--grid", default=None, metavar="LR,LR,...",
                   help="comma-separated max_lr values (default: geometric lo/2 ... 2*hi)")
    s.add_argument("--grid-points", type=_pos_int, default=7, metavar="N",
                   help="points of the default geometric grid (default: 7)")
    s.add_argument("--seeds", type=_pos_int, default=3, metavar="N",
                   help="training seeds per max_lr (data order, augmentation): the optimum's CI covers "
                        "training noise only with several (default: 3)")
    s.add_argument("--max-extend", type=_nonneg_int, default=3, metavar="N",
                   help="grid points added beyond an edge when the best is at the edge (default: 3)")
    s.add_argument("--workers", type=_nonneg_int, default=1, metavar="N",
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
    s.add_argument("--trajectories", default=None, metavar="DIR[,DIR...]",
                   help="finished Oracle runs of the same configuration with other --seed values (other pruning "
                        "trajectories): the summary's slope CI, verdict and power line pool them with this run "
                        "(default: none; the slope CI is then within-trajectory only)")
    s.set_defaults(func=_cmd_oracle)

    s = sub.add_parser("oracle-candidate", help="train one Oracle candidate (for cluster schedulers)")
    s.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="the Oracle run directory (absolute on a cluster: the job may start elsewhere)")
    s.add_argument("--round", type=_nonneg_int, required=True, metavar="K",
                   help="the pruning round whose start state the candidate trains from")
    s.add_argument("--max-lr", type=_pos_float, required=True, metavar="LR",
                   help="the candidate's peak learning rate (one grid value)")
    s.add_argument("--seed", type=_nonneg_int, default=0, metavar="N",
                   help="candidate seed (default: 0, the run's own)")
    s.add_argument("--model", default=None, metavar="MODULE:CALLABLE",
                   help="confirm the run's user model may be imported (default: none; built-in models need none)")
    s.set_defaults(func=_cmd_oracle_candidate)

    s = sub.add_parser("fit", help="fit the recorded gradient distributions; print the narrowing per round")
    s.add_argument("run", metavar="RUN", help="RUN.h5 or a run directory")
    s.add_argument("--per", choices=("round", "window"), default="round",
                   help="fit per round or per window (default: round)")
    s.add_argument("--models", default="normal,laplace,t,gennorm", metavar="LIST",
                   help="comma-separated distribution families, or none for the exact and binned statistics only "
                        "(default: normal,laplace,t,gennorm)")
    s.add_argument("--statistic", default="std", metavar=STATISTIC_METAVAR,
                   help="statistic whose narrowing is printed: std, meanabs (exact), iqr, mad (from the histogram), "
                        "or a fitted family's scale (default: std)")
    s.add_argument("--bootstrap", type=_bounded(_nonneg_int, MAX_BOOTSTRAP), default=200, metavar="N",
                   help="bootstrap replicates for confidence intervals (default: 200)")
    s.add_argument("--seed", type=_nonneg_int, default=0, metavar="N",
                   help="seed of the bootstrap resampling (default: 0)")
    s.add_argument("--view", default=DEFAULT_VIEW, metavar=VIEW_METAVAR,
                   help="gradients of: survivors (unpruned weights), all (pruned weights as zeros), relative "
                        f"(|g|/|w|); see docs/method.md (default: {DEFAULT_VIEW}, as every verb)")
    s.add_argument("--window", default=DEFAULT_WINDOW, metavar=WINDOW_METAVAR,
                   help=f"all epochs of each round, or only the last epoch (default: {DEFAULT_WINDOW}, as every verb)")
    s.add_argument("--no-store", action="store_true", help="do not store the fit tables in the run file")
    s.set_defaults(func=_cmd_fit)

    s = sub.add_parser("calibrate", help="SILO S-curve parameters from the measured narrowing")
    s.add_argument("run", metavar="RUN", help="RUN.h5 or a run directory")
    s.add_argument("-o", "--out", "--output", dest="output", default=None, metavar="FILE",
                   help="write the parameters to FILE (JSON, or YAML by extension) (default: none, only print)")
    s.add_argument("--lo", type=_pos_float, default=None, metavar="LR",
                   help="max_lr of round 0 (default: the run's round-0 max_lr)")
    s.add_argument("--p", "--prune-rate", dest="p", type=_fraction, default=None, metavar="RATE",
                   help="prune rate per round (default: the run's config, else estimated from measured sparsity)")
    s.add_argument("--gamma", type=_pos_float, default=1.0, metavar="X",
                   help="exponent: max_lr(k) = lo * (scale0/scale_k)^gamma (default: 1)")
    s.add_argument("--statistic", default="std", metavar=STATISTIC_METAVAR,
                   help="spread statistic: std, meanabs, iqr, mad, or a fitted family (normal, laplace, t, gennorm) "
                        "(default: std)")
    s.add_argument("--view", default=DEFAULT_VIEW, metavar=VIEW_METAVAR,
                   help="survivors, all or relative (see docs/method.md); under 'all' (pruned weights as zero "
                        "gradients) the sqrt(density) part of the rise is split off and not counted as evidence "
                        f"(default: {DEFAULT_VIEW}, as every verb)")
    s.add_argument("--window", default=DEFAULT_WINDOW, metavar=WINDOW_METAVAR,
                   help=f"all epochs of each round, or only the last epoch (default: {DEFAULT_WINDOW}, as every verb)")
    s.add_argument("--force", action="store_true",
                   help="write -o even when the data do not support a rising S-curve (status flat/falling)")
    s.add_argument("--x", choices=("planned", "measured"), default="planned",
                   help="pruned fraction: planned 1-(1-p)^(k-lag) or measured sparsity (default: planned)")
    s.add_argument("--rounds-planned", type=_bounded(_pos_int, MAX_ROUNDS_PLANNED), default=None, metavar="N",
                   help="predict max_lr up to this many rounds (default: the run's rounds)")
    s.add_argument("--fix-lo", action="store_true", help="pin lo to round 0's max_lr (default: fitted)")
    s.add_argument("--predictor", default=None, metavar="NAME",
                   help="calibrate from a probe recorded with --probes (RUN is then the run directory): lr-range, "
                        "lr-range:steep|slide|minimum|torch-lr-finder|divergence, sharpness[:bn-blocks], bn-norm, noise-scale, "
                        "norm-drop, eps-opt, lr-free (--statistic, --view, --window, --gamma do not apply)")
    s.add_argument("--probes-at", choices=("start", "epoch1"), default="start",
                   help="with --predictor: the probe measured at the round's start or after its first epoch "
                        "(default: start)")
    s.set_defaults(func=_cmd_calibrate)

    s = sub.add_parser("list", help="known models, datasets, schedules, prune methods and rewind modes")
    s.set_defaults(func=_cmd_list)

    for register in _EXTRA:
        register(sub)
    if schedule_help:
        _explain_schedule_defaults(sub.choices)
    finish_help(sub.choices)
    p.commands = sub.choices  # name -> subparser, for errors about a command's arguments
    return p


def _set_help(parser: argparse.ArgumentParser, flag: str, text: str) -> None:
    for a in parser._actions:
        if flag in a.option_strings:
            a.help = text


def _explain_schedule_defaults(commands: dict) -> None:
    """Say what a run uses when a schedule flag is left out (the generated "(default: none)"
    hides the values: SILO's are the released ResNet-20 constants, profile's peak is 0.05)."""
    from gradscope.schedules import SCHEDULES, get_schedule  # noqa: PLC0415

    silo = SCHEDULES.get("silo").cls.PEAK_PARAMS
    peaks: dict = {}
    for n in SCHEDULES.names():
        v = get_schedule(n).params().get("max_lr") if "max_lr" in SCHEDULES.get(n).cls.PEAK_PARAMS else None
        if v is not None:
            peaks.setdefault(v, []).append(n)
    each = "; ".join(f"{v:g} for {', '.join(ns)}" for v, ns in peaks.items())
    words = {"lo": "lower bound of max_lr", "hi": "upper bound of max_lr", "beta": "steepness of the S-curve",
             "midpoint": "pruned fraction at the S-curve's midpoint", "lag": "rounds of lag in the pruned fraction"}
    for name in ("prune", "profile", "oracle"):
        sp = commands.get(name)
        if sp is None:
            continue
        for k, w in words.items():
            _set_help(sp, f"--{k}", f"SILO: {w} (default: {silo[k]:g}, the released ResNet-20 constant, made for "
                                    f"ResNet-20 on CIFAR-10; calibrate it for other models: `gradscope calibrate "
                                    f"-o FILE`, then --schedule-file FILE)")
        default = (f"{PROFILE_MAX_LR:g} here, so that a rising LR does not confound the measurement"
                   if name != "prune" else each)
        _set_help(sp, "--max-lr", f"peak LR of the fixed-peak schedules (default: {default})")


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
    args = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args if not a.startswith("-")), None)  # the only top-level flag: --version
    schedule_help = command is None or command in _SCHEDULE_COMMANDS
    parser = build_parser(schedule_help=schedule_help)
    ns, extra = parser.parse_known_args(argv)
    if getattr(ns, "recipe", None):  # a recipe's values become the defaults; parse again
        try:
            parser = build_parser(ns.recipe, schedule_help=schedule_help)
        except GradscopeError as e:
            parser.commands[ns.command].error(str(e))
        ns, extra = parser.parse_known_args(argv)
        if getattr(ns, "schedule_file", None) and ns.preset == _recipe_value(ns.recipe, "preset"):
            ns.preset = None  # a schedule file says the schedule; the recipe's preset flag would reset it
    if extra:
        parser.commands[ns.command].error(f"unrecognized arguments: {' '.join(extra)}")
    fmt = warnings.formatwarning
    warnings.formatwarning = _one_line_warning  # a warning is one line, like an error
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
    finally:
        warnings.formatwarning = fmt


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    first = str(message).strip().splitlines()
    return f"gradscope: warning: {first[0] if first else category.__name__}\n"


if __name__ == "__main__":
    sys.exit(main())
