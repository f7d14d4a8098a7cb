"""Fit the same histograms with this checkout's gradscope and with git revision REV's, and print
the largest relative difference per table and column: the check behind "same estimates as before"
for a change to gradscope/fit/ (issue 23 asked for 1e-6).

    .venv/bin/python scripts/compare_fit_versions.py REV [--rows 2000] [--bootstrap 200]

Inputs: the first --rows of bench/bench_fit.py's t(4) histograms (with moments), then the tests'
mixed histograms (t 1.5/4/30, gennorm 0.6/1.5/4, normal at scales reaching past the edges, 2 rows
sharing a location) and 300 t(4)/gennorm(1.5) histograms. REV is unpacked with `git archive`
into a temporary folder; each side fits in its own process (same inputs, same seed).
"""
from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_FIT = r"""
import pickle, sys
code, inp, out, boot = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, code)
import gradscope
assert gradscope.__file__.startswith(code), gradscope.__file__
from gradscope.fit import fit_histograms
d = pickle.load(open(inp, "rb"))
res = {}
for name, (c, edges, under, over, mom) in d.items():
    res[name] = fit_histograms(c, edges, under, over, moments=mom, bootstrap=boot)
pickle.dump(res, open(out, "wb"))
"""


def inputs(rows: int) -> dict:
    """{name: (counts, edges, under, over, moments or None)}."""
    import numpy as np
    from scipy import stats

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    sys.path.insert(0, ROOT)
    from bench_fit import synthetic_rows  # noqa: PLC0415
    from gradscope.fit.synthetic import log_edges  # noqa: PLC0415

    layers = max(1, min(20, rows // 50))
    run, edges = synthetic_rows(layers, max(1, rows // (20 * layers)) + 1, 20)
    counts, _, idx = run.histograms()
    mom = run.moments()
    n = min(rows, len(idx))
    out = {"bench": (counts[:n], edges, idx["under"].to_numpy(float)[:n], idx["over"].to_numpy(float)[:n],
                     {k: mom[k].to_numpy(float)[:n] for k in ("count", "sum", "sumsq", "sumabs", "sum3", "sum4")})}
    e = log_edges(0.1, n_half=101, min_abs=1e-6)
    ext = np.concatenate([[-np.inf], e, [np.inf]])
    rng = np.random.default_rng(0)
    dists = [stats.t(1.5), stats.t(4), stats.t(30), stats.gennorm(0.6), stats.gennorm(1.5), stats.gennorm(4),
             stats.norm()]
    mixed = np.array([rng.multinomial(100_000, np.diff(dists[i % 7].cdf(ext / (0.0005, 0.004, 0.03)[i % 3])))
                      for i in range(42)])
    two = np.array([rng.multinomial(200_000, np.diff((stats.t(4) if i % 2 else stats.gennorm(1.5)).cdf(
        ext / (0.004 * 1.004**i)))) for i in range(300)])
    for name, c in (("mixed", mixed), ("t_gennorm", two)):
        out[name] = (c[:, 1:-1], e, c[:, 0].astype(float), c[:, -1].astype(float), None)
    return out


def differences(a, b) -> dict:
    """{column: largest relative difference (float) or a word} over the columns that differ."""
    import numpy as np

    out = {}
    for c in a.columns:
        if c not in b:
            out[c] = "missing"
            continue
        if a[c].dtype.kind not in "fiub" or b[c].dtype.kind not in "fiub":
            n = int((a[c].astype(str) != b[c].astype(str)).sum())
            if n:
                out[c] = f"{n} rows differ"
            continue
        x, y = a[c].to_numpy(float), b[c].to_numpy(float)
        if not np.array_equal(np.isfinite(x), np.isfinite(y)):
            out[c] = f"finite in {int((np.isfinite(x) != np.isfinite(y)).sum())} rows on one side only"
            continue
        f = np.isfinite(x) & (x != 0)
        d = float(np.max(np.abs(x[f] - y[f]) / np.abs(x[f]))) if f.any() else 0.0
        if d > 0:
            out[c] = d
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="git revision to compare with (e.g. a commit, HEAD~3, main)")
    ap.add_argument("--rows", type=int, default=2000, help="bench histograms (default: 2000)")
    ap.add_argument("--bootstrap", type=int, default=200, help="replicates (default: 200)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        old = os.path.join(tmp, "old")
        os.mkdir(old)
        arch = subprocess.run(["git", "-C", ROOT, "archive", a.rev, "gradscope"], capture_output=True)
        if arch.returncode:
            print(f"compare_fit_versions: error: git archive {a.rev}: {arch.stderr.decode().strip()}", file=sys.stderr)
            return 2
        subprocess.run(["tar", "-x", "-C", old], input=arch.stdout, check=True)
        inp = os.path.join(tmp, "inputs.pkl")
        with open(inp, "wb") as f:
            pickle.dump(inputs(a.rows), f)
        res = {}
        for side, code in (("old", old), ("new", ROOT)):
            out = os.path.join(tmp, f"{side}.pkl")
            subprocess.run([sys.executable, "-c", _FIT, code, inp, out, str(a.bootstrap)], check=True)
            with open(out, "rb") as f:
                res[side] = pickle.load(f)
    worst = 0.0
    for name, old_df in res["old"].items():
        d = differences(old_df, res["new"][name])
        nums = sorted(((v, c) for c, v in d.items() if isinstance(v, float)), reverse=True)
        words = {c: v for c, v in d.items() if not isinstance(v, float)}
        worst = max([worst] + [v for v, _ in nums])
        top = ", ".join(f"{c} {v:.1e}" for v, c in nums[:5]) or "none"
        print(f"{name} ({len(old_df)} histograms): largest relative differences vs {a.rev}: {top}"
              + (f"; {words}" if words else ""))
    print(f"largest relative difference over every numeric column: {worst:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
