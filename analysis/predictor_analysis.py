"""Tables and figures of the predictor study (see predictor_study.py): per configuration,
each candidate statistic's implied max_lr per round against the powered Oracle's optimum.

Every number written here is labelled with its statistic, view and window; rounds whose
Oracle optimum is not interior (a grid edge, or flat) are counted but not scored.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from gradscope import GradscopeError
from gradscope.fit import fit_run
from gradscope.schedules import get_schedule, planned_round_info
from gradscope.store import open_run
from gradscope.train.oracle import oracle_slope, oracle_summary

# (name, how it is measured) — all pooled over the recorded (ReLU-fed) layers
STATISTICS = {
    "survivors std, all windows": ("survivors", "all", "std"),
    "survivors std, last window": ("survivors", "last", "std"),
    "all-weights std (papers' view)": ("all", "all", "std"),
    "relative |g|/|w|, mean": ("relative", "all", "mean_abs"),
    "Laplace scale (survivors)": ("survivors", "all", "laplace"),
    "Student-t scale (survivors)": ("survivors", "all", "t"),
    "fixed-population rms": ("population", "all", "rms"),
}
BASELINES = ("constant max_lr", "SILO ResNet-20 preset")
ALLR = "ALLR norm drop (unclipped)"


def measure(profile: Path) -> pd.DataFrame:
    """Per round: sparsity, norm drop, and each statistic's value (scale, not yet a ratio)."""
    h5 = profile / "run.h5"
    rows = json.loads((profile / "rounds.json").read_text())
    out = pd.DataFrame({"round": [r["round"] for r in rows], "sparsity": [r["sparsity"] for r in rows],
                        "norm_drop": [r.get("norm_drop") for r in rows]}).set_index("round")
    with open_run(h5) as r:
        views = set(r.views()) | {"all"}
        for name, (view, window, stat) in STATISTICS.items():
            if view == "population":
                if not r.population_rounds():
                    continue
                pop = r.population()
                pooled = pop[pop["layer"] == "pooled"]
                vals = {}
                for k in sorted(pooled["reference_round"].unique()):
                    p = pooled[pooled["reference_round"] == k].set_index("round")["rms"]
                    vals[int(k)] = (float(p.loc[0]), float(p.loc[k]))  # same weights: round 0 vs round k
                out[name] = pd.Series({k: v[1] / v[0] for k, v in vals.items()})  # already a ratio
                continue
            if view not in views:
                continue
            if stat in ("std", "mean_abs"):
                s = r.round_summary(relu_only=True, view=view, window=window).set_index("round")[stat]
                out[name] = s
            else:
                fit = fit_run(r, per="round", models=(stat,), bootstrap=0, store=False, view=view, window=window)
                n = fit.narrowing
                n = n[(n["layer"] == "pooled") & (n["statistic"] == stat)].set_index("round")
                out[name] = n["scale"]
    return out.reset_index()


def oracle_table(oracle: Path) -> pd.DataFrame:
    t = oracle_summary(oracle)
    return t[["round", "sparsity", "status", "optimum", "ci_lo", "ci_hi", "argmax", "cost_h"]]


def implied(meas: pd.DataFrame, opt0: float, gamma: dict[str, float], prune_rate: float = 0.2) -> pd.DataFrame:
    """Each statistic's implied max_lr per round: opt0 * (s_0 / s_k)^gamma (population: its ratio)."""
    out = meas[["round", "sparsity"]].copy()
    for name in STATISTICS:
        if name not in meas:
            continue
        s = meas.set_index("round")[name]
        ratio = s if name == "fixed-population rms" else s / s.loc[0]
        out[name] = (opt0 * ratio ** (-gamma.get(name, 1.0))).to_numpy()
    out["constant max_lr"] = opt0
    silo = get_schedule("silo", preset="resnet20")
    out["SILO ResNet-20 preset"] = [opt0 * silo.peak_lr(planned_round_info(int(k), prune_rate)) / silo.lo
                                    for k in out["round"]]
    nd = meas["norm_drop"].astype(float).to_numpy()
    out[ALLR] = np.where(meas["round"] > 0, opt0 * nd / math.sqrt(prune_rate), opt0)
    return out


def score(pred: pd.DataFrame, orc: pd.DataFrame) -> pd.DataFrame:
    """Per predictor: rounds scored (k >= 1, interior optimum), hit rate in the Oracle's 95 % CI,
    mean |log(pred / optimum)|."""
    m = pred.merge(orc, on="round", suffixes=("", "_oracle"))
    m = m[(m["round"] > 0) & (m["status"] == "interior")]
    rows = []
    for name in [*STATISTICS, *BASELINES, ALLR]:
        if name not in m:
            continue
        p = m[name].astype(float)
        ok = np.isfinite(p) & (p > 0)
        hits = ((p >= m["ci_lo"]) & (p <= m["ci_hi"]))[ok]
        err = np.abs(np.log(p[ok] / m["optimum"][ok]))
        rows.append({"predictor": name, "rounds": int(ok.sum()), "hit_rate": float(hits.mean()) if ok.any() else np.nan,
                     "mean_abs_log_error": float(err.mean()) if ok.any() else np.nan})
    return pd.DataFrame(rows)


def spreads(name: str, meas: pd.DataFrame) -> pd.DataFrame:
    """Per round: each statistic as a ratio to round 0 (< 1 = narrower), beside sqrt(density),
    the factor by which counting pruned weights as zeros shrinks an RMS."""
    m = meas.set_index("round")
    out = pd.DataFrame({"config": name, "sparsity": m["sparsity"], "sqrt_density": np.sqrt(1 - m["sparsity"])})
    for stat in STATISTICS:
        if stat in m:
            out[stat] = m[stat] if stat == "fixed-population rms" else m[stat] / m[stat].loc[0]
    return out.reset_index()


def fit_gamma(pairs: list[tuple[float, float]]) -> float:
    """Least squares gamma through the origin: log(opt_k/opt_0) = gamma * log(s_0/s_k)."""
    x = np.array([a for a, _ in pairs])
    y = np.array([b for _, b in pairs])
    return float((x @ y) / (x @ x)) if len(x) and (x @ x) > 0 else 1.0


def analyse(names: list[str], runs: Path, results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    data = {}
    for name in names:
        prof, orc_dir = runs / name / "profile", runs / name / "oracle"
        if not (prof / "run.h5").exists() or not orc_dir.exists():
            print(f"[{name}] skipped: run it first (predictor_study.py run --configs {name})")
            continue
        meas, orc = measure(prof), oracle_table(orc_dir)
        o0 = orc.set_index("round").loc[0]
        opt0 = float(o0["optimum"]) if o0["status"] == "interior" else float(o0["argmax"])
        data[name] = (meas, orc, opt0)
    # gamma per statistic, fitted on the other configurations' interior rounds (leave one out)
    pairs: dict[str, dict[str, list]] = {}
    for name, (meas, orc, opt0) in data.items():
        m = meas.merge(orc, on="round")
        m = m[(m["round"] > 0) & (m["status"] == "interior")]
        for stat in STATISTICS:
            if stat not in meas:
                continue
            s0 = float(meas.set_index("round")[stat].loc[0]) if stat != "fixed-population rms" else 1.0
            pairs.setdefault(stat, {}).setdefault(name, [])
            for _, row in m.iterrows():
                x = math.log(s0 / row[stat])
                pairs[stat][name].append((x, math.log(row["optimum"] / opt0)))
    all_scores, all_rounds, slopes = [], [], []
    pd.concat([spreads(n, d[0]) for n, d in data.items()], ignore_index=True).to_csv(results / "spreads.csv", index=False)
    for name, (meas, orc, opt0) in data.items():
        loo = {stat: fit_gamma([p for other, ps in by.items() if other != name for p in ps])
               for stat, by in pairs.items()}
        for kind, gamma in (("gamma=1", {}), ("gamma fitted on the other configurations", loo)):
            pred = implied(meas, opt0, gamma)
            sc = score(pred, orc)
            sc.insert(0, "gamma", kind)
            sc.insert(0, "config", name)
            all_scores.append(sc)
            if kind == "gamma=1":
                r = pred.merge(orc, on=["round"], suffixes=("", "_oracle"))
                r.insert(0, "config", name)
                all_rounds.append(r)
        try:
            sl = oracle_slope(runs / name / "oracle")
            slopes.append({"config": name, "verdict": sl.verdict, "factor_per_unit_sparsity": sl.factor_per_unit,
                           "ci_lo": math.exp(sl.lo), "ci_hi": math.exp(sl.hi), "rounds": sl.n_rounds,
                           "oracle_cost_h": float(orc["cost_h"].sum())})
        except GradscopeError as e:
            slopes.append({"config": name, "verdict": f"untestable ({e})", "oracle_cost_h": float(orc["cost_h"].sum())})
    if not data:
        raise SystemExit("no configuration has both runs yet")
    scores = pd.concat(all_scores, ignore_index=True)
    rounds = pd.concat(all_rounds, ignore_index=True)
    slopes_df = pd.DataFrame(slopes)
    scores.to_csv(results / "scores.csv", index=False)
    rounds.to_csv(results / "rounds.csv", index=False)
    slopes_df.to_csv(results / "slopes.csv", index=False)
    print(slopes_df.to_string(index=False))
    print(scores.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    plot(rounds, results)


def plot(rounds: pd.DataFrame, results: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(rounds["config"]))
    fig, axes = plt.subplots(1, len(configs), figsize=(4.2 * len(configs), 3.6), squeeze=False)
    show = ["survivors std, all windows", "all-weights std (papers' view)", "relative |g|/|w|, mean",
            "fixed-population rms", "SILO ResNet-20 preset", "constant max_lr"]
    styles = ["-o", "-s", "-^", "-v", "--", ":"]
    for ax, name in zip(axes[0], configs):
        r = rounds[rounds["config"] == name]
        inner = r[r["status"] == "interior"]
        ax.errorbar(inner["sparsity"], inner["optimum"], yerr=[inner["optimum"] - inner["ci_lo"],
                    inner["ci_hi"] - inner["optimum"]], fmt="ko", capsize=3, label="Oracle optimum, 95 % CI")
        edge = r[r["status"] != "interior"]
        ax.plot(edge["sparsity"], edge["argmax"], "kx", label="Oracle: edge/flat (grid argmax)")
        for s, st in zip(show, styles):
            if s in r:
                ax.plot(r["sparsity"], r[s], st, ms=3, lw=1, label=s)
        ax.set_yscale("log")
        ax.set_xlabel("sparsity (fraction of prunable weights pruned)")
        ax.set_ylabel("max_lr")
        ax.set_title(name, fontsize=9)
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Does a measured statistic predict the Oracle's best max_lr? (implied max_lr, gamma = 1)", fontsize=10)
    fig.tight_layout()
    fig.savefig(results / "predictor_study.png", dpi=150, bbox_inches="tight")
    plt.close(fig)
