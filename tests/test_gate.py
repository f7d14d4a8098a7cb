"""The calibration gate against the pruning-only null (gradscope.calibrate.gate, issue 19).

Null: the surviving gradients keep their distribution; only density changes (and noise per
round). The all-weights view then shrinks by sqrt(density) by arithmetic: the old gate
(``rise_test`` on the whole implied rise) calls that "supported" nearly always; the new one
must do so in <= 5 % of runs, at every noise level, for 6 and 8 rounds, under both windows.
Power: runs whose surviving gradients really narrow (SILO's own rise, x3.3 per unit of x).
"""
import math

import numpy as np
import pandas as pd
import pytest

from gradscope import GradscopeError
from gradscope.calibrate import calibrate_run, rise_test
from gradscope.calibrate.evidence import evidence_lines, load_evidence
from gradscope.calibrate.gate import MIN_RISE, density_part, gate_status, null_gate, rounds_needed
from gradscope.fit.synthetic import make_synthetic_run
from gradscope.schedules.curves import planned_pruned_fraction

P = 0.2


def _x(K):
    return np.asarray(planned_pruned_fraction(np.arange(K), P, 1), float)


def _simulate(K, noise, n_sim, rise=0.0, seed=0):
    """Points-level simulation: survivors' std per round = exp(-rise * x_k) * noise; the
    all-weights view multiplies it by sqrt(density_k) (density of round k's network)."""
    rng = np.random.default_rng(seed)
    x = _x(K)
    dens = (1 - P) ** np.arange(K)
    log_surv = -rise * x[None, :] + rng.normal(0, noise, (n_sim, K))
    log_surv -= log_surv[:, :1]  # ratios to round 0
    log_all = log_surv + 0.5 * np.log(dens)[None, :]
    dpart = -0.5 * np.log(dens)  # -gamma log(null ratio), gamma = 1
    return x, -log_surv, -log_all, dpart


@pytest.mark.parametrize("K", [6, 8])
@pytest.mark.parametrize("noise", [0.0, 0.01, 0.03, 0.05, 0.10])
def test_null_false_supported_rate_at_most_5_percent(K, noise):
    """2,000 null runs per cell: the all-weights view (gate removes density) and the survivors
    view each say "supported" in <= 5 %; the old whole-rise test said it far more often."""
    x, li_surv, li_all, dpart = _simulate(K, noise, 2000, seed=K * 100 + int(noise * 1000))
    for li, dp in ((li_all, dpart), (li_surv, np.zeros(K))):
        rate = np.mean(gate_status(x, li, dp) == "supported")
        assert rate <= 0.05, (K, noise, rate)
    if noise <= 0.03:  # the bug this gate fixes: sqrt(density) alone made the old test "supported"
        old = np.mean([rise_test(x, np.exp(row))["status"] == "supported" for row in li_all[:300]])
        assert old >= 0.9, old


@pytest.mark.parametrize("K,noise,floor", [(8, 0.03, 0.95), (8, 0.10, 0.5), (6, 0.03, 0.8)])
def test_power_on_a_real_narrowing(K, noise, floor):
    """Surviving gradients narrowing so that max_lr should rise x3.3 per unit of x (the SILO
    preset's slope): the gate detects it in at least ``floor`` of runs, in either view."""
    x, li_surv, li_all, dpart = _simulate(K, noise, 1000, rise=math.log(3.3), seed=7 + K)
    for li, dp in ((li_all, dpart), (li_surv, np.zeros(K))):
        power = np.mean(gate_status(x, li, dp) == "supported")
        assert power >= floor, (K, noise, power)


def test_underdetermined_below_min_dof_even_for_a_clean_rise():
    x = _x(5)
    g = null_gate(x, 2.0 * x, np.zeros(5))
    assert g["status"] == "underdetermined" and g["rounds_needed"] == rounds_needed() == 6
    assert null_gate(_x(6), 2.0 * _x(6) + 1e-3 * np.arange(6) % 2, np.zeros(6))["status"] == "supported"


def test_falling_and_flat_verdicts():
    x = _x(8)
    assert null_gate(x, -1.0 * x + 0.01 * np.sin(np.arange(8)), np.zeros(8))["status"] == "falling"
    # a real but negligible rise (x1.05 per unit x) is "flat": below the gate's minimal rise
    assert null_gate(x, math.log(1.05) * x, np.zeros(8))["status"] == "flat"
    assert MIN_RISE == pytest.approx(math.log(1.1))


def _null_run(K, noise, seed, epochs=2):
    """A synthetic run file whose surviving gradients are unchanged (noise per round only)
    while both layers are pruned 20 % per round; the 'all' view is derived exactly."""
    rng = np.random.default_rng(seed)
    dens = (1 - P) ** np.arange(K)
    f = np.exp(rng.normal(0, noise, K))
    scales = {"c1": 0.01 * f, "c2": 0.02 * f}
    return make_synthetic_run(scales, n=4000, epochs=epochs, density={"c1": dens, "c2": dens}, family="normal",
                              seed=seed, prune_rate=P)


@pytest.mark.parametrize("window", ["all", "last"])
def test_end_to_end_null_runs_are_not_supported(window):
    """Through calibrate_run, on run objects: the view-all points rise (sqrt(density)), the
    gate computes that part from the layers' densities and moments and does not count it."""
    statuses, shares = [], []
    for seed in range(12):
        run = _null_run(8, 0.03, seed)
        cal = calibrate_run(run, view="all", window=window)
        statuses.append(cal.status)
        shares.append(cal.rise["density_share"])
        # the null ratio is sqrt(density) here (zero-mean gradients, equal layer densities)
        np.testing.assert_allclose(cal.points["null_ratio"], np.sqrt((1 - P) ** np.arange(8)), rtol=0.02)
    assert statuses.count("supported") <= 1, statuses
    assert null_gate(cal.points["x"], np.log(cal.points["implied_max_lr"]), cal.points["density_part"])["status"] == \
        gate_status(cal.points["x"], np.log(cal.points["implied_max_lr"]), cal.points["density_part"])[0]
    assert np.median(shares) > 0.7  # most of the view's whole rise is density arithmetic


def test_density_part_uses_each_layers_own_density():
    """Two layers pruned at different rates: the null is the moment identity with per-layer
    densities, not sqrt of the global one."""
    K = 6
    d1, d2 = 0.5 ** np.arange(K), np.ones(K)  # c1 halves each round, c2 is never pruned
    run = make_synthetic_run({"c1": np.full(K, 0.01), "c2": np.full(K, 0.03)}, n=20000, family="normal",
                             density={"c1": d1, "c2": d2}, seed=1)
    null = density_part(run, view="all", window="all", statistic="std", gamma=1.0, rounds=np.arange(K))
    # E_all[g^2] = (d1 * 0.01^2 + d2 * 0.03^2) / 2 (equal numel)
    expect = np.sqrt((d1 * 1e-4 + d2 * 9e-4) / 2) / np.sqrt((1e-4 + 9e-4) / 2)
    np.testing.assert_allclose(null["null_ratio"], expect, rtol=0.02)
    glob = np.sqrt(1 - (1 - (d1 + d2) / 2))  # sqrt of the global density: a different number
    assert np.abs(glob[-1] - expect[-1]) > 0.1
    surv = density_part(run, view="survivors", window="all", statistic="std", gamma=1.0, rounds=np.arange(K))
    assert (surv["density_part"] == 0).all()
    with pytest.raises(GradscopeError, match="no pruning-only null"):
        density_part(run, view="all", window="all", statistic="iqr", gamma=1.0, rounds=np.arange(K))


def test_evidence_lines_read_from_the_table(tmp_path):
    t = pd.DataFrame([dict(study="calibration study (test)", model="small_cnn", dataset="digits", view="survivors",
                           window="all", statistic="std", predictor="survivors std", trajectories=4, rounds=28,
                           metric="regret (val acc points)", value=1.2, value_lo=0.5, value_hi=2.0, vs_constant=0.4,
                           vs_constant_lo=-0.1, vs_constant_hi=0.9, verdict="cannot tell", level=0.95),
                      dict(study="calibration study (test)", model="small_cnn", dataset="digits", view="-",
                           window="-", statistic="-", predictor="constant max_lr", trajectories=4, rounds=28,
                           metric="regret (val acc points)", value=0.8, value_lo=0.3, value_hi=1.5, vs_constant=0.0,
                           vs_constant_lo=0.0, vs_constant_hi=0.0, verdict="reference", level=0.95)])
    f = tmp_path / "evidence.csv"
    t.to_csv(f, index=False)
    lines = evidence_lines("small_cnn", "digits", "survivors", "all", "std", table=load_evidence(f))
    assert "this choice: survivors std" in lines[1] and "cannot tell" in lines[1]
    assert any("constant max_lr" in ln for ln in lines[2:])
    other = evidence_lines("resnet20", "cifar10", "survivors", "all", table=load_evidence(f))
    assert len(other) == 1 and "nothing comparable was measured for resnet20 on cifar10" in other[0]
    assert "small_cnn on digits" in other[0]
    assert load_evidence(tmp_path / "missing.csv").empty
