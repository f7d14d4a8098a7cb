"""Wall time of the default jobs (`gradscope prune`, `gradscope profile` with no flags) vs 60 s.

    .venv/bin/python bench/bench_default_job.py
Runs each in a fresh temporary run directory (the digits cache is warm after the first).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], out: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gradscope", *cmd, "--out", out, "--no-progress"],
                   check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        for name in ("prune", "profile"):
            t = timed([name], os.path.join(d, name))
            print(f"gradscope {name:8s} (defaults): {t:6.1f} s   target < 60 s   ratio {t / 60:.2f}")


if __name__ == "__main__":
    main()
