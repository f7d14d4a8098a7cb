"""analysis/recipe_factorial.py's pure parts: one ingredient per cell, the scaled released LR, the CI."""
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rf():
    spec = importlib.util.spec_from_file_location("recipe_factorial", ROOT / "analysis" / "recipe_factorial.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _flags(args):
    out, i = {}, 0
    while i < len(args):
        if args[i].startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            out[args[i]] = args[i + 1]
            i += 2
        else:
            out[args[i]] = True
            i += 1
    return out


def test_each_cell_switches_one_ingredient(rf, tmp_path):
    size = dict(rf.SIZES["tiny"], runs=tmp_path, results=tmp_path, cache=str(tmp_path))
    base = _flags(rf.cell_args("default", size, 0, tmp_path / "d"))
    changed = {}
    for cell in rf.CELLS[1:-1]:
        f = _flags(rf.cell_args(cell, size, 0, tmp_path / cell))
        diff = {k for k in set(f) | set(base) if f.get(k) != base.get(k) and k not in ("--out", "--schedule-file")}
        changed[cell] = diff
        if cell == "warmup":  # the ingredient lives in the schedule file
            assert diff == set(), diff
            assert "silo-released" in (tmp_path / "warmup.schedule.json").read_text()
        else:
            assert len(diff) in (1, 2), (cell, diff)  # a boolean flag shows as --x vs --no-x
    full = _flags(rf.cell_args("full", size, 0, tmp_path / "full"))
    assert full["--model"] == "analysis.recipe_models:a_pfc_released"
    assert full["--prune-method"] == "delta" and full["--rewind"] == "reinit"
    assert "--prune-bn" in full and full["--schedule"] == "silo"
    pilot = dict(rf.SIZES["pilot"], runs=tmp_path, results=tmp_path, cache=str(tmp_path))
    assert _flags(rf.cell_args("full", pilot, 0, tmp_path / "p"))["--model"] == "vgg19_silo_narrow"  # pilot as run
    cpu = dict(rf.SIZES["cpu"], runs=tmp_path, results=tmp_path, cache=str(tmp_path))
    assert _flags(rf.cell_args("default", cpu, 0, tmp_path / "c"))["--every"] == "4"


def test_streams_split_the_runs_once_each(rf):
    cells, seeds = ["default", "fc", "full"], [0, 1, 2]
    streams = [rf.run_list(cells, seeds, (i, 3)) for i in range(3)]
    flat = [r for s in streams for r in s]
    assert sorted(flat) == sorted((c, s) for c in cells for s in seeds) and len(flat) == 9
    assert [s for _, s in streams[1]] == [1, 1, 1]  # stream i runs trajectory i of every cell
    assert rf.run_list(cells, seeds)[:3] == [("default", 0), ("default", 1), ("default", 2)]  # cell-major priority


def test_models_heads_and_fc_share():
    """The study's CPU models: the default has no FC block; fc/full have the released FC block's
    layers (no BN) holding most weights; full keeps the released init through reinitialize."""
    import torch
    from torch import nn

    from analysis import recipe_models as M

    gap, fc, full = (f((3, 32, 32), 10) for f in (M.a_gap, M.a_pfc, M.a_pfc_released))
    for m in (gap, fc, full):
        assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    lin = [x for x in fc.modules() if isinstance(x, nn.Linear)]
    assert [x.out_features for x in lin] == [1024, 1024, 10]
    assert not any(isinstance(x, nn.BatchNorm1d) for x in fc.modules())
    weights = sum(p.numel() for n, p in fc.named_parameters() if n.endswith("weight"))
    assert 0.6 < sum(x.weight.numel() for x in lin) / weights < 0.75
    assert len([x for x in gap.modules() if isinstance(x, nn.Linear)]) == 1
    assert sum(isinstance(x, nn.Conv2d) for x in gap.modules()) == 8  # VGG-11's plan
    assert full.init_kind == "released" and fc.init_kind == "kaiming"
    full.reinitialize(torch.Generator().manual_seed(1))
    bias = full.classifier[0].bias.detach()
    assert 0.8 < float(bias.std()) < 1.2  # the released weight_init: N(0, 1) biases (Kaiming: zeros)
    fc.reinitialize(torch.Generator().manual_seed(1))
    assert float(fc.classifier[0].bias.detach().abs().max()) == 0.0


def test_scaled_released_lr_keeps_its_proportions(rf):
    s = rf.released_shape(50, 563)
    assert s["drop_epochs"] == [25, 32] and s["ramp_steps"] == 20000  # the released numbers at full scale
    t = rf.released_shape(2, 8)
    assert t["drop_epochs"] == [1, 2] and t["epochs"] == 2


def test_summary_ci_over_seeds(rf):
    df = pd.DataFrame({"cell": "x", "round": 1, "view": "all", "window": "all", "layer_type": "conv (+BN)",
                       "ratio": [0.9, 1.0, 1.1], "sparsity": 0.2, "sqrt_density": np.sqrt(0.8), "test_acc": 0.5})
    s = rf.summarise(df).iloc[0]
    half = 4.302652729749464 * 0.1 / np.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n)
    assert s["ratio_mean"] == pytest.approx(1.0) and s["ci_hi"] - 1.0 == pytest.approx(half)
    assert s["n_seeds"] == 3 and s["ci_level"] == 0.95


def test_paired_difference_and_verdicts(rf):
    rows = []
    for cell, ratios in (("default", [1.0, 1.2, 1.4]), ("reinit", [1.3, 1.4, 1.8])):
        for seed, r in enumerate(ratios):
            for k in (0, 1):
                rows.append({"cell": cell, "seed": seed, "round": k, "view": "survivors", "window": "all",
                             "layer_type": "conv (+BN)", "ratio": 1.0 if k == 0 else r, "sparsity": 0.2 * k,
                             "sqrt_density": (1 - 0.2 * k) ** 0.5, "test_acc": 0.5, "val_acc": 0.5})
    p = rf.paired_vs_default(pd.DataFrame(rows)).iloc[0]
    d = np.array([0.3, 0.2, 0.4])  # paired by seed, not the difference of the two means' intervals
    half = 4.302652729749464 * d.std(ddof=1) / np.sqrt(3)
    assert p["cell"] == "reinit" and p["n_pairs"] == 3
    assert p["diff_mean"] == pytest.approx(0.3) and p["ci_hi"] - 0.3 == pytest.approx(half)
    assert rf.verdict(0.5, 0.9) == "narrower" and rf.verdict(1.1, 2) == "wider" and rf.verdict(0.9, 1.1) == "cannot tell"
    assert rf.verdict(float("nan"), float("nan")) == "n < 2"


def test_analyse_regenerates_the_committed_tables(rf, tmp_path):
    """--analyse needs only the committed factorial_rounds.csv: the summary and the tables it writes
    equal the committed ones (no runs present)."""
    committed = ROOT / "analysis" / "results" / "recipe"
    (tmp_path / "factorial_rounds.csv").write_bytes((committed / "factorial_rounds.csv").read_bytes())
    size = dict(rf.SIZES["cpu"], runs=tmp_path / "no-runs", results=tmp_path, cache=str(tmp_path))
    rf.analyse(size, figure=tmp_path / "f.png", title="t")
    for name in ("factorial_summary.csv", "factorial_accuracy.csv", "factorial_vs_default.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / name), pd.read_csv(committed / name))
    assert (tmp_path / "factorial_table.md").read_text() == (committed / "factorial_table.md").read_text()
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_type_density_is_the_layer_types_own(rf):
    """Global pruning prunes layer types unevenly: the all-weights arithmetic uses each type's density."""
    rows = [{"cell": "x", "seed": 0, "round": 1, "view": v, "window": "all", "layer_type": t, "n_values": n,
             "ratio": 1.0, "sparsity": 0.2, "sqrt_density": np.sqrt(0.8), "test_acc": 0.5, "val_acc": 0.5}
            for t, surv, total in (("conv (+BN)", 90, 100), ("fc (no BN)", 25, 100))
            for v, n in (("survivors", surv), ("all", total))]
    s = rf.summarise(pd.DataFrame(rows)).set_index(["layer_type", "view"])
    assert s.loc[("conv (+BN)", "all"), "sqrt_type_density"] == pytest.approx(np.sqrt(0.9))
    assert s.loc[("fc (no BN)", "survivors"), "sqrt_type_density"] == pytest.approx(0.5)
