"""Fits on synthetic gradients with known scales (gradscope.fit)."""
import numpy as np
import pytest

from gradscope import GradscopeError
from gradscope.fit import fit_histograms, fit_run, fit_samples, format_trend, trend_slope, trend_verdict
from gradscope.fit.synthetic import draw, log_edges, make_synthetic_run, summarize

EDGES = log_edges(0.05, n_half=100, min_abs=1e-6)  # 199 bins, log-spaced, central bin at 0


def _hists(family, scales, n, seed, shape=None, edges=EDGES):
    rng = np.random.default_rng(seed)
    rows = [summarize(draw(rng, family, s, n, shape), edges) for s in scales]
    counts = np.array([r["counts"] for r in rows])
    mom = {k: np.array([r[k] for r in rows], float) for k in ("count", "sum", "sumsq", "sumabs", "sum3", "sum4")}
    return counts, np.array([r["under"] for r in rows]), np.array([r["over"] for r in rows]), mom


@pytest.mark.parametrize("family,shape", [("laplace", None), ("t", 3.0)])
def test_binned_fit_recovers_scale_and_family(family, shape):
    scales = np.array([0.01, 0.006, 0.0035])  # the widest has ~1-2 % overflow for t(3)
    counts, under, over, mom = _hists(family, scales, 10**6, seed=1, shape=shape)
    assert over.sum() > 0 and under.sum() > 0  # the out-of-range cells are exercised
    df = fit_histograms(counts, EDGES, under, over, moments=mom, bootstrap=100, seed=0)
    assert (df["status"] == "ok").all()
    est = df[f"{family}_scale"].to_numpy()
    np.testing.assert_allclose(est, scales, rtol=0.02)
    assert (df[f"{family}_scale_lo"] < est).all() and (est < df[f"{family}_scale_hi"]).all()
    aic = df[[f"{m}_aic" for m in ("normal", "laplace", "t", "gennorm")]].to_numpy()
    if family == "t":
        assert (df["best"] == "t").all()
        np.testing.assert_allclose(df["t_shape"], 3.0, rtol=0.05)
    else:  # gennorm nests laplace (beta = 1): laplace must win or tie within the AIC penalty
        assert df["best"].isin(["laplace", "gennorm"]).all()
        assert (df["laplace_aic"] - aic.min(1) <= 2.0 + 1e-9).all()
        assert (df["normal_aic"] - df["laplace_aic"] > 1000).all()
        np.testing.assert_allclose(df["gennorm_shape"], 1.0, rtol=0.03)
    assert (df.drop(columns=["best"]).notna().all()).all()  # no NaN in ok rows


def test_binned_and_exact_fits_agree():
    rng = np.random.default_rng(3)
    x = np.stack([draw(rng, "laplace", s, 200_000) for s in (0.01, 0.004)])
    rows = [summarize(v, EDGES) for v in x]
    counts = np.array([r["counts"] for r in rows])
    binned = fit_histograms(counts, EDGES, [r["under"] for r in rows], [r["over"] for r in rows], bootstrap=0)
    exact = fit_samples(x)
    # models that contain the truth agree (a misspecified normal may not: the tails are censored)
    for m in ("laplace", "gennorm"):
        np.testing.assert_allclose(binned[f"{m}_scale"], exact[f"{m}_scale"], rtol=0.01)
    # the exact fit matches the closed-form Laplace MLE (mean |x| about loc 0)
    np.testing.assert_allclose(exact["laplace_scale"], np.abs(x).mean(1), rtol=1e-6)
    np.testing.assert_allclose(exact["normal_scale"], np.sqrt((x**2).mean(1)), rtol=1e-6)


def test_bootstrap_normal_and_multinomial_agree():
    counts, under, over, mom = _hists("laplace", [0.01], 10**5, seed=5)
    a = fit_histograms(counts, EDGES, under, over, moments=mom, models=("laplace",), bootstrap=400, resample="multinomial")
    b = fit_histograms(counts, EDGES, under, over, moments=mom, models=("laplace",), bootstrap=400, resample="normal")
    wa = np.log(a["laplace_scale_hi"] / a["laplace_scale_lo"])
    wb = np.log(b["laplace_scale_hi"] / b["laplace_scale_lo"])
    np.testing.assert_allclose(wa, wb, rtol=0.2)
    # width matches the Laplace MLE's asymptotic se: se(log b) = 1/sqrt(N)
    np.testing.assert_allclose(wa, 2 * 1.96 / np.sqrt(10**5), rtol=0.2)


def test_degenerate_inputs_give_statuses_not_crashes():
    counts, under, over, mom = _hists("laplace", [0.01] * 6, 20_000, seed=2)
    counts = counts.astype(float)
    counts[1] = 0; under[1] = over[1] = 0; mom["count"][1] = 0; mom["sumsq"][1] = 0  # empty
    mid = len(EDGES) // 2 - 1
    counts[2] = 0; counts[2, mid] = 500; under[2] = over[2] = 0; mom["sumsq"][2] = 0  # all-zero grads
    counts[3, 5] = np.nan  # corrupt counts
    over[5] = 10**7  # almost everything out of range
    nonfinite = np.zeros(6); nonfinite[4] = 3  # NaN gradients were seen
    df = fit_histograms(counts, EDGES, under, over, nonfinite=nonfinite, moments=mom, bootstrap=20)
    assert df["status"].tolist() == ["ok", "empty", "degenerate", "nonfinite", "nonfinite", "out-of-range"]
    ok = df["status"] == "ok"
    assert df[ok].drop(columns=["best"]).notna().all().all()
    assert df.loc[~ok, "laplace_scale"].isna().all()


def test_bad_shapes_raise_gradscope_error():
    with pytest.raises(GradscopeError):
        fit_histograms(np.ones((2, 5)), np.arange(5.0))  # wrong number of edges
    with pytest.raises(GradscopeError):
        fit_histograms(np.ones((2, 4)), np.array([0, 1, 1, 2, 3.0]))  # not increasing
    with pytest.raises(GradscopeError):
        fit_histograms(np.ones((2, 4)), np.arange(5.0), models=("cauchy",))


def test_trend_slope_sign():
    sp = 1 - 0.8 ** np.arange(6)
    d = 1 - sp
    up = trend_slope(sp, 0.01 * d**0.5 * np.exp(np.random.default_rng(0).normal(0, 0.01, 6)))
    assert up[1] > 0 and abs(up[0] - 0.5) < 0.1
    down = trend_slope(sp, 0.01 * d**-0.3)
    assert down[2] < 0
    assert np.isnan(trend_slope(sp[:2], [1, 2])[0])


def _run(**kw):
    K = 6
    true = 0.01 * (1 - 0.35 * (np.arange(K) >= 3)) * 0.95 ** np.arange(K)
    return true, make_synthetic_run({"conv1": true, "conv2": 2 * true, "fc": 5 * true}, n=60_000,
                                    relu_fed={"fc": False}, **kw)


def test_fit_run_end_to_end_narrowing_and_store():
    true, run = _run(windows=2, sample_k=500, seed=4)
    res = fit_run(run, per="window", bootstrap=100, seed=0)
    assert len(res.per_layer) == 6 * 2 * 3 and len(res.pooled) == 6 * 2
    assert (res.per_layer["status"] == "ok").all()
    n = res.narrowing
    assert set(n["layer"]) == {"pooled", "conv1", "conv2", "fc"}
    pooled = n[(n["layer"] == "pooled") & (n["statistic"] == "laplace")].sort_values("round")
    truth = true / true[0]
    # the CI (bootstrap of both rounds) covers the true ratio; the estimate is within 2 %
    assert ((pooled["ratio_lo"] <= truth * 1.0001) & (truth <= pooled["ratio_hi"] * 1.0001)).mean() >= 5 / 6
    np.testing.assert_allclose(pooled["ratio"], truth, rtol=0.02)
    np.testing.assert_allclose(pooled["sparsity"], 1 - 0.8 ** np.arange(6))
    tr = res.trend.set_index(["layer", "statistic"])
    assert tr.loc[("pooled", "std"), "narrows"] and tr.loc[("pooled", "std"), "slope"] > 0
    assert res.exact is not None and set(res.exact["layer"]) == {"conv1", "conv2", "fc"}
    assert set(run.derived_tables) == {"fit_per_layer", "fit_pooled", "fit_narrowing", "fit_trend", "fit_exact"}


def test_pooled_sums_only_relu_fed_layers():
    true, run = _run(seed=6)
    res = fit_run(run, per="round", models=("laplace",), bootstrap=0, store=False)
    pooled = res.pooled.set_index("round")
    per = res.per_layer[res.per_layer["layer"] != "fc"].groupby("round")["count"].sum()
    np.testing.assert_array_equal(pooled["count"].to_numpy(), per.to_numpy())


def test_no_narrowing_is_rarely_reported_as_narrowing():
    # constant scale: the 95 % slope CI should exclude 0 (a false "narrows") in ~2.5 % of runs
    flagged = 0
    for seed in range(12):
        run = make_synthetic_run({"a": np.full(5, 0.01)}, n=20_000, seed=100 + seed)
        res = fit_run(run, models=(), bootstrap=0, store=False)
        tr = res.trend.set_index(["layer", "statistic"])
        flagged += bool(tr.loc[("pooled", "std"), "narrows"])
    assert flagged <= 2


def test_trend_verdict_says_widens_narrows_or_cannot_tell():
    """A significantly widening distribution is "widens", not the same "False" as an
    inconclusive one (issue 24.3)."""
    assert trend_verdict(-0.354, -0.153) == "widens"
    assert trend_verdict(0.02, 0.25) == "narrows" and trend_verdict(-0.06, 0.21) == "cannot tell"
    # scale ~ density ** slope: slope -0.5 = widens as the net gets sparser, +0.5 narrows, 0 flat
    verdicts = {}
    for slope in (-0.5, 0.0, 0.5):
        d = 0.8 ** np.arange(6)
        run = make_synthetic_run({"a": 0.01 * d ** slope}, n=20_000, seed=7)
        t = format_trend(fit_run(run, models=(), bootstrap=0, store=False))
        assert "narrows" not in t.columns  # the bool is replaced by the verdict in words
        verdicts[slope] = t.set_index(["layer", "statistic"]).loc[("pooled", "std"), "verdict"]
    assert verdicts == {-0.5: "widens", 0.0: "cannot tell", 0.5: "narrows"}


def test_fit_run_bad_inputs():
    with pytest.raises(GradscopeError):
        fit_run("/nonexistent/run.h5")
    with pytest.raises(GradscopeError):
        fit_run(object())
    _, run = _run(seed=8)
    with pytest.raises(GradscopeError):
        fit_run(run, per="epoch", store=False)


# ----------------------------------------------------------------------------- issue 15: honest fits
def _replace_row(run, round_, layer, values):
    """Put ``values`` (summarised on the run's edges) in place of one (round, layer) window."""
    for r in run._rows:
        if r["round"] == round_ and r["layer"] == layer:
            keep = {k: r[k] for k in ("round", "epoch", "window", "step_start", "step_end", "layer", "view")}
            r.clear()
            r.update(summarize(np.asarray(values, float), run.edges), **keep)


def test_a_failed_model_fit_keeps_the_exact_statistics(monkeypatch):
    # 8/9 of the gradients exactly zero (a layer where most weights get no signal). Every family
    # failed to converge there until the fits started the normal and Laplace at their moment
    # MLEs and moved a shape on its bound along the scale alone; the t fit is made to fail on
    # that row here (the optimiser's verdict, not its arithmetic, is what this test is about):
    # its columns go NaN, but the exact std of that row stays everywhere
    import gradscope.fit.binned as B

    newton = B.newton_fit

    def t_fails_on_spikes(problem, x0, bounds, **kw):
        x, LL, conv = newton(problem, x0, bounds, **kw)
        if problem.fam.name == "t":
            w = problem.w
            conv = conv & ~(w.max(1) > 0.5 * w.sum(1))  # a cell holding most of the values
        return x, LL, conv

    monkeypatch.setattr(B, "newton_fit", t_fails_on_spikes)
    K = 6
    true = 0.01 * 0.95 ** np.arange(K)
    rec_edges = log_edges(10.0, n_half=101, min_abs=1e-10)  # the recorder's default layout
    run = make_synthetic_run({"conv1": true, "conv2": 2 * true}, n=9000, edges=rec_edges, seed=11)
    rng = np.random.default_rng(0)
    x = draw(rng, "laplace", float(true[2]), 9000)
    x[:8000] = 0.0
    _replace_row(run, 2, "conv1", x)
    res = fit_run(run, per="round", bootstrap=30, seed=0, store=False)
    row = res.per_layer.set_index(["round", "layer"]).loc[(2, "conv1")]
    failed = [m for m in ("normal", "laplace", "t", "gennorm") if row[f"{m}_status"] == "no-convergence"]
    assert failed == ["t"] and row["status"] == "no-convergence"
    assert all(np.isnan(row[f"{m}_scale"]) for m in failed)
    np.testing.assert_allclose(row["std"], x.std(), rtol=1e-9)
    n = res.narrowing.set_index(["layer", "statistic", "round"]).sort_index()
    assert ("conv1", "std", 2) in n.index and ("conv1", "meanabs", 2) in n.index
    np.testing.assert_allclose(n.loc[("conv1", "std", 2), "ratio"], x.std() / row_std(res, 0, "conv1"), rtol=1e-9)
    assert ("conv1", failed[0], 2) not in n.index  # the failed model, only, loses the row
    assert (n.loc[("pooled", "std")].index == np.arange(6)).all()
    tr = res.trend.set_index(["layer", "statistic"])
    assert tr.loc[("conv1", "std"), "n_rounds"] == 6


def row_std(res, round_, layer):
    return float(res.per_layer.set_index(["round", "layer"]).loc[(round_, layer), "std"])


def test_iqr_and_mad_from_the_histogram_with_ci_and_resolution():
    # Laplace(b): IQR = 2 b ln 2, MAD = b ln 2. On fine linear edges both are recovered, the
    # asymptotic CI matches the spread over repeats, and the resolution is the bin width/value
    edges = np.linspace(-0.1, 0.1, 2001)
    b = 0.01
    rng = np.random.default_rng(7)
    rows = [summarize(draw(rng, "laplace", b, 20_000), edges) for _ in range(60)]
    counts = np.array([r["counts"] for r in rows])
    df = fit_histograms(counts, edges, [r["under"] for r in rows], [r["over"] for r in rows], models=(),
                        bootstrap=0)
    for stat, truth in (("iqr", 2 * b * np.log(2)), ("mad", b * np.log(2))):
        v = df[stat].to_numpy()
        assert abs(v.mean() / truth - 1) < 0.01, stat
        se_pred = np.median((np.log(df[f"{stat}_hi"]) - np.log(df[f"{stat}_lo"])) / (2 * 1.96))
        se_emp = np.log(v).std(ddof=1)
        assert 0.75 < se_emp / se_pred < 1.33, (stat, se_emp, se_pred)
        np.testing.assert_allclose(df[f"{stat}_res"], (2 if stat == "iqr" else 1) * 1e-4 / v, rtol=1e-6)
    # the default log-spaced edges are coarse: the resolution column says so
    log_e = log_edges(10.0, n_half=101, min_abs=1e-10)  # the recorder's default layout
    r = summarize(draw(rng, "laplace", b, 50_000), log_e)
    d2 = fit_histograms(np.array([r["counts"]]), log_e, [r["under"]], [r["over"]], models=(), bootstrap=0)
    assert 0.15 < d2["iqr_res"].iloc[0] < 0.4


def test_fit_statistic_and_bootstrap_are_validated():
    from gradscope.fit import check_fit_options, format_narrowing, format_trend
    _, run = _run(seed=12)
    res = fit_run(run, models=("laplace",), bootstrap=0, store=False)
    for stat in ("std", "meanabs", "iqr", "mad", "laplace"):
        t = format_narrowing(res, stat)
        assert len(t) == 6 and (t["statistic"] == stat).all()
    assert (format_narrowing(res, "iqr")["resolution"] > 0).all()
    with pytest.raises(GradscopeError, match="unknown statistic 'foo'"):
        format_narrowing(res, "foo")
    with pytest.raises(GradscopeError, match="not fitted"):
        format_trend(res, "t")
    for bad in (-1, 2.5, True):
        with pytest.raises(GradscopeError, match="bootstrap"):
            fit_run(run, bootstrap=bad, store=False)
    with pytest.raises(GradscopeError, match="unknown statistic"):
        check_fit_options(statistic="variance")
    with pytest.raises(GradscopeError, match="seed"):
        check_fit_options(seed=-3)


def test_degenerate_and_diverged_windows_never_crash():
    # one histogram with 3 populated cells: the multinomial bootstrap met a singular Hessian
    # (LinAlgError: Singular matrix) before
    x = np.zeros(1000)
    x[:3] = [0.01, -0.01, 0.02]
    r = summarize(x, EDGES)
    mom = {k: np.array([r[k]], float) for k in ("count", "sum", "sumsq", "sumabs", "sum3", "sum4")}
    for rs in ("multinomial", "normal"):
        df = fit_histograms(np.array([r["counts"]]), EDGES, [r["under"]], [r["over"]], moments=mom, bootstrap=50,
                            resample=rs)
        np.testing.assert_allclose(df["std"], x.std())
    # a run with an all-zero window and a diverged one (everything beyond the histogram range)
    true, run = _run(seed=13)
    _replace_row(run, 3, "conv1", np.zeros(5000))
    _replace_row(run, 4, "conv2", np.random.default_rng(1).laplace(0, 1e3, 5000))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no numpy noise on the user's terminal either
        res = fit_run(run, bootstrap=30, store=False)
    row = res.per_layer.set_index(["round", "layer"])
    assert row.loc[(3, "conv1"), "status"] == "degenerate" and row.loc[(3, "conv1"), "std"] == 0
    assert row.loc[(4, "conv2"), "status"] == "out-of-range"
    assert row.loc[(4, "conv2"), "std"] > 100  # exact, although no histogram statistic is
    assert np.isnan(row.loc[(4, "conv2"), "iqr"]) and np.isnan(row.loc[(4, "conv2"), "laplace_scale"])


def test_window_last_uses_only_each_rounds_last_epoch():
    K = 5
    true = 0.01 * 0.9 ** np.arange(K)
    run = make_synthetic_run({"a": true}, n=40_000, epochs=2, epoch_factor=[1.0, 1.5], seed=3)
    last = fit_run(run, models=(), bootstrap=0, window="last")
    every = fit_run(run, models=(), bootstrap=0, window="all", store=False)
    pl = last.pooled.set_index("round")["std"]
    np.testing.assert_allclose(pl, 1.5 * true * np.sqrt(2), rtol=0.02)  # Laplace std = sqrt(2) b
    pa = every.pooled.set_index("round")["std"]
    np.testing.assert_allclose(pa, true * np.sqrt(2) * np.sqrt((1 + 1.5**2) / 2), rtol=0.02)
    assert last.meta["window"] == "last" and every.meta["window"] == "all"
    stored = run.derived("fit_narrowing")
    assert (stored["window"] == "last").all() and (stored["view"] == "survivors").all()
    with pytest.raises(GradscopeError, match="unknown window"):
        fit_run(run, window="first-and-last", store=False)


def test_view_passes_through_to_the_reader():
    K = 4
    surv = 0.01 * np.ones(K)
    rel = 0.5 * 0.8 ** np.arange(K)
    run = make_synthetic_run({"a": surv}, views={"relative": {"a": rel}}, n=30_000, seed=5)
    res = fit_run(run, models=(), bootstrap=0, view="relative", store=False)
    n = res.narrowing[(res.narrowing["layer"] == "pooled") & (res.narrowing["statistic"] == "std")]
    np.testing.assert_allclose(n["ratio"], rel / rel[0], rtol=0.03)
    assert res.meta["view"] == "relative"
    with pytest.raises(GradscopeError, match="not recorded"):
        fit_run(run, view="all", store=False)
    with pytest.raises(GradscopeError, match="unknown view"):
        fit_run(run, view="everything", store=False)

    class V1Reader:  # a schema-v1 reader: no view argument at all
        def __init__(self, r):
            self.r = r

        def histograms(self):
            return self.r.histograms()

        def moments(self):
            return self.r.moments()

        def rounds(self):
            return self.r.rounds()

        def layers(self):
            return self.r.layers()

    v1 = V1Reader(run)
    assert len(fit_run(v1, models=(), bootstrap=0, store=False).pooled) == K
    with pytest.raises(GradscopeError, match="only the 'survivors' view"):
        fit_run(v1, view="relative", models=(), bootstrap=0, store=False)
