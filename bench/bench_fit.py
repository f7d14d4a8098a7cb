"""Benchmark: fit every window of a ResNet-20-sized run (20 layers x 25 rounds x 20 windows
= 10^4 histograms of 201 bins, 4 models, bootstrap 200) with gradscope.fit, and compare
with the naive way (one scipy.optimize call per histogram per model) on a subset, both
timed --repeat times in this one run (medians). Then the equality check: the first --check
histograms fitted again through the cdf reference path (binned._QUADRATURE = False, the
fits as they were before the bin quadrature) and the largest relative difference over every
estimate, CI, log-likelihood and KS distance.

    .venv/bin/python bench/bench_fit.py [--layers 20 --rounds 25 --windows 20 --repeat 3]
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
import gradscope.fit.binned as binned  # noqa: E402
from gradscope.fit import fit_histograms, fit_run  # noqa: E402
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


def max_rel_diff_vs_reference(run, n_rows, bootstrap):
    """Largest relative difference between the fits of the first n_rows histograms and the
    cdf reference path's, over every numeric column (estimates, CIs, log-likelihoods, KS)."""
    counts, edges, idx = run.histograms()
    mom = run.moments()
    n = min(n_rows, len(idx))
    args = (counts[:n], edges, idx["under"].to_numpy(float)[:n], idx["over"].to_numpy(float)[:n])
    kw = {"moments": {k: mom[k].to_numpy(float)[:n] for k in ("count", "sum", "sumsq", "sumabs", "sum3", "sum4")},
          "bootstrap": bootstrap}
    new = fit_histograms(*args, **kw)
    old_flag = binned._QUADRATURE
    binned._QUADRATURE = False
    try:
        ref = fit_histograms(*args, **kw)
    finally:
        binned._QUADRATURE = old_flag
    worst, col = 0.0, None
    for c in ref.select_dtypes("number").columns:
        a, b = ref[c].to_numpy(float), new[c].to_numpy(float)
        if not np.array_equal(np.isfinite(a), np.isfinite(b)):
            return float("inf"), c, n
        f = np.isfinite(a) & (a != 0)
        d = float(np.max(np.abs(b[f] - a[f]) / np.abs(a[f]))) if f.any() else 0.0
        if d > worst:
            worst, col = d, c
    return worst, col, n


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--naive", type=int, default=40, help="histograms fitted the naive way (extrapolated)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each path (medians are printed)")
    ap.add_argument("--check", type=int, default=400, help="histograms compared with the cdf reference path")
    ap.add_argument("--smoke", action="store_true", help="2 layers x 2 rounds x 2 windows, bootstrap 20")
    a = ap.parse_args(argv)
    if a.smoke:
        a.layers, a.rounds, a.windows, a.bootstrap, a.naive, a.repeat, a.check = 2, 2, 2, 20, 2, 1, 8
    run, edges = synthetic_rows(a.layers, a.rounds, a.windows)
    n_hist = a.layers * a.rounds * a.windows
    counts, _, idx = run.histograms()
    walls, cpus, naives = [], [], []
    for _ in range(max(1, a.repeat)):
        t, c = time.perf_counter(), time.process_time()
        res = fit_run(run, per="window", bootstrap=a.bootstrap, store=False)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
        per_hist = naive_per_histogram(counts, idx["under"].to_numpy(), idx["over"].to_numpy(), edges, a.naive)
        naives.append(per_hist * n_hist * 4)  # x4 models, and the 2-parameter ones would cost more
    dt, cpu, naive = (float(np.median(v)) for v in (walls, cpus, naives))
    ok = (res.per_layer["status"] == "ok").mean()
    runs = ", ".join(f"{w:.2f}" for w in walls)
    print(f"fit_run per=window: {n_hist} histograms (+{len(res.pooled)} pooled, + round level), "
          f"4 models, bootstrap {a.bootstrap}: median {dt:.2f} s of {len(walls)} ({runs}; cpu {cpu:.2f} s)  "
          f"({ok:.1%} status ok)")
    print(f"first fit_run in this process (what `gradscope fit` pays: lazy imports, first-touch memory): "
          f"{walls[0]:.2f} s")
    print(f"naive scipy.optimize per histogram (Laplace, extrapolated x4 models): median {naive:.2f} s "
          f"of {len(naives)} ({', '.join(f'{v:.2f}' for v in naives)})")
    if a.check > 0:
        diff, col, n = max_rel_diff_vs_reference(run, a.check, a.bootstrap)
        print(f"max relative difference vs the cdf reference path ({n} histograms, 4 models, every estimate, "
              f"CI, log-likelihood and KS): {diff:.1e} ({col})")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"speed-up ratio (naive / vectorised, lower bound): {naive / dt:.1f}x  "
          f"(load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
