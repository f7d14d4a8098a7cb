"""Does measured gradient spread predict the best max_lr? (issue 12)

For each configuration: a profile run (fixed-peak lth schedule at max_lr 0.05, gradients
recorded under every view) and a powered Oracle (7 max_lr x 3 seeds per round from the same
start states' recipe, grid extended at edges) on the same data, model and pruning. Then, per
statistic s: implied max_lr(k) = opt(0) * (s_0 / s_k)^gamma (gamma = 1, and gamma fitted on the
other configurations' rounds), scored against the Oracle's optimum and CI; baselines: the
SILO ResNet-20 S-curve rescaled to opt(0), and a constant opt(0).

    python analysis/predictor_study.py run [--configs digits-small_cnn,...] [--workers N]
    python analysis/predictor_study.py analyse        # tables -> analysis/results/, figures -> docs/img/
    python analysis/predictor_study.py all

Runs go to analysis/runs/ (git-ignored, resumable: rerunning continues); results and figures
are committed. Uses only gradscope's public API and CLI.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
RESULTS = HERE / "results"
CIFAR = HERE.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"

COMMON = ["--schedule", "lth", "--prune-rate", "0.2", "--seed", "0", "--no-progress"]
PROFILE_LR = 0.05
GRID = "0.0125,0.0198,0.0315,0.05,0.0794,0.126,0.2"  # geometric, 0.05 / 4 .. 0.05 * 4

CONFIGS: dict[str, list[str]] = {
    "digits-small_cnn": ["--dataset", "digits", "--model", "small_cnn", "--rounds", "8", "--epochs", "5",
                         "--val-size", "400", "--batch-size", "64"],
    "digits-lenet_300_100": ["--dataset", "digits", "--model", "lenet_300_100", "--rounds", "8", "--epochs", "5",
                             "--val-size", "400", "--batch-size", "64"],
    "cifar10-resnet20": ["--dataset", "cifar10", "--data-root", str(CIFAR), "--model", "resnet20",
                         "--train-subset", "5000", "--val-size", "2000", "--test-subset", "2000",
                         "--rounds", "7", "--epochs", "4"],
    "cifar10-vgg11": ["--dataset", "cifar10", "--data-root", str(CIFAR), "--model", "vgg11",
                      "--train-subset", "5000", "--val-size", "2000", "--test-subset", "2000",
                      "--rounds", "7", "--epochs", "4"],
}
PROFILE_EXTRA = ["--record-preset", "full", "--sample-k", "0"]  # survivors + relative + fixed population
ORACLE_EXTRA = ["--grid", GRID, "--seeds", "3", "--max-extend", "3"]


def run(names: list[str], workers: int, threads: int | None, runs: Path, data_root: str | None = None,
        kinds: tuple[str, ...] = ("profile", "oracle")) -> None:
    """Profile and Oracle of each configuration (each command resumes where it stopped)."""
    for name in names:
        base = CONFIGS[name] + COMMON + (["--threads", str(threads)] if threads else [])
        if data_root and "--data-root" in base:
            base[base.index("--data-root") + 1] = data_root
        for kind, extra in (("profile", ["--max-lr", str(PROFILE_LR), *PROFILE_EXTRA]),
                            ("oracle", ["--max-lr", str(PROFILE_LR), *ORACLE_EXTRA, "--workers", str(workers)])):
            if kind not in kinds:
                continue
            run_command([kind, *base, *extra, "--out", str(runs / name / kind)], f"{name} {kind}")


def run_command(argv: list[str], label: str) -> None:
    """One gradscope command in this process, timed; a failing one stops the study."""
    from gradscope.cli import main

    t0 = time.perf_counter()
    code = main(argv)
    print(f"[{label}] exit {code} in {time.perf_counter() - t0:.0f} s", flush=True)
    if code:
        sys.exit(code)


def main_cli(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=("run", "analyse", "all"))
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated (default: all)")
    p.add_argument("--workers", type=int, default=1, help="Oracle candidate processes (default: 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--runs", default=str(RUNS), help="where the runs live (default: analysis/runs)")
    p.add_argument("--data-root", default=None, help="CIFAR-10 archive or folder (default: ../shared/data/...)")
    p.add_argument("--only", choices=("profile", "oracle"), default=None, help="run only this kind")
    ns = p.parse_args(argv)
    names = [n for n in ns.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
    if ns.stage in ("run", "all"):
        run(names, ns.workers, ns.threads, Path(ns.runs), ns.data_root,
            (ns.only,) if ns.only else ("profile", "oracle"))
    if ns.stage in ("analyse", "all"):
        from predictor_analysis import analyse  # noqa: PLC0415 - beside this script
        analyse(names, Path(ns.runs), RESULTS)


if __name__ == "__main__":
    main_cli()
