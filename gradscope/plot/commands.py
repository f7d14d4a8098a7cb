"""``gradscope plot KIND ...`` and ``gradscope report ...``: flags in, library calls out.

Wire-up (gradscope/cli.py): ``from gradscope.plot.commands import register`` and add it to
``_EXTRA``.
"""
from __future__ import annotations

from pathlib import Path

from gradscope import GradscopeError

KINDS = ("histograms", "spread", "narrowing", "calibration", "schedule", "accuracy")


def _save(ax, out: str, dpi: int) -> None:
    from gradscope.atomic import atomic_write  # noqa: PLC0415 - the one atomic output writer

    out_p = Path(out)
    if not out_p.parent.is_dir():
        raise GradscopeError(f"directory {out_p.parent} does not exist")
    ext = out_p.suffix.lower().lstrip(".")
    if ext not in ("png", "pdf", "svg"):
        raise GradscopeError(f"-o must end in .png, .pdf or .svg, got {out}")
    if dpi < 50:
        raise GradscopeError(f"--dpi must be at least 50, got {dpi}")
    atomic_write(out_p, lambda f: ax.figure.savefig(f, dpi=dpi, format=ext), "the figure")
    print(f"wrote {out}")


def _replicates(s: str) -> int:
    """argparse type of --bootstrap: a whole number from 0 to 100,000 (more would run for days)."""
    import argparse  # noqa: PLC0415

    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if not 0 <= v <= 100_000:
        raise argparse.ArgumentTypeError(f"must be from 0 to 100,000, got {v}")
    return v


def _one_run(ns):
    if len(ns.runs) != 1:
        raise GradscopeError(f"plot {ns.kind} takes one run, got {len(ns.runs)}")
    return ns.runs[0]


def _cmd_plot(ns) -> int:
    from gradscope import plot as P  # noqa: PLC0415
    from gradscope.fit import check_view, check_window  # noqa: PLC0415

    check_view(ns.view)
    check_window(ns.window)
    vw = {"view": ns.view, "window": ns.window}
    if ns.kind == "schedule":
        if ns.runs:
            raise GradscopeError("plot schedule takes --schedules names and --schedule-file files, not runs")
        ax = P.plot_schedule(ns.schedules, rounds=ns.rounds, prune_rate=ns.prune_rate,
                             steps_per_round=ns.steps, peaks=ns.peaks, files=ns.schedule_file or ())
    elif not ns.runs:
        raise GradscopeError(f"plot {ns.kind} needs a run (RUN.h5 or RUN_DIR)")
    elif ns.kind == "histograms":
        ax = P.plot_histograms(_one_run(ns), layer=ns.layer, **vw)
    elif ns.kind == "spread":
        ax = P.plot_spread(_one_run(ns), layer=ns.layer, relative=not ns.absolute, **vw)
    elif ns.kind == "narrowing":
        layers = [x for x in ns.layers.split(",") if x] if ns.layers else None
        ax = P.plot_narrowing(_one_run(ns), statistic=ns.statistic, layers=layers, **vw)
    elif ns.kind == "calibration":
        ax = P.plot_calibration(_one_run(ns), statistic=ns.statistic, gamma=ns.gamma,
                                presets=[x for x in ns.presets.split(",") if x], **vw)
    else:
        labels = [x for x in ns.labels.split(",")] if ns.labels else None
        ax = P.plot_accuracy(ns.runs, metric=ns.metric, labels=labels)
    _save(ax, ns.out, ns.dpi)
    return 0


def _cmd_report(ns) -> int:
    from gradscope.plot.report import write_report  # noqa: PLC0415

    out = write_report(ns.runs, ns.out, title=ns.title, bootstrap=ns.bootstrap, view=ns.view, window=ns.window)
    print(f"report written to {out}")
    return 0


def register(subparsers) -> None:
    """Add the ``plot`` and ``report`` subcommands to the ``gradscope`` parser."""
    s = subparsers.add_parser("plot", help="one figure (PNG/PDF/SVG) of a run, several runs or schedules",
                              description="KIND: " + " | ".join(KINDS))
    s.add_argument("kind", choices=KINDS, metavar="KIND", help=" | ".join(KINDS))
    s.add_argument("runs", nargs="*", metavar="RUN", help="RUN.h5 or RUN_DIR (accuracy: several)")
    s.add_argument("-o", "--out", required=True, help="output file (.png, .pdf or .svg)")
    s.add_argument("--dpi", type=int, default=150, help="PNG resolution (default 150)")
    s.add_argument("--view", default="survivors",
                   help="gradients of: survivors (unpruned weights, default), all (pruned as zeros), relative (|g|/|w|)")
    s.add_argument("--window", default="all", help="all epochs of each round (default) or only the last")
    s.add_argument("--layer", default=None, help="histograms/spread: one layer (default: pooled ReLU-fed layers)")
    s.add_argument("--absolute", action="store_true",
                   help="spread: quantile bands of |g| per round on a log axis instead of ratios to round 0")
    s.add_argument("--layers", default=None, help="narrowing: comma-separated layers (default: all)")
    s.add_argument("--statistic", default="std",
                   help="narrowing/calibration: std, meanabs, iqr, mad, normal, laplace, t or gennorm (default std)")
    s.add_argument("--gamma", type=float, default=1.0, help="calibration: max_lr ~ scale^-gamma (default 1)")
    s.add_argument("--presets", default="resnet20", help="calibration: released SILO presets to show (comma-separated)")
    s.add_argument("--metric", default="test_acc", help="accuracy: test_acc or val_acc (default test_acc)")
    s.add_argument("--labels", default=None, help="accuracy: comma-separated legend labels, one per run")
    s.add_argument("--schedules", default="silo,lth,clr", help="schedule: comma-separated schedule names ('' for none)")
    s.add_argument("--schedule-file", action="append", default=None, metavar="FILE",
                   help="schedule: a schedule parameters file (JSON/YAML, e.g. from `gradscope calibrate -o`); repeatable")
    s.add_argument("--rounds", type=int, default=10, help="schedule: pruning rounds (default 10)")
    s.add_argument("--prune-rate", type=float, default=0.2, help="schedule: fraction pruned per round (default 0.2)")
    s.add_argument("--steps", type=int, default=100, help="schedule: steps per round drawn (default 100)")
    s.add_argument("--peaks", action="store_true", help="schedule: plot max_lr per round instead of the per-step LR")
    s.set_defaults(func=_cmd_plot)

    s = subparsers.add_parser("report", help="self-contained HTML report of one or more runs")
    s.add_argument("runs", nargs="+", metavar="RUN", help="RUN.h5 or RUN_DIR")
    s.add_argument("-o", "--out", default="report.html", help="output HTML file (default report.html)")
    s.add_argument("--title", default=None)
    s.add_argument("--bootstrap", type=_replicates, default=200, help="bootstrap resamples for the confidence bands")
    s.add_argument("--view", default="survivors",
                   help="gradients of: survivors (unpruned weights, default), all (pruned as zeros), relative (|g|/|w|)")
    s.add_argument("--window", default="all", help="all epochs of each round (default) or only the last")
    s.set_defaults(func=_cmd_report)
