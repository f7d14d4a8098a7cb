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
    assert full["--model"] == "vgg19_silo_narrow" and full["--prune-method"] == "delta" and full["--rewind"] == "reinit"
    assert "--prune-bn" in full and full["--schedule"] == "silo"


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
