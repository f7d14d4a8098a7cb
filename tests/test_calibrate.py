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
