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
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd
from scipy import optimize, stats
from scipy.special import expit, logit

from gradscope import GradscopeError
from gradscope.calibrate.evidence import evidence_lines
from gradscope.calibrate.gate import (MIN_DOF, MIN_RISE, density_part, gate_lines, gate_sentence,  # noqa: F401
                                      null_gate, rounds_needed, slope_ci)
from gradscope.schedules.curves import planned_pruned_fraction, s_curve
from gradscope.views import DEFAULT_VIEW, DEFAULT_WINDOW

# Safe ranges (documented in docs/method.md). hi is fitted as ratio = hi / lo.
DEFAULT_BOUNDS = {"lo": (1e-4, 1.0), "ratio": (1.0, 10.0), "beta": (0.5, 20.0),
                  "midpoint": (0.05, 0.95)}
_ORDER = ("lo", "ratio", "beta", "midpoint")


def default_view(reader) -> str:
    """The one default view (gradscope.views.DEFAULT_VIEW) where the source holds it, else
    "survivors"; the choice is printed with the result."""
    views = reader.views() if hasattr(reader, "views") else ["survivors"]
    return DEFAULT_VIEW if DEFAULT_VIEW in views else "survivors"


GAMMA_MAX = 10.0  # max_lr ~ scale^-gamma: beyond this a 10 % narrowing moves max_lr by more than x2.6
LO_MAX = 1e3  # the same bound as --max-lr's (gradscope/config.py)
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


def _log_curve_jac(theta, x, fixed_lo):
    """d log s_curve / d theta (columns in theta's order: [lo,] ratio, beta, midpoint)."""
    lo = fixed_lo if fixed_lo is not None else theta[0]
    ratio, beta, mid = theta[-3:]
    xa = np.asarray(x, float)
    inner = np.clip(xa, 1e-300, 1.0 - 1e-16)
    u = logit(inner) - logit(mid)
    F = expit(beta * u)
    F = np.where(xa <= 0, 0.0, np.where(xa >= 1, 1.0, F))
    dF = np.where((xa <= 0) | (xa >= 1), 0.0, F * (1 - F))
    denom = 1.0 + (ratio - 1.0) * F  # y = lo * denom
    cols = [F / denom, (ratio - 1.0) * dF * u / denom, -(ratio - 1.0) * dF * beta / (mid * (1 - mid)) / denom]
    if fixed_lo is None:
        cols.insert(0, np.full_like(xa, 1.0 / lo))
    return np.stack(cols, 1)


def _grid_starts(x, ly, b: dict, fix_lo, n_best: int = 3):
    """Starting points for the least-squares fit: the best few of a coarse grid over
    (ratio, beta, midpoint), with log lo solved in closed form (cheap, vectorised)."""
    ratio = np.geomspace(max(b["ratio"][0], 1.0 + 1e-6), b["ratio"][1], 16)
    beta = np.geomspace(b["beta"][0], b["beta"][1], 10)
    mid = np.linspace(b["midpoint"][0], b["midpoint"][1], 12)
    F = np.asarray(s_curve(x[None, None, :], 0.0, 1.0, beta[:, None, None], mid[None, :, None]))  # [nb, nm, n]
    L = np.log1p((ratio[:, None, None, None] - 1.0) * F[None])  # [nr, nb, nm, n]
    L = L.reshape(-1, len(x))
    R, Bt, M = (a.ravel() for a in np.meshgrid(ratio, beta, mid, indexing="ij"))
    if fix_lo is None:
        loglo = np.clip((ly[None, :] - L).mean(1), *np.log(b["lo"]))
    else:
        loglo = np.full(len(L), np.log(fix_lo))
    rss = ((loglo[:, None] + L - ly[None, :]) ** 2).sum(1)
    best = np.argsort(rss)[:n_best]
    th = np.stack([np.exp(loglo[best]), R[best], Bt[best], M[best]], 1)
    return th if fix_lo is None else th[:, 1:]


def _near_bound(name: str, v: float, lo: float, hi: float, rel: float = 1e-3):
    """"lower"/"upper" when v lies within rel of the bound range from a bound (on a log scale
    for the positive, multi-decade lo and ratio), else None. np.isclose misses e.g. beta
    19.9994 against 20."""
    if name in ("lo", "ratio") and lo > 0:
        v, lo, hi = np.log(max(v, 1e-300)), np.log(lo), np.log(hi)
    tol = rel * (hi - lo)
    if v <= lo + tol:
        return "lower"
    if v >= hi - tol:
        return "upper"
    return None


def t_quantile(dof: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile for ``dof`` residual degrees of freedom (inf when dof <= 0)."""
    return float(stats.t.ppf(0.5 + level / 2, dof)) if dof > 0 else float("inf")


def fit_s_curve(x, y, *, bounds: Optional[dict] = None, fix_lo: Optional[float] = None,
                level: float = 0.95) -> dict:
    """Least-squares fit of log y = log s_curve(x; lo, hi, beta, midpoint), within bounds.

    Returns {"params": {lo, hi, beta, midpoint}, "se": {...}, "ci": {name: (lo, hi)},
    "cov": theta covariance, "theta": fitted (lo, ratio, beta, midpoint), "rmse_log",
    "dof", "t_quantile", "at_bound", "bound_side", "poorly_determined", ...}.
    Standard errors come from the Jacobian: cov = s^2 (J^T J)^-1, s^2 = RSS / dof; they are
    inf when dof <= 0 or J is singular. Intervals are value +- t_{dof} * SE (Student-t: with
    4 parameters and ~8 points, the normal 1.96 covers far less than nominal).
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

    def jac(th):
        return _log_curve_jac(th, x, fix_lo)

    best = None
    for th0 in _grid_starts(x, ly, b, fix_lo):
        th0 = np.clip(th0, lb + 1e-9 * (ub - lb), ub - 1e-9 * (ub - lb))
        r = optimize.least_squares(resid, th0, jac=jac, bounds=(lb, ub), x_scale="jac")
        if best is None or r.cost < best.cost:
            best = r
    th = best.x
    J = jac(th)
    dof = len(x) - len(th)
    rss = 2 * best.cost
    cov = np.full((len(th), len(th)), np.inf)
    if dof > 0:
        try:
            inv = np.linalg.inv(J.T @ J)
            if np.all(np.isfinite(inv)) and np.all(np.diag(inv) >= 0):
                cov = inv * (rss / dof)
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
    params = {"lo": float(lo), "hi": float(lo * ratio), "beta": float(beta), "midpoint": float(mid)}
    tq = t_quantile(dof, level)
    ci = {k: (params[k] - tq * se[k], params[k] + tq * se[k]) for k in params}
    side = {n: _near_bound(n, v, l, u) for n, v, l, u in zip(names, th, lb, ub)}
    side = {n: s for n, s in side.items() if s}
    poorly = [k for k in params if (fix_lo is None or k != "lo")
              and not (np.isfinite(se[k]) and se[k] <= abs(params[k]))]
    return {"params": params, "se": se, "ci": ci, "level": level, "t_quantile": tq, "theta": full, "cov": fcov,
            "rmse_log": float(np.sqrt(rss / max(len(x), 1))), "dof": int(dof), "n_points": int(len(x)),
            "at_bound": list(side), "bound_side": side, "poorly_determined": poorly, "bounds": b}


def rise_test(x, implied, level: float = 0.95) -> dict:
    """Do the implied max_lr points rise with x? Slope of log implied max_lr against x by
    linear regression with a Student-t CI: "supported" (CI above 0), "falling" (CI below 0)
    or "flat" (CI includes 0, or fewer than 3 points / one x value)."""
    x, y = np.asarray(x, float), np.asarray(implied, float)
    keep = np.isfinite(x) & np.isfinite(y) & (y > 0)
    r = slope_ci(x[keep], np.log(y[keep]), level)  # the gate's OLS with its Student-t CI
    lo, hi = r["lo"], r["hi"]
    status = "supported" if lo > 0 else ("falling" if hi < 0 else "flat")  # NaN (< 3 points, one x): flat
    return {"status": status, "slope": r["slope"], "slope_lo": lo, "slope_hi": hi, "n": int(r["n"]), "level": level}


STATUS_WORDS = {
    "supported": "the measured gradients (beyond what density alone gives) imply a max_lr that rises with the "
                 "pruned fraction: the data support a rising S-curve",
    "flat": "the measured gradients add no rise we can tell from none (beyond what density alone gives): the "
            "data do not support a rising S-curve (keep a fixed max_lr, or check `gradscope fit`'s trend); "
            "'flat' means 'not detected' at this run's noise, not 'shown constant'",
    "falling": "the measured gradients imply a max_lr that falls as the network is pruned (they widen): the "
               "data do not support a rising S-curve (a fixed max_lr, or a falling one, fits them better)",
    "underdetermined": "too few rounds for a verdict: the slope test needs more residual degrees of freedom "
                       "(run more rounds); no S-curve is supported or refuted",
}


ADAMW_WARNING = ("the run trained with AdamW: Adam divides each update by the running RMS of the gradient, so a "
                 "uniformly narrower gradient gives the same update and the max_lr * scale principle (an SGD "
                 "argument) does not say how AdamW's max_lr should change; treat these points as a hypothesis "
                 "and check them with `gradscope oracle` (docs/method.md, 'max_lr under AdamW')")


@dataclass
class Calibration:
    """SILO parameters calibrated from a run's narrowing, with uncertainty and provenance.

    ``status``: "supported" (the implied max_lr rises with x), "flat" or "falling" (it does
    not: ``to_file`` refuses unless forced). ``flags``: sentences about parameters pinned at a
    bound or not determined by the data (relative SE above 1), and ``ADAMW_WARNING`` when the
    run trained with AdamW.
    """

    params: dict
    uncertainty: dict
    points: pd.DataFrame
    source: dict = field(default_factory=dict)
    _fit: dict = field(default_factory=dict, repr=False)
    status: str = "supported"
    flags: list = field(default_factory=list)
    rise: dict = field(default_factory=dict)

    def conf_int(self, level: Optional[float] = None) -> dict:
        """{param: (lower, upper)}: value +- t_{dof} * SE (Student-t for the fit's residual dof)."""
        level = level or self.uncertainty.get("level", 0.95)
        tq = t_quantile(int(self.uncertainty.get("dof", 0)), level)
        return {k: (self.params[k] - tq * self.uncertainty[k], self.params[k] + tq * self.uncertainty[k])
                for k in ("lo", "hi", "beta", "midpoint")}

    def predict(self, rounds: Any = None, *, level: float = 0.95) -> pd.DataFrame:
        """Predicted max_lr for rounds (an int n = rounds 0..n-1, or a list), at their planned
        pruned fraction, with a pointwise band: log max_lr +- t_{dof} * SE(log max_lr), SE by
        the delta method from the fitted parameters' covariance (NaN where it is not finite).

        (Sampling the parameters' law instead covered the true curve in only ~92 % of
        synthetic 8-round runs at nominal 95 %: the S-curve saturates, so sampled curves bunch
        up; the delta-method band with the t quantile covered ~95 %.)
        """
        if rounds is None:
            rounds = self.source.get("rounds_planned") or (int(self.points["round"].max()) + 1)
        if np.isscalar(rounds):
            if isinstance(rounds, bool) or not float(rounds).is_integer() or rounds < 1:
                raise GradscopeError(f"rounds must be a whole number >= 1 (or a list of rounds), got {rounds!r}")
            rounds = np.arange(int(rounds))
        else:
            rounds = np.asarray(list(rounds), int)
            if len(rounds) == 0 or (rounds < 0).any():
                raise GradscopeError("rounds must be non-negative round numbers")
        p = self.params
        x = np.asarray(pruned_fraction(rounds, p=p["p"], lag=p["lag"]), float)
        y = np.asarray(s_curve(x, p["lo"], p["hi"], p["beta"], p["midpoint"]), float)
        th, cov = self._fit.get("theta"), self._fit.get("cov")
        lo_b = hi_b = np.full(len(x), np.nan)  # no finite covariance: no band (never a zero-width one)
        if th is not None and np.all(np.isfinite(cov)):
            J = _log_curve_jac(np.asarray(th, float), x, None)  # [n, 4], columns lo, ratio, beta, midpoint
            se = np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", J, cov, J), 0.0))
            tq = t_quantile(int(self._fit.get("dof", 0)), level)
            with np.errstate(over="ignore"):
                lo_b, hi_b = y * np.exp(-tq * se), y * np.exp(tq * se)
            # a parameter the data do not determine (huge SE) must not print 1e-77 .. 1e74:
            # clip to the max_lr the bounded parameters can produce
            b = self._fit["bounds"]
            lo_b = np.maximum(lo_b, b["lo"][0])
            hi_b = np.minimum(hi_b, b["lo"][1] * b["ratio"][1])
        return pd.DataFrame({"round": rounds, "x": x, "max_lr": y, "max_lr_lo": lo_b, "max_lr_hi": hi_b})

    def to_dict(self) -> dict:
        notes = {"status": self.status, "message": STATUS_WORDS.get(self.status, ""), "flags": list(self.flags),
                 "rise_test": dict(self.rise)}
        return {**self.params, "notes": notes, "uncertainty": self.uncertainty, "source": self.source}

    def to_file(self, path, *, force: bool = False) -> None:
        """Write the parameters file (YAML for .yaml/.yml, else JSON) that --schedule silo reads.

        Refuses (GradscopeError) when ``status`` is not "supported": such a file would claim a
        rising schedule the data do not support. ``force=True`` writes it anyway, with the
        status and flags inside ("notes")."""
        if self.status != "supported" and not force:
            r = self.rise
            raise GradscopeError(
                f"not writing {os.fspath(path)}: calibration status is {self.status!r} "
                f"({STATUS_WORDS.get(self.status, self.status)}; {gate_sentence(r)}). "
                "Pass --force (force=True) to write the fitted curve anyway, with this status inside")
        path = os.fspath(path)
        d = _jsonable(self.to_dict())
        if path.lower().endswith((".yaml", ".yml")):
            import yaml  # noqa: PLC0415

            text = yaml.safe_dump(d, sort_keys=False)
        else:
            text = json.dumps(d, indent=2)
        from gradscope.atomic import atomic_text  # noqa: PLC0415 - the one atomic output writer

        atomic_text(path, text, "the calibrated parameters")


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


def _flags(fit: dict, fix_lo) -> list:
    out = []
    for name, side in fit["bound_side"].items():
        b = fit["bounds"][name][0 if side == "lower" else 1]
        what = "hi/lo" if name == "ratio" else name
        out.append(f"{what} is at its {side} bound {b:g}: the data do not pin it down inside the safe range")
    for k in fit["poorly_determined"]:
        se = fit["se"][k]
        out.append(f"{k} is not determined by the data (standard error {se:.3g} "
                   f"{'is not finite' if not np.isfinite(se) else 'exceeds the value'})")
    return out


def calibrate_points(points: pd.DataFrame, *, p: float, lag: int = 1, shape: str = "warmup-step",
                     bounds: Optional[dict] = None, fix_lo: Optional[float] = None,
                     source: Optional[dict] = None, min_points: int = MIN_POINTS,
                     use_measured: bool = False, level: float = 0.95, min_dof: int = MIN_DOF,
                     shape_params: Optional[dict] = None) -> Calibration:
    """Fit SILO to points (round, x, implied_max_lr[, density_part]) and package the result,
    with its status from the pruning-only null gate (``gate.null_gate``: does the part of the
    implied rise that density alone does not give rise with x, with at least ``min_dof``
    residual dof?) and flags (bounds, undetermined parameters). ``density_part``: the implied
    log max_lr that pruning alone gives per round (0, or absent, when the view counts no
    pruned zeros). ``shape_params``: the within-round shape's parameters, stored whole so that
    training with the file uses the profiled run's shape, not the shape's defaults."""
    pts = points[np.isfinite(points["implied_max_lr"]) & (points["implied_max_lr"] > 0)]
    n_pos = int((pts["x"] > 0).sum())
    need = (4 if fix_lo is None else 3) + 1  # the free parameters plus one
    if n_pos < min_points or len(pts) < need:
        raise GradscopeError(f"calibration needs at least {min_points} usable rounds with pruned fraction x > 0 "
                             f"and {need} points in all{' (lo fixed)' if fix_lo is not None else ''}; this run has "
                             f"{n_pos} and {len(pts)} (run more rounds)")
    fit = fit_s_curve(pts["x"], pts["implied_max_lr"], bounds=bounds, fix_lo=fix_lo, level=level)
    params = {"schedule": "silo", **fit["params"], "lag": int(lag), "p": float(p), "shape": shape,
              **dict(shape_params or {})}
    if use_measured:
        params["use_measured"] = True
    unc = {**fit["se"], "ci": {k: list(v) for k, v in fit["ci"].items()}, "level": level,
           "t_quantile": fit["t_quantile"], "rmse_log": fit["rmse_log"], "dof": fit["dof"],
           "n_points": fit["n_points"], "at_bound": fit["at_bound"], "bound_side": fit["bound_side"],
           "poorly_determined": fit["poorly_determined"],
           "method": "least_squares on log max_lr; cov = s^2 (J^T J)^-1; intervals value +- t_dof * SE"}
    dens = pts["density_part"].to_numpy(float) if "density_part" in pts else np.zeros(len(pts))
    rise = null_gate(pts["x"], np.log(pts["implied_max_lr"].to_numpy(float)), dens, level=level, min_dof=min_dof)
    return Calibration(params, unc, points.reset_index(drop=True), dict(source or {}), fit,
                       status=rise["status"], flags=_flags(fit, fix_lo), rise=rise)


def _run_shape(rounds_df, asked: Optional[str]) -> tuple[str, dict]:
    """(shape, its parameters): the profiled run's within-round shape as its rounds recorded it
    (round 0's schedule), unless another shape is asked for (then that shape's defaults)."""
    from gradscope.schedules import get_shape  # noqa: PLC0415

    recorded: dict = {}
    if rounds_df is not None and "schedule" in rounds_df and len(rounds_df):
        try:
            recorded = json.loads(rounds_df.sort_values("round")["schedule"].iloc[0] or "{}")
        except (TypeError, ValueError):
            recorded = {}
    shape = asked or recorded.get("shape") or "warmup-step"
    if recorded.get("shape") != shape:
        return shape, {}
    keys = get_shape(shape).defaults
    return shape, {k: recorded[k] for k in keys if k in recorded}


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


def _positive(name: str, v, *, what: str) -> None:
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v) or v <= 0:
        raise GradscopeError(f"{name} ({what}) must be a positive number, got {v!r}")


def check_calibrate_options(*, statistic: str = "std", lo: Optional[float] = None, gamma: float = 1.0,
                            x: str = "planned", rounds_planned: Optional[int] = None, p: Optional[float] = None,
                            lag: Optional[int] = None, view: Optional[str] = None, window: str = "all",
                            min_points: int = MIN_POINTS) -> None:
    """Validate calibrate's options (the CLI's flags), each with one clear GradscopeError.
    ``calibrate_run`` calls it first; the CLI may call it before reading anything."""
    from gradscope.fit.core import STATISTICS  # noqa: PLC0415
    from gradscope.fit.run import check_view, check_window  # noqa: PLC0415

    if statistic not in STATISTICS:
        raise GradscopeError(f"unknown statistic {statistic!r}; choose from {', '.join(STATISTICS)}")
    if x not in ("planned", "measured"):
        raise GradscopeError(f"x must be 'planned' or 'measured', got {x!r}")
    _positive("gamma", gamma, what="the exponent of max_lr ~ scale^-gamma")
    _positive("lo", lo, what="the max_lr of round 0")
    if gamma is not None and gamma > GAMMA_MAX:
        raise GradscopeError(f"gamma must be at most {GAMMA_MAX:g} (max_lr ~ scale^-gamma; 1 keeps max_lr * scale "
                             f"constant), got {gamma!r}")
    if lo is not None and lo > LO_MAX:
        raise GradscopeError(f"lo (the max_lr of round 0) must be at most {LO_MAX:g}, got {lo!r}")
    if rounds_planned is not None and (isinstance(rounds_planned, bool) or not isinstance(rounds_planned, (int, np.integer))
                                       or rounds_planned < 1):
        raise GradscopeError(f"rounds_planned (rounds to predict max_lr for) must be a whole number >= 1, "
                             f"got {rounds_planned!r}")
    if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating))
                          or not 0 < p < 1):
        raise GradscopeError(f"p (the fraction pruned per round) must be between 0 and 1, got {p!r}")
    if lag is not None and (isinstance(lag, bool) or not isinstance(lag, (int, np.integer)) or lag < 0):
        raise GradscopeError(f"lag must be a whole number of rounds >= 0, got {lag!r}")
    if isinstance(min_points, bool) or not isinstance(min_points, (int, np.integer)) or min_points < 1:
        raise GradscopeError(f"min_points must be a whole number >= 1, got {min_points!r}")
    if view is not None:
        check_view(view)
    check_window(window)


def estimate_prune_rate(sparsity: dict) -> float:
    """The per-round prune rate p that best explains measured sparsities s_k = 1-(1-p)^k
    (least squares of log(1-s_k) = k log(1-p) through the origin, rounds k >= 1)."""
    ks = np.array([k for k, v in sparsity.items() if k >= 1 and np.isfinite(v) and 0 <= v < 1], float)
    if len(ks) == 0:
        raise GradscopeError("cannot estimate the prune rate: no measured sparsity of a round >= 1; pass p=...")
    ld = np.array([np.log1p(-sparsity[int(k)]) for k in ks])
    slope = float((ks * ld).sum() / (ks * ks).sum())
    p = 1.0 - np.exp(slope)
    if not 0 < p < 1:
        raise GradscopeError(f"cannot estimate the prune rate from the measured sparsities (got {p:.3g}); pass p=...")
    return float(p)


def calibrate_run(path, *, gamma: float = 1.0, statistic: str = "std", lo: Optional[float] = None,
                  x: str = "planned", bounds: Optional[dict] = None, rounds_planned: Optional[int] = None,
                  p: Optional[float] = None, lag: Optional[int] = None, shape: Optional[str] = None,
                  fix_lo: bool = False, fit=None, min_points: int = MIN_POINTS, view: Optional[str] = None,
                  window: str = DEFAULT_WINDOW, min_dof: int = MIN_DOF) -> Calibration:
    """Calibrate SILO from a run file (or RunReader): pooled narrowing of ``statistic`` ->
    implied max_lr per round -> fitted (lo, hi, beta, midpoint).

    lo: max_lr of round 0 (default: the run's round-0 max_lr). x: "planned" (1-(1-p)^(k-lag))
    or "measured" (sparsity of round k-lag; p is then only needed for predictions and is
    estimated from the measured sparsities when neither given nor in the config, and the
    file asks the schedule to use measured sparsity). p, lag, shape default to the run's
    config (prune_rate, schedule lag or 1, schedule shape or warmup-step). fix_lo pins lo to
    the round-0 max_lr. view/window: which gradients (see gradscope.views; defaults: the one
    default of every verb). The status comes from the pruning-only null gate (gate.py): under
    view "all" the sqrt(density) part of the rise is computed and not counted as evidence.
    ``fit``: a FitResult to reuse (its view and window must match).
    """
    from gradscope.fit.core import MOMENT_STATS, BINNED_STATS  # noqa: PLC0415
    from gradscope.fit.run import describe_view, fit_run, open_source, sparsity_by_round  # noqa: PLC0415

    check_calibrate_options(statistic=statistic, lo=lo, gamma=gamma, x=x, rounds_planned=rounds_planned,
                            p=p, lag=lag, view=view, window=window, min_points=min_points)
    reader = open_source(path)
    view = default_view(reader) if view is None else view
    if fit is None:
        models = () if statistic in MOMENT_STATS + BINNED_STATS else (statistic,)
        fit = fit_run(reader, per="round", models=models, bootstrap=0 if not models else 100, store=False,
                      view=view, window=window)
    else:
        fv, fw = fit.meta.get("view", "survivors"), fit.meta.get("window", "all")
        if (fv, fw) != (view, window):
            raise GradscopeError(f"the fit given is of view {fv!r}, window {fw!r}, not {view!r}, {window!r}")
    rounds_df = reader.rounds()
    if lo is None:
        if rounds_df is not None and "max_lr" in rounds_df and (rounds_df["round"] == 0).any():
            lo = float(rounds_df.loc[rounds_df["round"] == 0, "max_lr"].iloc[0])
        if lo is None or not np.isfinite(lo) or lo <= 0:
            raise GradscopeError("round 0's max_lr is not in the run file; pass lo=... (the max_lr used in round 0)")
    lag = int(lag if lag is not None else (_config_get(reader, "schedule", "lag") or 1))
    p_source = "given"
    if p is None:
        p, p_source = _config_get(reader, "prune", "prune_rate"), "run config"
    measured = sparsity_by_round(reader) if x == "measured" else None
    if p is None:
        if x == "planned":
            raise GradscopeError("the run's prune rate is unknown; pass p=... (or use measured sparsity, x='measured')")
        p, p_source = estimate_prune_rate(measured), "estimated from the measured sparsities"
    shape, shape_params = _run_shape(rounds_df, shape or _config_get(reader, "schedule", "shape"))
    n = fit.narrowing
    n = n[(n["layer"] == "pooled") & (n["statistic"] == statistic)]
    if n.empty:
        raise GradscopeError(f"no pooled narrowing of {statistic!r} in this run (is round 0 recorded, "
                             "with activation-fed layers, e.g. --layers relu or gelu?)")
    rounds = np.sort(n["round"].to_numpy(int))
    xs = pruned_fraction(rounds, p=p, lag=lag, measured=measured)
    pts = narrowing_points(fit.narrowing, statistic=statistic, max_lr0=lo, gamma=gamma, x=xs, rounds=rounds)
    null = density_part(reader, view=view, window=window, statistic=statistic, gamma=gamma, rounds=rounds)
    pts["null_ratio"] = null["null_ratio"].to_numpy(float)
    pts["density_part"] = null["density_part"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        pts["measured_part"] = np.log(pts["implied_max_lr"].to_numpy(float) / lo) - pts["density_part"].to_numpy(float)
    optimizer = _config_get(reader, "train", "optimizer") or "sgd"
    src = {"run": os.fspath(path) if isinstance(path, (str, os.PathLike)) else type(reader).__name__,
           "statistic": statistic, "view": view, "window": window, "describe": describe_view(view, window),
           "model": _config_get(reader, "model", "model"), "dataset": _config_get(reader, "data", "dataset"),
           "gamma": gamma, "x": x, "max_lr0": lo, "p_source": p_source, "optimizer": optimizer,
           "rounds_used": [int(r) for r in rounds], "rounds_planned": rounds_planned}
    cal = calibrate_points(pts, p=float(p), lag=lag, shape=shape, bounds=bounds,
                           fix_lo=lo if fix_lo else None, source=src, min_points=min_points,
                           use_measured=(x == "measured" and lag <= 1), min_dof=min_dof,
                           shape_params=shape_params)
    if view == "relative":
        cal.flags.append("view relative: |g|/|w| also shrinks because pruning keeps the large weights; the gate "
                         "splits off no such selection effect (use --view survivors for the gate's verdict)")
    if optimizer == "adamw":
        cal.flags.insert(0, ADAMW_WARNING)
    return cal


def format_calibration(cal: Calibration) -> pd.DataFrame:
    """Parameter table for printing: value, standard error, Student-t CI and a flag."""
    ci = cal.conf_int()
    side = cal.uncertainty.get("bound_side", {})
    poor = set(cal.uncertainty.get("poorly_determined", []))
    rows = []
    for k in ("lo", "hi", "beta", "midpoint"):
        flag = []
        s_ = side.get("ratio" if k == "hi" else k)
        if s_:
            flag.append(f"at {s_} bound" if k != "hi" else f"hi/lo at {s_} bound")
        if k in poor:
            flag.append("SE > value" if np.isfinite(cal.uncertainty.get(k, np.nan)) else "no finite SE")
        rows.append({"param": k, "value": cal.params[k], "se": cal.uncertainty.get(k, np.nan),
                     "ci_lo": ci[k][0], "ci_hi": ci[k][1], "flag": ", ".join(flag)})
    return pd.DataFrame(rows)


def describe_calibration(cal: Calibration) -> list:
    """Lines to print above/below the parameter table: what was measured (statistic, view,
    window, x, gamma), the status in words, the interval method, and every flag."""
    src, u = cal.source, cal.uncertainty
    lines = [f"statistic {src.get('statistic', '?')}, {src.get('describe', 'view survivors')}; "
             f"x {src.get('x', 'planned')} (p {cal.params.get('p', float('nan')):.3g}, "
             f"{src.get('p_source', 'given')}; lag {cal.params.get('lag')}); gamma {src.get('gamma', 1.0):g}",
             f"status: {cal.status}: {STATUS_WORDS.get(cal.status, '')}"]
    lines += gate_lines(cal.rise)
    lines.append(f"intervals: {100 * u.get('level', 0.95):.0f} % = value +- t({u.get('dof')} dof) = "
                 f"{u.get('t_quantile', float('nan')):.3g} x SE")
    lines += [f"warning: {f}" for f in cal.flags]
    lines += evidence_lines(src.get("model"), src.get("dataset"), src.get("view", DEFAULT_VIEW),
                            src.get("window", DEFAULT_WINDOW), src.get("statistic", "std"))
    return lines
