"""The pruning-only null: how much of an implied max_lr rise does density alone give?

Counting pruned weights as zero gradients (view "all") shrinks a layer's RMS gradient by
sqrt(density) whatever the surviving gradients do: an identity of the second moment
(E_all[g^2] = density * E_survivors[g^2]), not a measurement. A calibration from that view
would call pruning arithmetic "a rising S-curve". ``density_part`` computes, per round, the
implied log max_lr that pruning alone gives (survivors' per-layer moments frozen at round 0,
each recorded layer's measured density of round k); ``null_gate`` tests the rest, the part
the measured gradients add, and says "supported" only when its slope's CI lies above
``MIN_RISE`` with at least ``MIN_DOF`` residual degrees of freedom (docs/method.md, "The
calibration gate"; false-"supported" rate and power: tests/test_gate.py).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd
from scipy import stats

from gradscope import GradscopeError

MIN_DOF = 4  # residual dof of the slope test (points - 2): 6 rounds at least
MIN_RISE = math.log(1.1)  # a rise below x1.1 per unit of pruned fraction is no schedule: the gate tests slope > this
NULL_STATS = ("std", "meanabs")  # statistics whose pruning-only null under view "all" is exact from moments


def rounds_needed(min_dof: int = MIN_DOF) -> int:
    """Rounds (round 0 included) the slope test needs for ``min_dof`` residual degrees of freedom."""
    return int(min_dof) + 2


def density_part(reader, *, view: str, window: str, statistic: str, gamma: float,
                 rounds: np.ndarray) -> pd.DataFrame:
    """Per round: ``null_ratio`` (the statistic's ratio to round 0 if the surviving gradients
    of every recorded layer kept their round-0 moments and only density changed) and
    ``density_part`` = -gamma * log(null_ratio), the implied log max_lr rise pruning alone
    gives. View "survivors" and "relative" count no pruned zeros: null ratio 1, part 0.

    View "all": pooled over the recorded activation-fed layers l, with s_lk surviving and
    n_lk = numel_l * steps values in round k, and round-0 survivor moments mu_l, q_l, a_l:
    mean_k = sum_l s_lk mu_l / sum_l n_lk, E[g^2]_k = sum_l s_lk q_l / sum_l n_lk,
    std = sqrt(E[g^2] - mean^2), mean|g|_k = sum_l s_lk a_l / sum_l n_lk. Exact for std and
    mean|g| (the layers' own densities, not the global sparsity, which differs by up to 14 %);
    other statistics have no moment null and are refused under view "all".
    """
    rounds = np.asarray(rounds, int)
    if view != "all":
        return pd.DataFrame({"round": rounds, "null_ratio": 1.0, "density_part": 0.0})
    if statistic not in NULL_STATS:
        raise GradscopeError(f"statistic {statistic!r} under view 'all' has no pruning-only null from the moments, so "
                             "its rise cannot be split from the sqrt(density) arithmetic; use --view survivors, or "
                             f"statistic {' or '.join(NULL_STATS)}")
    from gradscope.fit.run import load_windows, _pooled_column  # noqa: PLC0415

    _, _, surv = load_windows(reader, "survivors", window)
    _, _, allv = load_windows(reader, "all", window)
    keys = [k for k in ("round", "epoch", "window", "layer") if k in surv and k in allv]
    pooled = _pooled_column(surv)
    s = surv[pooled].copy()
    m = s[keys + ["count", "sum", "sumsq", "sumabs"]].merge(
        allv[keys + ["count"]].rename(columns={"count": "n_all"}), on=keys, how="inner", validate="one_to_one")
    g = m.groupby(["round", "layer"], sort=True)[["count", "sum", "sumsq", "sumabs", "n_all"]].sum().reset_index()
    r0 = g[g["round"] == g["round"].min()].set_index("layer")
    if (g["round"].min() != 0) or r0.empty:
        raise GradscopeError("the pruning-only null needs round 0's surviving gradients (round 0 is not recorded)")
    with np.errstate(invalid="ignore", divide="ignore"):
        mu, q, a = (r0[c] / r0["count"] for c in ("sum", "sumsq", "sumabs"))
    g = g[g["layer"].isin(r0.index[r0["count"] > 0])]
    g = g.assign(mu=g["layer"].map(mu), q=g["layer"].map(q), a=g["layer"].map(a))
    per = g.groupby("round").apply(
        lambda d: pd.Series({"n": d["n_all"].sum(), "m1": (d["count"] * d["mu"]).sum(),
                             "m2": (d["count"] * d["q"]).sum(), "ma": (d["count"] * d["a"]).sum()}),
        include_groups=False)
    m1, m2, ma = per["m1"] / per["n"], per["m2"] / per["n"], per["ma"] / per["n"]
    val = np.sqrt(np.maximum(m2 - m1 ** 2, 0.0)) if statistic == "std" else ma
    ratio = (val / val.loc[0]).reindex(rounds).to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        part = -float(gamma) * np.log(ratio) + 0.0  # + 0.0: no '-0' in printed tables
    return pd.DataFrame({"round": rounds, "null_ratio": ratio, "density_part": part})


def slope_ci(x, y, level: float = 0.95) -> dict:
    """OLS slope of y on x with a Student-t CI (n - 2 dof); NaN when it cannot be computed."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    s, lo, hi = _slopes(x, y[None, :], level)
    return {"slope": float(s[0]), "lo": float(lo[0]), "hi": float(hi[0]), "n": len(x), "dof": max(len(x) - 2, 0)}


def _slopes(x: np.ndarray, Y: np.ndarray, level: float):
    """OLS slopes of each row of Y on x, and their Student-t CIs (vectorised over rows)."""
    n = len(x)
    if n < 3 or np.ptp(x) == 0:
        nan = np.full(len(Y), np.nan)
        return nan, nan, nan
    xc = x - x.mean()
    sxx = float(xc @ xc)
    Yc = Y - Y.mean(axis=1, keepdims=True)
    b = Yc @ xc / sxx
    resid = Yc - b[:, None] * xc[None, :]
    se = np.sqrt(np.maximum((resid ** 2).sum(axis=1), 0.0) / (n - 2) / sxx)
    tq = float(stats.t.ppf(0.5 + level / 2, n - 2))
    return b, b - tq * se, b + tq * se


def gate_status(x, log_implied, log_density, *, level: float = 0.95, min_dof: int = MIN_DOF,
                min_rise: float = MIN_RISE) -> np.ndarray:
    """The gate's verdict for each row of ``log_implied`` [runs, points] (``log_density``
    [points] or [runs, points]); the rule of ``null_gate``, vectorised for simulations."""
    x = np.asarray(x, float)
    Y = np.atleast_2d(np.asarray(log_implied, float)) - np.atleast_2d(np.asarray(log_density, float))
    out = np.full(len(Y), "underdetermined", dtype=object)
    if len(x) < rounds_needed(min_dof) or np.ptp(x) == 0:
        return out
    _, lo, hi = _slopes(x, Y, level)
    out[:] = "flat"
    out[lo > min_rise] = "supported"
    out[hi < -min_rise] = "falling"
    return out


def null_gate(x, log_implied, log_density, *, level: float = 0.95, min_dof: int = MIN_DOF,
              min_rise: float = MIN_RISE) -> dict:
    """Split the slope of log implied max_lr on x into the density part and the measured part,
    and give the verdict on the measured part:

    "supported": its CI lies above ``min_rise``; "falling": below ``-min_rise``; "flat": the CI
    lies within or overlaps (-min_rise, min_rise) (the measured gradients add no rise we can
    tell from none); "underdetermined": fewer than ``min_dof`` + 2 points, so no verdict.
    """
    x = np.asarray(x, float)
    li, ld = np.asarray(log_implied, float), np.asarray(log_density, float)
    keep = np.isfinite(x) & np.isfinite(li) & np.isfinite(ld)
    x, li, ld = x[keep], li[keep], ld[keep]
    total, dens, meas = slope_ci(x, li, level), slope_ci(x, ld, level), slope_ci(x, li - ld, level)
    n = int(len(x))
    status = str(gate_status(x, li, ld, level=level, min_dof=min_dof, min_rise=min_rise)[0])
    share = dens["slope"] / total["slope"] if np.isfinite(total["slope"]) and abs(total["slope"]) > 1e-12 else float("nan")
    return {"status": status, "n": n, "dof": max(n - 2, 0), "min_dof": int(min_dof), "rounds_needed": rounds_needed(min_dof),
            "level": level, "min_rise": float(min_rise),
            # the whole rise (what the view's points imply) and its two parts, each a slope of log max_lr on x
            "slope": total["slope"], "slope_lo": total["lo"], "slope_hi": total["hi"],
            "density_slope": dens["slope"], "density_share": float(share),
            "measured_slope": meas["slope"], "measured_lo": meas["lo"], "measured_hi": meas["hi"]}


def gate_sentence(g: dict) -> str:
    """One line: the measured part's slope and CI, the density part, dof, and the threshold."""
    if not g:
        return "no gate result"
    lvl = f"{100 * g.get('level', 0.95):.0f} %"
    if g.get("status") == "underdetermined":
        return (f"{g.get('n', 0)} points give {g.get('dof', 0)} residual dof; the gate needs {g.get('min_dof', MIN_DOF)} "
                f"({g.get('rounds_needed', rounds_needed())} rounds incl. round 0)")
    return (f"measured part of the slope of log max_lr on x: {g['measured_slope']:.3g} ({lvl} CI "
            f"{g['measured_lo']:.3g} to {g['measured_hi']:.3g}, {g['dof']} dof; 'supported' needs the CI above "
            f"log {math.exp(g['min_rise']):.3g} = {g['min_rise']:.3g})")


def gate_lines(g: dict) -> list:
    """Lines printed with every calibration: the whole implied slope, split into the part
    density alone gives and the part the measured gradients add."""
    if not g or not np.isfinite(g.get("slope", np.nan)):
        return [f"  gate: {gate_sentence(g)}"]
    share = g.get("density_share", np.nan)
    share_txt = f", {100 * share:.0f} % of the whole" if np.isfinite(share) and g["density_slope"] != 0 else \
        " (this view counts no pruned zeros)" if g["density_slope"] == 0 else ""
    return [f"  slope of log implied max_lr on x (one run: its round-to-round noise only): {g['slope']:.3g} "
            f"({100 * g['level']:.0f} % CI {g['slope_lo']:.3g} to {g['slope_hi']:.3g}, {g['n']} points)",
            f"    = density alone (pruning-only null){share_txt}: {g['density_slope']:.3g}",
            f"    + measured gradients: {g['measured_slope']:.3g} ({100 * g['level']:.0f} % CI {g['measured_lo']:.3g} "
            f"to {g['measured_hi']:.3g}, {g['dof']} dof)",
            f"  gate: {g['status']}: {gate_sentence(g)}"]
