"""The ``gradscope`` command. Thin: parses flags into configs and calls the library.

Every user error is a ``GradscopeError``, printed as one line with exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from gradscope import GradscopeError, __version__
from gradscope.config import add_run_arguments, run_config_from_args

PROFILE_DEFAULTS = {"record": True, "out": "runs/profile", "rounds": 8, "epochs": 5, "schedule": "lth", "max_lr": 0.05}
PRUNE_DEFAULTS = {"out": "runs/prune"}


def _cmd_prune(ns) -> int:
    from gradscope.train import PruningRun
    cfg = run_config_from_args(ns)
    PruningRun(cfg).run()
    print(f"run written to {cfg.out}")
    return 0


def _cmd_profile(ns) -> int:
    from gradscope.train import PruningRun
    from gradscope.store import open_run
    cfg = run_config_from_args(ns)
    cfg.record.record = True
    PruningRun(cfg).run()
    path = f"{cfg.out}/run.h5"
    with open_run(path) as r:
        table = r.round_summary(relu_only=True)
    table = table.rename(columns={"std": "grad_std"})
    cols = [c for c in ("round", "sparsity", "val_acc", "test_acc", "grad_std", "std_ratio") if c in table]
    print("\nGradient spread of unpruned ReLU-layer weights per round:")
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nrecorded to {path}  (next: gradscope fit {path})")
    return 0


def _cmd_oracle(ns) -> int:
    from gradscope.train.oracle import OracleRun, geometric_grid, oracle_table
    cfg = run_config_from_args(ns)
    if ns.grid:
        try:
            grid = [float(v) for v in ns.grid.split(",") if v.strip()]
        except ValueError:
            raise GradscopeError(f"--grid takes comma-separated numbers, got {ns.grid!r}") from None
    else:
        from gradscope.schedules import schedule_from_config
        f = schedule_from_config(cfg.schedule)
        p = f.params()
        lo, hi = p.get("lo") or p.get("max_lr"), p.get("hi") or p.get("max_lr")
        if lo is None:
            raise GradscopeError("give --grid, or a schedule with lo/hi or max_lr to centre the grid on")
        grid = geometric_grid(lo, hi, ns.grid_points)
    OracleRun(cfg, grid, workers=ns.workers).run()
    t = oracle_table(cfg.out)
    print("\nOracle candidates (best by validation accuracy; * = within noise of the best):")
    t["mark"] = ["best" if b else ("*" if i else "") for b, i in zip(t["best"], t["in_interval"])]
    print(t[["round", "max_lr", "val_acc", "test_acc", "mark"]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def _cmd_oracle_candidate(ns) -> int:
    from gradscope.train.oracle import run_candidate
    r = run_candidate(ns.out, ns.round, ns.max_lr)
    print(f"round {r['round']} max_lr {r['max_lr']:.6g}: val_acc {r['val_acc']:.4f} test_acc {r['test_acc']:.4f}")
    return 0


def _cmd_fit(ns) -> int:
    from gradscope.fit import fit_run
    from gradscope.fit.run import format_narrowing, format_trend
    models = tuple(m for m in ns.models.split(",") if m)
    res = fit_run(ns.run, per=ns.per, models=models, bootstrap=ns.bootstrap, seed=ns.seed, store=not ns.no_store)
    fmt = lambda v: f"{v:.4g}"  # noqa: E731
    n = format_narrowing(res, statistic=ns.statistic, layer="pooled")
    print(f"Pooled narrowing of ReLU-fed layers ({ns.statistic}; ratio = scale(round k) / scale(round 0)):")
    print(n[[c for c in ("round", "sparsity", "scale", "ratio", "ratio_lo", "ratio_hi") if c in n]]
          .to_string(index=False, float_format=fmt))
    t = format_trend(res, statistic=ns.statistic)
    print("\nTrend: slope of log scale against log density (> 0: narrows as the net gets sparser):")
    print(t.to_string(index=False, float_format=fmt))
    best = res.pooled["best"].value_counts().to_dict() if "best" in res.pooled else {}
    if best:
        print("\nbest model by AIC (pooled, count of rounds):", ", ".join(f"{k}: {v}" for k, v in best.items()))
    if not ns.no_store:
        print(f"\nfit tables stored in {ns.run} under /derived (raw data untouched)")
    return 0


def _cmd_calibrate(ns) -> int:
    from gradscope.calibrate import calibrate_run, format_calibration
    cal = calibrate_run(ns.run, gamma=ns.gamma, statistic=ns.statistic, lo=ns.lo, x=ns.x,
                        rounds_planned=ns.rounds_planned, fix_lo=ns.fix_lo)
    fmt = lambda v: f"{v:.4g}"  # noqa: E731
    print("Measured points (max_lr that keeps max_lr * scale constant):")
    print(cal.points.to_string(index=False, float_format=fmt))
    print("\nFitted SILO S-curve (value, standard error):")
    print(format_calibration(cal).to_string(index=False, float_format=fmt))
    import math
    at_bound = [b for b in cal.uncertainty.get("at_bound", []) if b]
    unpinned = [k for k in ("lo", "hi", "beta", "midpoint")
                if not isinstance(cal.uncertainty.get(k), (int, float)) or not math.isfinite(cal.uncertainty[k])]
    if at_bound or unpinned:
        print(f"\nnote: the measured points do not pin down an S-curve (at a bound: {', '.join(at_bound) or '-'}; "
              f"no finite standard error: {', '.join(unpinned) or '-'}). A rising S-curve needs gradients that "
              "narrow: check the trend of `gradscope fit` before using these parameters.")
    print("\nPredicted max_lr per round:")
    print(cal.predict(ns.rounds_planned).to_string(index=False, float_format=fmt))
    if ns.output:
        cal.to_file(ns.output)
        print(f"\nwrote {ns.output}  (use: gradscope prune --schedule silo --schedule-file {ns.output})")
    return 0


def _cmd_list(ns) -> int:
    from gradscope.data import list_datasets
    from gradscope.models import list_models
    from gradscope.schedules import list_schedules
    print("models:   ", ", ".join(list_models()))
    print("datasets: ", ", ".join(list_datasets()))
    print("schedules:", ", ".join(list_schedules()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradscope", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"gradscope {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("prune", help="iterative pruning with rewinding (prints a per-round table)")
    add_run_arguments(s, PRUNE_DEFAULTS)
    s.set_defaults(func=_cmd_prune)

    s = sub.add_parser("profile", help="iterative pruning with the gradient recorder; writes RUN_DIR/run.h5")
    add_run_arguments(s, PROFILE_DEFAULTS)
    s.set_defaults(func=_cmd_profile)

    s = sub.add_parser("oracle", help="per round, grid-search max_lr and continue from the best (validation) candidate")
    add_run_arguments(s, {"out": "runs/oracle"})
    s.add_argument("--grid", default=None, help="comma-separated max_lr values (default: geometric lo/2 ... 2*hi)")
    s.add_argument("--grid-points", type=int, default=7, help="points of the default geometric grid")
    s.add_argument("--workers", type=int, default=1,
                   help="parallel candidate processes; 0 = print the candidate commands and stop")
    s.set_defaults(func=_cmd_oracle)

    s = sub.add_parser("oracle-candidate", help="train one Oracle candidate (for cluster schedulers)")
    s.add_argument("--out", required=True, help="the Oracle run directory")
    s.add_argument("--round", type=int, required=True)
    s.add_argument("--max-lr", type=float, required=True)
    s.set_defaults(func=_cmd_oracle_candidate)

    s = sub.add_parser("fit", help="fit the recorded gradient distributions; print the narrowing per round")
    s.add_argument("run", metavar="RUN.h5")
    s.add_argument("--per", choices=("round", "window"), default="round", help="fit per round (default) or per window")
    s.add_argument("--models", default="normal,laplace,t,gennorm", help="comma-separated distribution families")
    s.add_argument("--statistic", default="std", help="statistic whose narrowing is printed (std, iqr, mad, or a family)")
    s.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates for confidence intervals")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-store", action="store_true", help="do not store the fit tables in the run file")
    s.set_defaults(func=_cmd_fit)

    s = sub.add_parser("calibrate", help="SILO S-curve parameters from the measured narrowing")
    s.add_argument("run", metavar="RUN.h5")
    s.add_argument("-o", "--output", default=None, help="write the parameters (JSON, or YAML by extension)")
    s.add_argument("--lo", type=float, default=None, help="max_lr of round 0 (default: the run's)")
    s.add_argument("--gamma", type=float, default=1.0, help="exponent: max_lr(k) = lo * (scale0/scale_k)^gamma")
    s.add_argument("--statistic", default="std", help="spread statistic (std, iqr, mad, or a fitted family)")
    s.add_argument("--x", choices=("planned", "measured"), default="planned",
                   help="pruned fraction: planned 1-(1-p)^(k-lag) or measured sparsity")
    s.add_argument("--rounds-planned", type=int, default=None, help="predict max_lr up to this many rounds")
    s.add_argument("--fix-lo", action="store_true", help="pin lo to round 0's max_lr")
    s.set_defaults(func=_cmd_calibrate)

    s = sub.add_parser("list", help="known models, datasets and schedules")
    s.set_defaults(func=_cmd_list)

    for register in _EXTRA:
        register(sub)
    return p


def _register_plot(sub) -> None:
    from gradscope.plot.commands import register
    register(sub)


def _register_store(sub) -> None:
    from gradscope.store.commands import register
    register(sub)


_EXTRA: list = [_register_plot, _register_store]  # subcommands that live with their module (plot, report, repair)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return int(ns.func(ns) or 0)
    except GradscopeError as e:
        print(f"gradscope: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradscope: interrupted; start the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
