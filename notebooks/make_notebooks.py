"""Writes the notebooks of this folder (without outputs): ``python notebooks/make_notebooks.py``.

Each notebook starts with a cell tagged "parameters" (papermill style). Edit the cells here,
not the .ipynb files, then re-run this script.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# Papermill reads each "name = value  # help" line of the parameters cell; a line holding a
# second "=" (even inside its comment) is skipped with a warning, so help texts never use "=".
COMMON_PARAMS = '''# Parameters (papermill: override with -p NAME VALUE)
out_dir = "runs/notebooks"   # run directories are written here
data_root = None             # a CIFAR-10 folder -> cifar10 + resnet20; None -> built-in digits + small_cnn
rounds = 8                   # pruning rounds, round 0 being the dense network
epochs = 2                   # epochs per round
threads = None               # CPU threads (None: torch's default)
cache_dir = None             # dataset cache folder (None: the per-user cache, ~/.cache/gradscope)
seed = 0                     # seed of data order, initialisation and pruning ties'''

VIEW_PARAMS = '''
view = "survivors"           # gradients of: survivors (unpruned weights), all (pruned as zeros), relative
window = "all"               # all epochs of each round, or "last" epoch only'''

MAKE_CONFIG = '''from pathlib import Path
from gradscope.config import RunConfig
from gradscope.train import PruningRun


def make_config(out, schedule="lth", record=True, max_lr=0.05):
    """A run configuration from the parameters above (a fixed-peak schedule by default, so a
    rising learning rate does not confound the measured narrowing)."""
    cfg = RunConfig()
    if data_root:
        cfg.data.dataset, cfg.data.data_root, cfg.model.model = "cifar10", data_root, "resnet20"
    else:
        cfg.data.dataset, cfg.model.model = "digits", "small_cnn"
    cfg.data.cache_dir = cache_dir
    cfg.prune.rounds, cfg.train.epochs, cfg.train.seed = rounds, epochs, seed
    cfg.train.threads, cfg.train.progress = threads, False
    cfg.schedule.schedule = schedule
    if max_lr is not None and schedule in ("lth", "lrr", "clr", "cosine", "constant"):
        cfg.schedule.max_lr = max_lr
    cfg.record.record = record
    cfg.out = str(Path(out_dir) / out)
    return cfg'''


# Notebook 01: the papers' view ("all") beside the survivors' view, and the sqrt(density) decomposition.
VIEWS_MD = """## The papers' measurement beside the survivors'

The papers measured each layer's whole gradient histogram, in which a pruned weight counts as a zero
gradient: gradscope's view `all`. gradscope records the surviving (unpruned) weights, view
`survivors`, and derives `all` exactly from them. For a layer keeping a fraction d of its weights,
E_all[g^2] = d x E_s[g^2], so with gradients centred near 0, **std_all ~ sqrt(d) x std_s**: the
whole-layer histogram narrows by sqrt(density) even when nothing about the surviving gradients changes.

What gradscope's predictor study found (docs/findings.md; CIFAR-10 ResNet-20 and VGG-11, 5,000-image
subset, 4 epochs per round, 2 seeds each, to 74 % sparsity): the survivors' gradient std **widens**,
1.7-1.9x round 0 (a conv followed by BatchNorm has weight gradients that scale as 1/|w|, and pruning
plus rewinding shrinks |w| by about sqrt(density)); the papers' view is about sqrt(density) x the
survivors' and so stays within 0.89-0.97 of round 0. The narrowing the papers report is, on these
networks, the zeros of the pruned weights. On the digits models the survivors' whole-round pool narrows
(0.64-0.89x at 79 % sparsity) while their last epoch widens (about 1.5x).

The default run of this notebook (built-in digits, `small_cnn`, a few short rounds) is a small example
of the arithmetic, not evidence either way; set `data_root` to a CIFAR-10 folder (ResNet-20) for the
real case. Both views are shown explicitly below, whatever the `view` parameter says; `window` applies."""

DECOMPOSE = r"""import numpy as np
import pandas as pd
from gradscope.store import open_run

with open_run(str(run)) as reader:
    surv = reader.round_summary(view="survivors", window=window).set_index("round")
    allw = reader.round_summary(view="all", window=window).set_index("round")
    lay = reader.layers()
    lr = reader.layer_rounds()
# density of the layers the pooled std is over: recorded and ReLU-fed (round_summary's relu_only)
pooled = set(lay.loc[lay["recorded"] & lay["relu_fed"], "layer"])
lr = lr[lr["layer"].isin(pooled)].groupby("round")[["kept", "numel"]].sum()
density = (lr["kept"] / lr["numel"]).reindex(surv.index)
decomp = pd.DataFrame({
    "sparsity (global)": surv["sparsity"],
    "density (recorded layers)": density,
    "survivors std / round 0": surv["std_ratio"],
    "all std / round 0 (papers' view)": allw["std_ratio"],
    "survivors x sqrt(density)": surv["std_ratio"] * np.sqrt(density / density.iloc[0]),
})
decomp["all / (survivors x sqrt(density))"] = (decomp["all std / round 0 (papers' view)"]
                                               / decomp["survivors x sqrt(density)"])
print(f"pooled std of the weight gradients over {len(pooled)} recorded ReLU-fed layers, "
      f"{'all epochs of each round' if window == 'all' else 'last epoch of each round'}, as a ratio to round 0")
gap = (decomp["all / (survivors x sqrt(density))"] - 1).abs().max()
print(f"largest |all / (survivors x sqrt(density)) - 1| over rounds: {gap:.4f}")
decomp.round(4)"""

DECOMPOSE_PLOT = r"""import matplotlib.pyplot as plt

x = decomp["sparsity (global)"]
fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
ax.plot(x, decomp["survivors std / round 0"], "o-", label="survivors (unpruned weights)")
ax.plot(x, decomp["all std / round 0 (papers' view)"], "s-", label="all weights, pruned as zeros (papers' view)")
ax.plot(x, decomp["survivors x sqrt(density)"], "k--", label="survivors x sqrt(density of recorded layers)")
ax.plot(x, np.sqrt(decomp["density (recorded layers)"]), ":", color="grey", label="sqrt(density) alone")
ax.axhline(1, color="grey", lw=0.5)
ax.set_xlabel("sparsity (fraction of weights pruned, whole network)")
ax.set_ylabel("pooled gradient std / round 0")
ax.set_title(f"{Path(cfg.out).name}: survivors vs the papers' view\n"
             f"(recorded ReLU-fed layers, {'all epochs' if window == 'all' else 'last epoch'} of each round)")
ax.legend()
plt.show()"""


# Notebook 02: calibrate's default view and the Oracle's measured optima.
CAL_VIEW_PARAMS = '''
view = "survivors"           # gradients of: survivors (calibrate's default, as every verb's), all (pruned as zeros), relative
window = "all"               # all epochs of each round, or "last" epoch only'''

ORACLE_PARAMS = '''
oracle_rounds_csv = "analysis/results/cifar10_h200_seed0/rounds.csv"  # predictor-study rounds table (a relative path is looked up from the working directory and the repository root); None: skip
oracle_config = "cifar10-resnet20"  # the table's config whose Oracle optima are drawn
oracle_label = "CIFAR-10 ResNet-20, 5,000-image subset, 4 epochs/round, seed 0, H200"  # what that run was'''

ORACLE_MD = """## The Oracle's best max_lr beside the calibrated curve

The ground truth a calibration should match: per round, the powered Oracle's best `max_lr` (7 grid
values x 3 seeds; the vertex of a quadratic in log `max_lr` through the best grid value and its
neighbours) with its 95 % bootstrap CI, from the committed predictor-study results (`oracle_rounds_csv`;
default: CIFAR-10 ResNet-20, 5,000-image subset, 4 epochs per round, seed 0, on an H200). That seed's
optima rise (x3.3 per unit of sparsity, 95 % CI x1.4-x6.9, a CI that holds one trajectory's noise only);
the second seed's (`analysis/results/cifar10_h200_seed1`) are flat within theirs, and with two
trajectories no verdict across trajectories is possible (docs/findings.md; the calibration study's
several-trajectory verdicts are in its Table A).

Those points come from **that** run, not from this notebook's profile: with the default digits profile
the two differ in data, model and recipe, so compare shapes, not levels. The dashed curve moves the
calibrated curve so that its round 0 sits at the Oracle's round-0 optimum, as the study anchored every
statistic (implied max_lr(k) = opt(0) x (s_0 / s_k)^gamma). Both are drawn against the sparsity of each
round (the calibration's rounds at the planned sparsity 1 - (1 - p)^k)."""

ORACLE_READ = r"""import gradscope


def find_file(name):
    # a path as given, else relative to the working directory, its parent (when run from notebooks/)
    # or the repository root this gradscope was imported from; None when nowhere
    if name is None:
        return None
    p = Path(name).expanduser()
    bases = [Path.cwd(), Path.cwd().parent, Path(gradscope.__file__).resolve().parents[1]]
    for cand in [p] if p.is_absolute() else [b / p for b in bases]:
        if cand.is_file():
            return cand
    return None


oracle_csv = find_file(oracle_rounds_csv)
oracle = None
if oracle_csv is None:
    print(f"no Oracle rounds table at {oracle_rounds_csv!r} (looked in the working directory, its parent "
          "and the repository root): the Oracle plot is skipped")
else:
    table = pd.read_csv(oracle_csv)
    oracle = table.loc[table["config"] == oracle_config,
                       ["round", "sparsity", "status", "optimum", "ci_lo", "ci_hi", "argmax"]].reset_index(drop=True)
    if oracle.empty:
        print(f"{oracle_csv} has no rows for config {oracle_config!r} "
              f"(it has {', '.join(sorted(table['config'].unique()))}): the Oracle plot is skipped")
        oracle = None
    else:
        print(f"Oracle: best max_lr per round with 95 % bootstrap CI, {oracle_label} ({oracle_csv})")
if oracle is not None:
    display(oracle)"""

ORACLE_PLOT = r"""import numpy as np

if oracle is not None:
    p = cal.params
    pred = cal.predict()
    pred["sparsity (planned)"] = 1 - (1 - p["p"]) ** pred["round"]
    fig, ax = plt.subplots(figsize=(9, 5.5), layout="constrained")
    ax.plot(pred["sparsity (planned)"], pred["max_lr"], "o-", color="C0",
            label=f"calibrated S-curve, this notebook's profile ({Path(profile).parent.name}; {cal.status})")
    if np.isfinite(pred["max_lr_lo"]).any():
        ax.fill_between(pred["sparsity (planned)"], pred["max_lr_lo"], pred["max_lr_hi"], color="C0", alpha=0.15,
                        label="calibrated: 95 % band")
    scale = oracle["optimum"].iloc[0] / pred["max_lr"].iloc[0]
    ax.plot(pred["sparsity (planned)"], pred["max_lr"] * scale, "--", color="C0",
            label="calibrated, rescaled to the Oracle's round-0 optimum")
    inner = oracle["status"] == "interior"
    o = oracle[inner]
    ax.errorbar(o["sparsity"], o["optimum"], yerr=[o["optimum"] - o["ci_lo"], o["ci_hi"] - o["optimum"]],
                fmt="s", color="C3", capsize=4, label=f"Oracle best max_lr, 95 % CI ({oracle_label})")
    if (~inner).any():
        e = oracle[~inner]
        ax.plot(e["sparsity"], e["argmax"], "x", color="C3", label="Oracle grid argmax, optimum not interior")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (fraction of weights pruned)")
    ax.set_ylabel("max_lr")
    ax.set_title(f"Calibrated ({cal.source.get('statistic')}, view {cal.source.get('view')}, gamma {gamma:g}) "
                 f"vs the Oracle's measured optimum\nOracle: {oracle_label}")
    ax.legend(fontsize=8)
    plt.show()
    print(f"drawn: Oracle {int(inner.sum())} rounds with an interior optimum (95 % CI), {int((~inner).sum())} "
          f"not interior (grid argmax); calibrated curve {len(pred)} rounds, view {cal.source.get('view')}")"""


def _nb(cells):
    for i, c in enumerate(cells):  # fixed ids: regenerating an unchanged notebook changes nothing
        c.id = f"cell-{i:02d}"
    nb = new_notebook(cells=cells)
    # the kernel scripts/_venv.sh installs (.venv's Python, where gradscope is); papermill -k overrides it
    nb.metadata["kernelspec"] = {"name": "gradscope", "display_name": "Python 3 (gradscope)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def _params(extra: str = "") -> nbformat.NotebookNode:
    c = new_code_cell(COMMON_PARAMS + extra)
    c.metadata["tags"] = ["parameters"]
    return c


def narrowing():
    return _nb([
        new_markdown_cell("# 01 - How the weight-gradient distribution changes as the network is pruned\n\n"
                          "Iterative magnitude pruning with rewinding, recording per-layer histograms and exact "
                          "moments of the gradients of the **unpruned** weights of every ReLU-fed layer "
                          "(`gradscope profile`). Built-in digits data by default; set `data_root` to a CIFAR-10 "
                          "folder for the real thing. `view` and `window` choose which gradients the first cells "
                          "describe (docs/method.md, \"Views\"); the last section shows the survivors' view and "
                          "the papers' view (pruned weights as zeros) side by side, and why they differ by "
                          "sqrt(density)."),
        _params(VIEW_PARAMS),
        new_code_cell(MAKE_CONFIG),
        new_code_cell('cfg = make_config("narrowing")\nPruningRun(cfg, log=lambda s: None).run()\n'
                      'run = Path(cfg.out) / "run.h5"\nrun'),
        new_markdown_cell("Per round: sparsity, the quantiles of |g| from the histograms, and the exact std and "
                          "mean |g| from the moments."),
        new_code_cell('from gradscope.fit import spread_table\n\n'
                      'spread = spread_table(run, view=view, window=window)\nspread'),
        new_markdown_cell("The spread per round at a glance: each percentile of |g| and the std relative to "
                          "round 0 (below 1 = narrower than the dense network), and the quantile bands themselves."),
        new_code_cell('import matplotlib.pyplot as plt\nfrom gradscope.plot import plot_spread\n\n'
                      'fig, axes = plt.subplots(2, 1, figsize=(9, 8.5), layout="constrained")  # one above the other: '
                      'readable text at notebook width\n'
                      'plot_spread(run, relative=True, view=view, window=window, ax=axes[0])\n'
                      'plot_spread(run, relative=False, view=view, window=window, ax=axes[1])\nplt.show()'),
        new_markdown_cell("Distribution fits per layer and pooled (normal, Laplace, Student-t, generalized "
                          "normal, plus the exact std / mean |g| and the binned IQR / MAD), and the trend of each "
                          "statistic against log density (`verdict`: narrows = the slope's 95 % confidence "
                          "interval lies above 0, the scale falls as the density falls; widens = below 0; cannot "
                          "tell = it includes 0). Shown for the exact std; `format_trend(fit)` lists every "
                          "statistic."),
        new_code_cell('from gradscope.fit import fit_run, format_trend\n\n'
                      'fit = fit_run(run, bootstrap=100, store=True, view=view, window=window)\n'
                      'format_trend(fit, statistic="std")'),
        new_code_cell('from gradscope.plot import plot_histograms, plot_narrowing\n\n'
                      'fig, axes = plt.subplots(2, 1, figsize=(9, 10), layout="constrained")\n'
                      'plot_histograms(run, view=view, window=window, ax=axes[0])\n'
                      'plot_narrowing(run, fit=fit, view=view, window=window, ax=axes[1])\nplt.show()'),
        new_markdown_cell(VIEWS_MD),
        new_code_cell(DECOMPOSE),
        new_code_cell(DECOMPOSE_PLOT),
        new_markdown_cell("Reading it: where the `all` column equals `survivors x sqrt(density)` (last column near "
                          "1), the papers' narrowing is the zeros of the pruned weights, not a change in the "
                          "surviving gradients. The identity is exact for the second moment (E_all[g^2] = "
                          "density x E_s[g^2] over the recorded layers); the std differs from it only through "
                          "the gradients' mean."),
    ])


def calibrate():
    return _nb([
        new_markdown_cell("# 02 - From a profile run to a calibrated SILO schedule\n\n"
                          "The measured narrowing implies `max_lr(k) = max_lr(0) * (scale(0)/scale(k))^gamma`; "
                          "SILO's S-curve (lo, hi, beta, midpoint) is fitted to those points and compared with "
                          "the released constants (ResNet-20: lo 0.03, hi 0.07, beta 5; docs/references.md). "
                          "`status` says whether the data support a rising curve at all.\n\n"
                          "The spread is measured, by default, on the surviving weights over every epoch "
                          "of a round (the one default view and window of every verb). Under view `all` "
                          "(pruned weights as zero gradients, the papers' view) the spread shrinks by "
                          "sqrt(density) by arithmetic: `calibrate` splits that part off and judges only what "
                          "the measured gradients add (the gate; docs/method.md). `status` needs 6 rounds for "
                          "a verdict ('underdetermined' below). The calibration prints what the calibration "
                          "study measured for this model and dataset, read from its table: no predictor has "
                          "beaten a constant `max_lr` on accuracy beyond noise (docs/findings.md). The last "
                          "plot draws the Oracle's measured optima beside the calibrated curve."),
        _params(CAL_VIEW_PARAMS + '\nprofile = None             # an existing RUN.h5 to calibrate from; None: run a profile here\n'
                'gamma = 1.0                # max_lr ~ scale^-gamma\nstatistic = "std"          # spread statistic'
                + ORACLE_PARAMS),
        new_code_cell(MAKE_CONFIG),
        new_code_cell('if profile is None:\n    cfg = make_config("calibrate-profile")\n'
                      '    PruningRun(cfg, log=lambda s: None).run()\n    profile = str(Path(cfg.out) / "run.h5")\n'
                      'profile'),
        new_code_cell('from gradscope.calibrate import calibrate_run, describe_calibration, format_calibration\n\n'
                      'cal = calibrate_run(profile, gamma=gamma, statistic=statistic, view=view, window=window)\n'
                      'print("\\n".join(describe_calibration(cal)))\nformat_calibration(cal)'),
        new_code_cell('import pandas as pd\nfrom gradscope.schedules import SILO_PRESETS\n\n'
                      'keys = ["lo", "hi", "beta", "midpoint"]\n'
                      'pd.DataFrame({"calibrated": [cal.params[k] for k in keys],\n'
                      '              **{f"released {n}": [SILO_PRESETS[n][k] for k in keys] for n in SILO_PRESETS}},\n'
                      '             index=keys)'),
        new_markdown_cell("Write the schedule file that `gradscope prune --schedule silo --schedule-file` reads. "
                          "`to_file` refuses when the status is not \"supported\" (the data do not support a "
                          "rising S-curve); `force=True` writes it anyway, with the status inside."),
        new_code_cell('schedule_file = Path(out_dir) / "silo-calibrated.yaml"\n'
                      'if cal.status == "supported":\n    cal.to_file(schedule_file)\n'
                      '    print(f"wrote {schedule_file} (notebook 03 runs SILO from it): " + ", ".join(\n'
                      '        f"{k} {cal.params[k]:.4g}" for k in ("lo", "hi", "beta", "midpoint")))\n'
                      'else:\n    print(f"status {cal.status}: no schedule file written (notebook 03 then runs SILO with '
                      'the released ResNet-20 constants, and says so)")'),
        new_code_cell('import matplotlib.pyplot as plt\nfrom gradscope.plot import plot_calibration, plot_peaks\n'
                      'from gradscope.schedules import get_schedule\n\n'
                      'fig, axes = plt.subplots(2, 1, figsize=(9, 9), layout="constrained")\n'
                      'plot_calibration(profile, statistic=statistic, gamma=gamma, view=view, window=window, ax=axes[0])\n'
                      'p = cal.params\n'
                      'silo_cal = get_schedule("silo", lo=p["lo"], hi=p["hi"], beta=p["beta"], midpoint=p["midpoint"])\n'
                      'plot_peaks({f"calibrated ({cal.status})": silo_cal,\n'
                      '            "released resnet20": get_schedule("silo", preset="resnet20")},\n'
                      '           rounds=len(cal.points), prune_rate=p["p"], ax=axes[1])  # the measured rounds only\n'
                      'axes[1].set_title(f"max_lr per round over the {len(cal.points)} measured rounds (no band: see the '
                      'calibration above for it)", fontsize="medium")\nplt.show()'),
        new_markdown_cell(ORACLE_MD),
        new_code_cell(ORACLE_READ),
        new_code_cell(ORACLE_PLOT),
    ])


def schedules():
    return _nb([
        new_markdown_cell("# 03 - SILO vs the baselines on accuracy vs sparsity\n\n"
                          "The same pruning run under several LR schedules (SILO's S-curved `max_lr` against "
                          "fixed-peak LTH warm-up+step and one-cycle CLR), and the Oracle when its run "
                          "directory is given (`gradscope oracle`).\n\n"
                          "SILO runs from the schedule file notebook 02 calibrated for this model "
                          "(`out_dir/silo-calibrated.yaml`, written when its status was \"supported\"). Without "
                          "that file it runs with the released ResNet-20 constants (max_lr 0.03 to 0.07), made for "
                          "ResNet-20 on CIFAR-10, not for this model: the cell below says which one ran, and an "
                          "uncalibrated SILO's accuracy says nothing about SILO."),
        _params('\nschedules = ["silo", "lth", "clr"]  # schedule names\noracle_dir = None          # a `gradscope oracle` run directory, if any\n'
                'silo_file = None           # SILO schedule file; None: the one notebook 02 wrote, out_dir/silo-calibrated.yaml'),
        new_code_cell(MAKE_CONFIG),
        new_code_cell('silo_path = Path(silo_file) if silo_file else Path(out_dir) / "silo-calibrated.yaml"\n'
                      'runs = {}\nfor name in schedules:\n    cfg = make_config(f"schedule-{name}", schedule=name, record=False, max_lr=None)\n'
                      '    if name == "silo":\n'
                      '        if silo_path.is_file():\n'
                      '            cfg.schedule.schedule_file = str(silo_path)\n'
                      '            print(f"silo: calibrated, from {silo_path} (notebook 02)")\n'
                      '        else:\n'
                      '            print(f"silo: NOT calibrated: no {silo_path} (run notebook 02 first; it writes the file "\n'
                      '                  "when its status is supported): the released ResNet-20 constants, max_lr 0.03 to 0.07")\n'
                      '    PruningRun(cfg, log=lambda s: None).run()\n    runs[name] = cfg.out\n'
                      'if oracle_dir:\n    runs["oracle"] = oracle_dir\nruns'),
        new_code_cell('import pandas as pd\nfrom gradscope.plot import run_rounds\n\n'
                      'table = pd.concat({n: run_rounds(d).set_index("round")[["sparsity", "max_lr", "test_acc"]]\n'
                      '                   for n, d in runs.items()}, axis=1)\ntable'),
        new_code_cell('import matplotlib.pyplot as plt\nfrom gradscope.plot import plot_accuracy, plot_run_schedules\n\n'
                      'fig, axes = plt.subplots(2, 1, figsize=(9, 8), layout="constrained")\n'
                      'plot_accuracy(list(runs.values()), labels=list(runs), ax=axes[0])\n'
                      '# the max_lr each run actually used, round by round (its own parameters)\n'
                      'plot_run_schedules(list(runs.values()), labels=list(runs), peaks=True, ax=axes[1])\nplt.show()'),
        new_markdown_cell("## What the headline study measured\n\n"
                          "One run per schedule, as above, cannot tell schedules apart: a run's test accuracy on "
                          "digits has a binomial standard error near 1 point. `analysis/headline_study.py` ran "
                          "every schedule on the same 16 (LeNet-300-100) and 8 (small CNN) pruning trajectories "
                          "to 89.3 % pruned, with selection on validation only (docs/findings.md, \"The headline "
                          "table\"). Its committed paired differences, SILO minus the best baseline at each "
                          "sparsity, with 95 % t-intervals over trajectories:"),
        new_code_cell('import gradscope\nfrom IPython.display import Image\n\n'
                      'root = Path(gradscope.__file__).resolve().parents[1]\n'
                      'paired_csv = root / "analysis" / "results" / "headline" / "paired.csv"\n'
                      'if paired_csv.is_file():\n'
                      '    paired = pd.read_csv(paired_csv)\n'
                      '    display(paired[paired.reference == "best"][["config", "pruned", "method", "best_baseline", "n",\n'
                      '                                                 "diff_mean", "diff_lo", "diff_hi", "verdict"]])\n'
                      '    fig_png = root / "docs" / "img" / "headline.png"\n'
                      '    if fig_png.is_file():\n'
                      '        display(Image(filename=str(fig_png)))\n'
                      'else:\n'
                      '    print(f"no {paired_csv}: this gradscope is not a checkout with the study\'s results")'),
    ])


# Notebook 04: the released SILO recipe one ingredient at a time (issue 21; analysis/recipe_factorial.py).
RECIPE_PARAMS = '''# Parameters (papermill: override with -p NAME VALUE)
results_dir = "analysis/results/recipe"  # the committed factorial CSVs (a relative path is looked up from the working directory, its parent and the repository root)
figure = "docs/img/recipe_factorial.png"  # the committed figure, looked up the same way
live = True                  # run a tiny live factorial (analysis/recipe_factorial.py --tiny; seconds per cell)
live_cells = "default,fc,full"  # cells of the live factorial (of default, fc, delta, bn, reinit, warmup, full)
live_seeds = "0,1"           # its trajectories (two give a t-interval, a very wide one)
data_root = None             # the CIFAR-10 archive or folder; None: shared/data/cifar10-jpeg.tar.xz beside the repository
out_dir = "runs/notebooks"   # the live factorial's runs and results are written under here
cache_dir = None             # dataset cache folder (None: the script's, data/cache in the repository)'''

RECIPE_MD = """# 04 - The released SILO recipe, one ingredient at a time

gradscope's default recipe (global magnitude pruning of conv/linear weights, weights rewound to init, a
fixed-peak warm-up-step LR, a BatchNorm conv net with a global-average-pool head) is not the recipe the
SILO authors released (docs/recipe-silo-code.md). The factorial study switches one released ingredient at
a time, then all of them, and asks: **does any of them make the surviving weights' gradients narrow**
(std ratio to round 0 below 1, with a CI over trajectories), per layer type (conv followed by BatchNorm;
fully connected without), under each window (all epochs of a round; its last epoch) and in both views
(survivors; all weights with the pruned ones as zeros, which shrink by sqrt(density) by arithmetic)?

Cells: **default**; **fc** (the released FC block: two hidden FC layers with dropout, no BN); **delta**
(|w_T - w_(T-1)| pruning, one global threshold); **bn** (BatchNorm weights pruned too); **reinit** (new
random weights after pruning); **warmup** (the released ramp-and-drops LR, scaled to the round); **full**
(all of them, the released init and S-curve).

The first part reads the committed per-round data of the CPU study (`analysis/results/recipe/`; the
scale, the answer and its limits are in docs/findings.md, section "The released SILO recipe, one
ingredient at a time"); the last part runs a tiny factorial live, so the pipeline can be seen end to end.
A network at chance accuracy says nothing about narrowing, so every table carries the test accuracy."""

RECIPE_FIND = r"""from pathlib import Path

import pandas as pd

import gradscope

ROOT = Path(gradscope.__file__).resolve().parents[1]  # the repository this gradscope was imported from


def find(name, kind="file"):
    # a path as given, else relative to the working directory, its parent (when run from notebooks/)
    # or the repository root; None when nowhere
    if name is None:
        return None
    p = Path(name).expanduser()
    ok = Path.is_file if kind == "file" else Path.is_dir
    for cand in [p] if p.is_absolute() else [b / p for b in (Path.cwd(), Path.cwd().parent, ROOT)]:
        if ok(cand):
            return cand
    return None


results = find(results_dir, "dir")
if results is None or not (results / "factorial_summary.csv").is_file():
    print(f"no factorial results at {results_dir!r}: run `python analysis/recipe_factorial.py --analyse` "
          "in the repository (the committed tables are skipped)")
    results = None
else:
    summary = pd.read_csv(results / "factorial_summary.csv")
    accuracy = pd.read_csv(results / "factorial_accuracy.csv")
    print(f"committed factorial: {results}; {summary['cell'].nunique()} cells, rounds 0-{summary['round'].max()}, "
          f"up to {summary['n_seeds'].max()} trajectories per cell")"""

RECIPE_TABLE = r"""CELLS = ["default", "fc", "delta", "bn", "reinit", "warmup", "full"]


def verdict(lo, hi):
    return "narrower" if hi < 1 else "wider" if lo > 1 else "cannot tell"


def last_round(summary):
    # per cell and layer type: the std ratio at the last round (mean [95 % t-CI over trajectories]) under
    # each view and window, the trajectories n, the survivors' verdict and the test accuracy
    k = summary["round"].max()
    s = summary[summary["round"] == k].copy()
    s["ratio"] = [f"{m:.2f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi in zip(s["ratio_mean"], s["ci_lo"], s["ci_hi"])]
    s["column"] = (s["view"].map({"survivors": "survivors", "all": "all weights"}) + ", "
                   + s["window"].map({"all": "all epochs", "last": "last epoch"}))
    t = s.pivot_table(index=["cell", "layer_type"], columns="column", values="ratio", aggfunc="first")
    t = t[[c for c in ("survivors, all epochs", "survivors, last epoch", "all weights, all epochs",
                       "all weights, last epoch") if c in t.columns]]
    surv = s[s["view"] == "survivors"].set_index(["cell", "layer_type", "window"])
    t["survivors narrower? (all epochs / last epoch)"] = [
        " / ".join(verdict(surv.loc[(c, l, w), "ci_lo"], surv.loc[(c, l, w), "ci_hi"]) for w in ("all", "last"))
        for c, l in t.index]
    t["n"] = [int(surv.loc[(c, l, "all"), "n_seeds"]) for c, l in t.index]
    t[f"test acc. round {k}, %"] = [f"{100 * surv.loc[(c, l, 'all'), 'test_acc_mean']:.1f}" for c, l in t.index]
    t = t.reindex([ix for c in CELLS for ix in t.index if ix[0] == c])
    sp = float(s["sparsity"].iloc[0])
    print(f"gradient std, round {k} / round 0 ({100 * sp:.1f} % pruned; sqrt(density) {(1 - sp) ** 0.5:.3f} over "
          "the network, what the all-weights view shows by arithmetic alone, each layer type by its own density: "
          "column sqrt_type_density of the summary); mean over trajectories [95 % t-interval over them]")
    return t


if results is not None:
    display(last_round(summary))"""

RECIPE_ACC = r"""def accuracy_by_round(accuracy):
    a = accuracy.copy()
    a["acc"] = [f"{100 * m:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" for m, lo, hi in
                zip(a["test_acc_mean"], a["test_acc_lo"], a["test_acc_hi"])]
    t = a.pivot(index="cell", columns="round", values="acc")
    t.columns = [f"round {k}" for k in t.columns]
    return t.reindex([c for c in CELLS if c in t.index])


if results is not None:
    print("test accuracy per round, % (mean [95 % t-CI over trajectories]; chance 10 %): a cell at chance says "
          "nothing about narrowing")
    display(accuracy_by_round(accuracy))"""

RECIPE_FIG = r"""from IPython.display import Image

fig_path = find(figure)
if fig_path is None:
    print(f"no figure at {figure!r} (`python analysis/recipe_factorial.py --analyse` draws it)")
else:
    print(f"{fig_path}: std ratio to round 0 per round (rows: layer type; columns: view x window; bands: 95 % CI "
          "over trajectories; dotted: sqrt(whole-network density)), and test accuracy per round")
    display(Image(filename=str(fig_path)))"""

RECIPE_LIVE_MD = """## A tiny factorial, live

The same script at its CI size (`--tiny`: 128 CIFAR-10 training images, 2 rounds of 2 epochs of 2 steps
per cell and trajectory): the runs are recorded by `gradscope profile`, read back into per-round CSVs and
summarised the same way. At this size the networks do not learn (accuracy near chance) and two
trajectories give very wide intervals: it shows the pipeline, not an answer."""

RECIPE_LIVE = r"""import os
import subprocess
import sys

script = ROOT / "analysis" / "recipe_factorial.py"
archive = Path(data_root) if data_root else ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"
if not archive.exists() and not data_root:  # a worktree one level deeper finds shared/ one level further up
    archive = next((p / "shared" / "data" / "cifar10-jpeg.tar.xz" for p in ROOT.parents
                    if (p / "shared" / "data" / "cifar10-jpeg.tar.xz").exists()), archive)
live_results = None
if not live:
    print("live = False: the tiny factorial is not run")
elif not script.is_file():
    print(f"no {script} (gradscope installed without its repository): the tiny factorial is skipped")
elif not archive.exists():
    print(f"no CIFAR-10 at {archive} (set data_root): the tiny factorial is skipped")
else:
    base = Path(out_dir).resolve() / "recipe-tiny"
    cmd = [sys.executable, str(script), "--tiny", "--cells", live_cells, "--seeds", live_seeds,
           "--runs", str(base / "runs"), "--results", str(base / "results"), "--data-root", str(archive),
           "--figure", str(base / "recipe_factorial_tiny.png")]
    if cache_dir:
        cmd += ["--cache", str(Path(cache_dir).resolve())]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"recipe_factorial.py --tiny exited {done.returncode}:\n{done.stderr[-3000:]}")
    live_results = base / "results" / "tiny"
    print("ran: python " + " ".join(cmd[1:]))"""

RECIPE_LIVE_SHOW = r"""if live_results is not None:
    tiny = pd.read_csv(live_results / "factorial_summary.csv")
    print(f"live tiny factorial ({live_results}): {tiny['cell'].nunique()} cells x {tiny['n_seeds'].max()} "
          "trajectories")
    display(last_round(tiny))
    display(accuracy_by_round(pd.read_csv(live_results / "factorial_accuracy.csv")))
    display(Image(filename=str(live_results.parent.parent / "recipe_factorial_tiny.png")))"""

RECIPE_END_MD = """## Regenerate, extend, run at full width

- Tables and figure from the committed CSVs (no runs): `python analysis/recipe_factorial.py --analyse`.
- The CPU study itself (resumes; one thread per process, `nice`): `python analysis/recipe_factorial.py`, or in
  parallel streams `--part 0/3`, `--part 1/3`, `--part 2/3`, then `--collect`.
- Full width (the released vgg19_bn, 36,000 training images per round) on a GPU:
  `python analysis/recipe_factorial.py --gpu --runs /scratch/rf` (the script's docstring says what it needs
  and how long it takes)."""


def recipe():
    params = new_code_cell(RECIPE_PARAMS)
    params.metadata["tags"] = ["parameters"]
    return _nb([
        new_markdown_cell(RECIPE_MD),
        params,
        new_code_cell(RECIPE_FIND),
        new_code_cell(RECIPE_TABLE),
        new_code_cell(RECIPE_ACC),
        new_code_cell(RECIPE_FIG),
        new_markdown_cell(RECIPE_LIVE_MD),
        new_code_cell(RECIPE_LIVE),
        new_code_cell(RECIPE_LIVE_SHOW),
        new_markdown_cell(RECIPE_END_MD),
    ])


NOTEBOOKS = {"01-narrowing.ipynb": narrowing, "02-calibrate-silo.ipynb": calibrate, "03-schedules.ipynb": schedules,
             "04-papers-recipe.ipynb": recipe}


def main() -> None:
    for name, make in NOTEBOOKS.items():
        nbformat.write(make(), HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
