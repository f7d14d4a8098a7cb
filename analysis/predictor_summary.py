"""Pool the predictor study's results (analysis/results/<set>/rounds.csv, slopes.csv) into the
tables and figure of docs/findings.md.

Per predictor, over every scored round (k >= 1, interior Oracle optimum) of every
configuration and replicate: mean |log(predicted / optimum)| and its paired difference to a
constant max_lr (negative = better than constant), each with a 95 % bootstrap CI that
resamples whole runs (configuration x replicate), since rounds of one run share a trajectory.
Per view: the spread at the last round as a ratio to round 0, beside sqrt(density).

    python analysis/predictor_summary.py          # -> analysis/results/summary_*.csv, docs/img/predictor_study.png
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from predictor_analysis import ALLR, BASELINES, STATISTICS  # noqa: E402

RESULTS = HERE / "results"
IMG = HERE.parent / "docs" / "img"
PREDICTORS = [*STATISTICS, *BASELINES, ALLR]
BOOT = 4000


def load() -> pd.DataFrame:
    """Every set's rounds.csv, with a 'run' column (set/config)."""
    frames = []
    for f in sorted(RESULTS.glob("*/rounds.csv")):
        d = pd.read_csv(f)
        d.insert(0, "set", f.parent.name)
        d.insert(1, "run", f.parent.name + "/" + d["config"])
        frames.append(d)
    if not frames:
        raise SystemExit(f"no {RESULTS}/*/rounds.csv: run predictor_study.py first")
    return pd.concat(frames, ignore_index=True)


def slopes() -> pd.DataFrame:
    frames = []
    for f in sorted(RESULTS.glob("*/slopes.csv")):
        d = pd.read_csv(f)
        d.insert(0, "set", f.parent.name)
        frames.append(d)
    return pd.concat(frames, ignore_index=True)


def _cluster_boot(values: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean over all rounds and its 95 % CI, resampling runs (clusters) with replacement."""
    keys = list(values)
    point = float(np.mean(np.concatenate([values[k] for k in keys])))
    stats = []
    for _ in range(BOOT):
        pick = rng.integers(0, len(keys), len(keys))
        stats.append(np.mean(np.concatenate([values[keys[i]] for i in pick])))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return point, float(lo), float(hi)


def scores(rounds: pd.DataFrame, subset: str = "all") -> pd.DataFrame:
    """Per predictor: scored rounds, hit rate in the Oracle's CI, mean |log error| and its
    paired difference to the constant max_lr, with cluster-bootstrap CIs."""
    rng = np.random.default_rng(0)
    m = rounds[(rounds["round"] > 0) & (rounds["status"] == "interior")]
    rows = []
    for name in PREDICTORS:
        if name not in m:
            continue
        ok = m[np.isfinite(m[name]) & (m[name] > 0)]
        if ok.empty:
            continue
        err = np.abs(np.log(ok[name] / ok["optimum"]))
        base = np.abs(np.log(ok["constant max_lr"] / ok["optimum"]))
        by_run = {r: err[ok["run"] == r].to_numpy() for r in ok["run"].unique()}
        diff = {r: (err - base)[ok["run"] == r].to_numpy() for r in ok["run"].unique()}
        e, elo, ehi = _cluster_boot(by_run, rng)
        d, dlo, dhi = _cluster_boot(diff, rng)
        hits = ((ok[name] >= ok["ci_lo"]) & (ok[name] <= ok["ci_hi"])).mean()
        rows.append({"runs": subset, "predictor": name, "rounds": len(ok), "hit_rate": round(float(hits), 3),
                     "mean_abs_log_error": e, "err_ci_lo": elo, "err_ci_hi": ehi,
                     "vs_constant": d, "vs_constant_ci_lo": dlo, "vs_constant_ci_hi": dhi})
    return pd.DataFrame(rows)


def spreads(rounds: pd.DataFrame) -> pd.DataFrame:
    """Per run, last round: each statistic's spread ratio to round 0 (from the implied max_lr
    at gamma = 1: ratio = opt0 / implied), beside sqrt(density)."""
    rows = []
    for run, d in rounds.groupby("run", sort=False):
        d = d.set_index("round").sort_index()
        k = d.index.max()
        row = {"run": run, "round": int(k), "sparsity": float(d.loc[k, "sparsity"]),
               "sqrt_density": float(np.sqrt(1 - d.loc[k, "sparsity"]))}
        for name in STATISTICS:
            if name in d and np.isfinite(d.loc[k, name]):
                row[name] = float(d.loc[0, name] / d.loc[k, name])
        rows.append(row)
    return pd.DataFrame(rows)


def plot(rounds: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(dict.fromkeys(rounds["run"]))
    cols = 3
    nrows = -(-len(runs) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.0 * cols, 3.3 * nrows), squeeze=False)
    show = [("survivors std, all windows", "-o"), ("all-weights std (papers' view)", "-s"),
            ("relative |g|/|w|, mean", "-^"), ("fixed-population rms", "-v"),
            ("SILO ResNet-20 preset", "--"), ("constant max_lr", ":")]
    for ax, run in zip(axes.flat, runs):
        r = rounds[rounds["run"] == run]
        inner = r[r["status"] == "interior"]
        ax.errorbar(inner["sparsity"], inner["optimum"], yerr=[inner["optimum"] - inner["ci_lo"],
                    inner["ci_hi"] - inner["optimum"]], fmt="ko", capsize=3, label="Oracle optimum, 95 % CI")
        edge = r[r["status"] != "interior"]
        if len(edge):
            ax.plot(edge["sparsity"], edge["argmax"], "kx", label="Oracle: edge/flat (grid argmax)")
        for s, st in show:
            if s in r:
                ax.plot(r["sparsity"], r[s], st, ms=3, lw=1, label=s)
        ax.set_yscale("log")
        lo = min(inner["ci_lo"].min(), r["constant max_lr"].min()) / 1.5
        ax.set_ylim(lo, max(inner["ci_hi"].max(), r["constant max_lr"].max()) * 3)
        ax.set_title(run.replace("/", "  "), fontsize=8)
        ax.set_xlabel("sparsity (pruned fraction)", fontsize=8)
        ax.set_ylabel("max_lr", fontsize=8)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    h, lab = axes.flat[0].get_legend_handles_labels()
    fig.legend(h, lab, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle("Implied max_lr (gamma = 1) of each measured statistic vs the Oracle's best max_lr", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    rounds = load()
    sl = slopes()
    sc = pd.concat([scores(rounds), scores(rounds[rounds["set"] != "digits"], "cifar10 only")], ignore_index=True)
    sp = spreads(rounds)
    sl.to_csv(RESULTS / "summary_slopes.csv", index=False)
    sc.to_csv(RESULTS / "summary_scores.csv", index=False)
    sp.to_csv(RESULTS / "summary_spreads.csv", index=False)
    plot(rounds, IMG / "predictor_study.png")
    pd.set_option("display.width", 250)
    fmt = lambda v: f"{v:.3g}"  # noqa: E731
    print(sl.to_string(index=False, float_format=fmt))
    print(sc.to_string(index=False, float_format=fmt))
    print(sp.to_string(index=False, float_format=fmt))


if __name__ == "__main__":
    main()
