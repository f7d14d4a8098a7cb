"""The Oracle's statistics on synthetic accuracy curves with a known optimum."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gradscope import GradscopeError
from gradscope.optimum import fit_optimum, slope_test

GRID = np.geomspace(0.0125, 0.2, 7)


def simulate(rng, opt=0.05, seeds=3, n_val=1000, seed_sd=0.15, curv=0.4, grid=GRID):
    """Per-example correctness of each (grid value, seed): logit P = skill(max_lr) + seed noise +
    example difficulty (shared by all candidates, as a real validation set is)."""
    lx = np.log(grid)
    skill = 1.4 - curv * (lx - math.log(opt)) ** 2
    d = rng.normal(0, 1.5, n_val)
    z = skill[:, None, None] + rng.normal(0, seed_sd, (len(grid), seeds, 1)) + d[None, None, :]
    return rng.random(z.shape) < 1 / (1 + np.exp(-z))


def test_ci_covers_the_true_optimum_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    hits, logs, widths = [], [], []
    for i in range(100):
        e = fit_optimum(GRID, simulate(rng), n_boot=300, seed=i)
        assert e.status == "interior"
        hits.append(e.lo <= 0.05 <= e.hi)
        logs.append(math.log(e.optimum))
        widths.append(math.log(e.hi / e.lo) / (2 * 1.96))
    cover = np.mean(hits)
    assert cover >= 0.90, cover  # nominal 95 %; 100 runs: 2 SE is about 4.4 points
    assert abs(np.mean(logs) - math.log(0.05)) < 0.05  # unbiased on a quadratic curve
    assert np.mean(widths) < 2.5 * np.std(logs)  # conservative, not vacuous


def test_paired_seeds_give_the_right_width_where_unpaired_ones_do_not():
    """A seed that is good at one max_lr is good at all (it has the same data order at every
    grid value): that offset moves no optimum. Resampling whole seed rows keeps it out of the
    CI; resampling seeds per grid value turns it into noise between neighbours, so the CI is
    about 3x too wide and rounds come out "edge" although their argmax is interior."""
    rng = np.random.default_rng(4)
    res = {True: [], False: []}
    for i in range(30):
        lx = np.log(GRID)
        skill = 1.4 - 0.4 * (lx - math.log(0.05)) ** 2
        z = (skill[:, None, None] + rng.normal(0, 0.5, (1, 3, 1)) + rng.normal(0, 0.03, (7, 3, 1))
             + rng.normal(0, 1.5, 3000)[None, None, :])
        c = rng.random(z.shape) < 1 / (1 + np.exp(-z))
        for paired in (True, False):
            res[paired].append(fit_optimum(GRID, c, n_boot=200, seed=i, paired=paired))
    paired, unpaired = res[True], res[False]
    assert all(e.status == "interior" for e in paired)
    assert np.mean([e.lo <= 0.05 <= e.hi for e in paired]) >= 0.9
    width = {k: np.median([math.log(e.hi / e.lo) for e in v if e.status == "interior"]) for k, v in res.items()}
    assert width[False] > 2 * width[True], width
    assert sum(e.status.startswith("edge") and GRID[0] < e.argmax < GRID[-1] for e in unpaired) > 0  # issue 19
    seeds_share = {k: np.mean([e.var_log_opt["seeds"] for e in v]) for k, v in res.items()}
    assert seeds_share[False] > 3 * seeds_share[True], seeds_share  # paired: the offset cancels


def test_one_seed_says_what_its_ci_leaves_out():
    e = fit_optimum(GRID, simulate(np.random.default_rng(9), seeds=1), n_boot=50)
    assert e.n_seeds == 1 and "validation-example noise only" in e.note and math.isnan(e.var_log_opt["seeds"])
    assert "validation-example noise only" in e.to_dict()["note"]


def test_edges_and_flat_curves_are_never_reported_as_values():
    rng = np.random.default_rng(1)
    e = fit_optimum(GRID, simulate(rng, opt=0.5), n_boot=50)
    assert e.status == "edge-high" and e.optimum is None and e.argmax == GRID[-1]
    e = fit_optimum(GRID, simulate(rng, opt=0.002), n_boot=50)
    assert e.status == "edge-low" and e.optimum is None
    for _ in range(5):  # no optimum to find: never a value with a CI
        e = fit_optimum(GRID, simulate(rng, curv=0.0, seed_sd=0.0), n_boot=200)
        assert e.status != "interior" and e.optimum is None
    same = np.zeros((7, 3, 400), bool)
    same[:, :, :300] = True  # identical accuracy everywhere
    e = fit_optimum(GRID, same, n_boot=50)
    assert e.status == "flat" and e.interval == (GRID[0], GRID[-1])


def test_silo_interval_and_argmax():
    c = np.zeros((5, 2, 100), bool)
    for g, acc in enumerate([50, 70, 80, 75, 40]):
        c[g, :, :acc] = True
    grid = [0.01, 0.02, 0.04, 0.08, 0.16]
    e = fit_optimum(grid, c, n_boot=20)
    assert e.argmax == 0.04
    noise = math.sqrt(2 * 0.8 * 0.2 / 100)  # 0.0566: 0.75 is within noise, 0.70 is not
    assert e.interval == (0.04, 0.08) and 0.8 - 0.75 < noise < 0.8 - 0.7
    assert e.mean_acc[0.04] == 0.8 and e.status == "interior" and 0.02 < e.optimum < 0.08


def test_slope_test_detects_rising_flat_and_falling_optima():
    rng = np.random.default_rng(2)
    sparsity = np.array([0.0, 0.2, 0.36, 0.49, 0.59, 0.67])
    for factor, verdict in ((4.0, "rises"), (1.0, "flat"), (0.25, "falls")):
        boots, points = [], []
        for s in sparsity:
            opt = 0.05 * factor ** s  # log optimum linear in sparsity, slope log(factor)
            e = fit_optimum(np.geomspace(0.003, 0.8, 11), simulate(rng, opt=opt, grid=np.geomspace(0.003, 0.8, 11)),
                            n_boot=300)
            assert e.status == "interior"
            boots.append(e.boot_log_opt)
            points.append(math.log(e.optimum))
        r = slope_test(sparsity, boots, x_name="sparsity", point_log_opt=points)
        assert r.verdict == verdict, (factor, r)
        assert r.lo <= math.log(factor) <= r.hi
        assert "sparsity" in r.sentence()


def test_bad_inputs_are_clear_errors():
    with pytest.raises(GradscopeError, match="shape"):
        fit_optimum(GRID, np.zeros((3, 2, 10), bool))
    with pytest.raises(GradscopeError, match="increasing"):
        fit_optimum(GRID[::-1], np.zeros((7, 2, 10), bool))
    with pytest.raises(GradscopeError, match="3 rounds"):
        slope_test([0, 1], [np.zeros(5), np.zeros(5)])
    with pytest.raises(GradscopeError, match="different"):
        slope_test([1, 1, 1], [np.zeros(5)] * 3)
