"""Does the Oracle's best max_lr rise with sparsity, and does any statistic predict it? (issue 19)

The predictor study (predictor_study.py) ran one trajectory per configuration, so its slope
CI held only one trajectory's within-round noise. This study runs several pruning
trajectories (``--seed`` t: initialisation, data order, validation split) per configuration,
each with a profile run (fixed max_lr 0.05, lth schedule, every view recorded) and a powered
Oracle (7 max_lr x 3 seeds per round, grid extended at edges), with the same recipe as the
predictor study. ``extract`` keeps what every table is computed from (per candidate, per
validation example correctness; per round spreads) as small committed files under
analysis/results/calibration/, so ``analyse`` regenerates the tables without the runs.

    python analysis/calibration_study.py run --configs digits-lenet_300_100 --trajectories 0-3
    python analysis/calibration_study.py extract      # runs -> analysis/results/calibration/data/
    python analysis/calibration_study.py analyse      # data -> tables, figure, gradscope's evidence table
    python analysis/calibration_study.py run --only probes2 --threads 1    # sharpness, eps-opt, lr-free
    python analysis/calibration_study.py extract --only probes2   # merge only their records into data/

Runs go to analysis/runs/calibration/ (git-ignored, resumable).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from predictor_study import COMMON, CONFIGS, ORACLE_EXTRA, PROFILE_EXTRA, PROFILE_LR, run_command  # noqa: E402

RUNS = HERE / "runs" / "calibration"
# issue 20's probes, measured at each round's start of a third run with the profile's recipe
# (sharpness went into the second probes run below, at its cheaper setting)
PROBES = {"digits-lenet_300_100": "norm-drop,noise-scale,lr-range",
          "digits-small_cnn": "bn-norm,norm-drop,noise-scale,lr-range"}
# the second probes run (issue 20, part 2): sharpness at its cheaper setting (Lanczos with 6
# vectors, tol 1e-2), McCandlish's eps_opt and D-Adaptation SGD's step, same recipe; `extract
# --only probes2` merges its records into the committed probes.json
PROBES2 = "sharpness,eps-opt,lr-free"
RESULTS = HERE / "results" / "calibration"


def parse_range(s: str) -> list[int]:
    """"0-3" -> [0, 1, 2, 3]; "0,2,5" -> [0, 2, 5]."""
    out: list[int] = []
    for part in s.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def with_seed(args: list[str], seed: int) -> list[str]:
    a = list(args)
    a[a.index("--seed") + 1] = str(seed)
    return a


def run(names: list[str], trajectories: list[int], threads: int | None, runs: Path,
        kinds: tuple[str, ...] = ("profile", "oracle", "probes"), workers: int = 1, data_root: str | None = None) -> None:
    """Profile, probes and Oracle of each configuration x trajectory (each command resumes where it stopped)."""
    for t in trajectories:
        for name in names:
            base = with_seed(CONFIGS[name] + COMMON, t) + (["--threads", str(threads)] if threads else [])
            if data_root and "--data-root" in base:
                base[base.index("--data-root") + 1] = data_root
            for kind, extra in (("profile", ["--max-lr", str(PROFILE_LR), *PROFILE_EXTRA]),
                                ("probes", ["--max-lr", str(PROFILE_LR), "--probes", PROBES.get(name, "cheap"),
                                            "--no-record"]),
                                ("probes2", ["--max-lr", str(PROFILE_LR), "--probes", PROBES2, "--no-record"]),
                                ("oracle", ["--max-lr", str(PROFILE_LR), *ORACLE_EXTRA, "--workers", str(workers), "--no-record"])):
                if kind not in kinds:
                    continue
                run_command(["prune" if kind.startswith("probes") else kind, *base, *extra, "--out",
                             str(runs / name / f"t{t}" / kind)], f"{name} t{t} {kind}")


def main_cli(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=("run", "extract", "analyse"))
    p.add_argument("--configs", default="digits-lenet_300_100,digits-small_cnn", help="comma-separated")
    p.add_argument("--trajectories", default="0-3", help="pruning seeds, e.g. 0-3 or 0,2,5 (default: 0-3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--runs", default=str(RUNS), help="where the runs live (default: analysis/runs/calibration)")
    p.add_argument("--data", default=str(RESULTS / "data"), help="extract: where the extracted data go")
    p.add_argument("--only", choices=("profile", "oracle", "probes", "probes2"), default=None,
                   help="run / extract only this kind (extract --only probes2: merge the second probes run's "
                        "records into the committed data, nothing else)")
    p.add_argument("--data-root", default=None, help="CIFAR-10 archive or folder (default: ../shared/data/...)")
    p.add_argument("--workers", type=int, default=1, help="Oracle candidates at a time (N > 1: Ray; default 1)")
    ns = p.parse_args(argv)
    names = [n for n in ns.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
    if ns.stage == "run":
        kinds = (ns.only,) if ns.only else ("profile", "oracle", "probes")
        run(names, parse_range(ns.trajectories), ns.threads, Path(ns.runs), kinds, workers=ns.workers,
            data_root=ns.data_root)
    elif ns.stage == "extract":
        from calibration_analysis import extract  # noqa: PLC0415
        if ns.only == "probes2":
            from calibration_analysis import extract_probes  # noqa: PLC0415
            extract_probes(Path(ns.runs), Path(ns.data), "probes2")
        elif ns.only:
            p.error("extract --only takes probes2 (the other kinds are extracted together)")
        else:
            extract(Path(ns.runs), Path(ns.data))
    else:
        from calibration_analysis import analyse  # noqa: PLC0415
        analyse(RESULTS)


if __name__ == "__main__":
    main_cli()
