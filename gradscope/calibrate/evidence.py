"""What the calibration study measured, read from the table it wrote (never a string here).

``analysis/calibration_analysis.py`` writes ``evidence.csv`` beside this module: one row per
(configuration, predictor), scored against the powered Oracle by regret (validation accuracy
lost by using the predictor's max_lr instead of the Oracle's optimum) with its CI over
trajectories, and the paired difference to a constant max_lr. ``calibrate`` prints the rows
that match the run (model, dataset, view), including where the choice loses, or says that
nothing comparable was measured.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

EVIDENCE_FILE = Path(__file__).with_name("evidence.csv")
COLUMNS = ("study", "model", "dataset", "view", "window", "statistic", "predictor", "trajectories", "rounds",
           "metric", "value", "value_lo", "value_hi", "vs_constant", "vs_constant_lo", "vs_constant_hi",
           "verdict", "level")


def load_evidence(path: Optional[Path] = None) -> pd.DataFrame:
    """The study's table (empty, with the columns, when the file is missing or unreadable)."""
    p = Path(path) if path is not None else EVIDENCE_FILE
    try:
        df = pd.read_csv(p)
    except (OSError, ValueError, pd.errors.ParserError):
        return pd.DataFrame(columns=list(COLUMNS))
    missing = [c for c in COLUMNS if c not in df]
    return pd.DataFrame(columns=list(COLUMNS)) if missing else df


def _row_words(r) -> str:
    lvl = f"{100 * float(r['level']):.0f} %" if np.isfinite(float(r["level"])) else "95 %"
    head = f"{r['predictor']}: {float(r['value']):.3g} ({lvl} CI {float(r['value_lo']):.3g} .. {float(r['value_hi']):.3g})"
    if not np.isfinite(float(r["vs_constant_lo"])):  # the constant itself: the reference
        return f"{head} [reference; {int(r['trajectories'])} trajectories, {int(r['rounds'])} rounds]"
    return (f"{head}; minus the constant's {float(r['vs_constant']):+.3g} ({float(r['vs_constant_lo']):+.3g} .. "
            f"{float(r['vs_constant_hi']):+.3g}): {r['verdict']}")


def evidence_lines(model: Optional[str], dataset: Optional[str], view: str, window: str,
                   statistic: str = "std", table: Optional[pd.DataFrame] = None) -> list:
    """Lines for a calibration of ``model`` on ``dataset`` under ``view``/``window``: the
    study's rows for that configuration (this view's statistic and the other predictors it
    was compared with), or one line saying nothing comparable was measured."""
    t = load_evidence() if table is None else table
    if t.empty:
        return ["evidence: no calibration study table is installed (gradscope/calibrate/evidence.csv); "
                "check a calibrated schedule with `gradscope oracle`"]
    here = t[(t["model"] == model) & (t["dataset"] == dataset)]
    if here.empty:
        measured = ", ".join(sorted({f"{m} on {d}" for m, d in zip(t["model"], t["dataset"])}))
        return [f"evidence: nothing comparable was measured for {model} on {dataset} (the calibration study "
                f"measured {measured}: docs/findings.md); check a calibrated schedule with `gradscope oracle`"]
    study, metric = here["study"].iloc[0], here["metric"].iloc[0]
    out = [f"evidence ({study}; docs/findings.md) for {model} on {dataset}: {metric}, CI over trajectories"]
    mine = here[((here["view"] == view) & (here["window"] == window) & (here["statistic"] == statistic)) |
                (here["predictor"] == statistic)]  # a probe predictor is named as in the table ("probe NAME")
    others = here.drop(mine.index)
    if mine.empty:
        out.append(f"  this choice (view {view}, window {window}, statistic {statistic}) was not scored")
    for _, r in mine.iterrows():
        out.append("  this choice: " + _row_words(r))
    for _, r in others.iterrows():
        out.append("  " + _row_words(r))
    return out
