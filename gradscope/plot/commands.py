"""``gradscope plot KIND ...`` and ``gradscope report ...``: flags in, library calls out.

Wire-up (gradscope/cli.py): ``from gradscope.plot.commands import register`` and add it to
``_EXTRA``.
"""
from __future__ import annotations

from pathlib import Path

from gradscope import GradscopeError
from gradscope.views import DEFAULT_VIEW, DEFAULT_WINDOW

KINDS = ("histograms", "spread", "narrowing", "calibration", "schedule", "accuracy", "probes")


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


def _check_plot_options(ns) -> None:
    """Flags a figure would otherwise draw nonsense from (a NaN gamma, an unknown statistic)."""
    import math  # noqa: PLC0415

    from gradscope.fit.core import check_statistic  # noqa: PLC0415

    if not (math.isfinite(ns.gamma) and ns.gamma > 0):
        raise GradscopeError(f"--gamma must be a positive number, got {ns.gamma}")
    if ns.kind in ("narrowing", "calibration"):
        try:
            check_statistic(ns.statistic)
        except GradscopeError as e:
            raise GradscopeError(f"--statistic: {e}") from None


def _cmd_plot(ns) -> int:
    from gradscope import plot as P  # noqa: PLC0415
    from gradscope.fit import check_view, check_window  # noqa: PLC0415

    check_view(ns.view)
    check_window(ns.window)
    _check_plot_options(ns)
    vw = {"view": ns.view, "window": ns.window}
    if ns.kind == "schedule" and ns.runs:  # the schedules those runs used, with their own parameters
        labels = [x for x in ns.labels.split(",")] if ns.labels else None
        ax = P.plot_run_schedules(ns.runs, peaks=ns.peaks, steps_per_round=ns.steps, labels=labels)
    elif ns.kind == "schedule":
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
    elif ns.kind == "probes":
        from gradscope.plot.probes import plot_probes  # noqa: PLC0415

        ax = plot_probes(_one_run(ns), at=ns.probes_at, probe=ns.probe)
    elif ns.kind == "calibration":
        ax = P.plot_calibration(_one_run(ns), statistic=ns.statistic, gamma=ns.gamma,
                                presets=[x for x in ns.presets.split(",") if x], **vw)
    else:
        labels = [x for x in ns.labels.split(",")] if ns.labels else None
        ax = P.plot_accuracy(ns.runs, metric=ns.metric, labels=labels)
    _save(ax, ns.out or f"{ns.kind}.png", ns.dpi)
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
    s.add_argument("runs", nargs="*", metavar="RUN",
                   help="RUN.h5 or RUN_DIR (accuracy, schedule: several; schedule draws what those runs used)")
    s.add_argument("-o", "--out", default=None, metavar="FILE",
                   help="output file, .png, .pdf or .svg (default: KIND.png in the current folder)")
    s.add_argument("--dpi", type=int, default=150, metavar="N", help="PNG resolution (default: 150)")
    s.add_argument("--view", default=DEFAULT_VIEW, metavar="{survivors,all,relative}",
                   help="gradients of: survivors (unpruned weights), all (pruned as zeros), relative (|g|/|w|) "
                        f"(default: {DEFAULT_VIEW}, as every verb)")
    s.add_argument("--window", default=DEFAULT_WINDOW, metavar="{all,last}",
                   help=f"all epochs of each round, or only the last epoch (default: {DEFAULT_WINDOW}, as every verb)")
    s.add_argument("--layer", default=None, metavar="NAME",
                   help="histograms/spread: one layer (default: pooled ReLU-fed layers)")
    s.add_argument("--absolute", action="store_true",
                   help="spread: quantile bands of |g| per round on a log axis instead of ratios to round 0")
    s.add_argument("--layers", default=None, metavar="LIST", help="narrowing: comma-separated layers (default: all)")
    s.add_argument("--statistic", default="std", metavar="NAME",
                   help="narrowing/calibration: std, meanabs, iqr, mad, normal, laplace, t or gennorm (default: std)")
    s.add_argument("--gamma", type=float, default=1.0, metavar="X",
                   help="calibration: max_lr ~ scale^-gamma (default: 1)")
    s.add_argument("--presets", default="resnet20", metavar="LIST",
                   help="calibration: released SILO presets to show, comma-separated (default: resnet20)")
    s.add_argument("--metric", default="test_acc", metavar="{test_acc,val_acc}",
                   help="accuracy: test_acc or val_acc (default: test_acc)")
    s.add_argument("--labels", default=None, metavar="LIST",
                   help="accuracy: comma-separated legend labels, one per run (default: the run names)")
    s.add_argument("--schedules", default="silo,lth,clr", metavar="LIST",
                   help="schedule: comma-separated schedule names, '' for none (default: silo,lth,clr)")
    s.add_argument("--schedule-file", action="append", default=None, metavar="FILE",
                   help="schedule: a schedule parameters file (JSON/YAML, e.g. from `gradscope calibrate -o`); repeatable")
    s.add_argument("--rounds", type=int, default=10, metavar="N", help="schedule: pruning rounds (default: 10)")
    s.add_argument("--prune-rate", type=float, default=0.2, metavar="P",
                   help="schedule: fraction pruned per round (default: 0.2)")
    s.add_argument("--steps", type=int, default=100, metavar="N", help="schedule: steps per round drawn (default: 100)")
    s.add_argument("--peaks", action="store_true", help="schedule: plot max_lr per round instead of the per-step LR")
    s.add_argument("--probe", default=None, metavar="NAME", help="probes: one predictor (e.g. sharpness, lr-range:steep), or "
                   "lr-range for the range test's curves (default: the implied max_lr of every recorded probe)")
    s.add_argument("--probes-at", choices=("start", "epoch1"), default="start",
                   help="probes: measured at the round's start or after its first epoch (default: start)")
    s.set_defaults(func=_cmd_plot)

    s = subparsers.add_parser("report", help="self-contained HTML report of one or more runs")
    s.add_argument("runs", nargs="+", metavar="RUN", help="RUN.h5 or RUN_DIR")
    s.add_argument("-o", "--out", default="report.html", metavar="FILE",
                   help="output HTML file (default: report.html in the current folder)")
    s.add_argument("--title", default=None, metavar="TEXT",
                   help="the page's title (default: 'gradscope report: ' and the run names)")
    s.add_argument("--bootstrap", type=_replicates, default=200, metavar="N",
                   help="bootstrap resamples for the confidence bands (default: 200)")
    s.add_argument("--view", default=DEFAULT_VIEW, metavar="{survivors,all,relative}",
                   help="gradients of: survivors (unpruned weights), all (pruned as zeros), relative (|g|/|w|) "
                        f"(default: {DEFAULT_VIEW}, as every verb)")
    s.add_argument("--window", default=DEFAULT_WINDOW, metavar="{all,last}",
                   help=f"all epochs of each round, or only the last epoch (default: {DEFAULT_WINDOW}, as every verb)")
    s.set_defaults(func=_cmd_report)
