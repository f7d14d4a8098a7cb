"""Does the spread of a ViT's GELU-fed layers' gradients narrow or widen as it is pruned, under
each view? (issue 14)

One profile run of vit_tiny with AdamW on a seeded CIFAR-10 subset, recorded with the "full"
preset (survivors, relative and fixed-population records; the all-weights view is derived),
only the layers that feed a GELU (``--layers gelu``: each block's mlp.fc1). Then, per round and
view, the pooled std of those layers' gradients, its ratio to round 0, and the sparsity:

    PYTHONPATH=. python analysis/vit_study.py              # run (resumes analysis/runs/vit_study) + tables + figure
    PYTHONPATH=. python analysis/vit_study.py --analyse    # tables + figure from the existing run

Writes analysis/results/vit/vit_views.csv and docs/img/vit_views.png. The all-weights view
counts pruned weights as exact zeros, so its std is about the survivors' std x sqrt(density)
by construction; the figure draws sqrt(density) as that view's reference.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from gradscope.cli import main as gradscope_main
from gradscope.store import open_run

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "analysis" / "runs" / "vit_study"
RESULTS = ROOT / "analysis" / "results" / "vit"
FIGURE = ROOT / "docs" / "img" / "vit_views.png"
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"

# ~6-15 minutes on 2 shared CPU cores (a pilot: 2 x 32 AdamW steps per round)
CONFIG = ["--model", "vit_tiny", "--dataset", "cifar10", "--train-subset", "2000", "--val-size", "500",
          "--test-subset", "500", "--batch-size", "64", "--rounds", "5", "--prune-rate", "0.3", "--epochs", "2",
          "--optimizer", "adamw", "--max-lr", "1e-3", "--weight-decay", "0.05", "--schedule", "lth",
          "--record-preset", "full", "--sample-k", "0", "--layers", "gelu", "--seed", "0"]
VIEWS = {"survivors": "survivors (unpruned weights)", "all": "all weights, pruned as 0 (papers' view)",
         "relative": "relative |g|/(|w|+eps)", "population": "fixed population (weights alive at round k)"}


def profile(threads: int) -> None:
    """Run (or resume) the profile run."""
    RUN.parent.mkdir(parents=True, exist_ok=True)
    rc = gradscope_main(["profile", "--data-root", str(ARCHIVE), *CONFIG, "--threads", str(threads),
                         "--no-progress", "--out", str(RUN)])
    if rc != 0:
        raise SystemExit(rc)


def measure(h5: Path) -> pd.DataFrame:
    """Long table: round, sparsity, view, window, std, mean_abs, ratio (std / round 0's std)."""
    rows = []
    with open_run(h5) as r:
        assert set(r.pooled_layers()) == {f"blocks.{i}.mlp.fc1" for i in range(6)}, r.pooled_layers()
        for view in ("survivors", "all", "relative"):
            if view not in r.views():
                continue
            for window in ("all", "last"):
                s = r.round_summary(view=view, window=window)
                for _, x in s.iterrows():
                    rows.append({"round": int(x["round"]), "sparsity": float(x["sparsity"]), "view": view,
                                 "window": window, "std": float(x["std"]), "mean_abs": float(x["mean_abs"]),
                                 "ratio": float(x["std_ratio"])})
        if r.population_rounds():
            # the same weights (those alive in round k) in round 0 and in round k: rms ratio
            spars = r.rounds().drop_duplicates("round").set_index("round")["sparsity"]
            pop = r.population()
            pooled = pop[pop["layer"] == "pooled"]
            for k in sorted(pooled["reference_round"].unique()):
                p = pooled[pooled["reference_round"] == k].set_index("round")["rms"]
                rows.append({"round": int(k), "sparsity": float(spars.loc[k]), "view": "population",
                             "window": "all", "std": float(p.loc[k]), "mean_abs": np.nan,
                             "ratio": float(p.loc[k] / p.loc[0])})
    t = pd.DataFrame(rows)
    t["sqrt_density"] = np.sqrt(1.0 - t["sparsity"])
    t["last_vs_round0"] = ""  # the last round's spread against round 0's, per view and window
    for (view, window), g in t.groupby(["view", "window"]):
        last = g.loc[g["round"].idxmax(), "ratio"]
        t.loc[g.index, "last_vs_round0"] = "narrower" if last < 1 else "wider"
    return t.sort_values(["view", "window", "round"]).reset_index(drop=True)


def figure(t: pd.DataFrame, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    a, b = (t[(t["view"] == "survivors") & (t["window"] == w)]["ratio"].to_numpy() for w in ("all", "last"))
    windows = ("all",) if len(a) == len(b) and np.allclose(a, b) else ("all", "last")  # one epoch per round: same
    fig, axes = plt.subplots(1, len(windows), figsize=(5.8 * len(windows), 4.4), sharey=True, squeeze=False)
    axes = axes[0]
    colors = {"survivors": "C0", "all": "C1", "relative": "C2", "population": "C3"}
    for ax, window in zip(axes, windows):
        for view, label in VIEWS.items():
            g = t[(t["view"] == view) & (t["window"] == ("all" if view == "population" else window))]
            if len(g):
                ax.plot(100 * g["sparsity"], g["ratio"], "o-", color=colors[view], label=label)
        s = np.linspace(0, t["sparsity"].max(), 50)
        ax.plot(100 * s, np.sqrt(1 - s), "--", color=colors["all"], alpha=0.6, label="sqrt(density): all-weights view\n"
                "if the survivors' spread did not change")
        ax.axhline(1.0, color="0.6", lw=0.8)
        ax.set_yscale("log")  # the relative view falls by orders of magnitude
        ax.set_xlabel("sparsity (%)")
        ax.set_title(f"window: {'all epochs of each round' if window == 'all' else 'last epoch of each round'}"
                     + ("\n(fixed population: all epochs)" if window == "last" else ""), fontsize=10)
    axes[0].set_ylabel("pooled std of gradients / round 0's\n(fixed population: rms, same weights)")
    axes[-1].legend(fontsize=8, loc="best")
    fig.suptitle("vit_tiny, AdamW max_lr 1e-3, CIFAR-10 subset (2000 train images, 2 epochs per round,\n30 % pruned per round): "
                 "GELU-fed layers (mlp.fc1), pooled", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--analyse", action="store_true", help="only tables and figure from the existing run")
    ap.add_argument("--threads", type=int, default=2)
    ns = ap.parse_args()
    if not ns.analyse:
        profile(ns.threads)
    t = measure(RUN / "run.h5")
    RESULTS.mkdir(parents=True, exist_ok=True)
    t.to_csv(RESULTS / "vit_views.csv", index=False, float_format="%.6g")
    figure(t, FIGURE)
    last = t[t["round"] == t["round"].max()]
    print(f"last round {int(last['round'].iloc[0])}, sparsity {100 * last['sparsity'].iloc[0]:.1f} %, "
          f"sqrt(density) {math.sqrt(1 - last['sparsity'].iloc[0]):.3f}")
    print(last[["view", "window", "std", "ratio", "last_vs_round0"]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
