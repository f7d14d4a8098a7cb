"""K candidates as one batched (vmapped) model train exactly as K separate models would."""
import copy

import pytest
import torch
from torch import nn

from gradscope import GradscopeError
from gradscope import pruning as P
from gradscope.models import get_model
from gradscope.rounds import RoundInfo
from gradscope.schedules import get_schedule
from gradscope.train.batched import BatchedCandidates, schedule_lrs


def _masked(name="small_cnn", shape=(1, 8, 8)):
    torch.manual_seed(0)
    m = get_model(name, shape, 10)
    layers = P.prunable_layers(m, True, True)
    P.attach_masks(layers)
    P.prune_step(layers, "global", 0.5, seed=0)
    return m


def test_batched_matches_separate_models_with_per_candidate_lr_masks_and_batchnorm():
    """Losses, weights, BatchNorm statistics and eval logits of each candidate equal those of its
    own torch-pruned model trained with torch.optim.SGD at its own (changing) learning rate."""
    torch.set_num_threads(1)
    m = _masked()
    info = RoundInfo(round=0, sparsity=0.0, prev_sparsity=0.0, prune_rate=0.2, steps_per_epoch=6, epochs=1)
    factory = get_schedule("cosine", max_lr=0.05)  # a learning rate that changes every step
    peaks = [0.01, 0.05, 0.3]
    bc = BatchedCandidates(m, 3, momentum=0.9, weight_decay=5e-4)
    next_lrs = schedule_lrs(factory, info, peaks)
    refs = []
    for v in peaks:
        r = copy.deepcopy(m)
        opt = torch.optim.SGD(r.parameters(), lr=v, momentum=0.9, weight_decay=5e-4)
        refs.append((r, opt, factory.with_peak(v).build(opt, info)))
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        x, y = torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
        lrs = next_lrs()
        losses = bc.step(x, y, lrs)
        for i, (r, opt, sched) in enumerate(refs):
            assert lrs[i].item() == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)
            loss = nn.functional.cross_entropy(r(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            assert losses[i].item() == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
    assert len({round(v, 4) for v in losses.tolist()}) == 3  # the learning rates made them differ
    x = torch.randn(16, 1, 8, 8, generator=g)
    out = bc.predict(x)
    for i, (r, _, _) in enumerate(refs):
        r.eval()
        torch.testing.assert_close(out[i], r(x), rtol=1e-4, atol=1e-5)
        ref = P.plain_state(r)
        mine = bc.state_dict(i)
        for n in ("bn1.running_mean", "bn2.running_var", "conv2.weight", "fc.weight"):
            want = ref[n] * r.get_submodule(n.rsplit(".", 1)[0]).weight_mask if n.endswith("weight") else ref[n]
            torch.testing.assert_close(mine[n], want, rtol=1e-4, atol=1e-6)
        assert torch.equal(mine["conv2.weight"] == 0, r.conv2.weight_mask == 0)  # pruned stay exactly zero


def test_per_candidate_masks_and_bad_input():
    m = _masked("lenet_300_100", (1, 8, 8))
    bc = BatchedCandidates(m, 2)
    mask = torch.stack([torch.ones_like(m.fc1.weight_mask), torch.zeros_like(m.fc1.weight_mask)])
    bc2 = BatchedCandidates(m, 2, masks={"fc1.weight": mask})
    x = torch.randn(4, 1, 8, 8)
    out = bc2.predict(x)
    assert not torch.equal(out[0], out[1])  # candidate 1 has fc1 fully pruned: a constant output
    assert torch.allclose(out[1], out[1][:1].expand_as(out[1]))
    assert bc.predict(x).shape == (2, 4, 10)
    with pytest.raises(GradscopeError):
        BatchedCandidates(m, 0)
    with pytest.raises(GradscopeError, match="unknown parameter"):
        BatchedCandidates(m, 2, masks={"nope.weight": mask})
