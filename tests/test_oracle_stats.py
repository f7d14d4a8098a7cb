"""The Oracle's statistics across rounds and trajectories: slope CI coverage with a known slope
and realistic between-trajectory spread, verdicts against flat and SILO's rise, the power
line, and regret scoring with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gradscope import GradscopeError
from gradscope.oracle_stats import (OptimumEstimate, OracleRound, Trajectory, fitted_accuracy, judge, local_optimum,
                                    power_line, score_predictions, silo_reference_slope, slope_over_trajectories,
                                    verdict)

X = np.array([1 - 0.8 ** k for k in range(8)])  # sparsities of rounds 0-7 at prune rate 0.2
SILO = math.log(3.3)
# realistic spreads (issue 19): ResNet-20's two pruning seeds gave x3.26 and x1.70 per unit of
# sparsity (SD of the log slope 0.46); per-round CIs of about x3 (SD of log optimum ~0.28)
TAU, SIGMA = 0.46, 0.28


def simulate(rng, T, slope=SILO, tau=TAU, sigma=SIGMA, misfit=0.1, B=200, seeds=3):
    """T trajectories: slope + N(0, tau²) per trajectory, a misfit of the line per round that no
    bootstrap sees, an estimation error N(0, sigma²) per round, and bootstrap replicates around
    the estimate with that spread."""
    out = []
    for t in range(T):
        b = slope + tau * rng.normal()
        point = math.log(0.03) + b * X + misfit * rng.normal(size=len(X)) + sigma * rng.normal(size=len(X))
        boots = point + sigma * rng.normal(size=(B, len(X)))
        v = np.full(len(X), sigma ** 2)
        out.append(Trajectory(f"t{t}", X, point, boots, 0.6 * v, 0.4 * v, seeds))
    return out


@pytest.mark.parametrize("T", [2, 3, 5])
def test_slope_ci_over_trajectories_covers_at_the_nominal_rate(T):
    rng = np.random.default_rng(T)
    cis = [slope_over_trajectories(simulate(rng, T)) for _ in range(300)]
    assert all(c.scope == "over trajectories" and c.n_trajectories == T and c.dof == T - 1 for c in cis)
    cover = np.mean([c.lo <= SILO <= c.hi for c in cis])
    assert cover >= 0.9, cover  # nominal 0.95; 300 runs: 2 SE is about 2.5 points
    est = np.array([c.slope for c in cis])
    assert abs(est.mean() - SILO) < 3 * est.std() / math.sqrt(len(est))  # unbiased
    half = np.median([(c.hi - c.lo) / 2 for c in cis])
    assert half < 1.6 * stats.t.ppf(0.975, T - 1) * est.std()  # conservative, not vacuous


def test_one_trajectory_is_labelled_within_trajectory_only_and_misses_the_spread():
    rng = np.random.default_rng(7)
    cis = [slope_over_trajectories(simulate(rng, 1)) for _ in range(300)]
    assert all(c.scope == "within-trajectory only" and math.isnan(c.tau2) for c in cis)
    assert "within-trajectory only" in cis[0].sentence() and "not in this CI" in cis[0].sentence()
    assert np.mean([c.lo <= SILO <= c.hi for c in cis]) < 0.9  # why the label matters
    many = slope_over_trajectories(simulate(rng, 6))
    assert "over 6 trajectories" in many.sentence() and many.tau2 >= 0


def test_trajectories_with_too_few_interior_rounds_are_left_out_or_refused():
    rng = np.random.default_rng(3)
    good = simulate(rng, 2)
    short = Trajectory("short", X[:2], np.zeros(2), np.zeros((5, 2)), np.ones(2), np.ones(2), 3)
    ci = slope_over_trajectories([*good, short])
    assert ci.n_trajectories == 2 and ci.skipped == ["short"]
    with pytest.raises(GradscopeError, match="3 or more"):
        slope_over_trajectories([short])


def test_trajectory_from_raw_correctness_keeps_interior_rounds_and_the_variance_split():
    from gradscope.oracle_stats import trajectory_from_correct

    rng = np.random.default_rng(2)
    grid = np.geomspace(0.003, 0.8, 11)
    lx = np.log(grid)
    corrects = []
    for s in X[:4]:
        skill = 1.4 - 0.4 * (lx - math.log(0.03 * 3.3 ** s)) ** 2
        z = skill[:, None, None] + rng.normal(0, 0.1, (11, 3, 1)) + rng.normal(0, 1.5, 600)
        corrects.append(rng.random(z.shape) < 1 / (1 + np.exp(-z)))
    corrects[2] = np.zeros_like(corrects[2])  # a flat round: left out, counted
    t = trajectory_from_correct("raw", X[:4], [grid] * 4, corrects, n_boot=100)
    assert list(t.x) == [X[0], X[1], X[3]] and t.skipped == 1 and t.boots.shape == (100, 3) and t.n_seeds == 3
    assert np.all(t.var_examples > 0) and np.all(np.isfinite(t.var_seeds))
    assert t.within_var(math.inf) < t.within_var() < t.within_var(1)  # more seeds, less noise; examples remain


def test_silo_reference_slope_is_the_released_curve_over_the_same_sparsities():
    def released(k, lo=0.03, hi=0.07, beta=5, p=0.2):  # Martin1937/SILO's cal(x), x = 1 - 0.8^(round-1)
        x = 1 - (1 - p) ** (k - 1)
        return lo if k <= 1 else lo + (hi - lo) * x ** beta / (x ** beta + (1 - x) ** beta)
    for K in (5, 7, 8):
        s = X[:K]
        want = np.polyfit(s, np.log([released(k) for k in range(K)]), 1)[0]
        assert silo_reference_slope(s) == pytest.approx(want, rel=1e-9)
    assert math.exp(silo_reference_slope(X[:7])) == pytest.approx(3.30, abs=0.005)  # the x3.30


def test_verdicts_against_flat_and_silo():
    ref = SILO
    assert verdict(0.1, 2.0, ref) == "excludes flat"
    assert verdict(-0.3, 0.5, ref) == "excludes SILO's rise"
    assert verdict(0.1, 0.5, ref) == "excludes both"
    assert verdict(-0.2, 2.0, ref) == "cannot tell"
    rng = np.random.default_rng(11)
    flat = simulate(rng, 8, slope=0.0, tau=0.1, sigma=0.15)
    silo = simulate(rng, 8, slope=SILO, tau=0.1, sigma=0.15)
    vs = judge({"flat config": flat, "silo config": silo, "one run": simulate(rng, 1)})
    assert [v.family for v in vs] == [3, 3, 3]
    assert all(v.ci.level == pytest.approx(1 - 0.05 / 3) for v in vs)  # Bonferroni over configurations
    assert vs[0].verdict == "excludes SILO's rise" and vs[1].verdict == "excludes flat"
    assert "family of 3 configurations" in vs[0].sentence() and "x3.53 per unit" in vs[0].sentence()  # 8 rounds
    assert "no multiplicity" in judge({"only": flat})[0].sentence()


def test_power_line_matches_the_analysis_it_plans_for():
    rng = np.random.default_rng(5)
    pilot = simulate(rng, 4, misfit=0.0)
    pl = power_line(pilot, TAU ** 2)
    s, T = pl.best()
    assert T is not None and s in pl.needed and "trajectories x" in pl.sentence() and "80%" in pl.sentence()
    # more seeds never need more trajectories; the validation examples' share is a floor
    ts = [pl.needed[k] for k in sorted(pl.needed)]
    assert all(a >= b for a, b in zip(ts, ts[1:]))
    assert pl.examples_sd < pl.within_sd
    assert pl.needed_more_val <= pl.needed[pl.seeds_run]  # a larger validation set shrinks the examples' share
    T3 = pl.needed[3]
    power = np.mean([slope_over_trajectories(simulate(rng, T3, misfit=0.0)).lo > 0 for _ in range(200)])
    assert power >= 0.72, (T3, power)  # 80 % planned; 200 runs: 2 SE is about 6 points
    if T3 > 2:
        fewer = np.mean([slope_over_trajectories(simulate(rng, 2, misfit=0.0)).lo > 0 for _ in range(200)])
        assert fewer < power
    one = power_line(pilot[:1], float("nan"))
    assert "lower bound" in one.sentence()


# ----------------------------------------------------------------------------- regret
GRID = np.geomspace(0.01, 0.16, 5)  # log steps of log 2


def _estimate(curve, boot=None, lo=None, hi=None, status="interior"):
    """An OptimumEstimate of a known accuracy curve (replicates: ``boot``, default the curve)."""
    curve = np.asarray(curve, float)
    boot = np.tile(curve, (20, 1)) if boot is None else boot
    logx = np.log(GRID)
    opt = math.exp(float(local_optimum(logx, curve)[0]))
    return OptimumEstimate(status, opt if status == "interior" else None, lo, hi, float(GRID[np.argmax(curve)]),
                           (GRID[0], GRID[-1]), 0.95, dict(zip(GRID, curve)), dict(zip(GRID, 0 * curve)),
                           np.full(len(boot), math.log(opt)), boot, 3, 1000)


def test_fitted_accuracy_is_the_local_quadratic_and_linear_elsewhere():
    u = np.log(GRID)
    peak = math.log(0.05)
    curve = 0.9 - 0.1 * (u - peak) ** 2  # exactly quadratic: the local quadratic recovers it
    v, top = local_optimum(u, curve)
    assert math.exp(v) == pytest.approx(0.05) and top == pytest.approx(0.9)
    a, out = fitted_accuracy(u, curve, math.log(0.06))  # inside the argmax window (0.02..0.08)
    assert a == pytest.approx(0.9 - 0.1 * math.log(0.06 / 0.05) ** 2) and not out
    a, _ = fitted_accuracy(u, curve, math.log(0.113))  # between 0.08 and 0.16: linear in log max_lr
    t = math.log(0.113 / 0.08) / math.log(2)
    assert a == pytest.approx(curve[3] * (1 - t) + curve[4] * t)
    a, out = fitted_accuracy(u, curve, math.log(1.0))  # beyond the grid: clamped and marked
    assert out and a == pytest.approx(curve[-1])


def test_regret_scores_with_known_answers():
    u = np.log(GRID)
    rng = np.random.default_rng(0)
    rounds, exact, const = [], {}, {}
    for t in ("a", "b", "c"):
        for k, opt in enumerate([0.03, 0.04, 0.05, 0.06]):
            curve = 0.9 - 0.1 * (u - math.log(opt)) ** 2
            boot = curve + rng.normal(0, 0.002, (50, len(GRID)))
            rounds.append(OracleRound(t, k, float(X[k]), _estimate(curve, boot, lo=opt / 1.3, hi=opt * 1.3)))
            exact[(t, k)] = opt
            const[(t, k)] = 0.02
    df = score_predictions(rounds, {"exact": exact, "constant": const, "wild": 0.5})
    df = df.set_index("predictor")
    # the exact predictor loses nothing; the constant 0.02 loses 0.1·log(opt/0.02)² per round
    assert df.loc["exact", "regret_points"] == pytest.approx(0, abs=1e-9)
    want = np.mean([100 * 0.1 * math.log(o / 0.02) ** 2 for o in (0.03, 0.04, 0.05, 0.06)])
    assert df.loc["constant", "regret_points"] == pytest.approx(want)
    assert df.loc["exact", "spearman_rho"] == pytest.approx(1.0) and df.loc["exact", "share_in_oracle_ci"] == 1.0
    assert df.loc["constant", "share_in_oracle_ci"] == 0.0 and np.isnan(df.loc["constant", "spearman_rho"])
    assert df.loc["exact", "verdict"] == "beats constant" and df.loc["exact", "scope"] == "over 3 trajectories"
    assert df.loc["wild", "outside_grid"] == 12 and df.loc["wild", "verdict"] == "worse than constant"
    assert df.loc["exact", "diff_hi"] < 0 < df.loc["wild", "diff_lo"]


def test_beats_constant_needs_the_paired_difference_to_exclude_zero():
    """Two predictors equally good on average (one better in half the trajectories, worse in the
    other half) cannot beat each other; with one trajectory the CI is within-trajectory only."""
    u = np.log(GRID)
    rng = np.random.default_rng(1)
    rounds, p, c = [], {}, {}
    for t in range(4):
        for k in range(3):
            curve = 0.9 - 0.1 * (u - math.log(0.04)) ** 2
            boot = curve + rng.normal(0, 0.01, (100, len(GRID)))
            rounds.append(OracleRound(f"t{t}", k, float(X[k]), _estimate(curve, boot)))
            p[(f"t{t}", k)] = 0.03 if t % 2 else 0.05
            c[(f"t{t}", k)] = 0.05 if t % 2 else 0.03
    df = score_predictions(rounds, {"p": p, "c": c}, constant="c").set_index("predictor")
    assert df.loc["p", "verdict"] == "cannot tell" and df.loc["p", "diff_lo"] < 0 < df.loc["p", "diff_hi"]
    one = score_predictions([r for r in rounds if r.trajectory == "t0"], {"p": p}, constant=0.02)
    assert set(one["scope"]) == {"within-trajectory only"}


def test_scoring_bad_inputs_are_clear_errors():
    r = OracleRound("a", 1, 0.2, _estimate(0.9 - 0.1 * (np.log(GRID) - math.log(0.04)) ** 2))
    with pytest.raises(GradscopeError, match="no positive max_lr"):
        score_predictions([r], {"p": {2: 0.03}}, constant=0.05)
    with pytest.raises(GradscopeError, match="constant predictor"):
        score_predictions([r], {"p": 0.03})
    r.estimate.boot_acc = None
    with pytest.raises(GradscopeError, match="boot_acc"):
        score_predictions([r], {"p": 0.03}, constant=0.05)
