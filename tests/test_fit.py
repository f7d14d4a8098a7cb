"""Fits on synthetic gradients with known scales (gradscope.fit)."""
import numpy as np
import pytest

from gradscope import GradscopeError
from gradscope.fit import fit_histograms, fit_run, fit_samples, trend_slope
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


def test_fit_run_bad_inputs():
    with pytest.raises(GradscopeError):
        fit_run("/nonexistent/run.h5")
    with pytest.raises(GradscopeError):
        fit_run(object())
    _, run = _run(seed=8)
    with pytest.raises(GradscopeError):
        fit_run(run, per="epoch", store=False)
