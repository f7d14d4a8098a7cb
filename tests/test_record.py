"""GradientRecorder: ReLU detection, exactness against numpy, masks, AMP, windows."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils import prune

from gradscope import GradscopeError
from gradscope.rounds import RoundInfo
from gradscope.record import Binner, GradientRecorder, find_layers, linear_edges, log_edges, select_layers
from gradscope.store import open_run


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return F.relu(out)


class Net(nn.Module):
    """Direct ReLU, BN + in-place ReLU, residual add, a sigmoid-fed conv, a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.block = Block(6)
        self.gate = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.block(x)
        x = x * torch.sigmoid(self.gate(x))
        return self.fc(x.mean((2, 3)))


def _paths(model, x):
    return {i.name: i.relu_path for i in find_layers(model, x)}


def test_relu_detection_paths_and_sigmoid():
    p = _paths(Net(), torch.randn(2, 3, 8, 8))
    assert p == {"stem": "direct", "block.conv1": "bn", "block.conv2": "residual", "gate": "none", "fc": "none"}


def test_relu_detection_functional_and_inplace_module():
    class Fn(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(F.relu(self.a(x)))

    class Inplace(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.r, self.b = nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.r(self.a(x)))

    assert _paths(Fn(), torch.randn(3, 4)) == {"a": "direct", "b": "none"}
    assert _paths(Inplace(), torch.randn(3, 4)) == {"a": "direct", "b": "none"}


def test_relu_detection_resnet18_leaves_bn_stats_alone():
    m = torchvision.models.resnet18(weights=None, num_classes=10)
    before = m.bn1.running_mean.clone()
    p = _paths(m, torch.randn(1, 3, 32, 32))
    assert torch.equal(before, m.bn1.running_mean) and m.training
    assert p["conv1"] == "bn" and p["layer1.0.conv1"] == "bn"
    assert p["layer1.0.conv2"] == "residual" and p["layer2.0.downsample.0"] == "residual"
    assert p["fc"] == "none"
    assert sum(v != "none" for v in p.values()) == 20


def test_no_relu_model_errors_unless_all(tmp_path):
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    infos = find_layers(m, torch.randn(2, 4))
    with pytest.raises(GradscopeError, match="layers='all'"):
        select_layers(infos, "relu")
    assert [i.name for i in select_layers(infos, "all")] == ["0", "2"]
    with pytest.raises(GradscopeError, match="ReLU"):
        GradientRecorder(m, tmp_path / "r.h5", example_input=torch.randn(2, 4))
    assert not (tmp_path / "r.h5").exists()


def test_include_exclude():
    infos = find_layers(Net(), torch.randn(1, 3, 8, 8))
    assert [i.name for i in select_layers(infos, "relu", include="block")] == ["block.conv1", "block.conv2"]
    assert [i.name for i in select_layers(infos, "all", exclude=r"^(stem|fc)$")] == ["block.conv1", "block.conv2", "gate"]
    with pytest.raises(GradscopeError, match="leave no layer"):
        select_layers(infos, "relu", include="nomatch")


@pytest.mark.parametrize("kind", ["log", "linear"])
def test_binner_matches_numpy_including_edges_and_nonfinite(kind):
    edges = log_edges(21, 1e-4, 1.0) if kind == "log" else linear_edges(10, 0.5)
    rng = np.random.default_rng(0)
    thr = edges.astype(np.float32)
    x = np.concatenate([rng.standard_normal(5000) * 10.0 ** rng.uniform(-6, 1, 5000), thr,
                        np.nextafter(thr, -np.inf), np.nextafter(thr, np.inf), [0.0, -0.0, 5e3, -5e3]]).astype(np.float32)
    ref = np.searchsorted(edges, x.astype(np.float64), side="right")  # number of edges <= x
    x = np.concatenate([x, np.array([np.nan, np.inf, -np.inf], dtype=np.float32)])
    ref = np.concatenate([ref, [len(edges) + 1] * 3])  # non-finite slot
    k = Binner(edges, "cpu")(torch.from_numpy(x)).numpy()
    assert np.array_equal(k, ref)
    inner = (ref >= 1) & (ref <= len(edges) - 1) & (x < edges[-1])
    h = np.bincount(k[inner] - 1, minlength=len(edges) - 1)
    assert np.array_equal(h, np.histogram(x[inner].astype(np.float64), edges)[0])


def _pruned_net(seed=0):
    torch.manual_seed(seed)
    net = Net()
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(net.block.conv1.weight.shape, generator=g) > 0.4).float()
    prune.custom_from_mask(net.block.conv1, "weight", mask)
    return net, mask.bool()


def _reference(grads, mask, edges):
    g = np.concatenate([x[mask.numpy().reshape(x.shape)].ravel() if mask is not None else x.ravel() for x in grads])
    g = g.astype(np.float64)
    return {"count": g.size, "sum": g.sum(), "sumsq": (g * g).sum(), "sumabs": np.abs(g).sum(),
            "sum3": (g ** 3).sum(), "sum4": (g ** 4).sum(), "min": g.min(), "max": g.max(),
            "under": int((g < edges[0]).sum()), "over": int((g >= edges[-1]).sum()),
            "hist": np.histogram(g[(g >= edges[0]) & (g < edges[-1])], edges)[0]}


@pytest.mark.parametrize("hist_range", [None, 0.05])
def test_recorder_equals_numpy_and_ignores_pruned(tmp_path, hist_range):
    net, mask = _pruned_net()
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    path = tmp_path / "run.h5"
    rec = GradientRecorder(net, path, window=2, bins=41, hist_range=hist_range, hist_min=1e-6, hist_max=1.0,
                           layers="all", sample_k=16, seed=3)
    torch.manual_seed(5)
    names = ["stem", "block.conv1", "block.conv2", "gate", "fc"]
    seen = {n: [] for n in names}
    for step in range(5):
        x = torch.randn(4, 3, 8, 8).to(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(x), torch.randint(0, 4, (4,)))
        opt.zero_grad()
        loss.backward()
        w = net.block.conv1.weight_orig
        assert torch.all(w.grad[~mask] == 0)
        w.grad[~mask] = 1e30  # only a pruned position could produce this
        for n in names:
            mod = net.get_submodule(n)
            seen[n].append((mod.weight_orig if hasattr(mod, "weight_orig") else mod.weight).grad.detach().clone().numpy())
        rec.step()
        opt.step()
    rec.close()
    with open_run(path) as run:
        mom = run.moments()
        counts, edges, idx = run.histograms()
        samples, sidx = run.samples(layer="block.conv1")
    assert sorted(set(mom["window"])) == [0, 1, 2]
    assert mom.groupby("window")["step_start"].first().tolist() == [0, 2, 4]
    assert mom.groupby("window")["step_end"].first().tolist() == [1, 3, 4]
    assert (idx[["window", "layer"]].values == mom[["window", "layer"]].values).all()
    for i, row in mom.iterrows():
        steps = range(row.step_start, row.step_end + 1)
        ref = _reference([seen[row.layer][s] for s in steps], mask if row.layer == "block.conv1" else None, edges)
        assert row["count"] == ref["count"] and row.under == ref["under"] and row.over == ref["over"]
        assert row.nonfinite == 0
        for c in ["sum", "sumsq", "sumabs", "sum3", "sum4"]:
            assert row[c] == pytest.approx(ref[c], rel=1e-9, abs=1e-300)
        assert row["min"] == ref["min"] and row["max"] == ref["max"]
        assert np.array_equal(counts[i], ref["hist"])
    conv1 = mom[mom.layer == "block.conv1"]
    assert (conv1["max"] < 1e29).all() and (conv1["count"] == int(mask.sum()) * np.array([2, 2, 1])).all()
    # samples: values that really occurred, never a pruned one
    allvals = np.concatenate([s[mask.numpy()].ravel() for s in seen["block.conv1"]])
    got = samples[~np.isnan(samples)]
    assert got.size == 16 * 3 and np.isin(got, allvals.astype(np.float32)).all()


def test_amp_scale_removed_and_nonfinite_counted(tmp_path):
    class FakeScaler:
        _per_optimizer_states = {}
        _scale = torch.tensor(1024.0)

        def is_enabled(self):
            return True

    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
    x = torch.randn(8, 5)
    rec = GradientRecorder(net, tmp_path / "a.h5", example_input=x)
    F.cross_entropy(net(x), torch.randint(0, 2, (8,))).backward()
    true = net[0].weight.grad.clone().double()
    net[0].weight.grad.mul_(1024.0)
    rec.step(FakeScaler())
    net[0].weight.grad[0, 0] = math.nan
    net[0].weight.grad[0, 1] = math.inf
    rec.step(None)
    rec.close()
    m = open_run(tmp_path / "a.h5").moments()
    assert list(m.layer) == ["0"] and m.nonfinite[0] == 2 and m["count"][0] == 2 * 35 - 2
    # first step alone: unscaled values exactly
    rec2 = GradientRecorder(net, tmp_path / "b.h5", example_input=x)
    net[0].weight.grad = (true * 1024.0).float()
    rec2.step(FakeScaler())
    rec2.close()
    m2 = open_run(tmp_path / "b.h5").moments()
    assert m2["sumsq"][0] == pytest.approx(float((true ** 2).sum()), rel=1e-6)
    assert m2["max"][0] == pytest.approx(float(true.max()), rel=1e-6)


def test_callback_protocol_rounds_epochs_and_lazy_discovery(tmp_path):
    from gradscope.callbacks import TrainState, call_all

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    rec = GradientRecorder(net, tmp_path / "cb.h5", config={"train": {"epochs": 2}})
    st = TrainState(model=net, optimizer=opt, steps_per_epoch=3, epochs=2)
    call_all([rec], "on_run_start", st)
    for r in range(2):
        if r == 1:
            prune.l1_unstructured(net[0], "weight", amount=0.5)
        st.round, st.step = r, 0
        st.info = RoundInfo.for_steps(r, 6, sparsity=18 / (36 + 192) * r, target_sparsity=0.5 * r)
        st.schedule = {"max_lr": 0.05 + r, "name": "x"}
        call_all([rec], "on_round_start", st)
        for e in range(2):
            st.epoch = e
            call_all([rec], "on_epoch_start", st)
            for b in range(3):
                opt.zero_grad()
                F.cross_entropy(net(torch.randn(2, 1, 6, 6)), torch.tensor([0, 1])).backward()
                call_all([rec], "on_after_backward", st)
                opt.step()
                st.step += 1
            st.metrics = {"train_loss": 1.0 + e, "val_acc": 0.5, "test_acc": 0.4, "lr": 0.01}
            call_all([rec], "on_epoch_end", st)
        call_all([rec], "on_round_end", st)
    call_all([rec], "on_run_end", st)
    run = open_run(tmp_path / "cb.h5")
    assert run.config == {"train": {"epochs": 2}}
    assert list(run.layers().relu_fed) == [True, False]
    m = run.moments()
    assert len(m) == 4 and list(m.window) == [0, 1, 0, 1] and list(m.epoch) == [0, 1, 0, 1]
    assert list(m.step_start) == [0, 3, 0, 3] and list(m["count"][:2]) == [108, 108]
    assert list(m["count"][2:]) == [54, 54]  # half pruned in round 1
    rounds = run.rounds()
    assert list(rounds["round"]) == [0, 1] and list(rounds.max_lr) == [0.05, 1.05]
    assert rounds.sparsity[1] == pytest.approx(18 / (36 + 192))
    lr = run.layer_rounds()
    assert lr[(lr["round"] == 1) & (lr.layer == "0")].kept.item() == 18
    assert len(run.epochs()) == 4 and list(run.epochs().train_loss) == [1.0, 2.0, 1.0, 2.0]
    s = run.round_summary()
    assert s.std_ratio[0] == 1.0 and len(s) == 2
