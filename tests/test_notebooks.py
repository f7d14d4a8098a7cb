"""Each notebook runs end to end with small parameters (papermill, kernel python3)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest

import papermill

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (CI), or one level further up from a worktree (as notebook 04 looks)
CIFAR_ARCHIVE = next((p / "shared" / "data" / "cifar10-jpeg.tar.xz" for p in ROOT.parents
                      if (p / "shared" / "data" / "cifar10-jpeg.tar.xz").exists()),
                     ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.xz")
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SMALL = {"rounds": 5, "epochs": 1, "threads": 1}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_papermill_sees_every_parameter(path, caplog):
    # papermill skips (with a warning) any line of the parameters cell holding a second "=",
    # e.g. "rounds = 8  # (round 0 = dense)": --help-notebook then omits it and injection warns
    import ast
    import logging
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assigned = [t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets]
    with caplog.at_level(logging.WARNING, logger="papermill"):
        seen = papermill.inspect_notebook(str(path))
    assert list(seen) == assigned, path.name
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]
    assert all(p["help"] for p in seen.values()), path.name  # --help-notebook explains each one
    for p in seen.values():
        ast.literal_eval(p["default"])  # a plain literal papermill can override


def test_notebooks_are_stored_without_outputs_and_with_parameters_cell():
    assert [p.name for p in NOTEBOOKS] == ["01-narrowing.ipynb", "02-calibrate-silo.ipynb", "03-schedules.ipynb",
                                           "04-papers-recipe.ipynb"]
    for p in NOTEBOOKS:
        nb = nbformat.read(p, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), p.name
        assert all(not c.outputs and c.execution_count is None for c in code), f"{p.name} has outputs"
        assert not any("analysis" in c.source.split("import")[0] for c in code if "import" in c.source)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch, request):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    small = {**SMALL, "rounds": 3} if path.stem.startswith("03") else SMALL  # 02 needs 5 rounds to calibrate
    params = {**small, "out_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")}
    if path.stem.startswith("04"):
        # the committed factorial (read relative to the repository root) and a live --tiny factorial of
        # 2 cells x 2 trajectories on the real CIFAR-10 archive, decoded once per session (real_cache)
        cache = request.getfixturevalue("real_cache") if CIFAR_ARCHIVE.exists() else str(tmp_path / "cache")
        params = {"out_dir": str(tmp_path / "runs"), "cache_dir": cache, "live_cells": "default,full",
                  "live_seeds": "0,1"}
    if path.stem.startswith("02"):
        # an Oracle rounds table in the predictor study's columns, given relative to the cwd: one
        # interior round per CI bar, one edge round drawn as a grid argmax, another config ignored
        import pandas as pd
        pd.DataFrame({"config": ["cifar10-resnet20"] * 3 + ["cifar10-vgg11"], "round": [0, 1, 2, 0],
                      "sparsity": [0.0, 0.2, 0.36, 0.0], "status": ["interior", "interior", "edge", "interior"],
                      "optimum": [0.04, 0.05, float("nan"), 0.03], "ci_lo": [0.03, 0.04, float("nan"), 0.02],
                      "ci_hi": [0.06, 0.07, float("nan"), 0.05], "argmax": [0.04, 0.05, 0.2, 0.03]}
                     ).to_csv(tmp_path / "rounds.csv", index=False)
        params["oracle_rounds_csv"] = "rounds.csv"
    out = tmp_path / path.name
    papermill.execute_notebook(str(path), str(out), parameters=params, kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False, execution_timeout=120)
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert any(c.outputs for c in nb.cells if c.cell_type == "code")
    if path.stem.startswith("01"):  # the papers' view is survivors x sqrt(density of the recorded layers)
        cell = next(c for c in nb.cells if c.cell_type == "code" and "survivors x sqrt(density)" in c.source)
        gap = re.search(r"largest \|all / \(survivors x sqrt\(density\)\) - 1\| over rounds: ([0-9.]+)", _text(cell))
        assert gap and float(gap.group(1)) < 0.02, _text(cell)
    if path.stem.startswith("02"):  # calibrated under the one default view, the Oracle's CIs read and drawn
        from gradscope.views import DEFAULT_VIEW

        cal = next(c for c in nb.cells if c.cell_type == "code" and "describe_calibration(cal)" in c.source)
        assert f"view {DEFAULT_VIEW}" in _text(cal) and "gate:" in _text(cal)
        read = next(c for c in nb.cells if c.cell_type == "code" and "find_file(" in c.source)
        assert "Oracle: best max_lr per round with 95 % bootstrap CI" in _text(read)
        assert "drawn: Oracle 2 rounds with an interior optimum (95 % CI), 1 not interior (grid argmax); " \
               f"calibrated curve 5 rounds, view {DEFAULT_VIEW}" in _text(_next_code(nb, read))
    if path.stem.startswith("03"):  # the headline study's committed paired differences are shown
        cell = next(c for c in nb.cells if c.cell_type == "code" and "paired.csv" in c.source)
        text = _text(cell)
        assert "silo-cal" in text and "best_baseline" in text, text
        assert any("image/png" in o.get("data", {}) for o in cell.outputs)
    if path.stem.startswith("04"):
        _check_recipe_notebook(nb, tmp_path)


def _check_recipe_notebook(nb, tmp_path):
    """04 shows the committed factorial's last round and accuracy, and (with CIFAR-10 beside the
    repository) runs the tiny factorial live: both cells, two trajectories each, read back."""
    import pandas as pd

    code = [c for c in nb.cells if c.cell_type == "code"]
    committed = pd.read_csv(ROOT / "analysis" / "results" / "recipe" / "factorial_summary.csv")
    k = int(committed["round"].max())
    table = next(c for c in code if "def last_round" in c.source)
    assert f"gradient std, round {k} / round 0" in _text(table), _text(table)
    assert "survivors narrower?" in _text(table)
    live = next(c for c in code if "recipe_factorial.py" in c.source and "subprocess" in c.source)
    if not CIFAR_ARCHIVE.exists():
        assert "the tiny factorial is skipped" in _text(live)
        return
    assert "ran: python" in _text(live) and "--tiny" in _text(live)
    shown = _text(_next_code(nb, live))
    assert "cells x 2 trajectories" in shown and "gradient std, round 1 / round 0" in shown, shown
    tiny = pd.read_csv(tmp_path / "runs" / "recipe-tiny" / "results" / "tiny" / "factorial_summary.csv")
    assert sorted(tiny["cell"].unique()) == ["default", "full"] and set(tiny["n_seeds"]) == {2}
    assert {"conv (+BN)", "fc (no BN)"} <= set(tiny["layer_type"])  # full has the FC block


def _text(cell) -> str:
    """Everything a code cell printed or displayed as text."""
    parts = []
    for o in cell.outputs:
        parts.append(o.get("text", ""))
        parts.append(o.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def _next_code(nb, cell):
    cells = [c for c in nb.cells if c.cell_type == "code"]
    return cells[cells.index(cell) + 1]


def test_notebook_02_defaults_follow_calibrate_and_the_committed_study():
    """Notebook 02 calibrates with calibrate's default view and reads an Oracle table that exists."""
    import ast

    from gradscope.views import DEFAULT_VIEW

    params = papermill.inspect_notebook(str(ROOT / "notebooks" / "02-calibrate-silo.ipynb"))
    assert ast.literal_eval(params["view"]["default"]) == DEFAULT_VIEW
    csv = ast.literal_eval(params["oracle_rounds_csv"]["default"])
    assert (ROOT / csv).is_file(), csv
