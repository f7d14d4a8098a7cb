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
from gradscope.views import DEFAULT_VIEW, DEFAULT_WINDOW
from gradscope.plot.figures import (draw_accuracy, draw_calibration, draw_histograms, draw_narrowing,
                                    draw_spread, new_axes, round_histograms)


def view_label(view: str = DEFAULT_VIEW, window: str = DEFAULT_WINDOW) -> str:
    """The view/window words every figure title carries."""
    from gradscope.fit.run import describe_view  # noqa: PLC0415

    return describe_view(view, window)


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


def run_fit(run, *, bootstrap: int = 200, seed: int = 0, view: str = DEFAULT_VIEW, window: str = DEFAULT_WINDOW):
    """The run's fit tables (a ``FitResult``): computed with ``fit_run`` (not stored), except
    that a narrowing table already stored in the file (``gradscope fit``) for the same view
    and window is reused, so figures show the numbers ``gradscope fit`` printed."""
    from gradscope.fit import check_bootstrap, fit_run  # noqa: PLC0415

    check_bootstrap(bootstrap)
    src = run if isinstance(run, RunSource) else resolve_run(run)
    reader = _reader(src)
    res = fit_run(reader, bootstrap=bootstrap, seed=seed, store=False, view=view, window=window)
    if "fit_narrowing" in reader.derived_names():
        stored = reader.derived("fit_narrowing")
        sv = stored["view"].iloc[0] if "view" in stored and len(stored) else "survivors"
        sw = stored["window"].iloc[0] if "window" in stored and len(stored) else "all"
        if (sv, sw) == (view, window) and set(res.narrowing["statistic"]) <= set(stored["statistic"]):
            res.narrowing = stored.drop(columns=[c for c in ("view", "window") if c in stored])
    return res


def layer_depth(run) -> dict:
    """{layer name: position in the network (0 = first)} from the run file's layer table."""
    src = run if isinstance(run, RunSource) else resolve_run(run)
    lay = _reader(src).layers()
    order = lay.sort_values("index")["layer"] if "index" in lay else lay["layer"]
    return {name: i for i, name in enumerate(order)}


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
                     fit=None, view: str = DEFAULT_VIEW, window: str = DEFAULT_WINDOW) -> dict:
    """Everything the calibration figure shows: points, curve (None when the fit is not
    possible), the Calibration (or None), the fit's failure message or the status note,
    presets, Oracle, used."""
    from gradscope.calibrate import STATUS_WORDS, calibrate_run, implied_max_lr  # noqa: PLC0415

    src = run if isinstance(run, RunSource) else resolve_run(run)
    reader = _reader(src)
    rounds = run_rounds(src)
    n_rounds = int(rounds["round"].max()) + 1
    cal, curve, note = None, None, None
    try:
        cal = calibrate_run(reader, statistic=statistic, gamma=gamma, fit=fit, view=view, window=window)
        points = cal.points.copy()
        curve = cal.predict(max(n_rounds, int(points["round"].max()) + 1))
        if cal.status != "supported":
            note = f"status {cal.status}: {STATUS_WORDS[cal.status]}"
        elif cal.flags:
            note = "; ".join(cal.flags)
    except GradscopeError as e:
        note = f"no S-curve fit: {e}"
        fit = fit if fit is not None else run_fit(src, bootstrap=100, view=view, window=window)
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
def plot_histograms(run, layer: Optional[str] = None, ax=None, view: str = DEFAULT_VIEW, window: str = DEFAULT_WINDOW):
    """Gradient distributions per round (ridgeline), one layer or the pooled (activation-fed) layers."""
    from gradscope.fit.run import (_pooled_flags, check_view, fed_words, pooled_activations, read_view,  # noqa: PLC0415
                                   select_window)

    check_view(view)
    src = run if isinstance(run, RunSource) else resolve_run(run)
    reader = _reader(src)
    counts, edges, idx = read_view(reader, "histograms", view)
    idx["pooled"] = _pooled_flags(reader, idx).to_numpy()
    keep = select_window(idx, window)
    counts, idx = np.asarray(counts)[keep], idx[keep].reset_index(drop=True)
    if len(idx) == 0:
        raise GradscopeError(f"{src.h5} holds no histograms yet (record a round first)")
    rounds, mass = round_histograms(counts, edges, idx, layer)
    t = run_rounds(src)
    sp = dict(zip(t["round"].astype(int), t["sparsity"].astype(float))) if "sparsity" in t else None
    name = f"pooled {fed_words(pooled_activations(reader))} layers" if layer in (None, "pooled") else f"layer {layer}"
    what = {"survivors": "weight gradient of unpruned weights", "all": "weight gradient, pruned weights as 0",
            "relative": "|g|/(|w|+eps) of unpruned weights"}.get(view, "weight gradient")
    return draw_histograms(rounds, mass, edges, sp, ax=ax, quantity=what,
                           title=f"{src.label}: gradient distributions, {name}\n{view_label(view, window)}")


def plot_spread(run, layer: Optional[str] = None, relative: bool = True, ax=None, view: str = DEFAULT_VIEW,
                window: str = DEFAULT_WINDOW):
    """Spread of |g| per round (quantile bands from the histograms and the exact std), one
    layer or pooled ReLU-fed layers; ``relative``: as ratios to round 0 on a linear axis."""
    from gradscope.fit.run import fed_words, pooled_activations, spread_table  # noqa: PLC0415

    src = run if isinstance(run, RunSource) else resolve_run(run)
    reader = _reader(src)
    t = spread_table(reader, layer=layer, view=view, window=window)
    name = f"pooled {fed_words(pooled_activations(reader))} layers" if layer in (None, "pooled") else f"layer {layer}"
    kind = "relative to round 0" if relative else "per round"
    return draw_spread(t, relative=relative, ax=ax,
                       title=f"{src.label}: spread of |gradient| {kind}, {name}\n{view_label(view, window)}")


def plot_narrowing(run, statistic: str = "std", layers: Optional[Sequence[str]] = None, ax=None, fit=None,
                   view: str = DEFAULT_VIEW, window: str = DEFAULT_WINDOW):
    """Scale / round-0 scale vs sparsity, per layer (coloured by depth when many) and pooled
    with its confidence band."""
    from gradscope.fit import check_statistic  # noqa: PLC0415

    src = run if isinstance(run, RunSource) else resolve_run(run)
    fit = fit if fit is not None else run_fit(src, view=view, window=window)
    check_statistic(statistic, fit.meta.get("models", ()))
    how = {"std": "delta method", "meanabs": "delta method", "iqr": "asymptotic", "mad": "asymptotic"}
    band = f"pooled: 95 % CI ({how.get(statistic, 'bootstrap')}; values treated as independent, so too narrow)"
    return draw_narrowing(fit.narrowing, statistic, layers, ax=ax, depth=layer_depth(src), band_label=band,
                          title=f"{src.label}: narrowing of the gradient {statistic}\n"
                                f"{view_label(fit.meta.get('view', view), fit.meta.get('window', window))}")


def plot_calibration(run, statistic: str = "std", gamma: float = 1.0, presets: Sequence[str] = ("resnet20",),
                     ax=None, fit=None, view: str = DEFAULT_VIEW, window: str = DEFAULT_WINDOW):
    """Implied max_lr points, fitted S-curve, released preset(s), Oracle intervals when present."""
    src = run if isinstance(run, RunSource) else resolve_run(run)
    d = calibration_data(src, statistic=statistic, gamma=gamma, presets=presets, fit=fit, view=view, window=window)
    cal = d["calibration"]
    band = "fit: 95 % band"
    if cal is not None:
        band = f"fit: 95 % band (Student-t, {cal.uncertainty.get('dof')} dof)"
    status = f", status {cal.status}" if cal is not None else ""
    return draw_calibration(d["points"], d["curve"], d["presets"], d["oracle"], d["used"], ax=ax, band_label=band,
                            title=f"{src.label}: SILO calibration ({statistic}, gamma={gamma:g}{status})\n"
                                  f"{view_label(view, window)}", note=d["note"])


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


def schedule_factories(names, files: Sequence = ()) -> dict:
    """{label: ScheduleFactory} from names ("silo,lth,clr" or a list) and schedule files (JSON/
    YAML as ``gradscope calibrate -o`` writes; label "NAME (file)"); unknown names raise."""
    from gradscope.schedules import get_schedule  # noqa: PLC0415

    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names or [])
    if not names and not files:
        raise GradscopeError("give at least one schedule name (e.g. silo,lth,clr) or a schedule file")
    out = {n: get_schedule(n) for n in names}
    for f in files or ():
        label, fac = schedule_from_file(f)
        while label in out:
            label += "'"
        out[label] = fac
    return out


def schedule_from_file(path) -> tuple:
    """(label, ScheduleFactory) of a schedule parameters file (JSON/YAML)."""
    from gradscope.config import ScheduleConfig  # noqa: PLC0415
    from gradscope.schedules import schedule_from_config  # noqa: PLC0415

    p = Path(os.fspath(path))
    if not p.is_file():
        raise GradscopeError(f"schedule file {p} does not exist")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml  # noqa: PLC0415

            data = yaml.safe_load(p.read_text())
        else:
            data = json.loads(p.read_text())
    except Exception as e:  # noqa: BLE001 - any parse error becomes one clear message
        raise GradscopeError(f"schedule file {p} is not valid JSON/YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise GradscopeError(f"schedule file {p} must hold a mapping of parameter names to values")
    name = str(data.get("schedule") or data.get("name") or "silo")
    if name == "silo-auto":
        import gradscope.calibrate  # noqa: F401,PLC0415 - registers silo-auto
    fac = schedule_from_config(ScheduleConfig(schedule=name, schedule_file=str(p)))
    status = (data.get("notes") or {}).get("status") if isinstance(data.get("notes"), dict) else None
    label = f"{name} ({p.name}" + (f", status {status}" if status and status != "supported" else "") + ")"
    return label, fac


def run_schedules(runs: Sequence, labels: Optional[Sequence[str]] = None) -> tuple[dict, int, float]:
    """({label: ScheduleFactory}, rounds, prune rate) of the schedules runs actually used: config.json's
    ``schedule_used`` (every parameter, defaults included) where written, else the run's config."""
    from gradscope.config import RunConfig  # noqa: PLC0415
    from gradscope.schedules import get_schedule, schedule_from_config  # noqa: PLC0415

    srcs = [r if isinstance(r, RunSource) else resolve_run(r) for r in runs]
    names = list(labels) if labels else [s.label for s in srcs]
    if len(names) != len(srcs):
        raise GradscopeError(f"got {len(names)} labels for {len(srcs)} runs")
    factories, rounds, p = {}, 1, None
    for s, name in zip(srcs, names):
        f = s.run_dir / "config.json" if s.run_dir is not None else None
        saved = json.loads(f.read_text()) if f is not None and f.exists() else {}
        cfg = saved or run_config(s)
        if not cfg.get("schedule"):
            continue
        sc = RunConfig.from_dict(cfg).schedule
        if sc.schedule == "silo-auto":
            import gradscope.calibrate  # noqa: F401,PLC0415 - registers silo-auto
        used = saved.get("schedule_used")
        fac = get_schedule(**used) if isinstance(used, dict) and used.get("name") else schedule_from_config(sc)
        label = f"{name} ({sc.schedule})"
        while label in factories:
            label += "'"
        factories[label] = fac
        rounds = max(rounds, int(run_rounds(s)["round"].max()) + 1)
        if p is None:
            p = (cfg.get("prune") or {}).get("prune_rate")
    if not factories:
        raise GradscopeError("the runs' configs name no schedule")
    return factories, rounds, float(p if p is not None else 0.2)


def plot_run_schedules(runs: Sequence, peaks: bool = False, steps_per_round: int = 50, ax=None,
                       labels: Optional[Sequence[str]] = None):
    """The schedules runs actually used (their own parameters, rounds and prune rate): the per-step
    LR, or with ``peaks`` max_lr per round."""
    from gradscope.plot.schedules import plot_peaks, plot_schedules  # noqa: PLC0415

    f, rounds, p = run_schedules(runs, labels)
    ax = new_axes(ax, (9, 3.6))
    if peaks:
        return plot_peaks(f, rounds, p, ax=ax)
    return plot_schedules(f, rounds, steps_per_round, p, ax=ax)


def plot_schedule(names, rounds: int = 10, prune_rate: float = 0.2, steps_per_round: int = 100,
                  peaks: bool = False, ax=None, files: Sequence = ()):
    """LR over all rounds (or, with ``peaks``, max_lr per round) of several named schedules
    and schedule files."""
    from gradscope.plot.schedules import plot_peaks, plot_schedules  # noqa: PLC0415

    f = schedule_factories(names, files)
    ax = new_axes(ax, (8, 3.5))
    if peaks:
        return plot_peaks(f, rounds, prune_rate, ax=ax)
    return plot_schedules(f, rounds, steps_per_round, prune_rate, ax=ax)
