"""Which ingredient of the released SILO recipe, if any, makes the surviving weights' gradients
narrow? (issue 21, item 2)

From gradscope's default recipe (a BatchNorm VGG conv stack with a global-average-pool head,
global magnitude pruning of conv/linear weights, weights rewound to init, a fixed-peak
warm-up-step LR, max_lr 0.05), switch one ingredient at a time to the released one, then all
of them (docs/recipe-silo-code.md):

    default  fc (the released FC block, no BN)  delta (|Δw| pruning)  bn (BN γ pruned too)
    reinit (new random weights each round)  warmup (the released LR shape)  full (all + S-curve)

Each cell is a recorded `gradscope profile` run per seed (trajectory). Per round, view
(survivors; all weights with pruned ones as zeros) and window (all epochs of the round; the last
epoch), the pooled gradient std of the activation-fed layers of each type (conv, each followed
by BN; FC, no BN), its ratio to round 0, and the mean ratio over seeds with a t-interval over
seeds; the test accuracy per round, so that a cell that does not learn can be told apart.

    PYTHONPATH=. python analysis/recipe_factorial.py                  # run (resumes), collect, analyse
    PYTHONPATH=. python analysis/recipe_factorial.py --part 1/3       # one of 3 parallel streams (runs only)
    PYTHONPATH=. python analysis/recipe_factorial.py --collect        # runs -> factorial_rounds.csv, analyse
    PYTHONPATH=. python analysis/recipe_factorial.py --analyse        # from the committed CSV alone
    PYTHONPATH=. python analysis/recipe_factorial.py --tiny           # CI size (seconds per run)
    PYTHONPATH=. python analysis/recipe_factorial.py --size pilot --analyse   # the first CPU pilot's tables
    PYTHONPATH=. python analysis/recipe_factorial.py --gpu --runs /scratch/rf # full width, on CUDA

Sizes (SIZES):
- ``cpu`` (the default, the study in docs/findings.md): CIFAR-10 subset of 5,120 training
  images (80 steps of 64 per epoch), 1,000 validation, 2,000 test images, 4 epochs per round, 5
  rounds (59 % pruned), the recorder on every 4th step; VGG-11's plan at x1/4 width
  (analysis/recipe_models.py). 7 cells x 3 seeds = 21 runs; measured 96-153 s of CPU per run
  (one torch thread; the FC-block cells are the dearer ones), 45 min of CPU in all, 50 min of
  wall time as 3-4 niced one-thread streams on the shared 2-core box
  (results/recipe/factorial_timing.csv: cell, seed, wall s, CPU s of the part run last).
  The FC ingredient is the released FC block's layers (2 hidden FC layers with dropout, no BN;
  1,024 units, 67 % of the weights) on the 1x1-pooled features: the released head (7x7 copies
  of each channel into the first FC layer) stalled at this width for every max_lr tried.
- ``pilot``/``pilot-b``: the first CPU pilots (narrow VGG-19, 10-27 % accuracy), kept for the record.
- ``tiny``: 128 images, 2 rounds of 2 epochs; notebook 04 and CI run it.
- ``gpu``: prepared, not run (no device was lent to this task). The released vgg19_bn at full
  width (139.6 M weights; fc/full cells) and its conv stack with a GAP head (the default),
  36,000 training images (562 steps per epoch, the released split's size), 10 epochs x 8
  rounds, 7 cells x 3 seeds: 21 runs x 80 epochs = ~945,000 steps of batch 64 in float32
  (--no-amp, as released), the recorder on every step. It needs one CUDA GPU with >= 8 GB
  (weights, gradients and momentum of 139.6 M float32 values are 1.7 GB), the CIFAR-10 archive
  and ~20 GB of disk for the run files. Time not measured: at an assumed ~20 ms per step on one
  H200 it is ~5 h for all 21 runs (split with --part across GPUs or sessions; every run
  resumes). Untested there: whether the released head trains under the default cell's
  max_lr 0.05 with a 10 % warm-up (the narrow one did not at any max_lr tried).

Writes, under analysis/results/recipe/ (other sizes: a subfolder named after the size):
factorial_rounds.csv (per cell, seed, round, view, window, layer type: std, ratio, sparsity,
accuracies: the committed per-round data), factorial_summary.csv (mean ratio, CI over seeds,
n), factorial_accuracy.csv (test/validation accuracy per cell and round), factorial_vs_default.csv
(conv layers, each cell minus default paired by seed), factorial_table.md (the findings table),
and the figure docs/img/recipe_factorial.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from gradscope.cli import main as gradscope_main
from gradscope.store import open_run

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "analysis" / "runs" / "recipe_factorial"
RESULTS = ROOT / "analysis" / "results" / "recipe"
# ../shared/data from the project root (a worktree one level deeper finds it one level up)
ARCHIVE = next((p / "shared" / "data" / "cifar10-jpeg.tar.xz" for p in ROOT.parents
                if (p / "shared" / "data" / "cifar10-jpeg.tar.xz").exists()),
               ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.xz")

MODELS = {  # model set -> (default-recipe model, FC-heavy model with the default init, the released model)
    # the study at CPU scale: VGG-11's plan at x1/4 width (analysis/recipe_models.py); the FC block on
    # the 1x1-pooled features (the released 7x7 copies stall a narrow FC block: see that file)
    "plan-a": ("analysis.recipe_models:a_gap", "analysis.recipe_models:a_pfc", "analysis.recipe_models:a_pfc_released"),
    # the pilots: the released VGG-19 plan at x1/8 width with the released head
    "vgg19-narrow": ("gradscope.models.vgg_silo:narrow_gap", "gradscope.models.vgg_silo:narrow_fc", "vgg19_silo_narrow"),
    "gpu": ("gradscope.models.vgg_silo:full_gap", "gradscope.models.vgg_silo:full_fc", "vgg19_silo"),
}
CELLS = ("default", "fc", "delta", "bn", "reinit", "warmup", "full")
MAX_LR = 0.05  # the fixed peak of every cell but "full" (profile's default for fixed-peak schedules)


def released_shape(epochs: int, steps_per_epoch: int) -> dict:
    """resnet_20_cifar_10.py's LR scaled to a round of ``epochs``: the ramp reaches 0.70 of the
    peak by the first drop, as it does at 563 steps/epoch (20000 / (25·563) = 1.42), drops at
    25/50 and 32/50 of the round (floor; at least epoch 1 and distinct)."""
    d1 = max(1, int(epochs * 25 / 50))
    d2 = max(d1 + 1, int(epochs * 32 / 50))
    ramp = max(1, int(round(d1 * steps_per_epoch * 20000 / (25 * 563))))
    return {"shape": "silo-released", "epochs": epochs, "ramp_steps": ramp, "ramp_cap": True,
            "hold_epoch": None, "drop_epochs": [d1, d2], "factors": [0.1, 0.01]}


def cell_args(cell: str, size: dict, seed: int, out: Path) -> list[str]:
    """The `gradscope profile` command line of one cell and seed."""
    a = ["profile", "--dataset", "cifar10", "--data-root", str(size.get("archive") or ARCHIVE), "--cache-dir", str(size["cache"]),
         "--train-subset", str(size["train"]), "--val-size", str(size["val"]), "--test-subset", str(size["test"]),
         "--batch-size", "64", "--rounds", str(size["rounds"]), "--epochs", str(size["epochs"]),
         "--prune-rate", "0.2", "--no-progress", "--no-amp", "--seed", str(seed),
         "--record-preset", "default", "--sample-k", "0", "--out", str(out)]
    if size.get("every", 1) != 1:
        a += ["--every", str(size["every"])]
    a += ["--device", "cuda"] if size.get("gpu") else ["--threads", "1", "--device", "cpu"]
    base_model, fc_model, released_model = MODELS[size["models"]]
    model, method, bn, rewind = base_model, "global", False, "init"
    spe = size["train"] // 64
    sched = {"schedule": "lth", "max_lr": MAX_LR}
    if cell in ("fc", "full"):
        model = fc_model if cell == "fc" else released_model
    if cell in ("delta", "full"):
        method = "delta"
    if cell in ("bn", "full"):
        bn = True
    if cell in ("reinit", "full"):
        rewind = "reinit"
    if cell == "warmup":
        sched = {"schedule": "lth", "max_lr": MAX_LR, **released_shape(size["epochs"], spe)}
    if cell == "full":
        sched = {"schedule": "silo", "preset": "released-resnet20", **released_shape(size["epochs"], spe)}
    out.mkdir(parents=True, exist_ok=True)
    f = out.parent / f"{out.name}.schedule.json"
    f.write_text(json.dumps(sched))
    a += ["--model", model, "--prune-method", method, "--prune-bn" if bn else "--no-prune-bn",
          "--rewind", rewind, "--schedule", sched["schedule"], "--schedule-file", str(f)]
    return a


def run_list(cells, seeds, part: tuple[int, int] = (0, 1)) -> list[tuple[str, int]]:
    """(cell, seed), cell-major in the order of ``cells`` (a priority: each cell's trajectories
    finish together), then every n-th from i (with n = len(seeds), stream i runs seed i of each cell)."""
    i, n = part
    return [(c, s) for c in cells for s in seeds][i::n]


def run_cells(cells, seeds, size, part=(0, 1)) -> None:
    if not size.get("gpu"):
        # the recorder's compiled kernels cost more than they save at these sizes on one core
        os.environ.setdefault("GRADSCOPE_COMPILE", "0")
    for cell, seed in run_list(cells, seeds, part):
        out = size["runs"] / f"{cell}_seed{seed}"
        done = (out / "rounds.json").exists() and len(json.loads((out / "rounds.json").read_text())) >= size["rounds"]
        t0, c0 = time.time(), time.process_time()
        rc = gradscope_main(cell_args(cell, size, seed, out))
        if rc:
            raise SystemExit(f"{cell} seed {seed}: gradscope exited {rc}")
        if not done:  # wall and CPU seconds of this process for the run (resumed runs: the part run now)
            with open(size["runs"] / "timing.csv", "a") as f:
                f.write(f"{cell},{seed},{time.time() - t0:.1f},{time.process_time() - c0:.1f},"
                        f"{os.uname().nodename},{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")


def _pooled_std(m: pd.DataFrame) -> float:
    """std of all values pooled over the rows' layers and windows, from exact power sums."""
    n, s1, s2 = m["count"].sum(), m["sum"].sum(), m["sumsq"].sum()
    if n < 2:
        return math.nan
    return math.sqrt(max(s2 / n - (s1 / n) ** 2, 0.0))


def per_round(run_dir: Path, cell: str, seed: int) -> pd.DataFrame:
    """Per round, view, window, layer type: the pooled std, its ratio to round 0, sparsity, accuracies."""
    rows = []
    with open_run(run_dir / "run.h5") as r:
        layers = r.layers()
        kind = dict(zip(layers["layer"], layers["kind"]))
        pooled = set(r.pooled_layers())
        rounds = r.rounds().set_index("round")
        for view in ("survivors", "all"):
            m = r.moments(view=view)
            m = m[m["layer"].isin(pooled)].copy()
            m["type"] = m["layer"].map(lambda n: "fc (no BN)" if kind.get(n) == "linear" else "conv (+BN)")
            last = m.groupby("round")["window"].transform("max")
            for window, sel in (("all", m), ("last", m[m["window"] == last])):
                for (k, t), g in sel.groupby(["round", "type"]):
                    rows.append({"cell": cell, "seed": seed, "round": int(k), "view": view, "window": window,
                                 "layer_type": t, "std": _pooled_std(g), "n_values": int(g["count"].sum())})
    df = pd.DataFrame(rows)
    df = df[df["round"].isin(rounds.index)]  # a round still training (a stopped run) has windows but no result yet
    base = df[df["round"] == 0].set_index(["view", "window", "layer_type"])["std"]
    df["ratio"] = [s / base.get((v, w, t), math.nan) for s, v, w, t in
                   zip(df["std"], df["view"], df["window"], df["layer_type"])]
    df["sparsity"] = df["round"].map(rounds["sparsity"])
    df["sqrt_density"] = np.sqrt(1.0 - df["sparsity"])
    df["test_acc"] = df["round"].map(rounds["test_acc"])
    df["val_acc"] = df["round"].map(rounds["val_acc"])
    return df


KEYS = ["cell", "round", "view", "window", "layer_type"]
VIEWS = {"survivors": "survivors", "all": "all weights"}
WINDOWS = {"all": "all epochs", "last": "last epoch"}
LAYER_TYPES = ("conv (+BN)", "fc (no BN)")


def t_interval(x, level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean of the finite values of ``x`` with a Student-t interval over them: (mean, lo, hi, n)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def with_type_density(df: pd.DataFrame) -> pd.DataFrame:
    """Adds ``type_density``: the surviving fraction of the recorded weights of that layer type in that
    run, round and window (survivors' values / all weights' values). Global pruning prunes layer
    types unevenly, so this, not the network's density, is what the all-weights view's sqrt(density)
    arithmetic uses: std_all ~ sqrt(type_density) x std_survivors when the mean gradient is small."""
    key = ["cell", "seed", "round", "window", "layer_type"]
    n = df.pivot_table(index=key, columns="view", values="n_values", aggfunc="first")
    dens = (n["survivors"] / n["all"]).rename("type_density")
    return df.drop(columns=["type_density"], errors="ignore").join(dens, on=key)


def summarise(df: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Mean ratio over seeds (trajectories) with a Student-t CI over them; the test accuracy the same way."""
    if "type_density" not in df and {"n_values", "view"} <= set(df.columns) and set(df["view"]) >= {"survivors", "all"}:
        df = with_type_density(df)
    out = []
    for key, g in df.groupby(KEYS):
        mean, lo, hi, n = t_interval(g["ratio"], level)
        acc, acc_lo, acc_hi, _ = t_interval(g["test_acc"], level)
        out.append(dict(zip(KEYS, key), ratio_mean=mean, ci_lo=lo, ci_hi=hi, ci_level=level, n_seeds=n,
                        sparsity=float(g["sparsity"].mean()), sqrt_density=float(g["sqrt_density"].mean()),
                        sqrt_type_density=float(np.sqrt(g["type_density"]).mean()) if "type_density" in g else math.nan,
                        test_acc_mean=acc, test_acc_lo=acc_lo, test_acc_hi=acc_hi))
    return pd.DataFrame(out)


def verdict(lo: float, hi: float) -> str:
    """What a CI over trajectories says about a ratio to round 0."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "n < 2"
    return "narrower" if hi < 1 else "wider" if lo > 1 else "cannot tell"


def accuracy_table(df: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per cell and round: test accuracy, mean over seeds with a t-CI (one row per run and round)."""
    runs = df.drop_duplicates(["cell", "seed", "round"])
    out = []
    for (cell, k), g in runs.groupby(["cell", "round"]):
        mean, lo, hi, n = t_interval(g["test_acc"], level)
        vmean, vlo, vhi, _ = t_interval(g["val_acc"], level)
        out.append({"cell": cell, "round": int(k), "sparsity": float(g["sparsity"].mean()), "test_acc_mean": mean,
                    "test_acc_lo": lo, "test_acc_hi": hi, "val_acc_mean": vmean, "val_acc_lo": vlo,
                    "val_acc_hi": vhi, "ci_level": level, "n_seeds": n})
    return pd.DataFrame(out)


def paired_vs_default(df: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Last round, conv (+BN) layers: each cell's ratio minus the default cell's, paired by seed
    (same seed = same data subset, data order and, where the model is the same, the same init)."""
    last = df[df["round"] == df["round"].max()]
    conv = last[last["layer_type"] == "conv (+BN)"].set_index(["cell", "seed", "view", "window"])["ratio"]
    out = []
    for cell in [c for c in CELLS if c != "default" and c in conv.index.get_level_values(0)]:
        for view in VIEWS:
            for window in WINDOWS:
                try:
                    a, b = conv.loc[(cell, slice(None), view, window)], conv.loc[("default", slice(None), view, window)]
                except KeyError:
                    continue
                a = a.droplevel([0, 2, 3]) if a.index.nlevels == 4 else a
                b = b.droplevel([0, 2, 3]) if b.index.nlevels == 4 else b
                d = (a - b).dropna()
                mean, lo, hi, n = t_interval(d, level)
                out.append({"cell": cell, "view": view, "window": window, "layer_type": "conv (+BN)",
                            "diff_mean": mean, "ci_lo": lo, "ci_hi": hi, "ci_level": level, "n_pairs": n})
    return pd.DataFrame(out)


def _fmt(mean, lo, hi, digits=2) -> str:
    if not np.isfinite(mean):
        return "–"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]".replace("-", "−")


def last_round_table(summ: pd.DataFrame, acc: pd.DataFrame) -> str:
    """The findings table: per cell and layer type, the std ratio (last round / round 0) under each
    view and window, mean [95 % CI] over trajectories, n, the survivors' verdict, test accuracy."""
    k = int(summ["round"].max())
    last = summ[summ["round"] == k].set_index(KEYS[:1] + KEYS[2:])
    a = acc[acc["round"] == k].set_index("cell")
    a0 = acc[acc["round"] == 0].set_index("cell")
    level = int(round(100 * float(summ["ci_level"].iloc[0])))
    cols = [(v, w) for v in VIEWS for w in WINDOWS]
    head = (["cell", "layers"] + [f"{VIEWS[v]}, {WINDOWS[w]}" for v, w in cols] +
            ["√(density of these layers)", "n", "survivors narrower? (all / last epoch)", "test acc. round 0",
             f"test acc. round {k}"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in [c for c in CELLS if c in last.index.get_level_values(0)]:
        for t in LAYER_TYPES:
            if (cell, "survivors", "all", t) not in last.index:
                continue
            r = {vw: last.loc[(cell, *vw, t)] for vw in cols if (cell, *vw, t) in last.index}
            cells = [_fmt(r[vw]["ratio_mean"], r[vw]["ci_lo"], r[vw]["ci_hi"]) if vw in r else "–" for vw in cols]
            n = int(r[("survivors", "all")]["n_seeds"])
            verd = " / ".join(verdict(r[("survivors", w)]["ci_lo"], r[("survivors", w)]["ci_hi"])
                              for w in WINDOWS if ("survivors", w) in r)
            acc0 = _fmt(100 * a0.loc[cell, "test_acc_mean"], 100 * a0.loc[cell, "test_acc_lo"],
                        100 * a0.loc[cell, "test_acc_hi"], 1) + " %" if cell in a0.index else "–"
            acck = _fmt(100 * a.loc[cell, "test_acc_mean"], 100 * a.loc[cell, "test_acc_lo"],
                        100 * a.loc[cell, "test_acc_hi"], 1) + " %" if cell in a.index else "–"
            sd = r[("survivors", "all")]["sqrt_type_density"]
            lines.append("| " + " | ".join([cell, t, *cells, f"{sd:.3f}" if np.isfinite(sd) else "–", str(n), verd,
                                            acc0, acck]) + " |")
    sp = float(last["sparsity"].iloc[0])
    caption = (f"Gradient std at round {k} ({100 * sp:.1f} % pruned, sqrt(density) {math.sqrt(1 - sp):.3f}) as a "
               f"ratio to round 0, pooled over the ReLU-fed layers of each type; mean over trajectories (seeds) "
               f"[{level} % Student-t CI over them]; n = trajectories; test accuracy mean [{level} % CI]. "
               "\"narrower\": the survivors' CI lies below 1; \"wider\": above 1. √(density of these layers): "
               "the all-weights view's arithmetic, std_all ≈ √(density) × std_survivors, with the layer type's own "
               "density (global pruning prunes layer types unevenly).")
    return caption + "\n\n" + "\n".join(lines) + "\n"


def accuracy_markdown(acc: pd.DataFrame) -> str:
    rounds = sorted(acc["round"].unique())
    level = int(round(100 * float(acc["ci_level"].iloc[0])))
    sp = acc.groupby("round")["sparsity"].mean()
    head = ["cell"] + [f"round {k} ({100 * sp[k]:.0f} % pruned)" for k in rounds]
    lines = [f"Test accuracy per round, mean over trajectories [{level} % t-CI], %:", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    t = acc.set_index(["cell", "round"])
    for cell in [c for c in CELLS if c in t.index.get_level_values(0)]:
        row = [cell] + [_fmt(100 * t.loc[(cell, k), "test_acc_mean"], 100 * t.loc[(cell, k), "test_acc_lo"],
                             100 * t.loc[(cell, k), "test_acc_hi"], 1) if (cell, k) in t.index else "–"
                        for k in rounds]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_factorial(summ: pd.DataFrame, acc: pd.DataFrame, path: Path, title: str) -> Path:
    """Std ratio to round 0 per round: rows = layer type, columns = view x window, one line per
    cell with its CI band over trajectories; sqrt(density) dotted; bottom: test accuracy per round."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(v, w) for v in VIEWS for w in WINDOWS]
    fig = plt.figure(figsize=(17, 11.5), layout="constrained")
    grid = fig.add_gridspec(3, 4)
    colours = {c: f"C{i}" for i, c in enumerate(CELLS)}
    level = int(round(100 * float(summ["ci_level"].iloc[0])))
    dens = summ.groupby("round")["sqrt_density"].mean()
    for i, t in enumerate(LAYER_TYPES):
        for j, (v, w) in enumerate(cols):
            ax = fig.add_subplot(grid[i, j])
            sel = summ[(summ["layer_type"] == t) & (summ["view"] == v) & (summ["window"] == w)]
            for cell in CELLS:
                g = sel[sel["cell"] == cell].sort_values("round")
                if g.empty:
                    continue
                ax.plot(g["round"], g["ratio_mean"], "o-", ms=3, color=colours[cell], label=cell)
                ax.fill_between(g["round"], g["ci_lo"], g["ci_hi"], color=colours[cell], alpha=0.12)
            ax.plot(dens.index, dens.values, ":", color="k", label="sqrt(density), whole network")
            ax.axhline(1.0, color="grey", lw=0.8)
            top = max(1.6, float(np.nanmax(sel["ratio_mean"])) * 1.15) if len(sel) else 1.6
            ax.set_ylim(0, min(top, 3.0))  # bands reaching past the axes are cut there
            ax.set_xticks(sorted(summ["round"].unique()))
            ax.set_title(f"{t}: {VIEWS[v]}, {WINDOWS[w]}", fontsize="medium")
            ax.set_xlabel("round")
            if j == 0:
                ax.set_ylabel(f"grad std / round 0 (mean, {level} % CI band)")
            if i == 0 and j == 0:
                ax.legend(fontsize=7, ncol=2)
    ax = fig.add_subplot(grid[2, :])
    for cell in CELLS:
        g = acc[acc["cell"] == cell].sort_values("round")
        if g.empty:
            continue
        off = (CELLS.index(cell) - 3) * 0.03
        ax.errorbar(g["round"] + off, 100 * g["test_acc_mean"],
                    yerr=[100 * (g["test_acc_mean"] - g["test_acc_lo"]), 100 * (g["test_acc_hi"] - g["test_acc_mean"])],
                    fmt="o-", ms=3, capsize=3, color=colours[cell], label=cell)
    ax.axhline(10, color="grey", lw=0.8, ls="--", label="chance (10 %)")
    ax.set_xticks(sorted(acc["round"].unique()))
    ax.set_xlabel("round")
    ax.set_ylabel(f"test accuracy, % (mean, {level} % CI)")
    ax.legend(fontsize=8, ncol=4)
    ax.set_title("test accuracy per round (does the cell learn?)", fontsize="medium")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def collect(cells, seeds, size) -> pd.DataFrame:
    """Runs -> factorial_rounds.csv (the committed per-round data the tables are made from)."""
    frames = [per_round(size["runs"] / f"{c}_seed{s}", c, s) for c in cells for s in seeds
              if (size["runs"] / f"{c}_seed{s}" / "run.h5").exists()]
    if not frames:
        raise SystemExit(f"no runs under {size['runs']}")
    df = pd.concat(frames, ignore_index=True)
    size["results"].mkdir(parents=True, exist_ok=True)
    df.to_csv(size["results"] / "factorial_rounds.csv", index=False)
    return df


def analyse(size, figure: Path | None = None, title: str = "") -> pd.DataFrame:
    """factorial_rounds.csv -> summary, accuracy and paired CSVs, the markdown tables, the figure."""
    res = size["results"]
    df = pd.read_csv(res / "factorial_rounds.csv")
    summ = summarise(df)
    acc = accuracy_table(df)
    summ.to_csv(res / "factorial_summary.csv", index=False)
    acc.to_csv(res / "factorial_accuracy.csv", index=False)
    paired = paired_vs_default(df)
    paired.to_csv(res / "factorial_vs_default.csv", index=False)
    table = last_round_table(summ, acc)
    accmd = accuracy_markdown(acc)
    (res / "factorial_table.md").write_text(table + "\n" + accmd)
    print(table)
    print(accmd)
    if not paired.empty:
        print("conv (+BN) std ratio, cell minus default, paired by seed, last round, mean [95 % t-CI], n pairs:")
        print(paired.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if figure is not None:
        print("figure:", plot_factorial(summ, acc, figure, title))
    return summ


SIZES = {
    # the study (issue 21 item 2): 5120 images (80 steps per epoch), 4 epochs per round, 5 rounds (59 %
    # pruned), recorded every 4th step; ~45 min of one core for 7 cells x 3 seeds
    "cpu": {"train": 5120, "val": 1000, "test": 2000, "rounds": 5, "epochs": 4, "every": 4, "models": "plan-a"},
    # ~8-10 min on 1 core of a shared 2-core box (nice): 7 cells x 2 seeds x 4 rounds x 2 epochs of 8 steps
    "pilot": {"train": 512, "val": 256, "test": 256, "rounds": 4, "epochs": 2, "models": "vgg19-narrow"},
    "tiny": {"train": 128, "val": 64, "test": 64, "rounds": 2, "epochs": 2, "models": "plan-a"},  # CI: seconds per cell
    # 4x the pilot's steps per round, one round more (~3 min per run on the shared box): do the
    # pilot's effects survive a net that learns a little more?
    "pilot-b": {"train": 2048, "val": 512, "test": 512, "rounds": 5, "epochs": 3, "models": "vgg19-narrow"},
    # prepared for a GPU (not run yet): full-width models, the released steps per epoch (36000 / 64)
    "gpu": {"train": 36000, "val": 5000, "test": 10000, "rounds": 8, "epochs": 10, "gpu": True, "models": "gpu"},
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--analyse", action="store_true",
                    help="tables and figure from the committed factorial_rounds.csv only (no runs needed)")
    ap.add_argument("--collect", action="store_true", help="re-read existing runs into the CSV, then analyse (no training)")
    ap.add_argument("--tiny", action="store_true", help="CI size (seconds per run)")
    ap.add_argument("--gpu", action="store_true", help="full-width models on CUDA (size 'gpu')")
    ap.add_argument("--size", choices=sorted(SIZES), default=None, help="a size by name (default: cpu)")
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--runs", default=str(RUNS))
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--figure", default=None, help="figure path (default: docs/img/recipe_factorial.png for size "
                                                   "cpu, RESULTS/SIZE/recipe_factorial.png otherwise)")
    ap.add_argument("--cache", default=str(ROOT / "data" / "cache"))
    ap.add_argument("--data-root", default=str(ARCHIVE), help="the CIFAR-10 archive or folder")
    ap.add_argument("--part", default="0/1", help="run only every n-th run from the i-th: i/n (parallel streams)")
    a = ap.parse_args(argv)
    which = a.size or ("gpu" if a.gpu else "tiny" if a.tiny else "cpu")
    sub = "" if which == "cpu" else which  # the study's files sit at the top
    size = dict(SIZES[which], runs=Path(a.runs) / sub, results=Path(a.results) / sub, cache=a.cache,
                archive=a.data_root)
    cells = [c for c in a.cells.split(",") if c]
    unknown = sorted(set(cells) - set(CELLS))
    if unknown:
        raise SystemExit(f"unknown cell(s) {', '.join(unknown)}; cells: {', '.join(CELLS)}")
    seeds = [int(s) for s in a.seeds.split(",")]
    i, n = (int(v) for v in a.part.split("/"))
    if a.figure:
        figure = Path(a.figure)
    else:
        figure = ROOT / "docs" / "img" / "recipe_factorial.png" if which == "cpu" else size["results"] / "recipe_factorial.png"
    s = SIZES[which]
    title = (f"Released SILO recipe, one ingredient at a time (size {which}: CIFAR-10, {s['train']} training images, "
             f"batch 64, {s['epochs']} epochs x {s['rounds']} rounds, 20 % pruned per round)")
    if not a.analyse:
        if not a.collect:
            run_cells(cells, seeds, size, (i, n))
        if n > 1:
            return  # one stream of several: collect once they are all done (--collect)
        collect(cells, seeds, size)
    analyse(size, figure, title)


if __name__ == "__main__":
    main()
