"""Wall time of the default jobs (`gradscope prune`, `gradscope profile` with no flags) vs 60 s.

    .venv/bin/python bench/bench_default_job.py
    .venv/bin/python bench/bench_default_job.py --smoke   # prune, 1 round of 128 images: checks it runs
Runs each in a fresh temporary run directory (the digits cache is warm after the first).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], out: str) -> float:
    """Wall time of one ``gradscope`` command (a fresh process)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gradscope", *cmd, "--out", out, "--no-progress"],
                   check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="only prune, 1 round of 1 epoch on 128 images")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        if a.smoke:
            flags = ["--rounds", "1", "--epochs", "1", "--train-subset", "128", "--cache-dir", os.path.join(d, "c")]
            t = timed(["prune", *flags], os.path.join(d, "prune"))
            print(f"gradscope prune (smoke: 1 round, 128 images): {t:6.1f} s (wall time, a fresh process)")
            return
        for name in ("prune", "profile"):
            t = timed([name], os.path.join(d, name))
            print(f"gradscope {name:8s} (defaults): {t:6.1f} s   target < 60 s   ratio {t / 60:.2f}")


if __name__ == "__main__":
    main()
