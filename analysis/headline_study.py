"""The headline table (issue 21, item 3): final test accuracy per sparsity for SILO (preset and
calibrated), LTH, LRR, CLR, cosine, FT, ALLR and the Oracle's choice, on the same pruning
trajectories, with CIs over trajectories and paired differences SILO − best baseline.

Recipe: the calibration study's (analysis/calibration_study.py: digits, batch 64, 5 epochs
per round, 400 validation images, global magnitude pruning of 20 % per round) run for 11
rounds (0..10), so the table reaches 89.3 % pruned, Renda et al. 2020's last level. A
trajectory t is one pruning seed (initialisation, data order, validation split); every method
runs on the same t, so differences are paired.

Selection uses validation data only:
- base peak η0 per configuration: the grid value with the highest mean round-0 validation
  accuracy over the calibration study's Oracle trajectories (read from its committed data);
  every fixed-peak baseline uses η0 (FT fine-tunes at round 0's final LR, 0.01·η0);
- "SILO preset": the released ResNet-20 S-curve (lo 0.03 → hi 0.07, β 5, midpoint 0.5, lag 1)
  rescaled to start at η0 (hi = η0·7/3): the papers' shape at this problem's base LR;
- "SILO calibrated": `gradscope calibrate` (the default: survivors, all epochs, std, lo fixed
  at η0) on the trajectory's own 8-round profile run; when its gate does not say "supported",
  gradscope refuses to write a rising curve and the user keeps the constant peak, so the row
  is the LTH run (the status is recorded per trajectory);
- the Oracle's choice: the calibration study's Oracle (7 max_lr × 3 seeds per round, grid
  extended at edges) extended to 11 rounds; its accuracy is the chosen candidate's (chosen
  on validation);
- "best baseline" at a sparsity: the baseline with the highest mean *validation* accuracy
  there (never the test accuracy).
Reported accuracy is the last epoch's test accuracy of each round (no best-epoch selection).

    python analysis/headline_study.py run [--configs ...] [--trajectories 0-7]
    python analysis/headline_study.py extract   # runs -> analysis/results/headline/rounds.csv
    python analysis/headline_study.py analyse   # rounds.csv -> tables (docs/findings.md), figure

Runs go to analysis/runs/headline/ (git-ignored; resumable: a finished run says so and is
skipped). At CIFAR-10 / ResNet-20 scale (Renda et al.'s) see analysis/gpu_headline.sh.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from calibration_study import parse_range, with_seed  # noqa: E402
from predictor_study import (CIFAR, COMMON, CONFIGS as STUDY_CONFIGS, GRID, ORACLE_EXTRA, PROFILE_EXTRA,  # noqa: E402
                             PROFILE_LR, run_command)

RUNS = HERE / "runs" / "headline"
CAL_RUNS = HERE / "runs" / "calibration"
CAL_DATA = HERE / "results" / "calibration" / "data"
RESULTS = HERE / "results" / "headline"
FINDINGS = ROOT / "docs" / "findings.md"
FIGURE = ROOT / "docs" / "img" / "headline.png"
BEGIN, END = ("<!-- headline table: begin (written by analysis/headline_study.py analyse) -->",
              "<!-- headline table: end -->")

ROUNDS = 11
PROFILE_ROUNDS = 8  # the profile SILO is calibrated from (the calibration study's length)
# Renda et al. 2020's CIFAR-10 ResNet-20 recipe (182 epochs per round at full scale; EPOCHS
# shortens it) for the GPU script: full training set, 5,000 validation images, η0 their 0.1.
RENDA_EPOCHS = 182
CONFIGS = {**{n: a for n, a in STUDY_CONFIGS.items() if n.startswith("digits")},
           "cifar10-resnet20-renda": ["--dataset", "cifar10", "--data-root", str(CIFAR), "--model", "resnet20",
                                      "--val-size", "5000", "--batch-size", "128", "--weight-decay", "2e-4",
                                      "--rounds", str(ROUNDS), "--epochs", str(RENDA_EPOCHS)]}
ETA0_FIXED = {"cifar10-resnet20-renda": (0.1, "Renda et al. 2020's lr 0.1")}
LEVELS = (2, 3, 6, 8, 10)  # 36.0, 48.8, 73.8, 83.2, 89.3 % pruned at 20 % per round
CONFIG_NAMES = ("digits-lenet_300_100", "digits-small_cnn")
SILO = ("silo-preset", "silo-cal")
BASELINES = ("lth", "lrr", "clr", "cosine", "finetune", "allr")
METHODS = (*SILO, *BASELINES, "oracle")
LABEL = {"silo-preset": "SILO preset (rescaled to η0)", "silo-cal": "SILO calibrated (gradscope default)",
         "lth": "LTH (warm-up + step, weights rewound)", "lrr": "LRR (LR rewinding)",
         "clr": "CLR (one-cycle, trained weights)", "cosine": "cosine (weights rewound)",
         "finetune": "FT (fine-tune at the final LR)", "allr": "ALLR (BIMP)", "oracle": "Oracle's choice"}
SILO_PRESET_RATIO = 0.07 / 0.03  # released ResNet-20 constants: hi / lo


def base_args(name: str, t: int, threads: int | None) -> list[str]:
    a = with_seed(CONFIGS[name] + COMMON, t)
    a[a.index("--rounds") + 1] = str(ROUNDS)
    return a + (["--threads", str(threads)] if threads else [])


def eta0(name: str, data: Path = CAL_DATA) -> float:
    """The base grid value with the highest mean round-0 validation accuracy over the
    calibration study's Oracle trajectories (validation data only), or the recipe's own LR
    for a configuration the calibration study did not run (ETA0_FIXED)."""
    if name in ETA0_FIXED:
        return ETA0_FIXED[name][0]
    base = np.array([float(v) for v in GRID.split(",")])
    accs = []
    for f in sorted((data / name).glob("t*/oracle.npz")):
        z = np.load(f)
        grid, correct = z["round0_grid"], z["round0_correct"]
        idx = [int(np.argmin(np.abs(grid - v))) for v in base]
        accs.append(correct[idx].mean(axis=(1, 2)))
    if not accs:
        raise SystemExit(f"no calibration-study Oracle data for {name} under {data}")
    return float(base[int(np.argmax(np.mean(accs, axis=0)))])


def method_args(method: str, eta: float) -> list[str]:
    """The prune flags of a fixed (non-Oracle) method at base peak ``eta``."""
    if method == "silo-preset":
        return ["--schedule", "silo", "--lo", repr(eta), "--hi", repr(eta * SILO_PRESET_RATIO)]
    if method == "finetune":
        return ["--schedule", "lth", "--max-lr", repr(eta), "--rewind", "finetune"]
    return ["--schedule", method, "--max-lr", repr(eta)]


def calibrated(name: str, t: int, eta: float, out: Path) -> str:
    """Calibrate SILO from trajectory t's profile run (the default view and window, lo fixed at
    η0); writes out/silo.json when the gate says "supported"; returns the status."""
    from gradscope.calibrate import calibrate_run  # noqa: PLC0415

    prof = CAL_RUNS / name / f"t{t}" / "profile" / "run.h5"
    if not prof.exists():  # a configuration the calibration study did not run: profile it here
        own = out.parent / "profile"
        args = base_args(name, t, None)
        args[args.index("--rounds") + 1] = str(PROFILE_ROUNDS)
        run_command(["profile", *args, "--max-lr", repr(eta), *PROFILE_EXTRA, "--out", str(own)],
                    f"{name} t{t} profile")
        prof = own / "run.h5"
    cal = calibrate_run(prof, lo=eta, fix_lo=True, rounds_planned=ROUNDS)
    out.mkdir(parents=True, exist_ok=True)
    if cal.status == "supported":
        cal.to_file(out / "silo.json")
    r = cal.rise or {}
    (out / "calibration.json").write_text(json.dumps(
        {"status": cal.status, "measured_slope": r.get("measured_slope"), "measured_lo": r.get("measured_lo"),
         "measured_hi": r.get("measured_hi"), "profile": str(prof.relative_to(ROOT) if prof.is_relative_to(ROOT) else prof), "eta0": eta}, indent=1))
    return cal.status


def run(names, trajectories, threads, runs: Path, methods=METHODS) -> None:
    for name in names:
        eta = eta0(name)
        print(f"[{name}] η0 = {eta} (round-0 validation optimum of the calibration study's Oracle grid)", flush=True)
        for t in trajectories:
            base = base_args(name, t, threads)
            for m in methods:
                out = runs / name / f"t{t}" / m
                if m == "oracle":
                    src = CAL_RUNS / name / f"t{t}" / "oracle"
                    if not out.exists() and src.exists():  # extend the calibration study's Oracle
                        shutil.copytree(src, out, symlinks=True)
                    run_command(["oracle", *base, "--max-lr", str(PROFILE_LR), *ORACLE_EXTRA, "--workers", "1",
                                 "--no-record", "--out", str(out)], f"{name} t{t} oracle")
                    continue
                if m == "silo-cal":
                    status = calibrated(name, t, eta, out)
                    if status != "supported":
                        print(f"[{name} t{t} silo-cal] calibrate says {status}: the LTH run stands for it", flush=True)
                        continue
                    extra = ["--schedule", "silo", "--schedule-file", str(out / "silo.json")]
                else:
                    extra = method_args(m, eta)
                run_command(["prune", *base, *extra, "--no-record", "--out", str(out)], f"{name} t{t} {m}")


def _rows(path: Path) -> list[dict]:
    return json.loads((path / "rounds.json").read_text())


def extract(runs: Path, results: Path) -> pd.DataFrame:
    """Every finished run's per-round accuracies -> results/rounds.csv (and η0, calibration status)."""
    out, cal, etas = [], [], []
    for cdir in sorted(p for p in runs.iterdir() if p.is_dir() and p.name in CONFIGS):
        etas.append({"config": cdir.name, "eta0": eta0(cdir.name),
                     "rule": ETA0_FIXED[cdir.name][1] if cdir.name in ETA0_FIXED else
                     "round-0 validation optimum of the calibration study's Oracle grid"})
        for tdir in sorted(cdir.glob("t*"), key=lambda p: int(p.name[1:])):
            status = None
            cj = tdir / "silo-cal" / "calibration.json"
            if cj.exists():
                c = json.loads(cj.read_text())
                status = c["status"]
                cal.append({"config": cdir.name, "trajectory": tdir.name, **{k: c[k] for k in
                            ("status", "measured_slope", "measured_lo", "measured_hi")}})
            for m in METHODS:
                src = tdir / m
                if m == "silo-cal" and status is not None and status != "supported":
                    src = tdir / "lth"
                if not (src / "rounds.json").exists():
                    continue
                for r in _rows(src):
                    if r["round"] >= ROUNDS:
                        continue
                    out.append({"config": cdir.name, "trajectory": tdir.name, "method": m, "round": r["round"],
                                "sparsity": r["sparsity"], "max_lr": r["max_lr"], "val_acc": r["val_acc"],
                                "test_acc": r["test_acc"], "n_val": r.get("n_val"), "n_test": r.get("n_test"),
                                "source": src.name})
    results.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(out)
    df.to_csv(results / "rounds.csv", index=False)
    pd.DataFrame(cal).to_csv(results / "calibration_status.csv", index=False)
    pd.DataFrame(etas).to_csv(results / "eta0.csv", index=False)
    print(f"wrote {results / 'rounds.csv'} ({len(df)} rows)")
    return df


# ----------------------------------------------------------------------------- analysis
def t_ci(x: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval over trajectories (nan when fewer than 2)."""
    x = np.asarray(x, float)
    m = float(np.mean(x)) if len(x) else math.nan
    if len(x) < 2:
        return m, math.nan, math.nan
    h = stats.t.ppf(0.5 + level / 2, len(x) - 1) * np.std(x, ddof=1) / math.sqrt(len(x))
    return m, m - h, m + h


def detectable(sd: float, n: int, power: float = 0.8, level: float = 0.95) -> float:
    """Smallest true paired difference a two-sided t-test over n trajectories detects with ``power``."""
    if n < 2 or not np.isfinite(sd):
        return math.nan
    return float((stats.t.ppf(0.5 + level / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n))


def complete(df: pd.DataFrame) -> pd.DataFrame:
    """Only trajectories in which every method reached the last level (so all rows are paired)."""
    keep = []
    for (cfg, t), g in df.groupby(["config", "trajectory"]):
        have = {m for m, gm in g.groupby("method") if set(LEVELS) <= set(gm["round"])}
        if set(METHODS) <= have:
            keep.append((cfg, t))
    return df[df.set_index(["config", "trajectory"]).index.isin(keep)]


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (cfg, m, k), g in df[df["round"].isin((0, *LEVELS))].groupby(["config", "method", "round"]):
        mean, lo, hi = t_ci(100 * g["test_acc"].to_numpy())
        vmean = 100 * g["val_acc"].mean()
        rows.append({"config": cfg, "method": m, "round": k, "pruned": round(100 * g["sparsity"].mean(), 1),
                     "n": len(g), "test_mean": mean, "test_lo": lo, "test_hi": hi, "val_mean": vmean})
    return pd.DataFrame(rows)


def _diff_row(df, cfg, k, m, ref, pruned, reference) -> dict:
    cur = df[(df.config == cfg) & (df["round"] == k) & (df.method == m)].set_index("trajectory")
    base = df[(df.config == cfg) & (df["round"] == k) & (df.method == ref)].set_index("trajectory")
    d = 100 * (cur["test_acc"] - base["test_acc"]).dropna().to_numpy()
    mean, lo, hi = t_ci(d)
    verdict = ("better" if lo > 0 else "worse" if hi < 0 else "cannot tell") if np.isfinite(lo) else "n < 2"
    if len(d) and np.all(d == 0):
        verdict = "the same runs"  # SILO calibrated where the gate refused every curve: the LTH run stands in
    return {"config": cfg, "round": k, "pruned": pruned, "method": m, "reference": reference, "best_baseline": ref,
            "n": len(d), "diff_mean": mean, "diff_lo": lo, "diff_hi": hi, "verdict": verdict,
            "detectable_80": detectable(float(np.std(d, ddof=1)) if len(d) > 1 else math.nan, len(d))}


def paired_table(df: pd.DataFrame, acc: pd.DataFrame) -> pd.DataFrame:
    """Per level: SILO (each variant) and the Oracle's choice minus the best baseline (by
    validation; reference "best"), and SILO minus LTH, the same recipe at a constant peak
    (reference "lth": what the peak rule alone changes)."""
    rows = []
    for cfg in sorted(df["config"].unique()):
        for k in LEVELS:
            a = acc[(acc.config == cfg) & (acc["round"] == k)].set_index("method")
            best = max(BASELINES, key=lambda b: a.loc[b, "val_mean"])
            pruned = a.loc[best, "pruned"]
            rows += [_diff_row(df, cfg, k, m, best, pruned, "best") for m in (*SILO, "oracle")]
            rows += [_diff_row(df, cfg, k, m, "lth", pruned, "lth") for m in (*SILO, "oracle")]
    return pd.DataFrame(rows)


def _fmt(m: float, lo: float, hi: float, digits: int = 1, sign: bool = False) -> str:
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    if not np.isfinite(lo):
        return f.format(m)
    return f"{f.format(m)} ({f.format(lo)} .. {f.format(hi)})"


def markdown(acc: pd.DataFrame, paired: pd.DataFrame, renda: pd.DataFrame, etas: pd.DataFrame,
             cal: pd.DataFrame) -> str:
    out = []
    for cfg in sorted(acc["config"].unique()):
        a = acc[acc.config == cfg]
        n = int(a["n"].min())
        eta = float(etas.set_index("config").loc[cfg, "eta0"])
        c = cal[cal.config == cfg]
        sup = int((c["status"] == "supported").sum()) if len(c) else 0
        out.append(f"**{cfg}** ({n} trajectories; η0 = {eta:g}; SILO calibrated: gate \"supported\" on {sup} of "
                   f"{len(c)} profiles, the LTH run stands for the others). Test accuracy %, mean (95 % t-CI over "
                   "trajectories), last epoch of each round:\n")
        ks = (0, *LEVELS)
        pr = [a[a["round"] == k]["pruned"].iloc[0] for k in ks]
        out.append("| method | " + " | ".join("dense" if k == 0 else f"{p:.1f} % pruned" for k, p in zip(ks, pr)) + " |")
        out.append("|---" * (len(ks) + 1) + "|")
        for m in METHODS:
            cells = []
            for k in ks:
                r = a[(a.method == m) & (a["round"] == k)]
                cells.append(_fmt(*r[["test_mean", "test_lo", "test_hi"]].iloc[0]) if len(r) else "–")
            out.append(f"| {LABEL[m]} | " + " | ".join(cells) + " |")
        out.append("")
        p = paired[(paired.config == cfg) & (paired.reference == "best")]
        out.append("Paired differences in test accuracy points, method − best baseline at that sparsity "
                   "(best = highest mean validation accuracy), mean (95 % t-CI over trajectories; per level, "
                   "no multiplicity correction); *detectable* = the smallest true difference this many "
                   "trajectories detect with 80 % power:\n")
        out.append("| pruned | best baseline | " + " | ".join(f"{LABEL[m].split(' (')[0]} − best" for m in (*SILO, "oracle"))
                   + " | detectable (SILO cal.) |")
        out.append("|---" * 6 + "|")
        for k in LEVELS:
            q = p[p["round"] == k].set_index("method")
            cells = [f"{_fmt(q.loc[m, 'diff_mean'], q.loc[m, 'diff_lo'], q.loc[m, 'diff_hi'], 2, True)} "
                     f"{q.loc[m, 'verdict']}" for m in (*SILO, "oracle")]
            out.append(f"| {q['pruned'].iloc[0]:.1f} % | {q['best_baseline'].iloc[0]} | " + " | ".join(cells)
                       + f" | {q.loc['silo-cal', 'detectable_80']:.2f} |")
        out.append("")
        p = paired[(paired.config == cfg) & (paired.reference == "lth")]
        out.append("The same against LTH, the recipe SILO and the Oracle share (weights rewound to init, warm-up + "
                   "step), at a constant peak η0: what the per-round peak alone changes:\n")
        out.append("| pruned | " + " | ".join(f"{LABEL[m].split(' (')[0]} − LTH" for m in (*SILO, "oracle")) + " |")
        out.append("|---" * 4 + "|")
        for k in LEVELS:
            q = p[p["round"] == k].set_index("method")
            cells = [f"{_fmt(q.loc[m, 'diff_mean'], q.loc[m, 'diff_lo'], q.loc[m, 'diff_hi'], 2, True)} "
                     f"{q.loc[m, 'verdict']}" for m in (*SILO, "oracle")]
            out.append(f"| {q['pruned'].iloc[0]:.1f} % | " + " | ".join(cells) + " |")
        out.append("")
    out.append("Beside it, Renda et al. 2020's released CIFAR-10 ResNet-20 results (median of 3; 182 epochs per "
               "round, batch 128; `lottery-ticket/rewinding-iclr20-public`, vision/plot/pruned_dataframe.pkl, as "
               "transcribed in ../shared/papers.md) — a different dataset, network and budget, so compare "
               "orderings, not numbers:\n")
    out.append("| pruned | LR rewinding | rewind to init | rewind to epoch 12 |")
    out.append("|---|---|---|---|")
    for _, r in renda.iterrows():
        out.append(f"| {r['pruned']:.1f} % | {r['lr_rewinding']:.2f} | {r['rewind_init']:.2f} | {r['rewind_epoch12']:.2f} |")
    out.append(f"\nDense ResNet-20: {float(renda['dense'].iloc[0]):.2f} %.")
    return "\n".join(out) + "\n"


def figure(acc: pd.DataFrame, paired: pd.DataFrame, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    cfgs = sorted(acc["config"].unique())
    fig, axes = plt.subplots(2, len(cfgs), figsize=(6.5 * len(cfgs), 8.5), squeeze=False)
    colors = dict(zip(METHODS, plt.get_cmap("tab10").colors))
    for j, cfg in enumerate(cfgs):
        ax = axes[0, j]
        a = acc[(acc.config == cfg) & (acc["round"].isin(LEVELS))]
        for i, m in enumerate(METHODS):
            r = a[a.method == m].sort_values("round")
            x = r["pruned"].to_numpy() + (i - len(METHODS) / 2) * 0.35
            ax.errorbar(x, r["test_mean"], yerr=[r["test_mean"] - r["test_lo"], r["test_hi"] - r["test_mean"]],
                        marker="o", ms=4, capsize=2, lw=2.2 if m in SILO else 1.0, color=colors[m],
                        ls="-" if m in (*SILO, "oracle") else "--", label=LABEL[m])
        ax.set_title(f"{cfg}: test accuracy (mean, 95 % CI over {int(a['n'].min())} trajectories)")
        ax.set_xlabel("pruned fraction of weights (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        if j == 0:
            ax.legend(fontsize=7, loc="lower left")
        ax = axes[1, j]
        p = paired[(paired.config == cfg) & (paired.reference == "best")]
        for i, m in enumerate((*SILO, "oracle")):
            r = p[p.method == m].sort_values("round")
            x = r["pruned"].to_numpy() + (i - 1) * 0.6
            ax.errorbar(x, r["diff_mean"], yerr=[r["diff_mean"] - r["diff_lo"], r["diff_hi"] - r["diff_mean"]],
                        marker="o", capsize=3, color=colors[m], label=f"{LABEL[m].split(' (')[0]} − best baseline")
        q = paired[(paired.config == cfg) & (paired.reference == "lth") & (paired.method == "silo-cal")].sort_values("round")
        ax.plot(q["pruned"], q["diff_mean"], ls=":", marker="x", color=colors["silo-cal"],
                label="SILO calibrated − LTH (same recipe, constant peak)")
        ax.axhline(0, color="k", lw=0.8)
        ax.axhspan(2.1, 3.4, color="tab:green", alpha=0.12, label="SILO papers' claim: +2.1 .. +3.4 points")
        ax.set_title("paired difference vs the best baseline (chosen on validation), 95 % CI")
        ax.set_xlabel("pruned fraction of weights (%)")
        ax.set_ylabel("test accuracy points")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def splice(text: str, path: Path = FINDINGS) -> None:
    doc = path.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{path} lacks the markers {BEGIN!r} ... {END!r}")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(head + BEGIN + "\n" + text + END + tail)


def analyse(results: Path = RESULTS, findings: Path | None = FINDINGS, fig: Path | None = FIGURE) -> str:
    df = complete(pd.read_csv(results / "rounds.csv"))
    if df.empty:
        raise SystemExit(f"{results / 'rounds.csv'} has no trajectory with every method to round {max(LEVELS)}")
    acc = accuracy_table(df)
    paired = paired_table(df, acc)
    acc.to_csv(results / "accuracy.csv", index=False)
    paired.to_csv(results / "paired.csv", index=False)
    cal = pd.read_csv(results / "calibration_status.csv") if (results / "calibration_status.csv").stat().st_size > 1 \
        else pd.DataFrame(columns=["config", "status"])
    text = markdown(acc, paired, pd.read_csv(results / "renda2020.csv"), pd.read_csv(results / "eta0.csv"), cal)
    (results / "tables.md").write_text(text)
    if fig is not None:
        figure(acc, paired, fig)
    if findings is not None:
        splice(text, findings)
    print(text)
    return text


def main_cli(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=("run", "extract", "analyse"))
    p.add_argument("--configs", default=",".join(CONFIG_NAMES), help="comma-separated")
    p.add_argument("--trajectories", default="0-7", help="pruning seeds, e.g. 0-7 or 0,2,5 (default: 0-7)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process (default: 1)")
    p.add_argument("--runs", default=str(RUNS), help="where the runs live (default: analysis/runs/headline)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per round of the CIFAR configuration "
                   f"(default: Renda et al.'s {RENDA_EPOCHS})")
    p.add_argument("--data-root", default=None, help="CIFAR-10 archive or folder (default: ../shared/data/...)")
    p.add_argument("--results", default=str(RESULTS), help="extract: where rounds.csv goes")
    ns = p.parse_args(argv)
    cifar = CONFIGS["cifar10-resnet20-renda"]
    if ns.epochs:
        cifar[cifar.index("--epochs") + 1] = str(ns.epochs)
    if ns.data_root:
        cifar[cifar.index("--data-root") + 1] = ns.data_root
    names = [n for n in ns.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
    if ns.stage == "run":
        run(names, parse_range(ns.trajectories), ns.threads, Path(ns.runs),
            tuple(m for m in ns.methods.split(",") if m))
    elif ns.stage == "extract":
        extract(Path(ns.runs), Path(ns.results))
    else:
        analyse()


if __name__ == "__main__":
    main_cli()
