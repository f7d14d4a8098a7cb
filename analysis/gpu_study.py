"""The predictor study's CIFAR-10 configurations on one GPU machine, unattended and resumable.

Profiles run first (one process each), then each configuration's Oracle in its own process
with a persistent pool of worker processes that share the GPU and run the candidate jobs
(gradscope's Ray executor does the same on a cluster; this script is for a lent machine without
Ray). Rerunning continues every run where it stopped. Stops starting new work after
``--deadline`` seconds so that what finished can be copied back.

    python analysis/gpu_study.py --data data/cifar10-jpeg.tar.xz --runs /tmp/runs --workers 6
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import predictor_study as S  # noqa: E402


def _run_job(job) -> dict:
    return job.run(threads=2)


class PoolExecutor:
    """An Executor (gradscope.train.oracle) over one persistent process pool."""

    def __init__(self, workers: int):
        self.pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))

    def run(self, jobs, log) -> None:
        log(f"  oracle round {jobs[0].round}: {len(jobs)} candidates on the pool")
        list(self.pool.map(_run_job, jobs))


def oracle(name: str, runs: Path, data: str, workers: int, epochs: str | None) -> int:
    """One configuration's powered Oracle (called in a child process)."""
    from gradscope.cli import run_config_from_args
    from gradscope.cli import build_parser
    from gradscope.train import PruningRun
    from gradscope.train.oracle import OracleRounds, parse_grid

    argv = ["oracle", *config_args(name, data, epochs), "--max-lr", str(S.PROFILE_LR), "--out", str(runs / name / "oracle")]
    ns = build_parser().parse_args(argv + ["--grid", S.GRID])
    cfg = run_config_from_args(ns)
    rounds = OracleRounds(parse_grid(S.GRID), seeds=3, executor=PoolExecutor(workers), max_extend=3)
    PruningRun(cfg, rounds=rounds).run()
    return 0


OVERRIDES: dict[str, str] = {}  # flag -> value, from --set (quick checks of this script)


def config_args(name: str, data: str, epochs: str | None) -> list[str]:
    a = list(S.CONFIGS[name] + S.COMMON)
    a[a.index("--data-root") + 1] = data
    if epochs:
        a[a.index("--epochs") + 1] = epochs
    for flag, value in OVERRIDES.items():
        a[a.index(flag) + 1] = value
    return a


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--runs", required=True)
    p.add_argument("--configs", default="cifar10-resnet20,cifar10-vgg11")
    p.add_argument("--workers", type=int, default=6, help="candidate processes per configuration")
    p.add_argument("--epochs", default=None, help="override the configurations' epochs per round")
    p.add_argument("--deadline", type=float, default=1e9, help="seconds; no new configuration after it")
    p.add_argument("--set", action="append", default=[], help="FLAG=VALUE override, e.g. --set=--rounds=2")
    p.add_argument("--oracle-child", default=None, help=argparse.SUPPRESS)
    ns = p.parse_args()
    OVERRIDES.update(dict(x.split("=", 1) for x in ns.set))
    runs = Path(ns.runs)
    if ns.oracle_child:
        sys.exit(oracle(ns.oracle_child, runs, ns.data, ns.workers, ns.epochs))
    t0 = time.time()
    names = [n for n in ns.configs.split(",") if n]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    from gradscope.data import load_dataset
    load_dataset("cifar10", ns.data)  # decode once into the cache; every process reads the cache
    print(f"data cached in {time.time() - t0:.0f} s", flush=True)
    profs = [subprocess.Popen([sys.executable, "-m", "gradscope", "profile", *config_args(n, ns.data, ns.epochs),
                               "--max-lr", str(S.PROFILE_LR), *S.PROFILE_EXTRA, "--out", str(runs / n / "profile")],
                              env=env) for n in names]
    orcs = [subprocess.Popen([sys.executable, __file__, "--data", ns.data, "--runs", ns.runs, "--workers",
                              str(ns.workers), "--oracle-child", n] + (["--epochs", ns.epochs] if ns.epochs else [])
                             + [f"--set={x}" for x in ns.set], env=env) for n in names]
    for name, pr in zip(names * 2, profs + orcs):
        remaining = max(1.0, ns.deadline - (time.time() - t0))
        try:
            pr.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            pr.kill()
            print(f"[{name}] stopped at the deadline (resumable)", flush=True)
        print(f"[{name}] exit {pr.returncode} at {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
