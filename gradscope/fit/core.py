"""Tables of fits: one row per histogram, with status, exact-moment spreads, robust
spreads from the binned cdf and, per model, the fitted scale with a bootstrap CI, the
log-likelihood, AIC and a binned KS distance; then narrowing ratios and trends.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from gradscope import GradscopeError
from gradscope.fit.binned import (binned_cdf, binned_mad, binned_quantile, fit_exact,
                                  fit_family, model_cdf_at_edges)
from gradscope.fit.families import get_family

MODELS = ("normal", "laplace", "t", "gennorm")
MOMENT_STATS = ("std", "meanabs")
STATUSES = ("ok", "empty", "degenerate", "nonfinite", "out-of-range", "no-convergence")
_Z95 = stats.norm.ppf(0.975)


def moment_spreads(count, s1, s2, s4=None, s3=None, sabs=None, level: float = 0.95):
    """Mean, std and mean |g| from exact power sums, with delta-method CIs (iid values).

    se(log std) = sqrt((m4/var^2 - 1) / N) / 2;  se(log mean|g|) = sqrt(var|g| / N) / mean|g|.
    """
    z = stats.norm.ppf(0.5 + level / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = np.asarray(count, float)
        mu = s1 / n
        ex2 = s2 / n
        var = np.maximum(ex2 - mu * mu, 0.0)
        std = np.sqrt(var)
        out = {"mean": mu, "std": std}
        if s4 is not None and s3 is not None:
            m4 = s4 / n - 4 * mu * s3 / n + 6 * mu * mu * ex2 - 3 * mu**4
            se = 0.5 * np.sqrt(np.maximum(m4 / var**2 - 1, 0.0) / n)
            out["std_lo"], out["std_hi"] = std * np.exp(-z * se), std * np.exp(z * se)
        if sabs is not None:
            ma = sabs / n
            se = np.sqrt(np.maximum(ex2 - ma * ma, 0.0) / n) / ma
            out["meanabs"] = ma
            out["meanabs_lo"], out["meanabs_hi"] = ma * np.exp(-z * se), ma * np.exp(z * se)
    return out


def histogram_status(counts, under, over, nonfinite=None, sumsq=None) -> np.ndarray:
    """Per-row status before fitting: nonfinite, empty, degenerate or ok."""
    c = np.asarray(counts, float)
    n = c.shape[0]
    ext = np.concatenate([np.asarray(under, float)[:, None], c, np.asarray(over, float)[:, None]], 1)
    st = np.full(n, "ok", dtype=object)
    bad = ~np.isfinite(ext).all(1) | (ext < 0).any(1)
    if nonfinite is not None:
        bad |= ~np.isfinite(np.asarray(nonfinite, float)) | (np.asarray(nonfinite, float) > 0)
    tot = np.where(bad, 0.0, np.nan_to_num(ext).sum(1))
    nonempty = (np.nan_to_num(ext) > 0).sum(1)
    degenerate = nonempty < 3
    if sumsq is not None:
        degenerate |= ~(np.asarray(sumsq, float) > 0)
    st[degenerate] = "degenerate"
    st[tot == 0] = "empty"
    st[bad] = "nonfinite"
    return st


def fit_histograms(counts, edges, under=None, over=None, *, nonfinite=None, moments=None,
                   models: Sequence[str] = MODELS, bootstrap: int = 200, seed: int = 0,
                   resample: str = "auto", level: float = 0.95) -> pd.DataFrame:
    """Fit every model to every histogram row (vectorised). One output row per histogram.

    counts [n, B]; edges [B+1] (any increasing edges); under/over [n] out-of-range counts;
    moments: optional dict of arrays count, sum, sumsq, sumabs, sum3, sum4 (exact power
    sums): location is fixed at the exact mean sum/count (0 without moments).
    Columns whose value is NaN have status != "ok" (see STATUSES), or, for one model's
    columns, status "no-convergence".
    """
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise GradscopeError(f"histogram counts must be a 2-d array [n, bins], got shape {counts.shape}")
    edges = np.asarray(edges, float)
    n, B = counts.shape
    if edges.shape != (B + 1,) or not np.all(np.diff(edges) > 0):
        raise GradscopeError(f"need {B + 1} strictly increasing edges for {B} bins")
    for m in models:
        get_family(m)
    under = np.zeros(n) if under is None else np.asarray(under, float)
    over = np.zeros(n) if over is None else np.asarray(over, float)
    mom = moments or {}
    status = histogram_status(counts, under, over, nonfinite, mom.get("sumsq"))
    df = pd.DataFrame({"status": status})
    cf = np.where(np.isfinite(counts), counts, 0).astype(float)
    uf, of = np.nan_to_num(under), np.nan_to_num(over)
    df["count"] = (cf.sum(1) + uf + of).astype(np.int64)
    if mom:
        ms = moment_spreads(mom["count"], mom["sum"], mom["sumsq"], mom.get("sum4"),
                            mom.get("sum3"), mom.get("sumabs"), level)
        for k, v in ms.items():
            df[k] = v
        loc_all = np.nan_to_num(ms["mean"])
    else:
        loc_all = np.zeros(n)
    cdf = binned_cdf(cf, uf, of)
    q = {p: binned_quantile(cdf, edges, p) for p in (0.05, 0.25, 0.5, 0.75, 0.95)}
    df["iqr"] = q[0.75] - q[0.25]
    df["mad"] = binned_mad(cdf, edges, q[0.5])
    ok = df["status"].to_numpy() == "ok"
    spread_cols = ["iqr", "mad"] + [c for c in df.columns if c.startswith(("std", "meanabs", "mean"))]
    oor = ok & ~np.isfinite(df[spread_cols].to_numpy(float)).all(1)
    df.loc[oor, "status"] = "out-of-range"
    ok = df["status"].to_numpy() == "ok"
    rows = np.flatnonzero(ok)
    ext_edges = np.concatenate([[-np.inf], edges, [np.inf]])
    C = np.concatenate([uf[rows, None], cf[rows], of[rows, None]], 1)
    qr = {p: v[rows] for p, v in q.items()}
    fallback = (df["std"].to_numpy(float)[rows] if "std" in df else np.full(len(rows), np.nan))
    rng = np.random.default_rng(seed)
    aics = []
    for m in models:
        fam = get_family(m)
        r = fit_family(fam, C, ext_edges, loc_all[rows], qr, fallback, bootstrap, rng, resample, level)
        conv = r["converged"] & np.isfinite(r["scale"]) & np.isfinite(r["loglik"])
        if bootstrap:
            conv &= np.isfinite(r["scale_lo"]) & np.isfinite(r["scale_hi"])
        cols = {"scale": r["scale"], "scale_lo": r["scale_lo"], "scale_hi": r["scale_hi"],
                "loglik": r["loglik"], "aic": 2 * (1 + fam.n_shape) - 2 * r["loglik"]}
        if fam.n_shape:
            cols["shape"] = r["shape"]
        if not bootstrap:
            del cols["scale_lo"], cols["scale_hi"]
        mc = model_cdf_at_edges(fam, edges, loc_all[rows], r["scale"],
                                r["shape"] if fam.n_shape else None)
        cols["ks"] = np.abs(mc - cdf[rows]).max(1)
        for k, v in cols.items():
            full = np.full(n, np.nan)
            full[rows] = np.where(conv, v, np.nan)
            df[f"{m}_{k}"] = full
        bad = rows[~conv]
        df.loc[bad, "status"] = "no-convergence"
        aics.append(df[f"{m}_aic"].to_numpy())
    if models:
        A = np.stack(aics, 1)
        anyfin = np.isfinite(A).any(1)
        best = np.array(models, dtype=object)[np.argmin(np.where(np.isfinite(A), A, np.inf), 1)]
        df["best"] = np.where(anyfin, best, None)
    # spreads are meaningless where the histogram is unusable: blank them
    dead = ~df["status"].isin(["ok", "no-convergence"]).to_numpy()
    num = [c for c in df.columns if c not in ("status", "count", "best")]
    df.loc[dead, num] = np.nan
    return df


def fit_samples(values, *, loc=None, models: Sequence[str] = MODELS) -> pd.DataFrame:
    """Exact-likelihood fits to raw samples values [n, K] (NaN-padded), one row each."""
    v = np.asarray(values, float)
    n = v.shape[0]
    cnt = np.isfinite(v).sum(1)
    status = np.where(cnt == 0, "empty", "ok").astype(object)
    with np.errstate(invalid="ignore"):
        spread = np.nanstd(np.where(cnt[:, None] > 0, v, 0.0), axis=1)
    status[(cnt > 0) & ~(spread > 0)] = "degenerate"
    status[(cnt > 0) & (cnt < 3)] = "degenerate"
    df = pd.DataFrame({"status": status, "count": cnt})
    rows = np.flatnonzero(status == "ok")
    loc = np.zeros(n) if loc is None else np.nan_to_num(np.asarray(loc, float))
    aics = []
    for m in models:
        fam = get_family(m)
        r = fit_exact(fam, v[rows], loc[rows])
        conv = r["converged"] & np.isfinite(r["scale"])
        cols = {"scale": r["scale"], "loglik": r["loglik"], "aic": 2 * (1 + fam.n_shape) - 2 * r["loglik"]}
        if fam.n_shape:
            cols["shape"] = r["shape"]
        for k, val in cols.items():
            full = np.full(n, np.nan)
            full[rows] = np.where(conv, val, np.nan)
            df[f"{m}_{k}"] = full
        df.loc[rows[~conv], "status"] = "no-convergence"
        aics.append(df[f"{m}_aic"].to_numpy())
    if models:
        A = np.stack(aics, 1)
        best = np.array(models, dtype=object)[np.argmin(np.where(np.isfinite(A), A, np.inf), 1)]
        df["best"] = np.where(np.isfinite(A).any(1), best, None)
    return df


# ----------------------------------------------------------------------------- narrowing
def statistic_columns(stat: str):
    """(value, lo, hi) column names of a narrowing statistic in a fit table."""
    if stat in MOMENT_STATS:
        return stat, f"{stat}_lo", f"{stat}_hi"
    if stat in MODELS:
        return f"{stat}_scale", f"{stat}_scale_lo", f"{stat}_scale_hi"
    raise GradscopeError(f"unknown statistic {stat!r}; choose from {', '.join(MOMENT_STATS + MODELS)}")


def narrowing_table(table: pd.DataFrame, sparsity: dict, statistics: Sequence[str],
                    layer_col: str = "layer", level: float = 0.95) -> pd.DataFrame:
    """scale(round k) / scale(round 0) per layer and statistic, with a CI.

    ``table`` has one row per (round, layer) (status == "ok" rows are used). The CI treats
    the two log scales as independent and normal, with standard errors read off their CIs.
    Layers whose round 0 is unusable are left out.
    """
    z = stats.norm.ppf(0.5 + level / 2)
    out = []
    t = table[table["status"] == "ok"]
    for stat in statistics:
        c, clo, chi = statistic_columns(stat)
        if c not in t:
            continue
        for layer, g in t.groupby(layer_col, sort=False):
            g = g.sort_values("round")
            if g.empty or g["round"].iloc[0] != 0:
                continue
            s = g[c].to_numpy(float)
            if clo in g:
                se = (np.log(g[chi].to_numpy(float)) - np.log(g[clo].to_numpy(float))) / (2 * _Z95)
            else:
                se = np.zeros(len(g))
            se_r = np.sqrt(se**2 + se[0] ** 2)
            se_r[0] = 0.0
            ratio = s / s[0]
            out.append(pd.DataFrame({
                "round": g["round"].to_numpy(), "sparsity": [sparsity.get(int(r), np.nan) for r in g["round"]],
                "layer": layer, "statistic": stat, "scale": s, "ratio": ratio,
                "ratio_lo": ratio * np.exp(-z * se_r), "ratio_hi": ratio * np.exp(z * se_r)}))
    cols = ["round", "sparsity", "layer", "statistic", "scale", "ratio", "ratio_lo", "ratio_hi"]
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=cols)


def trend_slope(sparsity, scale, level: float = 0.95):
    """Slope of log(scale) against log(density = 1 - sparsity), with a t-based CI.

    A positive slope means the distribution narrows as the network gets sparser:
    scale ~ density ** slope. Returns (slope, lo, hi, n) or NaNs if fewer than 3 points.
    """
    d = 1.0 - np.asarray(sparsity, float)
    s = np.asarray(scale, float)
    keep = np.isfinite(d) & np.isfinite(s) & (d > 0) & (s > 0)
    d, s = d[keep], s[keep]
    if len(d) < 3 or np.ptp(np.log(d)) == 0:
        return np.nan, np.nan, np.nan, len(d)
    r = stats.linregress(np.log(d), np.log(s))
    tq = stats.t.ppf(0.5 + level / 2, len(d) - 2)
    return r.slope, r.slope - tq * r.stderr, r.slope + tq * r.stderr, len(d)


def trend_table(narrowing: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per layer and statistic: slope of log scale on log density, its CI, and whether the
    distribution narrows (CI entirely above 0). Layers with < 3 rounds are left out."""
    rows = []
    for (layer, stat), g in narrowing.groupby(["layer", "statistic"], sort=False):
        sl, lo, hi, n = trend_slope(g["sparsity"], g["scale"], level)
        if np.isfinite(sl):
            rows.append({"layer": layer, "statistic": stat, "n_rounds": n, "slope": sl,
                         "slope_lo": lo, "slope_hi": hi, "narrows": bool(lo > 0)})
    cols = ["layer", "statistic", "n_rounds", "slope", "slope_lo", "slope_hi", "narrows"]
    return pd.DataFrame(rows, columns=cols)
