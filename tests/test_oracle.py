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
