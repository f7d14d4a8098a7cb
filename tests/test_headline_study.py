"""analysis/headline_study.py's analysis on synthetic rounds with known answers: a method that
is better by construction is called better, a null (every method the same in distribution) is
not, the best baseline is chosen on validation (never on test), and only complete (paired)
trajectories enter."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hs():
    sys.path.insert(0, str(ROOT / "analysis"))
    spec = importlib.util.spec_from_file_location("headline_study", ROOT / "analysis" / "headline_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rounds(hs, n_traj, effect, seed=0, val_best="lrr"):
    """Per (trajectory, method, round): test accuracy = trajectory level + effect[method] + noise;
    validation accuracy makes ``val_best`` the best baseline while its *test* accuracy is lowest."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(n_traj):
        level = rng.normal(0.95, 0.01)
        for m in hs.METHODS:
            for k in range(hs.ROUNDS):
                test = level + effect.get(m, 0.0) + rng.normal(0, 0.002)
                if m == val_best:
                    test -= 0.01
                val = 0.9 + (0.05 if m == val_best else 0.0) + rng.normal(0, 0.001)
                rows.append({"config": "c", "trajectory": f"t{t}", "method": m, "round": k,
                             "sparsity": 1 - 0.8 ** k, "max_lr": 0.1, "val_acc": val, "test_acc": test})
    return pd.DataFrame(rows)


def test_better_method_detected_and_null_not(hs):
    df = hs.complete(_rounds(hs, 6, {"silo-cal": 0.02}))
    acc = hs.accuracy_table(df)
    full = hs.paired_table(df, acc)
    p = full[full.reference == "best"].set_index(["round", "method"])
    vs_lth = full[full.reference == "lth"].set_index(["round", "method"])
    for k in hs.LEVELS:
        assert p.loc[(k, "silo-cal"), "best_baseline"] == "lrr"  # chosen on validation, though worst on test
        # silo-cal: +2 points over the trajectory level, +3 over lrr (whose test is 1 point lower)
        assert p.loc[(k, "silo-cal"), "diff_mean"] == pytest.approx(3.0, abs=0.5)
        assert p.loc[(k, "silo-cal"), "verdict"] == "better"
        assert p.loc[(k, "silo-preset"), "verdict"] == "better"  # +1 over lrr's lowered test accuracy
        assert vs_lth.loc[(k, "silo-cal"), "diff_mean"] == pytest.approx(2.0, abs=0.5)
        assert vs_lth.loc[(k, "silo-preset"), "verdict"] == "cannot tell" or \
            abs(vs_lth.loc[(k, "silo-preset"), "diff_mean"]) < 0.5
    null = hs.complete(_rounds(hs, 6, {}, seed=1, val_best="cosine"))
    nacc = hs.accuracy_table(null)
    # a null where validation carries no information about test: 20 simulated studies, 5 levels each
    calls = []
    for s in range(20):
        d = _rounds(hs, 5, {}, seed=100 + s, val_best="none")
        d["test_acc"] = d["test_acc"] + np.random.default_rng(s).normal(0, 0.01, len(d))
        q = hs.paired_table(d, hs.accuracy_table(d))
        calls += list(q[(q.method == "silo-cal") & (q.reference == "best")]["verdict"])
    assert np.mean([c != "cannot tell" for c in calls]) < 0.15  # nominal 5 % per level
    q = hs.paired_table(null, nacc)
    assert set(q[q.reference == "best"]["best_baseline"]) == {"cosine"}


def test_incomplete_trajectories_are_dropped_and_detectable_shrinks(hs):
    df = _rounds(hs, 4, {})
    cut = df[~((df.trajectory == "t3") & (df.method == "oracle") & (df["round"] == 10))]
    kept = hs.complete(cut)
    assert sorted(kept.trajectory.unique()) == ["t0", "t1", "t2"]
    assert hs.detectable(1.0, 20) < hs.detectable(1.0, 5) < hs.detectable(1.0, 3)
    assert np.isnan(hs.detectable(1.0, 1))


def test_markdown_and_figure(hs, tmp_path):
    df = hs.complete(_rounds(hs, 3, {"silo-cal": 0.01}))
    acc = hs.accuracy_table(df)
    paired = hs.paired_table(df, acc)
    renda = pd.read_csv(ROOT / "analysis" / "results" / "headline" / "renda2020.csv")
    text = hs.markdown(acc, paired, renda, pd.DataFrame([{"config": "c", "eta0": 0.1}]),
                       pd.DataFrame([{"config": "c", "status": "flat"}]))
    assert "36.0 % pruned" in text and "89.3 % pruned" in text and "92.29" in text
    assert 'gate "supported" on 0 of 1' in text
    hs.figure(acc, paired, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 10_000
