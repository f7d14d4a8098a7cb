"""Which ingredient of the released SILO recipe, if any, makes the surviving weights' gradients
narrow? (issue 21, item 2, at CPU scale)

From gradscope's default recipe (a narrow VGG-19 conv stack with BatchNorm and a
global-average-pool head, global magnitude pruning of conv/linear weights, weights rewound
to init, a fixed-peak warm-up-step LR), switch one ingredient at a time to the released one,
then all of them (docs/recipe-silo-code.md):

    default  fc (the released FC block, no BN)  delta (|Δw| pruning)  bn (BN γ pruned too)
    reinit (new random weights each round)  warmup (the released LR shape)  full (all + S-curve)

Each cell is a recorded `gradscope profile` run per seed. Per round, view (survivors; all
weights with pruned ones as zeros) and window (all epochs of the round; the last epoch), the
pooled gradient std of the activation-fed layers of each type (conv, each followed by BN; FC,
no BN), its ratio to round 0, and the mean ratio over seeds with a t-interval over seeds.

    PYTHONPATH=. python analysis/recipe_factorial.py                  # run (resumes) + tables
    PYTHONPATH=. python analysis/recipe_factorial.py --analyse        # tables from existing runs
    PYTHONPATH=. python analysis/recipe_factorial.py --tiny           # CI size (seconds)
    PYTHONPATH=. python analysis/recipe_factorial.py --gpu --seeds 0,1,2 --runs /scratch/rf   # full width

Writes analysis/results/recipe/factorial_rounds.csv (per cell, seed, round, view, window,
layer type) and factorial_summary.csv (per cell, round, view, window, layer type: mean ratio,
CI over seeds, n). The scale is tiny (a CIFAR-10 subset, a narrow net, few short rounds): a
pilot that says what to run at scale, not the answer at scale.
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
    a = ["profile", "--dataset", "cifar10", "--data-root", str(ARCHIVE), "--cache-dir", str(size["cache"]),
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
    """(cell, seed) in seed-major order (every cell of seed 0 first), then every n-th from i."""
    i, n = part
    return [(c, s) for s in seeds for c in cells][i::n]


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
    base = df[df["round"] == 0].set_index(["view", "window", "layer_type"])["std"]
    df["ratio"] = [s / base.get((v, w, t), math.nan) for s, v, w, t in
                   zip(df["std"], df["view"], df["window"], df["layer_type"])]
    df["sparsity"] = df["round"].map(rounds["sparsity"])
    df["sqrt_density"] = np.sqrt(1.0 - df["sparsity"])
    df["test_acc"] = df["round"].map(rounds["test_acc"])
    df["val_acc"] = df["round"].map(rounds["val_acc"])
    return df


def summarise(df: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Mean ratio over seeds (trajectories) with a Student-t CI over them."""
    out = []
    for key, g in df.groupby(["cell", "round", "view", "window", "layer_type"]):
        x = g["ratio"].dropna().to_numpy()
        n = len(x)
        mean = float(x.mean()) if n else math.nan
        half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        out.append(dict(zip(["cell", "round", "view", "window", "layer_type"], key),
                        ratio_mean=mean, ci_lo=mean - half, ci_hi=mean + half, ci_level=level, n_seeds=n,
                        sparsity=float(g["sparsity"].mean()), sqrt_density=float(g["sqrt_density"].mean()),
                        test_acc_mean=float(g["test_acc"].mean())))
    return pd.DataFrame(out)


def analyse(cells, seeds, size) -> pd.DataFrame:
    frames = [per_round(size["runs"] / f"{c}_seed{s}", c, s) for c in cells for s in seeds
              if (size["runs"] / f"{c}_seed{s}" / "run.h5").exists()]
    df = pd.concat(frames, ignore_index=True)
    summ = summarise(df)
    size["results"].mkdir(parents=True, exist_ok=True)
    df.to_csv(size["results"] / "factorial_rounds.csv", index=False)
    summ.to_csv(size["results"] / "factorial_summary.csv", index=False)
    last = summ[summ["round"] == summ["round"].max()]
    show = last[last["window"] == "all"][["cell", "view", "layer_type", "ratio_mean", "ci_lo", "ci_hi",
                                          "n_seeds", "sparsity", "sqrt_density", "test_acc_mean"]]
    print(f"gradient std ratio (round {int(summ['round'].max())} / round 0), window = all epochs of the round, "
          f"mean over seeds with {int(100 * summ['ci_level'].iloc[0])} % t-CI over seeds; sqrt_density = "
          "what the all-weights view gives by arithmetic alone")
    print(show.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
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
    ap.add_argument("--analyse", action="store_true", help="tables from existing runs only")
    ap.add_argument("--tiny", action="store_true", help="CI size")
    ap.add_argument("--gpu", action="store_true", help="full-width models on CUDA (size 'gpu'; seeds 0,1,2)")
    ap.add_argument("--size", choices=sorted(SIZES), default=None, help="a size by name (default: pilot)")
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--runs", default=str(RUNS))
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--cache", default=str(ROOT / "data" / "cache"))
    ap.add_argument("--part", default="0/1", help="run only every n-th run from the i-th: i/n (parallel streams)")
    a = ap.parse_args(argv)
    which = a.size or ("gpu" if a.gpu else "tiny" if a.tiny else "cpu")
    sub = "" if which == "cpu" else which  # the study's files sit at the top
    size = dict(SIZES[which], runs=Path(a.runs) / sub, results=Path(a.results) / sub, cache=a.cache)
    cells = [c for c in a.cells.split(",") if c]
    unknown = sorted(set(cells) - set(CELLS))
    if unknown:
        raise SystemExit(f"unknown cell(s) {', '.join(unknown)}; cells: {', '.join(CELLS)}")
    seeds = [int(s) for s in a.seeds.split(",")]
    i, n = (int(v) for v in a.part.split("/"))
    if not a.analyse:
        run_cells(cells, seeds, size, (i, n))
    analyse(cells, seeds, size)


if __name__ == "__main__":
    main()
