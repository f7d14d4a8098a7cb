"""The table stage of the fit (fit_histograms' bookkeeping, aggregate, narrowing_table,
trend_table, the in-memory reader) gives exactly what the code it replaced gave: same columns,
order, dtypes, rows and values, on randomised tables with the edge cases (round 0 missing or
unusable, NaN or zero CIs, missing statistics, < 3 rounds, zero spread of log density, constant
or exactly linear log scales, NaN layers, every histogram status, empty inputs). The reference
implementations are the old code, kept here."""
from typing import Sequence

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import gradscope.fit.core as core
from gradscope import GradscopeError
from gradscope.fit.binned import binned_cdf, binned_quantile, binned_spreads, fit_family, model_cdf_at_edges
from gradscope.fit.core import (_Z95, MODELS, STATISTICS, check_bootstrap, fit_histograms, histogram_status,
                                moment_spreads, narrowing_table, statistic_columns, trend_table, trend_verdict)
from gradscope.fit.families import get_family
from gradscope.fit.synthetic import log_edges


# ----------------------------------------------------------------------------- reference (old code)
def ref_narrowing_table(table, sparsity, statistics, layer_col="layer", level=0.95):
    z = stats.norm.ppf(0.5 + level / 2)
    out = []
    cols = ["round", "sparsity", "layer", "statistic", "scale", "ratio", "ratio_lo", "ratio_hi", "resolution"]
    for stat in statistics:
        c, clo, chi = statistic_columns(stat)
        if c not in table:
            continue
        with np.errstate(invalid="ignore"):
            t = table[np.isfinite(table[c].to_numpy(float)) & (table[c].to_numpy(float) > 0)]
        for layer, g in t.groupby(layer_col, sort=False):
            g = g.sort_values("round")
            if g.empty or g["round"].iloc[0] != 0:
                continue
            s = g[c].to_numpy(float)
            if clo in g and chi in g:
                with np.errstate(invalid="ignore", divide="ignore"):
                    se = (np.log(g[chi].to_numpy(float)) - np.log(g[clo].to_numpy(float))) / (2 * _Z95)
            else:
                se = np.full(len(g), np.nan)
            se_r = np.sqrt(se**2 + se[0] ** 2)
            se_r[0] = 0.0
            ratio = s / s[0]
            res = g[f"{stat}_res"].to_numpy(float) if f"{stat}_res" in g else np.zeros(len(g))
            out.append(pd.DataFrame({
                "round": g["round"].to_numpy(), "sparsity": [sparsity.get(int(r), np.nan) for r in g["round"]],
                "layer": layer, "statistic": stat, "scale": s, "ratio": ratio,
                "ratio_lo": ratio * np.exp(-z * se_r), "ratio_hi": ratio * np.exp(z * se_r),
                "resolution": res}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=cols)


def ref_trend_slope(sparsity, scale, level=0.95):
    d = 1.0 - np.asarray(sparsity, float)
    s = np.asarray(scale, float)
    keep = np.isfinite(d) & np.isfinite(s) & (d > 0) & (s > 0)
    d, s = d[keep], s[keep]
    if len(d) < 3 or np.ptp(np.log(d)) == 0:
        return np.nan, np.nan, np.nan, len(d)
    r = stats.linregress(np.log(d), np.log(s))
    tq = stats.t.ppf(0.5 + level / 2, len(d) - 2)
    return r.slope, r.slope - tq * r.stderr, r.slope + tq * r.stderr, len(d)


def ref_trend_table(narrowing, level=0.95):
    rows = []
    for (layer, stat), g in narrowing.groupby(["layer", "statistic"], sort=False):
        sl, lo, hi, n = ref_trend_slope(g["sparsity"], g["scale"], level)
        if np.isfinite(sl):
            rows.append({"layer": layer, "statistic": stat, "n_rounds": n, "slope": sl,
                         "slope_lo": lo, "slope_hi": hi, "verdict": trend_verdict(lo, hi), "narrows": bool(lo > 0)})
    cols = ["layer", "statistic", "n_rounds", "slope", "slope_lo", "slope_hi", "verdict", "narrows"]
    return pd.DataFrame(rows, columns=cols)


def ref_fit_histograms(counts, edges, under=None, over=None, *, nonfinite=None, moments=None,
                   models: Sequence[str] = MODELS, bootstrap: int = 200, seed: int = 0,
                   resample: str = "auto", level: float = 0.95) -> pd.DataFrame:
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
    df = pd.DataFrame({"status": status})
    cf = np.where(np.isfinite(counts), counts, 0).astype(float)
    uf, of = np.nan_to_num(under), np.nan_to_num(over)
    df["count"] = (cf.sum(1) + uf + of).astype(np.int64)
    exact_cols = []
    if mom:
        ms = moment_spreads(mom["count"], mom["sum"], mom["sumsq"], mom.get("sum4"),
                            mom.get("sum3"), mom.get("sumabs"), level)
        for k, v in ms.items():
            df[k] = v
        exact_cols = list(ms)
        loc_all = np.nan_to_num(ms["mean"])
    else:
        loc_all = np.zeros(n)
    cdf = binned_cdf(cf, uf, of)
    q = {p: binned_quantile(cdf, edges, p) for p in (0.05, 0.25, 0.5, 0.75, 0.95)}
    bs = binned_spreads(cf, uf, of, edges, level)
    for k, v in bs.items():
        df[k] = v
    ok = df["status"].to_numpy() == "ok"
    # a quartile or the MAD beyond the edges: the histogram range is far too narrow
    oor = ok & ~np.isfinite(df[["iqr", "mad"]].to_numpy(float)).all(1)
    df.loc[oor, "status"] = "out-of-range"
    ok = df["status"].to_numpy() == "ok"
    rows = np.flatnonzero(ok)
    ext_edges = np.concatenate([[-np.inf], edges, [np.inf]])
    C = np.concatenate([uf[rows, None], cf[rows], of[rows, None]], 1)
    qr = {p: v[rows] for p, v in q.items()}
    fallback = (df["std"].to_numpy(float)[rows] if "std" in df else np.full(len(rows), np.nan))
    # starts near the MLE from the exact moments: the unbinned MLEs of the normal (std) and, for a
    # location near 0, the Laplace (mean |g|)
    starts = {"normal": fallback}
    if "meanabs" in df:
        ma = df["meanabs"].to_numpy(float)[rows]
        with np.errstate(invalid="ignore"):
            starts["laplace"] = np.where(np.abs(loc_all[rows]) < 0.1 * ma, ma, np.nan)
    rng = np.random.default_rng(seed)
    aics, model_cols = [], []
    for m in models:
        fam = get_family(m)
        r = fit_family(fam, C, ext_edges, loc_all[rows], qr, fallback, bootstrap, rng, resample, level,
                       init_scale=starts.get(m))
        conv = r["converged"] & np.isfinite(r["scale"]) & np.isfinite(r["loglik"])
        if bootstrap:
            conv &= np.isfinite(r["scale_lo"]) & np.isfinite(r["scale_hi"])
        cols = {"scale": r["scale"], "scale_lo": r["scale_lo"], "scale_hi": r["scale_hi"],
                "loglik": r["loglik"], "aic": 2 * (1 + fam.n_shape) - 2 * r["loglik"]}
        if fam.n_shape:
            cols["shape"] = r["shape"]
        if not bootstrap:
            del cols["scale_lo"], cols["scale_hi"]
        mc = r.get("cdf_edges")  # the optimiser's cells give it when it kept them
        if mc is None:
            mc = model_cdf_at_edges(fam, edges, loc_all[rows], r["scale"], r["shape"] if fam.n_shape else None)
        cols["ks"] = np.abs(mc - cdf[rows]).max(1)
        mst = df["status"].to_numpy(object).copy()
        mst[rows] = np.where(conv, "ok", "no-convergence")
        df[f"{m}_status"] = mst
        for k, v in cols.items():
            full = np.full(n, np.nan)
            full[rows] = np.where(conv, v, np.nan)
            df[f"{m}_{k}"] = full
            model_cols.append(f"{m}_{k}")
        df.loc[rows[~conv], "status"] = "no-convergence"
        aics.append(df[f"{m}_aic"].to_numpy())
    if models:
        A = np.stack(aics, 1)
        anyfin = np.isfinite(A).any(1)
        best = np.array(models, dtype=object)[np.argmin(np.where(np.isfinite(A), A, np.inf), 1)]
        df["best"] = np.where(anyfin, best, None)
    # binned statistics are meaningless where the histogram is unusable: blank them ...
    st = df["status"].to_numpy(object)
    dead = ~np.isin(st, ["ok", "no-convergence"])
    binned = [c for c in df.columns if c.startswith(("iqr", "mad"))] + model_cols
    df.loc[dead, binned] = np.nan
    # ... while exact statistics need only values, all finite (not a usable histogram)
    if exact_cols:
        no_values = np.isin(st, ["empty", "nonfinite"]) | ~(np.asarray(mom["count"], float) > 0)
        df.loc[no_values, exact_cols] = np.nan
    return df


# ----------------------------------------------------------------------------- random tables
def _same(new, ref):
    """Identical frames: columns and their order, dtypes, index, row order, values (NaN = NaN)."""
    assert list(new.columns) == list(ref.columns)
    assert new.dtypes.to_dict() == ref.dtypes.to_dict()
    pd.testing.assert_frame_equal(new, ref, check_exact=True)


def _fit_like_table(rng, n_layers=6, n_rounds=7, stats_=STATISTICS, drop=()):
    """A fit table (one row per layer and round, rows shuffled) with every edge case on some rows."""
    rows = []
    for li in range(n_layers):
        rounds = np.arange(n_rounds)
        if li % 5 == 1:
            rounds = rounds[1:]  # round 0 missing
        if li % 5 == 3:
            rounds = rounds[:2]  # < 3 rounds
        slope = rng.normal(0, 0.5)
        for r in rounds:
            row = {"round": int(r), "layer": "pooled" if li == 0 else f"conv{li}"}
            for st in stats_:
                c, clo, chi = statistic_columns(st)
                v = 0.01 * (0.8**r) ** slope * np.exp(rng.normal(0, 0.05))
                if li % 5 == 4:
                    v = 0.01 * (0.8**r) ** 0.5  # exactly linear in log density (r = 1: stderr ~ 0)
                if li % 7 == 5:
                    v = 0.01  # constant: zero spread of log scale
                u = rng.random()
                if u < 0.08:
                    v = [np.nan, 0.0, -v, np.inf][rng.integers(4)]  # unusable here (round 0 too)
                w = np.exp(rng.normal(0, 0.1))
                lo, hi = v / w, v * w
                u = rng.random()
                if u < 0.1:
                    lo = np.nan  # missing CI
                elif u < 0.15:
                    lo, hi = 0.0, np.inf
                row[c], row[clo], row[chi] = v, lo, hi
                if st in ("iqr", "mad"):
                    row[f"{st}_res"] = rng.random() * 0.1
            rows.append(row)
    t = pd.DataFrame(rows).sample(frac=1.0, random_state=int(rng.integers(1 << 31))).reset_index(drop=True)
    return t.drop(columns=[c for c in t.columns if c.startswith(tuple(drop))])


def _sparsity(rng, n_rounds, kind):
    if kind == "flat":  # every round the same density: zero spread of log density
        return {r: 0.5 for r in range(n_rounds)}
    sp = {r: 1 - 0.8**r for r in range(n_rounds)}
    if kind == "holes":
        sp.pop(2, None)  # a round without a measured sparsity: NaN
        sp[n_rounds - 1] = 1.0  # density 0: left out of the trend
    return sp


@pytest.mark.parametrize("seed", range(12))
def test_narrowing_and_trend_equal_the_reference_on_random_tables(seed):
    rng = np.random.default_rng(seed)
    drop = [(), ("gennorm",), ("t_scale_lo", "t_scale_hi"), ("iqr_res",)][seed % 4]  # missing stats / CIs
    table = _fit_like_table(rng, n_layers=int(rng.integers(2, 10)), n_rounds=int(rng.integers(3, 10)), drop=drop)
    sp = _sparsity(rng, 9, ["plain", "flat", "holes"][seed % 3])
    stats_ = list(STATISTICS) if seed % 2 else list(rng.permutation(STATISTICS))
    new, ref = narrowing_table(table, sp, stats_), ref_narrowing_table(table, sp, stats_)
    _same(new, ref)
    assert len(new) > 0 or seed % 3 == 1
    _same(trend_table(new), ref_trend_table(ref))
    # a narrowing table in any row order, with NaN keys and other levels
    shuffled = ref.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    if len(shuffled) > 3:
        shuffled.loc[0, "layer"] = np.nan
        shuffled.loc[1, "statistic"] = None
    for lev in (0.95, 0.8):
        _same(trend_table(shuffled, lev), ref_trend_table(shuffled, lev))
    _same(narrowing_table(table, sp, stats_, level=0.8), ref_narrowing_table(table, sp, stats_, level=0.8))


def test_edge_cases_equal_the_reference():
    rng = np.random.default_rng(0)
    table = _fit_like_table(rng)
    sp = _sparsity(rng, 9, "plain")
    # empty inputs: the empty frames' columns and dtypes
    for t in (table.iloc[:0], pd.DataFrame({"round": [], "layer": []}), table[["round", "layer"]]):
        _same(narrowing_table(t, sp, STATISTICS), ref_narrowing_table(t, sp, STATISTICS))
    empty = ref_narrowing_table(table.iloc[:0], sp, STATISTICS)
    _same(trend_table(empty), ref_trend_table(empty))
    _same(trend_table(empty.iloc[:0]), ref_trend_table(empty.iloc[:0]))
    # no statistic asked for; a statistic unusable everywhere; every layer without round 0
    _same(narrowing_table(table, sp, []), ref_narrowing_table(table, sp, []))
    bad = table.assign(std=np.nan)
    _same(narrowing_table(bad, sp, ["std", "mad"]), ref_narrowing_table(bad, sp, ["std", "mad"]))
    late = table[table["round"] > 0]
    _same(narrowing_table(late, sp, STATISTICS), ref_narrowing_table(late, sp, STATISTICS))
    # a NaN layer is left out as groupby leaves it out
    nan_layer = table.copy()
    nan_layer.loc[nan_layer.index[:5], "layer"] = np.nan
    _same(narrowing_table(nan_layer, sp, STATISTICS), ref_narrowing_table(nan_layer, sp, STATISTICS))
    # a trend where every slope is NaN (< 3 rounds everywhere): the empty frame
    n = ref_narrowing_table(table[table["round"] < 2], sp, STATISTICS)
    assert len(n) > 0
    _same(trend_table(n), ref_trend_table(n))
    # unknown statistic: the same error
    with pytest.raises(Exception, match="unknown statistic"):
        narrowing_table(table, sp, ["foo"])


def test_fit_tables_of_a_run_give_the_reference_narrowing_and_trend():
    from gradscope.fit.run import fit_tables, load_windows, sparsity_by_round
    from gradscope.fit.synthetic import make_synthetic_run

    true = 0.01 * 0.9 ** np.arange(4)
    run = make_synthetic_run({"conv1": true, "conv2": 2 * true, "fc": 3 * true}, n=20_000, windows=2, seed=3)
    counts, edges, idx = load_windows(run)
    rl, rp = fit_tables(counts, edges, idx, bootstrap=20, models=MODELS)
    table = pd.concat([rp, rl], ignore_index=True)
    sp = sparsity_by_round(run)
    new, ref = narrowing_table(table, sp, list(STATISTICS)), ref_narrowing_table(table, sp, list(STATISTICS))
    assert len(new) == 4 * 4 * len(STATISTICS)  # 3 layers + pooled, 4 rounds
    _same(new, ref)
    _same(trend_table(new), ref_trend_table(ref))


def _histograms(rng, n_rows, edges):
    """Histograms with every status: ok (Laplace and t draws), empty, degenerate (< 3 bins used,
    or sumsq 0), nonfinite (a NaN count, or non-finite values seen), out-of-range (the range far
    too narrow), no moments (count 0); with exact power sums."""
    ext = np.concatenate([[-np.inf], edges, [np.inf]])
    rows, mom = [], {k: [] for k in ("count", "sum", "sumsq", "sumabs", "sum3", "sum4")}
    nonfinite = np.zeros(n_rows)
    for i in range(n_rows):
        s = 0.01 * np.exp(rng.normal(0, 0.3))
        dist = stats.t(4, scale=s) if i % 2 else stats.laplace(scale=s)
        kind = i % 9
        if kind == 8:
            dist = stats.laplace(scale=50 * s)  # out of range: most mass in under/over
        c = rng.multinomial(5000, np.diff(dist.cdf(ext))).astype(float)
        if kind == 3:
            c[:] = 0  # empty
        elif kind == 5:
            c[:] = 0
            c[len(c) // 2] = 10  # degenerate
        elif kind == 6:
            c[7] = np.nan  # nonfinite count
        elif kind == 7 and i % 2:
            nonfinite[i] = 3
        v = dist.rvs(size=5000, random_state=rng)
        n = 0 if kind in (3, 4) else 5000
        for k, val in zip(mom, (n, v.sum(), 0.0 if kind == 5 else (v * v).sum(), np.abs(v).sum(), (v**3).sum(),
                                (v**4).sum())):
            mom[k].append(val)
        rows.append(c)
    c = np.array(rows)
    return c[:, 1:-1], c[:, 0], c[:, -1], nonfinite, {k: np.array(v, float) for k, v in mom.items()}


def _flaky(fit):
    """fit_family that fails some rows: not converged, a NaN CI or a NaN log-likelihood."""
    def wrapped(fam, C, *a, **kw):
        r = dict(fit(fam, C, *a, **kw))
        i = np.arange(len(C))
        r["converged"] = r["converged"] & (i % 4 != 1)
        for k, bad in (("scale_lo", i % 5 == 2), ("loglik", i % 7 == 3)):
            if r.get(k) is not None:
                r[k] = np.where(bad, np.nan, r[k])
        return r
    return wrapped


@pytest.mark.parametrize("case", range(6))
def test_fit_histograms_equals_the_reference(case, monkeypatch):
    rng = np.random.default_rng(100 + case)
    edges = log_edges(0.1, n_half=30, min_abs=1e-5)
    counts, under, over, nonfinite, mom = _histograms(rng, 27, edges)
    models = [MODELS, ("laplace",), (), ("t", "normal")][case % 4]
    bootstrap = [10, 0][case % 2]
    kw = dict(nonfinite=nonfinite, moments=None if case == 3 else mom, models=models, bootstrap=bootstrap,
              seed=case)
    if case >= 4:  # failed fits: "no-convergence" rows and per-model statuses
        monkeypatch.setattr(core, "fit_family", _flaky(fit_family))
        monkeypatch.setitem(globals(), "fit_family", _flaky(fit_family))
    new = fit_histograms(counts, edges, under, over, **kw)
    ref = ref_fit_histograms(counts, edges, under, over, **kw)
    _same(new, ref)
    want = {"ok", "empty", "degenerate", "nonfinite", "out-of-range"}
    if case >= 4 and models:
        want.add("no-convergence")
    assert want <= set(new["status"])  # every status is exercised
    # no rows; no under/over given
    _same(fit_histograms(counts[:0], edges, under[:0], over[:0], models=models, bootstrap=bootstrap,
                         moments={k: v[:0] for k, v in mom.items()}),
          ref_fit_histograms(counts[:0], edges, under[:0], over[:0], models=models, bootstrap=bootstrap,
                             moments={k: v[:0] for k, v in mom.items()}))
    _same(fit_histograms(counts[:5], edges, models=models, bootstrap=bootstrap),
          ref_fit_histograms(counts[:5], edges, models=models, bootstrap=bootstrap))


def ref_aggregate(counts, idx, keys):
    if len(idx) == 0:
        return np.zeros((0, counts.shape[1])), idx.iloc[:0][list(keys)]
    gid = idx.groupby(list(keys), sort=True, dropna=False).ngroup().to_numpy()
    order = np.argsort(gid, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(gid[order]) != 0])
    c = np.asarray(counts, float)[order]
    summed = np.add.reduceat(c, starts, axis=0)
    num = [k for k in ["count", "sum", "sumsq", "sumabs", "sum3", "sum4"] + ["under", "over", "nonfinite"] if k in idx]
    vals = idx[num].to_numpy(float)[order]
    with np.errstate(invalid="ignore"):
        s = np.add.reduceat(vals, starts, axis=0)
    out = idx.iloc[order[starts]][list(keys)].reset_index(drop=True)
    out[num] = s
    return summed, out


def test_aggregate_equals_the_reference_with_and_without_repeated_keys():
    from gradscope.fit.run import aggregate

    rng = np.random.default_rng(5)
    n = 60
    idx = pd.DataFrame({"round": rng.integers(0, 3, n), "window": rng.integers(0, 4, n),
                        "layer": rng.choice(["a", "b", "c"], n), "count": rng.integers(0, 9, n).astype(float),
                        "sum": rng.normal(size=n), "under": rng.integers(0, 3, n), "over": 0, "nonfinite": 0})
    idx.loc[3, "sum"] = np.nan
    counts = rng.integers(0, 5, (n, 7))
    counts[4, 2] = -1
    uniq = idx.drop_duplicates(["round", "window", "layer"]).reset_index(drop=True)  # every group one row
    cu = counts[: len(uniq)]
    every = ["round", "window", "layer"]
    for c, i, keys in ((counts, idx, ["round"]), (counts, idx, ["round", "layer"]), (cu, uniq, every),
                       (cu[::-1], uniq[::-1].reset_index(drop=True), every), (counts[:0], idx.iloc[:0], ["round"])):
        (a, ta), (b, tb) = aggregate(c, i, keys), ref_aggregate(c, i, keys)
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
        _same(ta, tb)


def test_synthetic_reader_gives_the_reference_frames():
    """SyntheticRun builds its index from column lists: the frames of the old record-wise code."""
    from gradscope.fit.synthetic import SyntheticRun, make_synthetic_run

    class Old(SyntheticRun):
        def _index(self, rows):
            keys = ["round", "epoch", "window", "step_start", "step_end", "layer"]
            idx = pd.DataFrame([{k: r[k] for k in keys} for r in rows], columns=keys)
            relu = dict(zip(self._layers["layer"], self._layers["relu_fed"]))
            idx["relu_fed"] = idx["layer"].map(relu).astype(bool) if len(idx) else []
            return idx

        def moments(self, layer=None, round=None, view="survivors"):
            rows = self._view_rows(view)
            idx = self._index(rows)
            for c in ("count", "sum", "sumsq", "sumabs", "sum3", "sum4", "min", "max", "under", "over", "nonfinite"):
                idx[c] = [r[c] for r in rows]
            return idx[self._select(idx, layer, round)].reset_index(drop=True)

        def histograms(self, layer=None, round=None, window=None, view="survivors"):
            rows = self._view_rows(view)
            idx = self._index(rows)
            for c in ("under", "over", "nonfinite"):
                idx[c] = [r[c] for r in rows]
            m = self._select(idx, layer, round, window)
            nb = len(self.edges) - 1
            counts = np.array([r["counts"] for r in rows]).reshape(-1, nb)[m]
            return counts, self.edges.copy(), idx[m].reset_index(drop=True)

    true = 0.01 * 0.9 ** np.arange(3)
    run = make_synthetic_run({"conv1": true, "fc": 2 * true}, n=2000, windows=2, relu_fed={"fc": False},
                             density={"conv1": [1.0, 0.8, 0.64], "fc": [1.0, 0.9, 0.81]}, seed=1)
    empty = SyntheticRun(run.edges, [], run._rounds, run._layers)
    for r in (run, empty):
        old = Old(r.edges, r._rows, r._rounds, r._layers)
        for view in r.views():
            for sel in ({}, {"layer": "fc"}, {"round": [0, 2]}, {"layer": "nope"}):
                _same(r.moments(view=view, **sel), old.moments(view=view, **sel))
                (c, e, i), (c0, e0, i0) = r.histograms(view=view, **sel), old.histograms(view=view, **sel)
                assert c.dtype == c0.dtype and np.array_equal(c, c0) and np.array_equal(e, e0)
                _same(i, i0)
            (c, _, i), (c0, _, i0) = r.histograms(window=1, view=view), old.histograms(window=1, view=view)
            assert np.array_equal(c, c0)
            _same(i, i0)
    assert len(run.views()) == 2 and len(run.moments()) == 12


def test_repeated_round_rows_keep_their_table_order():
    """Outside the one-row-per-(round, layer) contract the old quicksort left ties in any order
    (so even the round-0 reference row could change); the new sort is stable: table order."""
    t = pd.DataFrame({"round": [1, 0, 0, 1, 2], "layer": "a", "std": [5.0, 2.0, 4.0, 6.0, 8.0]})
    n = narrowing_table(t, {}, ["std"])
    assert n["scale"].tolist() == [2.0, 4.0, 5.0, 6.0, 8.0]
    assert n["ratio"].tolist() == [1.0, 2.0, 2.5, 3.0, 4.0]
