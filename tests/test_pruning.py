import pytest
import torch
from torch import nn

from gradscope import GradscopeError
from gradscope import pruning as P


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10), nn.ReLU(),
                         nn.Linear(10, 3))


def test_global_magnitude_prunes_exact_fraction_of_smallest():
    m = _net()
    layers = P.prunable_layers(m)
    P.attach_masks(layers)
    w = torch.cat([l.weight_orig.detach().abs().flatten() for l in layers.values()])
    achieved = P.prune_step(layers, "global", 0.2)
    total = w.numel()
    assert achieved == pytest.approx(round(total * 0.2) / total)
    kept = torch.cat([(l.weight_orig.abs() * l.weight_mask).detach().flatten() for l in layers.values()])
    pruned_vals = w[kept == 0]
    kept_vals = w[kept != 0]
    assert pruned_vals.max() <= kept_vals.min()


def test_rounds_compound_and_pruned_stay_pruned():
    m = _net()
    layers = P.prunable_layers(m)
    P.attach_masks(layers)
    prev = P.current_masks(layers)
    for k, expect in [(1, 0.2), (2, 0.36), (3, 0.488)]:
        # make a pruned weight large: it must stay pruned
        with torch.no_grad():
            for n, l in layers.items():
                l.weight_orig[~prev[n]] = 100.0
        s = P.prune_step(layers, "global", P.target_sparsity(k, 0.2))
        assert s == pytest.approx(expect, abs=2 / 400)
        now = P.current_masks(layers)
        for n in now:
            assert not (now[n] & ~prev[n]).any()
        prev = now


def test_layerwise_hits_target_per_layer_and_random_is_seeded():
    m = _net()
    layers = P.prunable_layers(m)
    P.attach_masks(layers)
    P.prune_step(layers, "layerwise", 0.5)
    _, per = P.sparsity(P.current_masks(layers))
    for n, s in per.items():
        assert s == pytest.approx(0.5, abs=1 / layers[n].weight_orig.numel())
    a, b = _net(), _net()
    la, lb = P.prunable_layers(a), P.prunable_layers(b)
    P.attach_masks(la), P.attach_masks(lb)
    P.prune_step(la, "random", 0.3, seed=1)
    P.prune_step(lb, "random", 0.3, seed=1)
    ma, mb = P.current_masks(la), P.current_masks(lb)
    assert all(torch.equal(ma[n], mb[n]) for n in ma)
    P.prune_step(lb, "random", 0.3, seed=2)  # already at target: nothing more pruned
    assert all(torch.equal(ma[n], P.current_masks(lb)[n]) for n in ma)


def test_masks_are_real_zero_weights_and_zero_gradients():
    m = _net()
    layers = P.prunable_layers(m)
    P.attach_masks(layers)
    P.prune_step(layers, "global", 0.5)
    out = m(torch.randn(8, 1, 8, 8)).sum()
    out.backward()
    for l in layers.values():
        mask = l.weight_mask.bool()
        assert (l.weight[~mask] == 0).all()
        assert (l.weight_orig.grad[~mask] == 0).all()
        assert l.weight_orig.grad[mask].abs().sum() > 0


def test_first_last_exclusion_and_no_layers():
    m = _net()
    assert list(P.prunable_layers(m, prune_first=False, prune_last=False)) == ["3"]
    with pytest.raises(GradscopeError, match="no conv or linear"):
        P.prunable_layers(nn.Sequential(nn.ReLU()))


def test_refuses_full_sparsity():
    with pytest.raises(GradscopeError, match="100 %"):
        P.check_schedule(total=10, rounds=40, prune_rate=0.5)
    with pytest.raises(GradscopeError, match="prune-rate"):
        P.check_schedule(total=1000, rounds=3, prune_rate=1.0)
    P.check_schedule(total=1000, rounds=3, prune_rate=0.2)


def test_rewind_keeps_masks_and_restores_values():
    m = _net()
    layers = P.prunable_layers(m)
    P.attach_masks(layers)
    init = P.plain_state(m)
    assert not any(k.endswith("_orig") or k.endswith("_mask") for k in init)
    with torch.no_grad():
        for l in layers.values():
            l.weight_orig.add_(1.0)
    P.prune_step(layers, "global", 0.4)
    masks = P.current_masks(layers)
    P.load_plain_state(m, init)
    for n, l in layers.items():
        assert torch.equal(l.weight_mask.bool(), masks[n])
        assert torch.equal(l.weight_orig.detach(), init[n + ".weight"])
        assert torch.equal(l.weight, init[n + ".weight"] * masks[n])


def test_norm_drop():
    before = {"a": torch.tensor([3.0, 4.0])}
    after = {"a": torch.tensor([0.0, 4.0])}
    assert P.norm_drop(before, after) == pytest.approx(3 / 5)
