"""From measured narrowing to SILO's S-curve parameters.

Principle (docs/method.md): keep the typical update size max_lr * scale constant, so
round k implies max_lr(k) = max_lr(0) * (scale(0) / scale(k)) ** gamma. SILO's
(lo, hi, beta, midpoint) are then fitted to those points as a function of SILO's pruned
fraction x_k (least squares on log max_lr, within safe bounds), with Jacobian-based
standard errors.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd
from scipy import optimize

from gradscope import GradscopeError
from gradscope.schedules.curves import planned_pruned_fraction, s_curve

# Safe ranges (documented in docs/method.md). hi is fitted as ratio = hi / lo.
DEFAULT_BOUNDS = {"lo": (1e-4, 1.0), "ratio": (1.0, 10.0), "beta": (0.5, 20.0),
                  "midpoint": (0.05, 0.95)}
_ORDER = ("lo", "ratio", "beta", "midpoint")
MIN_POINTS = 3  # rounds with x > 0 needed (besides round 0) before a fit is attempted


def implied_max_lr(ratio, max_lr0: float, gamma: float = 1.0):
    """max_lr(k) = max_lr(0) * (scale(0)/scale(k))**gamma, with ratio = scale(k)/scale(0)."""
    return max_lr0 * np.asarray(ratio, float) ** (-gamma)


def pruned_fraction(rounds, *, p: Optional[float] = None, lag: int = 1, measured: Optional[dict] = None):
    """SILO's x for each round: planned 1-(1-p)^(k-lag), or the measured sparsity of round k-lag."""
    rounds = np.asarray(rounds, int)
    if measured is None:
        if p is None:
            raise GradscopeError("need the prune rate p for planned pruned fractions (pass p=...)")
        return np.asarray(planned_pruned_fraction(rounds, p, lag), float)
    out = []
    for k in rounds:
        j = k - lag
        if j < 0:
            out.append(0.0)
        elif j in measured:
            out.append(float(measured[j]))
        else:
            raise GradscopeError(f"measured sparsity of round {j} is missing (needed for round {k})")
    return np.array(out, float)


def _merge_bounds(bounds: Optional[dict]) -> dict:
    b = dict(DEFAULT_BOUNDS)
    for k, v in (bounds or {}).items():
        if k == "hi":
            raise GradscopeError("bound 'hi' is set through 'ratio' (hi/lo), e.g. bounds={'ratio': (1, 10)}")
        if k not in b:
            raise GradscopeError(f"unknown bound {k!r}; known: {', '.join(b)}")
        lo, hi = map(float, v)
        if not lo < hi:
            raise GradscopeError(f"bound {k!r} needs lower < upper, got {v!r}")
        b[k] = (lo, hi)
    return b


def _curve(theta, x, fixed_lo):
    lo = fixed_lo if fixed_lo is not None else theta[0]
    ratio, beta, mid = theta[-3:]
    return s_curve(x, lo, lo * ratio, beta, mid)


def fit_s_curve(x, y, *, bounds: Optional[dict] = None, fix_lo: Optional[float] = None) -> dict:
    """Least-squares fit of log y = log s_curve(x; lo, hi, beta, midpoint), within bounds.

    Returns {"params": {lo, hi, beta, midpoint}, "se": {...}, "cov": theta covariance,
    "theta": fitted (lo, ratio, beta, midpoint), "rmse_log": residual RMS, "dof": ...}.
    Standard errors come from the Jacobian: cov = s^2 (J^T J)^-1, s^2 = RSS / dof; they are
    inf when dof <= 0 or J is singular.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y) & (y > 0)
    x, y = x[keep], y[keep]
    b = _merge_bounds(bounds)
    names = _ORDER if fix_lo is None else _ORDER[1:]
    lb = np.array([b[k][0] for k in names])
    ub = np.array([b[k][1] for k in names])
    ly = np.log(y)

    def resid(th):
        return np.log(_curve(th, x, fix_lo)) - ly

    lo0 = float(np.clip(fix_lo if fix_lo is not None else np.min(y), *b["lo"]))
    r0 = float(np.clip(np.max(y) / lo0, b["ratio"][0] + 1e-6, b["ratio"][1]))
    best = None
    for beta0 in (1.0, 3.0, 6.0, 12.0):
        for mid0 in (0.2, 0.5, 0.8):
            th0 = np.array(([lo0] if fix_lo is None else []) + [r0, beta0, mid0])
            th0 = np.clip(th0, lb + 1e-9 * (ub - lb), ub - 1e-9 * (ub - lb))
            r = optimize.least_squares(resid, th0, bounds=(lb, ub), x_scale="jac")
            if best is None or r.cost < best.cost:
                best = r
    th = best.x
    J = best.jac
    dof = len(x) - len(th)
    rss = 2 * best.cost
    cov = np.full((len(th), len(th)), np.inf)
    if dof > 0:
        try:
            cov = np.linalg.inv(J.T @ J) * (rss / dof)
        except np.linalg.LinAlgError:
            pass
    full = np.concatenate([[fix_lo], th]) if fix_lo is not None else th
    fcov = np.zeros((4, 4))
    if fix_lo is not None:
        fcov[1:, 1:] = cov
    else:
        fcov = cov
    lo, ratio, beta, mid = full
    # hi = lo * ratio: delta method
    g = np.array([ratio, lo, 0.0, 0.0])
    with np.errstate(invalid="ignore"):
        var_hi = g @ fcov @ g if np.all(np.isfinite(fcov)) else np.inf
        se = {"lo": float(np.sqrt(fcov[0, 0])), "hi": float(np.sqrt(max(var_hi, 0.0))),
              "beta": float(np.sqrt(fcov[2, 2])), "midpoint": float(np.sqrt(fcov[3, 3]))}
    at_bound = [n for n, v, l, u in zip(names, th, lb, ub) if np.isclose(v, l) or np.isclose(v, u)]
    return {"params": {"lo": float(lo), "hi": float(lo * ratio), "beta": float(beta), "midpoint": float(mid)},
            "se": se, "theta": full, "cov": fcov, "rmse_log": float(np.sqrt(rss / max(len(x), 1))),
            "dof": int(dof), "n_points": int(len(x)), "at_bound": at_bound, "bounds": b}


@dataclass
class Calibration:
    """SILO parameters calibrated from a run's narrowing, with uncertainty and provenance."""

    params: dict
    uncertainty: dict
    points: pd.DataFrame
    source: dict = field(default_factory=dict)
    _fit: dict = field(default_factory=dict, repr=False)

    def predict(self, rounds: Any = None, *, level: float = 0.95, draws: int = 2000, seed: int = 0) -> pd.DataFrame:
        """Predicted max_lr for rounds (an int n = rounds 0..n-1, or a list), at their planned
        pruned fraction, with a band from sampling the fitted parameters' normal law."""
        if rounds is None:
            rounds = self.source.get("rounds_planned") or (int(self.points["round"].max()) + 1)
        rounds = np.arange(rounds) if np.isscalar(rounds) else np.asarray(list(rounds), int)
        p = self.params
        x = pruned_fraction(rounds, p=p["p"], lag=p["lag"])
        y = s_curve(x, p["lo"], p["hi"], p["beta"], p["midpoint"])
        lo_b = hi_b = np.asarray(y, float)
        th, cov = self._fit.get("theta"), self._fit.get("cov")
        if th is not None and np.all(np.isfinite(cov)):
            rng = np.random.default_rng(seed)
            b = self._fit["bounds"]
            lb = np.array([b[k][0] for k in _ORDER])
            ub = np.array([b[k][1] for k in _ORDER])
            sd = np.sqrt(np.clip(np.diag(cov), 0, None))
            fixed = sd == 0
            cov_ = cov + np.diag(np.where(fixed, 1.0, 0.0))
            with warnings.catch_warnings():  # near-singular covariances (a parameter at a bound) are expected
                warnings.simplefilter("ignore", RuntimeWarning)
                smp = rng.multivariate_normal(np.zeros(4), cov_, size=draws, method="eigh")
            smp[:, fixed] = 0.0
            smp = np.clip(th + smp, lb, ub)
            ys = np.stack([s_curve(x, s[0], s[0] * s[1], s[2], s[3]) for s in smp])
            a = (1 - level) / 2
            lo_b, hi_b = np.quantile(ys, [a, 1 - a], axis=0)
        return pd.DataFrame({"round": rounds, "x": x, "max_lr": y, "max_lr_lo": lo_b, "max_lr_hi": hi_b})

    def to_dict(self) -> dict:
        return {**self.params, "uncertainty": self.uncertainty, "source": self.source}

    def to_file(self, path) -> None:
        """Write the parameters file (YAML for .yaml/.yml, else JSON) that --schedule silo reads."""
        path = os.fspath(path)
        d = _jsonable(self.to_dict())
        if path.lower().endswith((".yaml", ".yml")):
            import yaml  # noqa: PLC0415

            text = yaml.safe_dump(d, sort_keys=False)
        else:
            text = json.dumps(d, indent=2)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        v = float(o)
        return v if np.isfinite(v) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o


def calibrate_points(points: pd.DataFrame, *, p: float, lag: int = 1, shape: str = "warmup-step",
                     bounds: Optional[dict] = None, fix_lo: Optional[float] = None,
                     source: Optional[dict] = None, min_points: int = MIN_POINTS) -> Calibration:
    """Fit SILO to points (round, x, implied_max_lr) and package the result."""
    pts = points[np.isfinite(points["implied_max_lr"]) & (points["implied_max_lr"] > 0)]
    n_pos = int((pts["x"] > 0).sum())
    if n_pos < min_points or len(pts) < (4 if fix_lo is None else 3) + 1:
        raise GradscopeError(f"calibration needs at least {min_points} usable rounds with pruned fraction x > 0 "
                             f"and 5 points in all; this run has {n_pos} and {len(pts)} (run more rounds)")
    fit = fit_s_curve(pts["x"], pts["implied_max_lr"], bounds=bounds, fix_lo=fix_lo)
    params = {"schedule": "silo", **fit["params"], "lag": int(lag), "p": float(p), "shape": shape}
    unc = {**fit["se"], "rmse_log": fit["rmse_log"], "dof": fit["dof"], "n_points": fit["n_points"],
           "at_bound": fit["at_bound"], "method": "least_squares Jacobian, cov = s^2 (J^T J)^-1"}
    return Calibration(params, unc, points.reset_index(drop=True), dict(source or {}), fit)


def _config_get(reader, section: str, key: str):
    cfg = getattr(reader, "config", None)
    if callable(cfg):
        cfg = cfg()
    if isinstance(cfg, dict):
        v = cfg.get(section, {})
        if isinstance(v, dict):
            return v.get(key)
    return None


def narrowing_points(narrowing: pd.DataFrame, *, statistic: str, max_lr0: float, gamma: float,
                     x: np.ndarray, rounds: np.ndarray) -> pd.DataFrame:
    """(round, x, ratio, implied_max_lr) of the pooled narrowing of ``statistic``."""
    n = narrowing[(narrowing["layer"] == "pooled") & (narrowing["statistic"] == statistic)]
    n = n.set_index("round").reindex(rounds)
    return pd.DataFrame({"round": rounds, "x": x, "ratio": n["ratio"].to_numpy(float),
                         "ratio_lo": n["ratio_lo"].to_numpy(float), "ratio_hi": n["ratio_hi"].to_numpy(float),
                         "implied_max_lr": implied_max_lr(n["ratio"].to_numpy(float), max_lr0, gamma)})


def calibrate_run(path, *, gamma: float = 1.0, statistic: str = "std", lo: Optional[float] = None,
                  x: str = "planned", bounds: Optional[dict] = None, rounds_planned: Optional[int] = None,
                  p: Optional[float] = None, lag: Optional[int] = None, shape: Optional[str] = None,
                  fix_lo: bool = False, fit=None, min_points: int = MIN_POINTS) -> Calibration:
    """Calibrate SILO from a run file (or RunReader): pooled narrowing of ``statistic`` ->
    implied max_lr per round -> fitted (lo, hi, beta, midpoint).

    lo: max_lr of round 0 (default: the run's round-0 max_lr). x: "planned" (1-(1-p)^(k-lag))
    or "measured" (sparsity of round k-lag). p, lag, shape default to the run's config
    (prune_rate, schedule lag or 1, schedule shape or warmup-step). fix_lo pins lo to the
    round-0 max_lr. ``fit``: a FitResult to reuse.
    """
    from gradscope.fit.core import MODELS, MOMENT_STATS  # noqa: PLC0415
    from gradscope.fit.run import fit_run, open_source, sparsity_by_round  # noqa: PLC0415

    if statistic not in MOMENT_STATS + MODELS:
        raise GradscopeError(f"unknown statistic {statistic!r}; choose from {', '.join(MOMENT_STATS + MODELS)}")
    if x not in ("planned", "measured"):
        raise GradscopeError(f"x must be 'planned' or 'measured', got {x!r}")
    if not (np.isfinite(gamma) and gamma > 0):
        raise GradscopeError(f"gamma must be a positive number, got {gamma!r}")
    reader = open_source(path)
    if fit is None:
        models = () if statistic in MOMENT_STATS else (statistic,)
        fit = fit_run(reader, per="round", models=models, bootstrap=0 if not models else 100, store=False)
    rounds_df = reader.rounds()
    if lo is None:
        if rounds_df is not None and "max_lr" in rounds_df and (rounds_df["round"] == 0).any():
            lo = float(rounds_df.loc[rounds_df["round"] == 0, "max_lr"].iloc[0])
        if lo is None or not np.isfinite(lo):
            raise GradscopeError("round 0's max_lr is not in the run file; pass lo=... (the max_lr used in round 0)")
    p = p if p is not None else _config_get(reader, "prune", "prune_rate")
    if p is None:
        raise GradscopeError("the run's prune rate is unknown; pass p=...")
    lag = int(lag if lag is not None else (_config_get(reader, "schedule", "lag") or 1))
    shape = shape or _config_get(reader, "schedule", "shape") or "warmup-step"
    n = fit.narrowing
    n = n[(n["layer"] == "pooled") & (n["statistic"] == statistic)]
    if n.empty:
        raise GradscopeError(f"no pooled narrowing of {statistic!r} in this run (is round 0 recorded, "
                             "with ReLU-fed layers?)")
    rounds = np.sort(n["round"].to_numpy(int))
    measured = sparsity_by_round(reader) if x == "measured" else None
    xs = pruned_fraction(rounds, p=p, lag=lag, measured=measured)
    pts = narrowing_points(fit.narrowing, statistic=statistic, max_lr0=lo, gamma=gamma, x=xs, rounds=rounds)
    src = {"run": os.fspath(path) if isinstance(path, (str, os.PathLike)) else type(reader).__name__,
           "statistic": statistic, "gamma": gamma, "x": x, "max_lr0": lo,
           "rounds_used": [int(r) for r in rounds], "rounds_planned": rounds_planned}
    return calibrate_points(pts, p=float(p), lag=lag, shape=shape, bounds=bounds,
                            fix_lo=lo if fix_lo else None, source=src, min_points=min_points)


def format_calibration(cal: Calibration) -> pd.DataFrame:
    """Parameter table for printing: value and standard error."""
    rows = [{"param": k, "value": cal.params[k], "se": cal.uncertainty.get(k, np.nan)}
            for k in ("lo", "hi", "beta", "midpoint")]
    return pd.DataFrame(rows)
