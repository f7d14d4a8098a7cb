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
from gradscope.fit.binned import (binned_cdf, binned_quantile, binned_spreads, fit_exact, fit_family,
                                  model_cdf_at_edges)
from gradscope.fit.families import get_family

MODELS = ("normal", "laplace", "t", "gennorm")
MOMENT_STATS = ("std", "meanabs")  # exact, from the power sums
BINNED_STATS = ("iqr", "mad")  # from the binned cdf (resolution: the bin width, see binned_spreads)
STATISTICS = MOMENT_STATS + BINNED_STATS + MODELS
STATUSES = ("ok", "empty", "degenerate", "nonfinite", "out-of-range", "no-convergence")
TREND_WORDING = ("slope of log scale against log density (density = 1 - sparsity; "
                 "> 0: narrows as the net gets sparser); 95 % t-based CI; verdict: narrows (CI above 0), "
                 "widens (CI below 0), cannot tell (CI includes 0)")
VERDICTS = ("narrows", "widens", "cannot tell")


def trend_verdict(lo: float, hi: float) -> str:
    """What a slope CI says: "narrows" (entirely above 0), "widens" (entirely below), else "cannot tell"."""
    if lo > 0:
        return "narrows"
    if hi < 0:
        return "widens"
    return "cannot tell"
_Z95 = stats.norm.ppf(0.975)


def check_statistic(statistic: str, models: Sequence[str] = MODELS) -> str:
    """``statistic`` itself if it is a known spread statistic available with ``models`` fitted;
    otherwise one clear GradscopeError listing what is available."""
    avail = MOMENT_STATS + BINNED_STATS + tuple(m for m in MODELS if m in tuple(models))
    if statistic in avail:
        return statistic
    if statistic in MODELS:
        raise GradscopeError(f"statistic {statistic!r} is the scale of model {statistic!r}, which was not fitted; "
                             f"add it to the models (now: {', '.join(models) or 'none'})")
    raise GradscopeError(f"unknown statistic {statistic!r}; choose from {', '.join(avail)} "
                         "(std and meanabs are exact, iqr and mad come from the histogram, the others are "
                         "fitted scales)")


def check_bootstrap(bootstrap) -> int:
    """``bootstrap`` as an int >= 0, or a GradscopeError."""
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise GradscopeError(f"bootstrap must be a whole number of replicates >= 0 (0: no CIs of fitted "
                             f"scales), got {bootstrap!r}")
    return int(bootstrap)


def moment_spreads(count, s1, s2, s4=None, s3=None, sabs=None, level: float = 0.95):
    """Mean, std and mean |g| from exact power sums, with delta-method CIs (iid values).

    se(log std) = sqrt((m4/var^2 - 1) / N) / 2;  se(log mean|g|) = sqrt(var|g| / N) / mean|g|.
    """
    z = stats.norm.ppf(0.5 + level / 2)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
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

    ``status`` describes the histogram (see STATUSES); each model has its own
    ``{model}_status`` ("ok", "no-convergence", or the row's status when it was not fitted).
    NaN is confined to what is unusable: exact statistics (mean, std, meanabs) are NaN only
    when the row has no values or saw non-finite ones; iqr/mad only when the histogram is
    unusable; a model's columns only when that model has no valid fit.
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
    bootstrap = check_bootstrap(bootstrap)
    under = np.zeros(n) if under is None else np.asarray(under, float)
    over = np.zeros(n) if over is None else np.asarray(over, float)
    mom = moments or {}
    status = histogram_status(counts, under, over, nonfinite, mom.get("sumsq"))
    # the columns are built as arrays in table order and become one DataFrame at the end (the
    # values are those of the column-at-a-time version this replaced: tests/test_fit_tables_fast.py)
    cols: dict = {"status": None}
    cf = np.where(np.isfinite(counts), counts, 0).astype(float)
    uf, of = np.nan_to_num(under), np.nan_to_num(over)
    cols["count"] = (cf.sum(1) + uf + of).astype(np.int64)
    exact_cols = []
    if mom:
        ms = moment_spreads(mom["count"], mom["sum"], mom["sumsq"], mom.get("sum4"),
                            mom.get("sum3"), mom.get("sumabs"), level)
        for k, v in ms.items():
            cols[k] = np.array(v, float)  # a copy: blanked in place below
        exact_cols = list(ms)
        loc_all = np.nan_to_num(cols["mean"])
    else:
        loc_all = np.zeros(n)
    cdf = binned_cdf(cf, uf, of)
    q = {p: binned_quantile(cdf, edges, p) for p in (0.05, 0.25, 0.5, 0.75, 0.95)}
    bs = binned_spreads(cf, uf, of, edges, level)
    for k, v in bs.items():
        cols[k] = np.array(v, float)
    st = np.asarray(status, dtype=object).copy()
    ok = st == "ok"
    # a quartile or the MAD beyond the edges: the histogram range is far too narrow
    oor = ok & ~(np.isfinite(cols["iqr"]) & np.isfinite(cols["mad"]))
    st[oor] = "out-of-range"
    rows = np.flatnonzero(ok & ~oor)
    ext_edges = np.concatenate([[-np.inf], edges, [np.inf]])
    C = np.concatenate([uf[rows, None], cf[rows], of[rows, None]], 1)
    qr = {p: v[rows] for p, v in q.items()}
    fallback = cols["std"][rows] if "std" in cols else np.full(len(rows), np.nan)
    # starts near the MLE from the exact moments: the unbinned MLEs of the normal (std) and, for a
    # location near 0, the Laplace (mean |g|)
    starts = {"normal": fallback}
    if "meanabs" in cols:
        ma = cols["meanabs"][rows]
        with np.errstate(invalid="ignore"):
            starts["laplace"] = np.where(np.abs(loc_all[rows]) < 0.1 * ma, ma, np.nan)
    rng = np.random.default_rng(seed)
    aics, model_cols = [], []
    cdf_rows = cdf[rows]  # once, for every model's KS distance
    for m in models:
        fam = get_family(m)
        r = fit_family(fam, C, ext_edges, loc_all[rows], qr, fallback, bootstrap, rng, resample, level,
                       init_scale=starts.get(m))
        conv = r["converged"] & np.isfinite(r["scale"]) & np.isfinite(r["loglik"])
        if bootstrap:
            conv &= np.isfinite(r["scale_lo"]) & np.isfinite(r["scale_hi"])
        mc_ = {"scale": r["scale"], "scale_lo": r["scale_lo"], "scale_hi": r["scale_hi"],
               "loglik": r["loglik"], "aic": 2 * (1 + fam.n_shape) - 2 * r["loglik"]}
        if fam.n_shape:
            mc_["shape"] = r["shape"]
        if not bootstrap:
            del mc_["scale_lo"], mc_["scale_hi"]
        mc = r.get("cdf_edges")  # the optimiser's cells give it when it kept them
        if mc is None:
            mc = model_cdf_at_edges(fam, edges, loc_all[rows], r["scale"], r["shape"] if fam.n_shape else None)
        mc_["ks"] = np.abs(mc - cdf_rows).max(1)
        mst = st.copy()
        mst[rows] = np.where(conv, "ok", "no-convergence")
        cols[f"{m}_status"] = mst
        for k, v in mc_.items():
            full = np.full(n, np.nan)
            full[rows] = np.where(conv, v, np.nan)
            cols[f"{m}_{k}"] = full
            model_cols.append(f"{m}_{k}")
        st[rows[~conv]] = "no-convergence"
        aics.append(cols[f"{m}_aic"])
    if models:
        A = np.stack(aics, 1)
        anyfin = np.isfinite(A).any(1)
        best = np.array(models, dtype=object)[np.argmin(np.where(np.isfinite(A), A, np.inf), 1)]
        cols["best"] = np.where(anyfin, best, None)
    # binned statistics are meaningless where the histogram is unusable: blank them ...
    dead = ~np.isin(st, ["ok", "no-convergence"])
    for c in [c for c in cols if c.startswith(("iqr", "mad"))] + model_cols:
        cols[c][dead] = np.nan
    # ... while exact statistics need only values, all finite (not a usable histogram)
    if exact_cols:
        no_values = np.isin(st, ["empty", "nonfinite"]) | ~(np.asarray(mom["count"], float) > 0)
        for c in exact_cols:
            cols[c][no_values] = np.nan
    cols["status"] = st
    return pd.DataFrame(cols)


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
    if stat in MOMENT_STATS or stat in BINNED_STATS:
        return stat, f"{stat}_lo", f"{stat}_hi"
    if stat in MODELS:
        return f"{stat}_scale", f"{stat}_scale_lo", f"{stat}_scale_hi"
    raise GradscopeError(f"unknown statistic {stat!r}; choose from {', '.join(STATISTICS)}")


def narrowing_table(table: pd.DataFrame, sparsity: dict, statistics: Sequence[str],
                    layer_col: str = "layer", level: float = 0.95) -> pd.DataFrame:
    """scale(round k) / scale(round 0) per layer and statistic, with a CI.

    ``table`` has one row per (round, layer). A row enters a statistic's narrowing when that
    statistic's value is finite and > 0 there (so one failed model fit never removes the exact
    std). The CI treats the two log scales as independent and normal, with standard errors
    read off their CIs; NaN where a CI is missing. Layers whose round 0 is unusable for a
    statistic are left out of it. Binned statistics carry ``resolution`` (see binned_spreads).
    Rows: statistics in the order given, layers in order of first appearance, rounds ascending
    (rows repeating a (round, layer), outside this contract, keep their table order).
    """
    z = stats.norm.ppf(0.5 + level / 2)
    cols = ["round", "sparsity", "layer", "statistic", "scale", "ratio", "ratio_lo", "ratio_hi", "resolution"]
    # one factorisation of the layers (NaN layers: code -1, left out as groupby leaves them out)
    # and one stable sort per statistic by (layer in order of first appearance, round) replace
    # a groupby, a sort and a DataFrame per layer; every value is the same elementwise arithmetic
    lay_codes = lay_names = rounds = None
    parts = {k: [] for k in ("ix", "stat", "scale", "ratio", "lo", "hi", "res")}
    for stat in statistics:
        c, clo, chi = statistic_columns(stat)
        if c not in table:
            continue
        if lay_codes is None:
            lay_codes, lay_names = pd.factorize(table[layer_col])
            rounds = table["round"].to_numpy()
        v = table[c].to_numpy(float)
        with np.errstate(invalid="ignore"):
            ix = np.flatnonzero(np.isfinite(v) & (v > 0) & (lay_codes >= 0))
        if not len(ix):
            continue
        grp = pd.factorize(lay_codes[ix])[0]  # layers in order of first appearance among these rows
        order = np.lexsort((rounds[ix], grp))  # stable: by layer, then round
        ix, grp = ix[order], grp[order]
        first = np.flatnonzero(np.r_[True, grp[1:] != grp[:-1]])
        gid = np.cumsum(np.r_[True, grp[1:] != grp[:-1]]) - 1  # 0 .. number of layers - 1
        keep = (rounds[ix[first]] == 0)[gid]  # the layer's first (lowest) round must be round 0
        if not keep.any():
            continue
        s = v[ix]
        if clo in table and chi in table:
            with np.errstate(invalid="ignore", divide="ignore"):
                se = (np.log(table[chi].to_numpy(float)[ix]) - np.log(table[clo].to_numpy(float)[ix])) / (2 * _Z95)
        else:
            se = np.full(len(ix), np.nan)
        se_r = np.sqrt(se**2 + se[first][gid] ** 2)
        se_r[first] = 0.0
        ratio = s / s[first][gid]
        res = table[f"{stat}_res"].to_numpy(float)[ix] if f"{stat}_res" in table else np.zeros(len(ix))
        for k, a in (("ix", ix), ("scale", s), ("ratio", ratio), ("lo", ratio * np.exp(-z * se_r)),
                     ("hi", ratio * np.exp(z * se_r)), ("res", res)):
            parts[k].append(a[keep])
        parts["stat"].append(np.full(int(keep.sum()), stat, dtype=object))
    if not parts["ix"]:
        return pd.DataFrame(columns=cols)
    ix = np.concatenate(parts["ix"])
    r = rounds[ix]
    sp = {u: sparsity.get(int(u), np.nan) for u in pd.unique(r)}
    return pd.DataFrame({
        "round": r, "sparsity": [sp[u] for u in r], "layer": lay_names.take(lay_codes[ix]).tolist(),
        "statistic": np.concatenate(parts["stat"]), "scale": np.concatenate(parts["scale"]),
        "ratio": np.concatenate(parts["ratio"]), "ratio_lo": np.concatenate(parts["lo"]),
        "ratio_hi": np.concatenate(parts["hi"]), "resolution": np.concatenate(parts["res"])}, columns=cols)


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
    slope, se = _ols_slope(np.log(d), np.log(s))
    tq = stats.t.ppf(0.5 + level / 2, len(d) - 2)
    return slope, slope - tq * se, slope + tq * se, len(d)


def trend_table(narrowing: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per layer and statistic: slope of log scale on log density, its CI, and the verdict
    (narrows / widens / cannot tell; ``narrows`` kept as a bool). Layers with < 3 rounds are left out."""
    cols = ["layer", "statistic", "n_rounds", "slope", "slope_lo", "slope_hi", "verdict", "narrows"]
    if len(narrowing) == 0:
        return pd.DataFrame([], columns=cols)
    # groups in order of first appearance, rows in table order (as groupby(sort=False)); rows with
    # a NaN key are left out, as groupby leaves them out
    lc, lnames = pd.factorize(narrowing["layer"])
    sc, snames = pd.factorize(narrowing["statistic"])
    ok = (lc >= 0) & (sc >= 0)
    gid = np.full(len(narrowing), -1, np.intp)
    gid[ok] = pd.factorize(lc[ok].astype(np.int64) * max(len(snames), 1) + sc[ok])[0]
    d = 1.0 - narrowing["sparsity"].to_numpy(float)
    s = narrowing["scale"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        keep = ok & np.isfinite(d) & np.isfinite(s) & (d > 0) & (s > 0)
        x, y = np.log(np.where(keep, d, 1.0)), np.log(np.where(keep, s, 1.0))
    order = np.argsort(np.where(keep, gid, -1), kind="stable")
    order = order[keep[order]]
    g = gid[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True]) if len(g) else np.zeros(1, np.intp)
    q = 0.5 + level / 2
    tq = {n: stats.t.ppf(q, n - 2) for n in np.unique(np.diff(bounds)) if n >= 3}  # once per n
    out = {c: [] for c in cols}
    for a, b in zip(bounds[:-1], bounds[1:]):
        n = b - a
        if n < 3:
            continue
        xi, yi = x[order[a:b]], y[order[a:b]]
        if np.ptp(xi) == 0:
            continue
        sl, se = _ols_slope(xi, yi)
        if not np.isfinite(sl):
            continue
        lo, hi = sl - tq[n] * se, sl + tq[n] * se
        i = order[a]
        for c, v in zip(cols, (lnames[lc[i]], snames[sc[i]], int(n), sl, lo, hi, trend_verdict(lo, hi),
                               bool(lo > 0))):
            out[c].append(v)
    if not out["layer"]:
        return pd.DataFrame([], columns=cols)
    return pd.DataFrame(out, columns=cols)


def _ols_slope(x: np.ndarray, y: np.ndarray):
    """OLS slope of y on x and its standard error, with the arithmetic of scipy.stats.linregress
    (np.cov with bias=1, r clipped to [-1, 1], stderr = sqrt((1 - r^2) ssy / ssx / (n - 2))),
    without its per-call overhead; x must not be constant and n >= 3."""
    ssxm, ssxym, _, ssym = np.cov(x, y, bias=1).flat
    if ssxm == 0.0 or ssym == 0.0:
        r = np.nan if ssxym == 0 else 0.0
    else:
        r = min(max(ssxym / np.sqrt(ssxm * ssym), -1.0), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ssxym / ssxm, np.sqrt((1 - r**2) * ssym / ssxm / (len(x) - 2))
