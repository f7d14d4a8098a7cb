"""Oracle executors on one machine: sequential vs process pool vs Ray, wall time of the whole command.

A small digits Oracle (small_cnn, 2 rounds x 1 epoch, 4 max_lr values x 2 seeds, no grid
extension), each variant a fresh ``gradscope oracle`` process on a fresh --out; repeats are
interleaved and medians compared. "ray (warm)" joins a Ray instance started once beforehand
(--ray-address), i.e. what a cluster user pays; "ray (cold)" starts Ray inside the command.

    python bench/bench_oracle_exec.py [--repeats 3] [--variants seq,batched,ray-cold,ray-warm] [--smoke]

"batched" (``--batched 8``) trains a round's 8 candidates as one vmapped model in the process.
``--smoke``: one repeat of seq and batched on a 1-round, 3-candidate Oracle of 128 images
(seconds; checks that the benchmark runs, measures nothing).

"pool" (``--workers 2``) was the process pool until commit 5af33c4 (measured there, 2.5x slower
than sequential on 2 cores); ``--workers 2`` now means two at a time on a local Ray instance.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ["oracle", "--dataset", "digits", "--model", "small_cnn", "--epochs", "1", "--threads", "1",
        "--no-progress", "--batch-size", "64", "--rounds", "2", "--schedule", "lth",
        "--grid", "0.02,0.05,0.1,0.2", "--seeds", "2", "--max-extend", "0"]


def run(variant: str, work: Path, i: int, address: str | None) -> float:
    out = work / f"{variant}-{i}"
    extra = {"seq": ["--workers", "1", "--batched", "1"], "pool": ["--workers", "2"], "ray-cold": ["--ray"],
             "ray-warm": ["--ray", "--ray-address", str(address)], "batched": ["--batched", "8"]}[variant]
    cmd = [sys.executable, "-m", "gradscope", *BASE, "--cache-dir", str(work / "cache"), "--out", str(out), *extra]
    if SMOKE:
        cmd += ["--rounds", "1", "--grid", "0.02,0.05,0.1", "--seeds", "1", "--train-subset", "128"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{variant} failed:\n{r.stdout}\n{r.stderr}")
    shutil.rmtree(out)
    return dt


SMOKE = False


def main() -> None:
    global SMOKE
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="seq,batched,ray-cold,ray-warm")
    ap.add_argument("--smoke", action="store_true", help="seconds-long check that the benchmark runs")
    a = ap.parse_args()
    if a.smoke:
        SMOKE, a.repeats, a.variants = True, 1, "seq,batched"
    variants = a.variants.split(",")
    work = Path(tempfile.mkdtemp(prefix="bench-oracle-"))
    address = None
    if "ray-warm" in variants:
        import ray  # noqa: PLC0415

        os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
        ray.init(include_dashboard=False)
        address = ray.get_runtime_context().gcs_address
    if not SMOKE:
        run("seq", work, -1, address)  # warm the dataset cache and the file system
    times: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(a.repeats):
        for v in variants:
            times[v].append(run(v, work, i, address))
            print(f"repeat {i} {v}: {times[v][-1]:.1f} s", flush=True)
    seq = statistics.median(times["seq"]) if "seq" in times else None
    what = ("smoke: 1 round x 1 epoch, 3 candidates, 128 images" if SMOKE else
            "2 rounds x 1 epoch, 4 max_lr x 2 seeds = 16 candidates")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\ndigits Oracle, {what}; {os.cpu_count()} cores (shared machine, load average {load:.1f}); "
          f"wall time of the command, median of {a.repeats} interleaved repeats")
    print(f"{'executor':<10} {'median s':>9} {'min s':>7} {'vs seq':>7}")
    for v in variants:
        m = statistics.median(times[v])
        print(f"{v:<10} {m:9.1f} {min(times[v]):7.1f} {(m / seq if seq else float('nan')):7.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
