"""Benchmark: fit every window of a ResNet-20-sized run (20 layers x 25 rounds x 20 windows
= 10^4 histograms of 201 bins, 4 models, bootstrap 200) with gradscope.fit, and compare
with the naive way (one scipy.optimize call per histogram per model) on a subset.

    .venv/bin/python bench/bench_fit.py [--layers 20 --rounds 25 --windows 20]
    .venv/bin/python bench/bench_fit.py --smoke      # 8 histograms: checks that it runs
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from scipy import optimize, stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gradscope.fit import fit_run  # noqa: E402
from gradscope.fit.synthetic import SyntheticRun, log_edges  # noqa: E402


def synthetic_rows(layers, rounds, windows, n=200_000, seed=0):
    """Histograms drawn from t(4) with shrinking scales, via multinomial counts (fast)."""
    rng = np.random.default_rng(seed)
    edges = log_edges(0.1, n_half=101, min_abs=1e-6)  # 202 edges, 201 bins
    ext = np.concatenate([[-np.inf], edges, [np.inf]])
    rows = []
    for k in range(rounds):
        for li in range(layers):
            s = 0.01 * (1 + 0.1 * li) * 0.97**k
            p = np.diff(stats.t.cdf(ext / s, 4))
            c = rng.multinomial(n, p / p.sum(), size=windows)
            var = s * s * 2.0  # t(4): var = 2 s^2
            for w in range(windows):
                rows.append({"round": k, "epoch": 0, "window": w, "step_start": w, "step_end": w + 1,
                             "layer": f"conv{li}", "counts": c[w, 1:-1], "under": c[w, 0], "over": c[w, -1],
                             "nonfinite": 0, "count": n, "sum": 0.0, "sumsq": n * var, "sumabs": n * s,
                             "sum3": 0.0, "sum4": n * var * var * 10, "min": -1.0, "max": 1.0})
    import pandas as pd

    rd = pd.DataFrame({"round": np.arange(rounds), "sparsity": 1 - 0.8 ** np.arange(rounds),
                       "max_lr": 0.03})
    ly = pd.DataFrame({"layer": [f"conv{i}" for i in range(layers)], "relu_fed": True})
    return SyntheticRun(edges, rows, rd, ly, {"prune": {"prune_rate": 0.2}}), edges


def naive_per_histogram(counts, under, over, edges, m=40):
    """One bounded scipy.optimize per histogram, Laplace only (the approach we avoid)."""
    ext = np.concatenate([[-np.inf], edges, [np.inf]])
    t = time.perf_counter()
    for i in range(m):
        c = np.concatenate([[under[i]], counts[i], [over[i]]])

        def nll(ls):
            p = np.maximum(np.diff(stats.laplace.cdf(ext / np.exp(ls))), 1e-300)
            return -(c * np.log(p)).sum()

        optimize.minimize_scalar(nll, bounds=(np.log(1e-5), np.log(1.0)), method="bounded")
    return (time.perf_counter() - t) / m


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--naive", type=int, default=40, help="histograms fitted the naive way (extrapolated)")
    ap.add_argument("--smoke", action="store_true", help="2 layers x 2 rounds x 2 windows, bootstrap 20")
    a = ap.parse_args(argv)
    if a.smoke:
        a.layers, a.rounds, a.windows, a.bootstrap, a.naive = 2, 2, 2, 20, 2
    run, edges = synthetic_rows(a.layers, a.rounds, a.windows)
    n_hist = a.layers * a.rounds * a.windows
    t = time.perf_counter()
    res = fit_run(run, per="window", bootstrap=a.bootstrap, store=False)
    dt = time.perf_counter() - t
    ok = (res.per_layer["status"] == "ok").mean()
    print(f"fit_run per=window: {n_hist} histograms (+{len(res.pooled)} pooled, + round level), "
          f"4 models, bootstrap {a.bootstrap}: {dt:.1f} s  ({ok:.1%} status ok)")
    counts, _, idx = run.histograms()
    per_hist = naive_per_histogram(counts, idx["under"].to_numpy(), idx["over"].to_numpy(), edges, a.naive)
    naive = per_hist * n_hist * 4  # x4 models, and the 2-parameter ones would cost more
    print(f"naive scipy.optimize per histogram (Laplace, extrapolated x4 models): {naive:.1f} s")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"speed-up ratio (naive / vectorised, lower bound): {naive / dt:.1f}x  (load average {load:.1f})")


if __name__ == "__main__":
    main()
