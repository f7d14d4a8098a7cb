import json
import math

import pytest

from gradscope import GradscopeError
from gradscope.train.oracle import choose_candidate, geometric_grid


def test_grid_is_geometric_from_half_lo_to_twice_hi():
    g = geometric_grid(0.03, 0.07, 5)
    assert g[0] == pytest.approx(0.015) and g[-1] == pytest.approx(0.14)
    ratios = [b / a for a, b in zip(g, g[1:])]
    assert max(ratios) == pytest.approx(min(ratios))
    with pytest.raises(GradscopeError):
        geometric_grid(0.07, 0.03, 5)


def test_chooses_by_validation_never_by_test():
    cands = [
        {"max_lr": 0.01, "val_acc": 0.80, "test_acc": 0.99},  # best test: must not win
        {"max_lr": 0.03, "val_acc": 0.90, "test_acc": 0.50},
        {"max_lr": 0.10, "val_acc": 0.70, "test_acc": 0.95},
    ]
    best, interval, inside = choose_candidate(cands, n_val=10_000)
    assert best["max_lr"] == 0.03
    assert interval == (0.03, 0.03) and inside == [0.03]


def test_interval_holds_candidates_within_noise_and_ties_prefer_smaller_lr():
    n = 400
    noise = math.sqrt(2 * 0.9 * 0.1 / n)  # 0.0212
    cands = [{"max_lr": 0.02, "val_acc": 0.9 - noise / 2, "test_acc": 0},
             {"max_lr": 0.04, "val_acc": 0.9, "test_acc": 0},
             {"max_lr": 0.08, "val_acc": 0.9, "test_acc": 0},
             {"max_lr": 0.16, "val_acc": 0.9 - 2 * noise, "test_acc": 0}]
    best, interval, inside = choose_candidate(cands, n_val=n)
    assert best["max_lr"] == 0.04
    assert interval == (0.02, 0.08) and 0.16 not in inside
    with pytest.raises(GradscopeError):
        choose_candidate([], n_val=n)


# ----------------------------------------------------------------------------- the summary printed
def _fake_run(root, seed, slope, rounds=5, seeds=3, rng=None):
    """An Oracle run directory whose rounds' candidates.json come from fit_optimum on synthetic
    correctness with a known optimum rising with sparsity (no training)."""
    import numpy as np

    from gradscope.config import RunConfig
    from gradscope.oracle_stats import fit_optimum
    from gradscope.paths import RunPaths
    from gradscope.train.checkpoint import save_json
    from gradscope.train.oracle import choice_record

    rng = np.random.default_rng(seed) if rng is None else rng
    cfg = RunConfig()
    cfg.train.seed = seed
    cfg.out = str(root)
    paths = RunPaths(root)
    paths.oracle.mkdir(parents=True)
    paths.config.write_text(json.dumps(cfg.to_dict()))
    grid = list(np.geomspace(0.003, 0.8, 11))
    for k in range(rounds):
        s = 1 - 0.8 ** k
        lx = np.log(grid)
        skill = 1.4 - 0.4 * (lx - math.log(0.03 * math.exp(slope * s))) ** 2
        z = skill[:, None, None] + rng.normal(0, 0.1, (len(grid), seeds, 1)) + rng.normal(0, 1.5, 800)
        c = rng.random(z.shape) < 1 / (1 + np.exp(-z))
        est = fit_optimum(grid, c, n_boot=200, seed=k)
        results = [{"round": k, "max_lr": g, "seed": j, "val_acc": float(c[i, j].mean()), "time_s": 2.0,
                    "device": "cpu"} for i, g in enumerate(grid) for j in range(seeds)]
        save_json(choice_record(k, s, grid, seeds, est, results), paths.oracle_choice(k))
    return root


def test_summary_prints_optima_slope_scope_verdict_and_power(tmp_path):
    from gradscope.train.oracle import oracle_report, oracle_rounds, oracle_trajectory

    a = _fake_run(tmp_path / "a", 0, math.log(3.3))
    b = _fake_run(tmp_path / "b", 1, math.log(3.3))
    text = oracle_report(a)
    assert "3 seeds per max_lr" in text and "paired bootstrap" in text and "whole rows across max_lr" in text
    assert "within-trajectory only" in text and "not in this CI" in text
    verdict = [l for l in text.splitlines() if l.startswith("verdict: ")]
    assert len(verdict) == 1 and "SILO preset resnet20" in verdict[0] and "1 configuration" in verdict[0]
    power = [l for l in text.splitlines() if l.startswith("power: ")]
    assert len(power) == 1 and "x3.3 from x1" in power[0] and "lower bound" in power[0]
    both = oracle_report(a, [b])
    assert "over 2 trajectories" in both and "trajectories (pruning seeds) pooled: 2" in both
    assert "between-trajectory SD" in both and "lower bound" not in both
    rs = oracle_rounds(a)  # what score_predictions takes: the bootstrap curves came back from the file
    assert len(rs) == 5 and rs[0].estimate.boot_acc.shape == (200, 11)
    assert oracle_trajectory(a).usable


def test_summary_with_one_seed_and_no_slope_says_so(tmp_path):
    from gradscope.train.oracle import oracle_report

    a = _fake_run(tmp_path / "a", 0, 0.0, rounds=2, seeds=1)
    text = oracle_report(a)
    assert "1 seed per max_lr" in text and "1 seeds" not in text
    assert "validation-example noise only" in text
    assert "verdict: cannot tell" in text and "power: cannot be estimated from these rounds (" in text
    assert "None" not in text  # no optimum is printed as NaN like any missing number


def test_pooled_trajectories_must_be_the_same_configuration(tmp_path):
    from gradscope.config import RunConfig
    from gradscope.train.oracle import oracle_report

    a = _fake_run(tmp_path / "a", 0, 1.0)
    same_seed = _fake_run(tmp_path / "b", 0, 1.0)
    with pytest.raises(GradscopeError, match="same --seed"):
        oracle_report(a, [same_seed])
    other = _fake_run(tmp_path / "c", 2, 1.0)
    cfg = RunConfig.from_dict(json.loads((other / "config.json").read_text()))
    cfg.model.model = "lenet_300_100"
    (other / "config.json").write_text(json.dumps(cfg.to_dict()))
    with pytest.raises(GradscopeError, match="model"):
        oracle_report(a, [other])
    with pytest.raises(GradscopeError, match="no analysed Oracle round"):
        oracle_report(a, [tmp_path / "nothing"])


def test_oracle_output_singulars_absolute_jobs_candidate_lines_and_round_time(tmp_path, monkeypatch, capsys):
    """Issue 24 item 12: --workers 0 prints absolute --out paths; "1 Oracle candidate"; the
    sequential mode prints each candidate's val_acc; a round's time is its candidates' time."""
    from gradscope.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["oracle", "--dataset", "digits", "--model", "small_cnn", "--epochs", "1", "--threads", "1",
            "--no-progress", "--batch-size", "64", "--rounds", "1", "--schedule", "lth", "--grid", "0.01,0.05,0.25",
            "--seeds", "1", "--max-extend", "0", "--cache-dir", "c", "--out", "rel/o"]
    assert main([*args, "--workers", "0"]) == 0
    out = capsys.readouterr().out
    jobs = [l.split() for l in out.splitlines() if l.startswith("gradscope oracle-candidate")]
    assert len(jobs) == 3 and "waits for 3 Oracle candidates" in out
    for job in jobs:
        assert job[job.index("--out") + 1] == str(tmp_path / "rel" / "o")
    for job in jobs[:2]:
        assert main(job[1:]) == 0
    capsys.readouterr()
    assert main([*args, "--workers", "0"]) == 0
    assert "waits for 1 Oracle candidate; run it," in capsys.readouterr().out
    assert main(args) == 0  # sequential: runs the last candidate here
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if l.startswith("  oracle round 0: max_lr 0.25 seed 0: val_acc ")]
    assert len(lines) == 1 and "1 seed per max_lr" in out and "1 seeds" not in out
    choice = json.loads((tmp_path / "rel" / "o" / "oracle" / "round_0" / "candidates.json").read_text())
    row = json.loads((tmp_path / "rel" / "o" / "rounds.json").read_text())[0]
    assert row["time_s"] == pytest.approx(sum(c["time_s"] for c in choice["candidates"]))
    assert row["time_s"] > max(c["time_s"] for c in choice["candidates"])
