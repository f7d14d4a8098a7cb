"""Calibration of SILO from synthetic narrowing (gradscope.calibrate)."""
import json

import numpy as np
import pytest
import yaml

from gradscope import GradscopeError
from gradscope.calibrate import (Calibration, SiloAuto, calibrate_run, fit_s_curve,
                                 implied_max_lr, pruned_fraction)
from gradscope.fit.synthetic import make_synthetic_run
from gradscope.schedules import RoundInfo, get_schedule


def _sc(x, lo, hi, beta, midpoint):
    """Independent test oracle of SILO's curve: lo + (hi-lo) * sigmoid(beta*(logit x - logit mid))."""
    x = np.asarray(x, float)
    with np.errstate(divide="ignore"):
        z = beta * (np.log(x / (1 - x)) - np.log(midpoint / (1 - midpoint)))
    return lo + (hi - lo) / (1 + np.exp(-z))


TRUE = {"lo": 0.03, "hi": 0.07, "beta": 3.0, "midpoint": 0.6}


def test_implied_max_lr_and_pruned_fraction():
    np.testing.assert_allclose(implied_max_lr([1.0, 0.5, 0.25], 0.03), [0.03, 0.06, 0.12])
    np.testing.assert_allclose(implied_max_lr([0.25], 0.03, gamma=0.5), [0.06])
    np.testing.assert_allclose(pruned_fraction([0, 1, 2, 3], p=0.2, lag=1), [0, 0, 0.2, 0.36])
    np.testing.assert_allclose(pruned_fraction([0, 1, 2], lag=1, measured={0: 0.0, 1: 0.21}), [0, 0, 0.21])
    with pytest.raises(GradscopeError):
        pruned_fraction([3], lag=1, measured={0: 0.0})


def test_fit_s_curve_recovers_parameters_within_uncertainty():
    k = np.arange(25)
    x = pruned_fraction(k, p=0.2, lag=1)
    noise = np.exp(np.random.default_rng(0).normal(0, 0.02, len(k)))  # mild 2 % noise
    y = _sc(x, **TRUE) * noise
    fit = fit_s_curve(x, y)
    for name, true in TRUE.items():
        est, se = fit["params"][name], fit["se"][name]
        assert 0 < se < 0.5 * abs(true), name
        assert abs(est - true) <= 3 * se, (name, est, true, se)
    assert 0.01 < fit["rmse_log"] < 0.03


def test_fit_s_curve_clamps_to_bounds():
    x = pruned_fraction(np.arange(12), p=0.2, lag=1)
    y = 0.03 + 2.0 * x  # implies hi/lo of ~60: beyond the safe 10x
    fit = fit_s_curve(x, y)
    assert fit["params"]["hi"] <= 10 * fit["params"]["lo"] * (1 + 1e-9)
    assert "ratio" in fit["at_bound"]
    with pytest.raises(GradscopeError):
        fit_s_curve(x, y, bounds={"beta": (5, 1)})
    with pytest.raises(GradscopeError):
        fit_s_curve(x, y, bounds={"hi": (0.1, 1)})


def _narrowing_run(K=10, seed=0, n=100_000):
    """A run whose pooled std shrinks so that max_lr * std is constant along TRUE's curve."""
    x = pruned_fraction(np.arange(K), p=0.2, lag=1)
    scale = 0.01 * TRUE["lo"] / _sc(x, **TRUE)
    return make_synthetic_run({"conv1": scale, "conv2": 1.5 * scale}, n=n, seed=seed,
                              max_lr0=TRUE["lo"], prune_rate=0.2)


def test_calibrate_run_end_to_end(tmp_path):
    run = _narrowing_run(K=12)
    cal = calibrate_run(run, statistic="std", rounds_planned=15)
    p = cal.params
    assert p["schedule"] == "silo" and p["lag"] == 1 and p["p"] == 0.2 and p["shape"] == "warmup-step"
    for name, true in TRUE.items():
        assert abs(p[name] - true) <= max(3 * cal.uncertainty[name], 0.02 * true), name
    assert list(cal.points.columns[:3]) == ["round", "x", "ratio"]
    pred = cal.predict()
    assert len(pred) == 15
    np.testing.assert_allclose(pred["max_lr"], _sc(pred["x"], p["lo"], p["hi"], p["beta"], p["midpoint"]))
    assert (pred["max_lr_lo"] <= pred["max_lr"] + 1e-12).all() and (pred["max_lr"] <= pred["max_lr_hi"] + 1e-12).all()
    # the file --schedule silo reads: drop the provenance keys, build the schedule, same peaks
    for ext in ("json", "yaml"):
        f = tmp_path / f"silo.{ext}"
        cal.to_file(f)
        d = json.loads(f.read_text()) if ext == "json" else yaml.safe_load(f.read_text())
        assert d["schedule"] == "silo" and "uncertainty" in d and d["source"]["statistic"] == "std"
        sched = get_schedule("silo", **{k: d[k] for k in ("lo", "hi", "beta", "midpoint", "lag", "p", "shape")})
        for r in (0, 3, 5, 14):
            info = RoundInfo(round=r, sparsity=0.0, prev_sparsity=0.0, prune_rate=0.2, steps_per_epoch=1, epochs=1)
            assert sched.peak_lr(info) == pytest.approx(pred.loc[r, "max_lr"], rel=1e-9)


def test_calibrate_with_gamma_and_measured_x():
    run = _narrowing_run(K=10, seed=1)
    a = calibrate_run(run, gamma=1.0, x="measured")
    b = calibrate_run(run, gamma=0.5, x="measured")
    # gamma = 0.5 takes the square root of the implied ratio
    np.testing.assert_allclose(b.points["implied_max_lr"] / b.points["implied_max_lr"].iloc[0],
                               np.sqrt(a.points["implied_max_lr"] / a.points["implied_max_lr"].iloc[0]), rtol=1e-9)
    assert b.params["hi"] / b.params["lo"] < a.params["hi"] / a.params["lo"]


def test_calibrate_errors():
    run = _narrowing_run(K=4)
    with pytest.raises(GradscopeError, match="at least"):
        calibrate_run(run)
    run = _narrowing_run(K=8)
    with pytest.raises(GradscopeError):
        calibrate_run(run, statistic="variance")
    with pytest.raises(GradscopeError):
        calibrate_run(run, x="guessed")
    with pytest.raises(GradscopeError):
        calibrate_run(run, gamma=-1)
    run._rounds["max_lr"] = np.nan
    with pytest.raises(GradscopeError, match="lo="):
        calibrate_run(run)


def test_silo_auto_uses_prior_then_calibration():
    auto = get_schedule("silo-auto", lo=0.03, hi=0.05, beta=5.0, midpoint=0.5, p=0.2)
    assert isinstance(auto, SiloAuto)
    info = RoundInfo(round=6, sparsity=0.7, prev_sparsity=0.6, prune_rate=0.2, steps_per_epoch=1, epochs=1)
    prior_peak = auto.peak_lr(info)
    assert prior_peak == pytest.approx(_sc(1 - 0.8**5, 0.03, 0.05, 5.0, 0.5))
    full = _narrowing_run(K=10, seed=2)
    early = make_synthetic_run({k: v[:4] for k, v in
                                {"conv1": 0.01 * TRUE["lo"] / _sc(pruned_fraction(np.arange(10), p=0.2, lag=1), **TRUE)}.items()},
                               n=100_000, max_lr0=0.03)
    assert not auto.observe(early)  # 2 rounds with x > 0: too few, keeps the prior
    assert auto.peak_lr(info) == prior_peak
    assert auto.observe(full)
    assert auto.lo == 0.03  # lo stays round 0's max_lr
    assert auto.peak_lr(info) == pytest.approx(_sc(1 - 0.8**5, **TRUE), rel=0.05)
    assert isinstance(auto.calibration, Calibration)


# ----------------------------------------------------------------------------- issue 15: honest calibration
def _points(x, y):
    import pandas as pd
    return pd.DataFrame({"round": np.arange(len(x)), "x": x, "implied_max_lr": y})


def test_intervals_cover_at_the_nominal_rate():
    # 200 noisy synthetic calibrations at 8 rounds (4 dof): the Student-t interval of hi and the
    # predict() band must cover the truth ~95 % of the time (the normal 1.96 gave 82-89 %, the
    # old sampled band 89-93 %). Tolerance: a 99.9 % binomial interval around 0.95.
    from gradscope.calibrate import calibrate_points
    from scipy import stats
    true = {"lo": 0.03, "hi": 0.07, "beta": 3.0, "midpoint": 0.4}
    K, N = 8, 200
    x = pruned_fraction(np.arange(K), p=0.2, lag=1)
    rng = np.random.default_rng(2024)
    hit_hi = hit_band = hit_z = 0
    for _ in range(N):
        y = _sc(x, **true) * np.exp(rng.normal(0, 0.05, K))
        cal = calibrate_points(_points(x, y), p=0.2)
        a, b = cal.conf_int()["hi"]
        hit_hi += a <= true["hi"] <= b
        hit_z += abs(cal.params["hi"] - true["hi"]) <= 1.96 * cal.uncertainty["hi"]
        pr = cal.predict(K).iloc[-1]
        hit_band += pr["max_lr_lo"] <= _sc(pr["x"], **true) <= pr["max_lr_hi"]
    lo, hi = stats.binom.ppf([0.0005, 0.9995], N, 0.95) / N
    assert lo <= hit_hi / N <= hi, hit_hi / N
    assert lo <= hit_band / N <= hi, hit_band / N
    assert hit_z / N < lo  # the normal quantile is too narrow at 4 dof: the test can tell
    assert cal.uncertainty["t_quantile"] == pytest.approx(stats.t.ppf(0.975, 4))


def test_a_fit_pinned_near_a_bound_is_flagged_in_output_and_file(tmp_path):
    from gradscope.calibrate import calibrate_points, format_calibration
    from gradscope.calibrate.core import _near_bound
    assert _near_bound("beta", 19.9994, 0.5, 20.0) == "upper"  # np.isclose missed this one
    assert _near_bound("beta", 5.0, 0.5, 20.0) is None
    assert _near_bound("ratio", 1.0001, 1.0, 10.0) == "lower"
    x = pruned_fraction(np.arange(10), p=0.2, lag=1)
    y = np.where(x > 0.3, 0.06, 0.03) * np.exp(np.random.default_rng(0).normal(0, 0.01, 10))  # a step
    cal = calibrate_points(_points(x, y), p=0.2)
    assert cal.uncertainty["bound_side"].get("beta") == "upper"
    assert any("beta is at its upper bound 20" in f for f in cal.flags)
    t = format_calibration(cal).set_index("param")
    assert "at upper bound" in t.loc["beta", "flag"] and t.loc["lo", "flag"] == ""
    f = tmp_path / "s.json"
    cal.to_file(f)
    d = json.loads(f.read_text())
    assert d["notes"]["status"] == "supported" and any("beta" in s for s in d["notes"]["flags"])
    assert d["uncertainty"]["bound_side"] == {"beta": "upper"}
    assert len(d["uncertainty"]["ci"]["hi"]) == 2
    # a relative SE above 1 is flagged even away from a bound
    fake = dict(cal.uncertainty, midpoint=2.0 * cal.params["midpoint"])
    cal2 = Calibration(cal.params, {**fake, "poorly_determined": ["midpoint"]}, cal.points)
    assert "SE > value" in format_calibration(cal2).set_index("param").loc["midpoint", "flag"]


def test_widening_data_are_called_falling_and_no_file_is_written(tmp_path):
    # gradients that widen round after round imply a falling max_lr: say so, refuse the file
    K = 8
    sp = 1 - 0.8 ** np.arange(K)
    run = make_synthetic_run({"c1": 0.01 * (1 - sp) ** -0.4, "c2": 0.02 * (1 - sp) ** -0.4}, n=50_000, seed=3)
    cal = calibrate_run(run)
    assert cal.status == "falling" and cal.rise["slope_hi"] < 0
    assert cal.params["lo"] < 0.03  # the fit alone would happily hand out lo below round 0's LR
    f = tmp_path / "silo.yaml"
    with pytest.raises(GradscopeError, match="status is 'falling'.*--force"):
        cal.to_file(f)
    assert not f.exists()
    cal.to_file(f, force=True)
    d = yaml.safe_load(f.read_text())
    assert d["notes"]["status"] == "falling" and "do not support" in d["notes"]["message"]
    flat = make_synthetic_run({"c1": np.full(K, 0.01)}, n=50_000, seed=4)
    assert calibrate_run(flat).status == "flat"
    assert calibrate_run(_narrowing_run(K=10)).status == "supported"


def test_measured_x_needs_no_prune_rate():
    run = _narrowing_run(K=10, seed=5)
    run.config = {}  # no prune rate anywhere
    with pytest.raises(GradscopeError, match="measured"):
        calibrate_run(run, x="planned")
    cal = calibrate_run(run, x="measured")
    assert cal.params["p"] == pytest.approx(0.2, rel=1e-6)
    assert cal.params["use_measured"] is True and "estimated" in cal.source["p_source"]
    assert cal.status == "supported"


@pytest.mark.parametrize("kw,needle", [
    ({"lo": -1.0}, "lo (the max_lr of round 0) must be a positive number"),
    ({"lo": 0.0}, "lo (the max_lr of round 0)"),
    ({"rounds_planned": -1}, "rounds_planned"),
    ({"rounds_planned": 0}, "rounds_planned"),
    ({"gamma": 0.0}, "gamma"),
    ({"p": 1.5}, "fraction pruned per round"),
    ({"lag": -1}, "lag"),
    ({"statistic": "foo"}, "unknown statistic 'foo'"),
    ({"view": "nope"}, "unknown view"),
    ({"window": "middle"}, "unknown window"),
    ({"min_points": 0}, "min_points"),
])
def test_calibrate_options_are_validated(kw, needle):
    from gradscope.calibrate import check_calibrate_options
    with pytest.raises(GradscopeError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        check_calibrate_options(**kw)
    run = _narrowing_run(K=6)
    with pytest.raises(GradscopeError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        calibrate_run(run, **kw)


def test_calibrate_from_iqr_and_the_last_window():
    run = _narrowing_run(K=10, seed=6)
    a = calibrate_run(run, statistic="iqr")
    assert a.status == "supported" and a.source["statistic"] == "iqr"
    b = calibrate_run(run, window="last")
    assert b.source["window"] == "last" and "last epoch" in b.source["describe"]


def test_predict_band_of_an_undetermined_fit_stays_within_the_bounds():
    from gradscope.calibrate import calibrate_points
    x = pruned_fraction(np.arange(8), p=0.2, lag=1)
    y = np.where(x > 0.3, 0.06, 0.03) * np.exp(np.random.default_rng(1).normal(0, 0.02, 8))
    pr = calibrate_points(_points(x, y), p=0.2).predict(8)
    assert (pr["max_lr_lo"] >= 1e-4).all() and (pr["max_lr_hi"] <= 10.0).all()
    with pytest.raises(GradscopeError, match="whole number"):
        calibrate_points(_points(x, y), p=0.2).predict(-2)


def test_adamw_run_calibrates_with_one_warning(tmp_path):
    """An AdamW run's calibration says, in one labelled warning line, that the max_lr * scale
    principle is an SGD argument (Adam normalises the update); SGD runs get no such line."""
    from gradscope.calibrate import ADAMW_WARNING, describe_calibration

    sgd = calibrate_run(_narrowing_run(K=10))
    assert sgd.source["optimizer"] == "sgd" and ADAMW_WARNING not in sgd.flags
    assert not any("AdamW" in line for line in describe_calibration(sgd))
    run = _narrowing_run(K=10)
    run.config = {**run.config, "train": {"optimizer": "adamw"}}
    cal = calibrate_run(run)
    assert cal.source["optimizer"] == "adamw" and cal.flags[0] == ADAMW_WARNING
    assert cal.params == sgd.params and cal.status == sgd.status == "supported"  # same numbers, one more flag
    warned = [line for line in describe_calibration(cal) if "AdamW" in line]
    assert warned == [f"warning: {ADAMW_WARNING}"] and "\n" not in ADAMW_WARNING
    f = tmp_path / "silo.json"
    cal.to_file(f)
    d = json.loads(f.read_text())
    assert d["notes"]["flags"][0] == ADAMW_WARNING and d["source"]["optimizer"] == "adamw"


def test_too_few_points_message_counts_the_free_parameters():
    """With lo fixed three parameters are fitted, so 4 points are needed (the message said 5)."""
    import pandas as pd

    from gradscope.calibrate import calibrate_points

    pts = pd.DataFrame({"round": [0, 1, 2], "x": [0.0, 0.2, 0.36], "implied_max_lr": [0.1, 0.12, 0.15]})
    with pytest.raises(GradscopeError, match=r"and 4 points in all \(lo fixed\); this run has 2 and 3"):
        calibrate_points(pts, p=0.2, fix_lo=0.1, min_points=2)
    with pytest.raises(GradscopeError, match=r"and 5 points in all; this run has 2 and 3"):
        calibrate_points(pts, p=0.2, min_points=2)
