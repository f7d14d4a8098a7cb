"""``calibrate --predictor NAME``: SILO's S-curve from a recorded probe instead of the gradient spread.

A probe recorded per round in RUN/probes.json (``gradscope.probes``) gives a number v_k; its
implied-max_lr rule (``ProbeSpec.implied``, one constant fitted on round 0) turns it into
points (round, x, implied_max_lr), which go through ``calibrate_points`` like the narrowing's,
so they meet the same gate. ``NAME`` is a probe, or ``probe:variant`` (``lr-range:steep``,
``lr-range:divergence``, ...). The value of a round is the mean over the probe's repeats.
The shape of the implied curve is judged separately: a probe whose rule can only fall
(bn-norm: r_k <= 1) or that does not move is said to be flat or falling, not S-shaped.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from gradscope import GradscopeError
from gradscope.calibrate.core import Calibration, calibrate_points, pruned_fraction
from gradscope.probes.registry import split_predictor
from gradscope.store.probes import read_probes

FLAT_SPAN = 1.1  # an implied curve whose max/min is below this is flat, whatever its CI says


def _run_config(run_dir: Path) -> dict:
    p = run_dir / "config.json"
    try:
        return json.loads(p.read_text()) if p.exists() else {}
    except (OSError, ValueError):
        raise GradscopeError(f"{p} is not readable JSON") from None


def _round0_max_lr(run_dir: Path) -> Optional[float]:
    p = run_dir / "rounds.json"
    try:
        rows = json.loads(p.read_text()) if p.exists() else []
    except (OSError, ValueError):
        raise GradscopeError(f"{p} is not readable JSON") from None
    for r in rows:
        if r.get("round") == 0 and r.get("max_lr"):
            return float(r["max_lr"])
    return None


def predictor_values(records: list, name: str, at: str = "start") -> pd.DataFrame:
    """Per round: the predictor's value (mean over repeats), its CV, sparsity and cost."""
    spec, variant = split_predictor(name)
    key = variant or "value"
    rows = []
    for r in records:
        if r["probe"] != spec.name or r["at"] != at:
            continue
        vals = [float(v) for v in r["values"].get(key, []) if v is not None and math.isfinite(float(v))]
        rows.append({"round": int(r["round"]), "sparsity": r.get("sparsity"),
                     "value": float(np.mean(vals)) if vals else math.nan, "cv": r["cv"].get(key),
                     "fb_equiv": r.get("fb_equiv"), "share_of_oracle_round": r.get("share_of_oracle_round")})
    if not rows:
        have = sorted({f"{r['probe']} ({r['at']})" for r in records})
        raise GradscopeError(f"no {spec.name} records measured at {at!r} in this run; it has: "
                             f"{', '.join(have) or 'none'}")
    return pd.DataFrame(rows).sort_values("round").reset_index(drop=True)


def probe_table(run_dir, at: str = "start") -> pd.DataFrame:
    """Per round, one column per recorded probe (its predictor's value, mean over repeats), for
    ``gradscope fit``'s per-round table; empty when the run recorded no probes."""
    from gradscope.probes.registry import PROBES  # noqa: PLC0415

    recs = read_probes(run_dir, required=False)
    out = None
    for name in sorted({r["probe"] for r in recs if r["at"] == at}):
        spec = PROBES.get(name)
        col = {"lr-range": "lr_valley", "sharpness": "lambda_max", "bn-norm": "bn_norm_r",
               "noise-scale": "noise_lr_factor", "norm-drop": "allr_estimate"}.get(name, name)
        v = predictor_values(recs, name if not spec.variants[0] else f"{name}:{spec.variants[0]}", at)
        t = v[["round", "value"]].rename(columns={"value": col})
        out = t if out is None else out.merge(t, on="round", how="outer")
    return out if out is not None else pd.DataFrame({"round": []})


def predictor_points(values: pd.DataFrame, name: str, *, max_lr0: float, p: float, lag: int = 1,
                     x: str = "planned") -> pd.DataFrame:
    """Points (round, x, implied_max_lr) from ``predictor_values`` with the probe's rule."""
    spec, _ = split_predictor(name)
    v = values.set_index("round")["value"]
    if 0 not in v.index:
        raise GradscopeError(f"{name}: round 0 was not measured; the implied rule fits its constant on round 0")
    ok = [k for k, vk in v.items() if math.isfinite(vk) and vk > 0]
    if not ok or (ok[0] != 0 and not spec.needs):
        raise GradscopeError(f"{name}: round 0's value is {v.loc[0]} (not a positive number), so no constant can be fitted")
    ref = ok[0]  # round 0; norm-drop has none there (nothing was pruned), so its first pruned round
    rows = []
    for k, vk in v.items():
        if k <= ref:
            imp = max_lr0
        elif not math.isfinite(vk) or vk <= 0:
            imp = math.nan
        else:
            imp = spec.implied(float(vk), float(v.loc[ref]), float(max_lr0))
        rows.append({"round": int(k), "implied_max_lr": imp})
    pts = pd.DataFrame(rows)
    measured = dict(zip(values["round"].astype(int), values["sparsity"])) if x == "measured" else None
    pts.insert(1, "x", pruned_fraction(pts["round"].to_numpy(int), p=p, lag=lag, measured=measured))
    return pts


def curve_shape(points: pd.DataFrame) -> tuple[str, str]:
    """"rising", "flat" or "falling" for the implied curve, with a sentence for the flat and
    falling cases (from its total span and the sign of its least-squares slope in x)."""
    pts = points[np.isfinite(points["implied_max_lr"]) & (points["implied_max_lr"] > 0)]
    y = pts["implied_max_lr"].to_numpy(float)
    if len(y) < 2:
        return "flat", "fewer than 2 usable points: the implied curve has no shape"
    span = float(y.max() / y.min())
    slope = float(np.polyfit(pts["x"].to_numpy(float), np.log(y), 1)[0]) if np.ptp(pts["x"]) > 0 else 0.0
    if span < FLAT_SPAN:
        drift = f", drifting {'down' if slope < 0 else 'up'}: slope of log max_lr on x {slope:.3g}" if slope else ""
        return "flat", (f"the implied max_lr is flat (max/min {span:.3g} over {len(y)} rounds{drift}), not S-shaped: "
                        "this predictor says a constant max_lr")
    if slope < 0:
        return "falling", (f"the implied max_lr falls with the pruned fraction (slope of log max_lr on x {slope:.3g}, "
                           f"max/min {span:.3g}), not the S-shaped rise SILO fits")
    return "rising", ""


def calibrate_predictor(run_dir, name: str, *, at: str = "start", lo: Optional[float] = None,
                        p: Optional[float] = None, lag: Optional[int] = None, x: str = "planned",
                        min_points: Optional[int] = None, fix_lo: bool = False
                        ) -> tuple[Calibration, pd.DataFrame, tuple[str, str]]:
    """Calibrate SILO from probe ``name`` recorded in run directory ``run_dir``: the
    Calibration (``calibrate_points``' gate), the per-round values and the curve's shape.
    ``fix_lo``: pin the fitted lo to round 0's max_lr (``lo``, else rounds.json's), as
    ``silo-auto --predictor`` does; otherwise lo is fitted like hi, beta and midpoint."""
    run_dir = Path(run_dir)
    if run_dir.is_file() and run_dir.suffix == ".h5":  # RUN/run.h5 given: its run directory
        run_dir = run_dir.parent
    if not run_dir.is_dir():
        raise GradscopeError(f"--predictor reads a run directory's probes.json; {run_dir} is not a directory")
    values = predictor_values(read_probes(run_dir), name, at)
    cfg = _run_config(run_dir)
    max_lr0 = lo if lo is not None else _round0_max_lr(run_dir)
    if max_lr0 is None:
        raise GradscopeError(f"round 0's max_lr is not in {run_dir / 'rounds.json'}; pass --lo")
    p = p if p is not None else (cfg.get("prune") or {}).get("prune_rate")
    if p is None:
        raise GradscopeError("the run's prune rate is unknown; pass --p")
    lag = int(lag if lag is not None else ((cfg.get("schedule") or {}).get("lag") or 1))
    pts = predictor_points(values, name, max_lr0=max_lr0, p=float(p), lag=lag, x=x)
    spec, variant = split_predictor(name)
    src = {"run": str(run_dir), "predictor": name, "rule": spec.rule, "at": at, "max_lr0": max_lr0, "x": x,
           "describe": f"predictor {name} ({spec.label}), measured at each round's {at}",
           "statistic": f"probe {name}", "rounds_used": [int(r) for r in pts["round"]],
           "model": (cfg.get("model") or {}).get("model"), "dataset": (cfg.get("data") or {}).get("dataset"),
           "view": "-", "window": "-"}
    kw = {} if min_points is None else {"min_points": min_points}
    if fix_lo:
        kw["fix_lo"] = float(max_lr0)
    cal = calibrate_points(pts, p=float(p), lag=lag, source=src, **kw)
    return cal, values, curve_shape(pts)
