"""Reading what the figures need from a run (RUN.h5 or RUN_DIR), and ``plot_*`` wrappers
that draw a run's figures: ``plot_x(run, ..., ax=None) -> Axes``."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from gradscope import GradscopeError
from gradscope.plot.figures import (draw_accuracy, draw_calibration, draw_histograms, draw_narrowing,
                                    round_histograms)


@dataclass
class RunSource:
    """Where a run's pieces are: the HDF5 file (None when not recorded) and the run directory."""

    h5: Optional[Path]
    run_dir: Optional[Path]
    label: str


def resolve_run(path) -> RunSource:
    """A RUN.h5 file or a RUN_DIR (with config.json/rounds.json and maybe run.h5)."""
    p = Path(os.fspath(path))
    if not p.exists():
        raise GradscopeError(f"{p} does not exist (give a run file RUN.h5 or a run directory)")
    if p.is_dir():
        h5 = p / "run.h5"
        if not h5.exists() and not (p / "rounds.json").exists():
            raise GradscopeError(f"{p} is not a run directory (no run.h5 or rounds.json in it)")
        return RunSource(h5 if h5.exists() else None, p, p.name)
    if p.suffix.lower() not in (".h5", ".hdf5"):
        raise GradscopeError(f"{p} is not a run file (expected RUN.h5 or a run directory)")
    d = p.parent
    is_dir = (d / "rounds.json").exists() or (d / "config.json").exists()
    return RunSource(p, d if is_dir else None, d.name if p.name == "run.h5" else p.stem)


def _reader(src: RunSource):
    if src.h5 is None:
        raise GradscopeError(f"{src.run_dir} has no run.h5: record gradients with `gradscope profile` first")
    from gradscope.store import open_run  # noqa: PLC0415

    try:
        return open_run(str(src.h5))
    except GradscopeError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise GradscopeError(f"{src.h5} is not a gradscope run file ({str(e).splitlines()[0]})") from None


def run_config(run) -> dict:
    """The run's configuration (from run.h5, else config.json; {} when neither holds one)."""
    src = run if isinstance(run, RunSource) else resolve_run(run)
    if src.h5 is not None:
        return dict(_reader(src).config)
    f = src.run_dir / "config.json"
    return json.loads(f.read_text()) if f.exists() else {}


def run_rounds(run) -> pd.DataFrame:
    """Per-round table (round, sparsity, max_lr, val_acc, test_acc, ...): rounds.json when
    present (it also covers unrecorded runs), else the run file's rounds table."""
    src = run if isinstance(run, RunSource) else resolve_run(run)
    if src.run_dir is not None and (src.run_dir / "rounds.json").exists():
        try:
            t = pd.DataFrame(json.loads((src.run_dir / "rounds.json").read_text()))
        except ValueError as e:
            raise GradscopeError(f"{src.run_dir / 'rounds.json'} is not valid JSON: {e}") from None
    else:
        t = _reader(src).rounds()
    if t is None or len(t) == 0:
        raise GradscopeError(f"run {src.label} has no finished rounds yet")
    return t.drop_duplicates("round", keep="last").sort_values("round").reset_index(drop=True)


def run_fit(run, *, bootstrap: int = 200, seed: int = 0):
    """The run's fit tables (a ``FitResult``): computed with ``fit_run`` (not stored), except
    that a narrowing table already stored in the file (``gradscope fit``) is reused."""
    from gradscope.fit import fit_run  # noqa: PLC0415

    src = run if isinstance(run, RunSource) else resolve_run(run)
    reader = _reader(src)
    res = fit_run(reader, bootstrap=bootstrap, seed=seed, store=False)
    if "fit_narrowing" in reader.derived_names():
        res.narrowing = reader.derived("fit_narrowing")
    return res


def oracle_intervals(run_dir) -> Optional[pd.DataFrame]:
    """The Oracle's optimal interval and best max_lr per round (round, lo, hi, best), or None."""
    if run_dir is None:
        return None
    files = sorted(Path(run_dir, "oracle").glob("round_*/candidates.json"),
                   key=lambda p: int(p.parent.name.split("_")[1]))
    rows = []
    for f in files:
        try:
            d = json.loads(f.read_text())
        except ValueError:
            raise GradscopeError(f"{f} is not valid JSON") from None
        iv = d.get("optimal_interval") or [d["best_max_lr"], d["best_max_lr"]]
        rows.append({"round": int(f.parent.name.split("_")[1]), "lo": float(min(iv)), "hi": float(max(iv)),
                     "best": float(d["best_max_lr"])})
    return pd.DataFrame(rows) if rows else None


def _preset_peaks(name: str, rounds: int) -> np.ndarray:
    from gradscope.schedules import SILO_PRESETS, planned_pruned_fraction, s_curve  # noqa: PLC0415

    c = SILO_PRESETS[name]
    x = planned_pruned_fraction(np.arange(rounds), c["p"], c["lag"])
    return np.asarray(s_curve(x, c["lo"], c["hi"], c["beta"], c["midpoint"]), float)


def calibration_data(run, *, statistic: str = "std", gamma: float = 1.0, presets: Sequence[str] = ("resnet20",),
                     fit=None) -> dict:
    """Everything the calibration figure shows: points, curve (None when the fit is not
    possible), the Calibration (or None), the fit's failure message, presets, Oracle, used."""
    from gradscope.calibrate import calibrate_run, implied_max_lr  # noqa: PLC0415

    src = run if isinstance(run, RunSource) else resolve_run(run)
    reader = _reader(src)
    rounds = run_rounds(src)
    n_rounds = int(rounds["round"].max()) + 1
    cal, curve, note = None, None, None
    try:
        cal = calibrate_run(reader, statistic=statistic, gamma=gamma, fit=fit)
        points = cal.points.copy()
        curve = cal.predict(max(n_rounds, int(points["round"].max()) + 1))
    except GradscopeError as e:
        note = f"no S-curve fit: {e}"
        fit = fit if fit is not None else run_fit(src, bootstrap=100)
        n = fit.narrowing
        n = n[(n["layer"] == "pooled") & (n["statistic"] == statistic)].sort_values("round")
        lo = float(rounds.loc[rounds["round"] == 0, "max_lr"].iloc[0]) if "max_lr" in rounds else np.nan
        points = pd.DataFrame({"round": n["round"].to_numpy(int), "ratio": n["ratio"].to_numpy(float),
                               "ratio_lo": n["ratio_lo"].to_numpy(float), "ratio_hi": n["ratio_hi"].to_numpy(float),
                               "implied_max_lr": implied_max_lr(n["ratio"].to_numpy(float), lo, gamma)})
    g = cal.source.get("gamma", gamma) if cal is not None else gamma
    if {"ratio", "ratio_lo", "ratio_hi"} <= set(points.columns):
        with np.errstate(invalid="ignore", divide="ignore"):
            a = points["implied_max_lr"] * (points["ratio_hi"] / points["ratio"]) ** (-g)
            b = points["implied_max_lr"] * (points["ratio_lo"] / points["ratio"]) ** (-g)
        points["implied_lo"], points["implied_hi"] = np.minimum(a, b), np.maximum(a, b)
    nplot = max(n_rounds, int(points["round"].max()) + 1 if len(points) else 0)
    used = rounds[["round", "max_lr"]] if "max_lr" in rounds else None
    return {"points": points, "curve": curve, "calibration": cal, "note": note,
            "presets": {p: _preset_peaks(p, nplot) for p in presets},
            "oracle": oracle_intervals(src.run_dir), "used": used}


# ----------------------------------------------------------------------------- plot_* wrappers
def plot_histograms(run, layer: Optional[str] = None, ax=None):
    """Gradient distributions of unpruned weights per round, one layer or pooled ReLU-fed layers."""
    src = run if isinstance(run, RunSource) else resolve_run(run)
    reader = _reader(src)
    counts, edges, idx = reader.histograms()
    if len(idx) == 0:
        raise GradscopeError(f"{src.h5} holds no histograms yet (record a round first)")
    rounds, mass = round_histograms(counts, edges, idx, layer)
    t = run_rounds(src)
    sp = dict(zip(t["round"].astype(int), t["sparsity"].astype(float))) if "sparsity" in t else None
    name = "pooled ReLU-fed layers" if layer in (None, "pooled") else f"layer {layer}"
    return draw_histograms(rounds, mass, edges, sp, ax=ax, title=f"{src.label}: gradients, {name}")


def plot_narrowing(run, statistic: str = "std", layers: Optional[Sequence[str]] = None, ax=None, fit=None):
    """Fitted scale / round-0 scale vs sparsity, per layer and pooled, with confidence bands."""
    src = run if isinstance(run, RunSource) else resolve_run(run)
    fit = fit if fit is not None else run_fit(src)
    return draw_narrowing(fit.narrowing, statistic, layers, ax=ax,
                          title=f"{src.label}: narrowing of the gradient {statistic}")


def plot_calibration(run, statistic: str = "std", gamma: float = 1.0, presets: Sequence[str] = ("resnet20",),
                     ax=None, fit=None):
    """Implied max_lr points, fitted S-curve, released preset(s), Oracle intervals when present."""
    src = run if isinstance(run, RunSource) else resolve_run(run)
    d = calibration_data(src, statistic=statistic, gamma=gamma, presets=presets, fit=fit)
    return draw_calibration(d["points"], d["curve"], d["presets"], d["oracle"], d["used"], ax=ax,
                            title=f"{src.label}: SILO calibration ({statistic}, gamma={gamma:g})", note=d["note"])


def run_label(src: RunSource) -> str:
    """A legend label: directory name plus the schedule name from the config."""
    try:
        sched = (run_config(src).get("schedule") or {}).get("schedule")
    except GradscopeError:
        sched = None
    return f"{src.label} ({sched})" if sched and sched not in src.label else src.label


def plot_accuracy(runs: Sequence, metric: str = "test_acc", ax=None, labels: Optional[Sequence[str]] = None):
    """Accuracy vs sparsity of several runs (RUN.h5 or RUN_DIR each) on one axis."""
    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    if not runs:
        raise GradscopeError("accuracy plot needs at least one run")
    srcs = [r if isinstance(r, RunSource) else resolve_run(r) for r in runs]
    names = list(labels) if labels else [run_label(s) for s in srcs]
    if len(names) != len(srcs):
        raise GradscopeError(f"got {len(names)} labels for {len(srcs)} runs")
    tables = {}
    for name, s in zip(names, srcs):
        while name in tables:
            name += "'"
        tables[name] = run_rounds(s)
    return draw_accuracy(tables, metric, ax=ax)


def schedule_factories(names) -> dict:
    """{name: ScheduleFactory} from names ("silo,lth,clr" or a list); unknown names raise."""
    from gradscope.schedules import get_schedule  # noqa: PLC0415

    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise GradscopeError("give at least one schedule name (e.g. silo,lth,clr)")
    return {n: get_schedule(n) for n in names}


def plot_schedule(names, rounds: int = 10, prune_rate: float = 0.2, steps_per_round: int = 100,
                  peaks: bool = False, ax=None):
    """LR over all rounds (or, with ``peaks``, max_lr per round) of several named schedules."""
    from gradscope.plot.figures import new_axes  # noqa: PLC0415
    from gradscope.plot.schedules import plot_peaks, plot_schedules  # noqa: PLC0415

    f = schedule_factories(names)
    ax = new_axes(ax, (8, 3.5))
    if peaks:
        return plot_peaks(f, rounds, prune_rate, ax=ax)
    return plot_schedules(f, rounds, steps_per_round, prune_rate, ax=ax)
