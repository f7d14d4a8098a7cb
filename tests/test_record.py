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

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread per test


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
    assert p == {"stem": "direct", "block.conv1": "norm", "block.conv2": "residual", "gate": "none", "fc": "none"}


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
    assert p["conv1"] == "norm" and p["layer1.0.conv1"] == "norm"
    assert p["layer1.0.conv2"] == "residual" and p["layer2.0.downsample.0"] == "residual"
    assert p["fc"] == "none"
    assert sum(v != "none" for v in p.values()) == 20


def test_no_relu_model_errors_unless_all(tmp_path):
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    infos = find_layers(m, torch.randn(2, 4))
    with pytest.raises(GradscopeError, match="layers='all'"):
        select_layers(infos, "relu")
    assert [i.name for i in select_layers(infos, "all")] == ["0", "2"]
    with pytest.raises(GradscopeError, match="feeds relu"):
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


# ---------------------------------------------------------------------------- recorder v2
import warnings  # noqa: E402

import h5py  # noqa: E402

from gradscope import InternalError  # noqa: E402,F401
from gradscope.callbacks import TrainState, call_all  # noqa: E402
from gradscope.pruning import weight_mask, weight_param  # noqa: E402
from gradscope.record import PRESETS, RecorderWarning, weight_and_mask  # noqa: E402


def _mlp(seed=0, act=None):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), act or nn.ReLU(), nn.Linear(7, 3))


def _train(net, rec, steps, opt=None, x=None, hook=None):
    """A plain loop: forward, backward, rec.step(), optimizer step; returns the recorded grads."""
    opt = opt or torch.optim.SGD(net.parameters(), lr=0.1)
    seen = []
    for s in range(steps):
        xb = torch.randn(4, 5) if x is None else x
        loss = F.cross_entropy(net(xb), torch.randint(0, 3, (xb.shape[0],)))
        opt.zero_grad()
        loss.backward()
        seen.append([weight_param(m).grad.detach().clone() if weight_param(m).grad is not None else None
                     for m in net.modules() if isinstance(m, nn.Linear)])
        rec.step()
        opt.step()
        if hook is not None:
            hook(s)
    return seen


def test_weight_and_mask_is_an_alias_of_pruning_helpers():
    lin = nn.Linear(3, 2)
    assert weight_and_mask(lin)[0] is lin.weight and weight_and_mask(lin)[1] is None
    prune.l1_unstructured(lin, "weight", amount=0.5)
    w, m = weight_and_mask(lin)
    assert w is weight_param(lin) and torch.equal(m, weight_mask(lin)) and m.dtype == torch.bool


def test_every_k_records_every_kth_step_and_windows_count_optimizer_steps(tmp_path):
    net = _mlp()
    rec = GradientRecorder(net, tmp_path / "e.h5", window=4, every=3)
    seen = _train(net, rec, 10)
    rec.close()
    m = open_run(tmp_path / "e.h5").moments(layer="0")
    # steps 0..9 in windows of 4 optimizer steps; recorded steps 0, 3, 6, 9; a window's span is
    # its optimizer steps (recorded or not), `steps` how many it recorded
    assert list(m.window) == [0, 1, 2] and list(m.step_start) == [0, 4, 8] and list(m.step_end) == [3, 7, 9]
    assert list(m.steps) == [2, 1, 1]
    assert list(m["count"]) == [2 * 35, 35, 35]
    ref = sum(float((seen[s][0].double() ** 2).sum()) for s in (0, 3))
    assert m["sumsq"][0] == pytest.approx(ref, rel=1e-9)


def test_presets_fill_in_and_explicit_arguments_win(tmp_path):
    net = _mlp()
    eco = GradientRecorder(net, tmp_path / "a.h5", preset="economy")
    assert eco.every == PRESETS["economy"]["every"] == 10 and eco.views == ("survivors",)
    full = GradientRecorder(net, tmp_path / "b.h5", preset="full", sample_k=0)
    assert full.views == ("survivors", "relative") and full.population and full.sample_k == 0
    assert GradientRecorder(net, tmp_path / "c.h5", preset="economy", every=2).every == 2
    for r in (eco, full):
        r.close()
    with pytest.raises(GradscopeError, match="preset must be one of economy, default, full"):
        GradientRecorder(net, tmp_path / "d.h5", preset="cheap")
    with pytest.raises(GradscopeError, match="every"):
        GradientRecorder(net, tmp_path / "d.h5", every=0)
    with pytest.raises(GradscopeError, match="views"):
        GradientRecorder(net, tmp_path / "d.h5", views=("survivors", "narrow"))


def test_hooks_and_step_share_one_set_of_counters(tmp_path):
    """The trainer's state.step is read only at a (resumed) round start; step() counts itself."""
    net = _mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    rec = GradientRecorder(net, tmp_path / "c.h5", window=2)
    st = TrainState(model=net, optimizer=opt, steps_per_epoch=5, epochs=1)
    call_all([rec], "on_run_start", st)
    call_all([rec], "on_round_start", st)
    call_all([rec], "on_epoch_start", st)
    for _ in range(5):  # a third-party loop that never advances state.step
        opt.zero_grad()
        F.cross_entropy(net(torch.randn(2, 5)), torch.tensor([0, 1])).backward()
        call_all([rec], "on_after_backward", st)
        opt.step()
    call_all([rec], "on_epoch_end", st)
    call_all([rec], "on_round_end", st)
    call_all([rec], "on_run_end", st)
    m = open_run(tmp_path / "c.h5").moments(layer="0")
    assert list(m.window) == [0, 1, 2] and list(m.step_start) == [0, 2, 4] and list(m.step_end) == [1, 3, 4]


def test_resumed_round_continues_window_numbering(tmp_path):
    net = _mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    path = tmp_path / "r.h5"
    for start, stop, mode in ((0, 4, "x"), (2, 6, "a")):  # killed after step 4, resumed from the step-2 checkpoint
        rec = GradientRecorder(net, path, window=2, mode=mode)
        st = TrainState(model=net, optimizer=opt, steps_per_epoch=2, epochs=3, step=start, epoch=start // 2,
                        resumed=start > 0)
        call_all([rec], "on_round_start", st)
        for s in range(start, stop):
            opt.zero_grad()
            F.cross_entropy(net(torch.randn(2, 5)), torch.tensor([0, 1])).backward()
            call_all([rec], "on_after_backward", st)
            opt.step()
            st.step += 1
        rec.flush()
        rec._disc.remove()
    m = open_run(path).moments(layer="0")
    assert list(m.window) == [0, 1, 2] and list(m.step_start) == [0, 2, 4]


def test_frozen_layers_skipped_and_shared_weights_recorded_once(tmp_path):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.frozen, self.a, self.b = nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 5)
            self.b.weight = self.a.weight  # one Parameter, two modules
            self.frozen.requires_grad_(False)
            self.head = nn.Linear(5, 3)

        def forward(self, x):
            return self.head(F.relu(self.b(F.relu(self.a(F.relu(self.frozen(x)))))))

    net = M()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    rec = GradientRecorder(net, tmp_path / "f.h5", layers="all")
    seen = []
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(net(torch.randn(4, 5)), torch.randint(0, 3, (4,))).backward()
        seen.append(net.a.weight.grad.clone().double())
        rec.step()
        opt.step()
    rec.close()
    assert rec.skipped == {"frozen": "frozen: requires_grad=False", "b": "shares its weight with a"}
    run = open_run(tmp_path / "f.h5")
    assert dict(zip(run.layers().layer, run.layers().recorded)) == {"frozen": False, "a": True, "b": False,
                                                                    "head": True}
    m = run.moments()
    assert set(m.layer) == {"a", "head"} and not m[["min", "max"]].isna().any().any()
    a = m[m.layer == "a"].iloc[0]
    assert a["count"] == 3 * 25 and a["sumsq"] == pytest.approx(sum(float((g ** 2).sum()) for g in seen), rel=1e-9)


def test_gelu_model_never_raises_from_the_forward_and_errors_clearly_at_step(tmp_path):
    net = _mlp(act=nn.GELU())
    rec = GradientRecorder(net, tmp_path / "g.h5")
    loss = F.cross_entropy(net(torch.randn(4, 5)), torch.randint(0, 3, (4,)))  # runs normally
    loss.backward()
    with pytest.raises(GradscopeError, match="feed: gelu; pass layers='gelu'"):
        rec.step()
    with pytest.raises(GradscopeError, match="feed: gelu"):  # the same clear error again, not another one
        rec.step()
    assert not (tmp_path / "g.h5").exists()
    net(torch.randn(2, 5))  # hooks are gone: the model still runs
    with pytest.raises(GradscopeError, match="feed: gelu"):
        GradientRecorder(net, tmp_path / "g.h5", example_input=torch.randn(2, 5))
    assert not net._forward_hooks and not net._forward_pre_hooks and not net[0]._forward_hooks
    rec = GradientRecorder(net, tmp_path / "g.h5", layers="gelu")
    _train(net, rec, 2)
    rec.close()
    lay = open_run(tmp_path / "g.h5").layers()
    assert list(lay.recorded) == [True, False]


def test_step_before_any_forward(tmp_path):
    net = _mlp()
    F.cross_entropy(net(torch.randn(4, 5)), torch.randint(0, 3, (4,))).backward()
    rec = GradientRecorder(net, tmp_path / "n.h5")  # created after the forward it should have seen
    with pytest.raises(GradscopeError, match="before any observed forward pass"):
        rec.step()
    rec = GradientRecorder(net, tmp_path / "n.h5", layers="all")  # "all" needs no discovery
    rec.step()
    rec.close()
    assert len(open_run(tmp_path / "n.h5").moments()) == 2


def test_branch_first_used_after_recording_began_is_reported(tmp_path):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.aux, self.b = nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 3)
            self.use_aux = False

        def forward(self, x):
            h = F.relu(self.a(x))
            if self.use_aux:
                h = h + F.relu(self.aux(h))
            return self.b(h)

    net = Branchy()
    rec = GradientRecorder(net, tmp_path / "b.h5", window=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(net, rec, 2, x=torch.randn(4, 5))

    def switch(s):
        net.use_aux = True
    with pytest.warns(RecorderWarning, match="layer 'aux' ran for the first time after recording began"):
        _train(net, rec, 2, hook=switch)
    rec.close()
    assert set(open_run(tmp_path / "b.h5").moments().layer) == {"a"}


def test_amp_fp16_autocast_without_scaler_warns(tmp_path):
    net = _mlp()
    rec = GradientRecorder(net, tmp_path / "amp.h5")
    with torch.autocast("cpu", dtype=torch.float16):
        loss = F.cross_entropy(net(torch.randn(4, 5)), torch.randint(0, 3, (4,)))
    loss.backward()
    with pytest.warns(RecorderWarning, match="float16 autocast but step\\(\\) got no GradScaler"):
        rec.step()
    rec.close()
    net = _mlp()
    rec = GradientRecorder(net, tmp_path / "amp2.h5")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 needs no loss scaling: no warning
        loss = F.cross_entropy(net(torch.randn(4, 5)), torch.randint(0, 3, (4,)))
    loss.backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec.step()
    rec.close()


def test_gradient_accumulation_step_per_micro_batch_warns_once(tmp_path):
    net = _mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    rec = GradientRecorder(net, tmp_path / "acc.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a normal loop (one step() per optimizer step) is silent
        _train(net, rec, 3, opt=opt)
        fused = torch.optim.AdamW(net.parameters(), lr=0.01, fused=True)  # fused steps leave _version alone
        _train(net, rec, 3, opt=fused)
    with pytest.warns(RecorderWarning, match="twice with no optimizer step") as w:
        for _ in range(2):
            opt.zero_grad()
            for _micro in range(3):
                F.cross_entropy(net(torch.randn(2, 5)), torch.tensor([0, 1])).backward()
                rec.step()  # wrong: once per micro-batch
            opt.step()
    assert sum(issubclass(x.category, RecorderWarning) for x in w) == 1
    rec.close()


@pytest.mark.parametrize("how", ["slice", "copy", "assign"])
def test_mask_edit_through_data_is_detected(tmp_path, how):
    net = _mlp()
    prune.identity(net[0], "weight")
    rec = GradientRecorder(net, tmp_path / "m.h5", window=2)
    new = (torch.rand(7, 5, generator=torch.Generator().manual_seed(0)) > 0.5).float()

    def edit(s):
        if s == 1:  # after the first window's first step: mid-window, no round call
            mask = net[0].weight_mask
            if how == "slice":
                mask.data[:] = new
            elif how == "copy":
                mask.data.copy_(new)
            else:
                mask.data = new.clone()
    with pytest.warns(RecorderWarning, match="changed without the recorder seeing it"):
        _train(net, rec, 6, hook=edit)
    rec.close()
    m = open_run(tmp_path / "m.h5").moments(layer="0")
    kept = int(new.sum())
    assert list(m["count"]) == [35 + 35, 2 * kept, 2 * kept]  # window 0 was recorded before the edit was seen


def test_mask_changed_by_prune_api_mid_round_warns_and_is_used(tmp_path):
    net = _mlp()
    rec = GradientRecorder(net, tmp_path / "p.h5", window=1)

    def prune_now(s):
        if s == 0:
            prune.l1_unstructured(net[0], "weight", amount=0.4)
    with pytest.warns(RecorderWarning, match="changed during round 0 without start_round"):
        _train(net, rec, 3, hook=prune_now)
    rec.close()
    assert list(open_run(tmp_path / "p.h5").moments(layer="0")["count"]) == [35, 21, 21]


def test_start_round_metadata_and_implicit_end_round(tmp_path):
    net = _mlp()
    rec = GradientRecorder(net, tmp_path / "s.h5", window=100)
    rec.start_round(0, max_lr=0.1, prune_rate=0.3)
    _train(net, rec, 3)
    prune.l1_unstructured(net[0], "weight", amount=0.3)
    rec.start_round(1, max_lr=0.2)  # round 0 was never ended: its row is written now
    _train(net, rec, 2)
    rec.close()
    run = open_run(tmp_path / "s.h5")
    r = run.rounds()
    assert list(r["round"]) == [0, 1] and list(r.max_lr) == [0.1, 0.2]
    assert r.sparsity[0] == 0 and r.sparsity[1] == pytest.approx(10 / 35)  # of the pruned (masked) layers
    assert run.config["prune"]["prune_rate"] == 0.3
    assert list(run.moments(layer="0")["count"]) == [3 * 35, 2 * 25]
    with pytest.raises(GradscopeError, match="contradicts"):
        GradientRecorder(net, tmp_path / "t.h5", prune_rate=0.5, config={"prune": {"prune_rate": 0.2}})


def test_step_after_close_and_bad_arguments(tmp_path):
    net = _mlp()
    rec = GradientRecorder(net, tmp_path / "c.h5")
    _train(net, rec, 1)
    rec.close()
    rec.close()
    with pytest.raises(GradscopeError, match="after close"):
        rec.step()
    assert not net._forward_hooks and not net._forward_pre_hooks
    for kw, needle in (({"layers": "swish"}, "unknown activation"), ({"mode": "r"}, "mode must be"),
                       ({"relative_eps": 0}, "relative_eps"), ({"prune_rate": 1.5}, "prune_rate"),
                       ({"window": 0}, "window")):
        with pytest.raises(GradscopeError, match=needle):
            GradientRecorder(net, tmp_path / "d.h5", **kw)


# ---------------------------------------------------------------------------- views, population, file (store v2)
def _pruned_mlp(seed=0, amount=0.4):
    net = _mlp(seed)
    prune.random_unstructured(net[0], "weight", amount=amount)
    return net


def test_relative_view_equals_numpy_on_survivors(tmp_path):
    net = _pruned_mlp()
    keep = net[0].weight_mask.bool().numpy()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    rec = GradientRecorder(net, tmp_path / "rel.h5", window=3, views=("survivors", "relative"), relative_eps=1e-3,
                           bins=41, hist_min=1e-6, hist_max=10.0)
    rel = []
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(net(torch.randn(4, 5)), torch.randint(0, 3, (4,))).backward()
        w, g = net[0].weight_orig.detach().double().numpy(), net[0].weight_orig.grad.double().numpy()
        rel.append((np.abs(g) / (np.abs(w) + 1e-3))[keep])
        rec.step()
        opt.step()
    rec.close()
    run = open_run(tmp_path / "rel.h5")
    assert run.views() == ["survivors", "all", "relative"]
    m = run.moments(layer="0", view="relative").iloc[0]
    r = np.concatenate(rel)
    assert m["count"] == r.size == 3 * int(keep.sum()) and m["min"] >= 0
    assert m["sum"] == pytest.approx(r.sum(), rel=1e-5) and m["sumsq"] == pytest.approx((r ** 2).sum(), rel=1e-5)
    counts, edges, _ = run.histograms(layer="0", view="relative")
    assert counts[0].sum() + m["under"] + m["over"] == r.size
    assert counts[0][: len(counts[0]) // 2].sum() == 0  # |g|/(|w|+eps) is never negative
    surv = run.moments(layer="0").iloc[0]
    assert surv["count"] == m["count"] and surv["sum"] != m["sum"]


def test_all_view_derived_from_recorded_steps_with_every(tmp_path):
    net = _pruned_mlp()
    rec = GradientRecorder(net, tmp_path / "all.h5", window=6, every=2)
    _train(net, rec, 6)
    rec.close()
    run = open_run(tmp_path / "all.h5")
    s, a = run.moments(layer="0").iloc[0], run.moments(layer="0", view="all").iloc[0]
    assert s["steps"] == a["steps"] == 3 and a["count"] == 3 * 35 and s["count"] == 3 * 21
    assert a["sumsq"] == s["sumsq"] and a["min"] <= 0 <= a["max"]


def test_fixed_population_per_weight_sums_of_squares(tmp_path):
    net = _mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    rec = GradientRecorder(net, tmp_path / "pop.h5", population=True, every=2, layers="all")
    sq = {}
    masks = {}
    for k in range(2):
        rec.start_round(k)
        sq[k] = [np.zeros((7, 5)), np.zeros((3, 7))]
        for s in range(4):
            opt.zero_grad()
            F.cross_entropy(net(torch.randn(4, 5)), torch.randint(0, 3, (4,))).backward()
            if s % 2 == 0:
                for j, lay in enumerate((net[0], net[2])):
                    sq[k][j] += weight_param(lay).grad.double().numpy() ** 2
            rec.step()
            opt.step()
        masks[k] = net[0].weight_mask.bool().numpy() if hasattr(net[0], "weight_mask") else np.ones((7, 5), bool)
        rec.end_round()
        prune.l1_unstructured(net[0], "weight", amount=0.5)
    rec.close()
    pop = open_run(tmp_path / "pop.h5").population(reference_round=1)
    assert sorted(set(pop["round"])) == [0, 1] and (pop["steps"] == 2).all()
    keep = masks[1]  # survivors of round 1 (pruned once)
    for j in (0, 1):
        row = pop[(pop["round"] == j) & (pop["layer"] == "0")].iloc[0]
        assert row["count"] == int(keep.sum()) == 17
        assert row["rms"] == pytest.approx(np.sqrt(sq[j][0][keep].sum() / (keep.sum() * 2)), rel=1e-5)
    pooled = pop[(pop["round"] == 0) & (pop["layer"] == "pooled")].iloc[0]
    assert pooled["count"] == 17 + 21
    assert pooled["rms"] == pytest.approx(np.sqrt((sq[0][0][keep].sum() + sq[0][1].sum()) / (38 * 2)), rel=1e-5)


def test_layers_table_records_activation_and_rule(tmp_path):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.r, self.g, self.o = nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 3)

        def forward(self, x):
            return self.o(F.relu(self.r(x)) + F.gelu(self.g(x)))

    net = M()
    rec = GradientRecorder(net, tmp_path / "l.h5", layers=["relu", "gelu"], example_input=torch.randn(2, 5))
    assert [i.name for i in rec.recorded] == ["r", "g"]  # known at construction with example_input
    _train(net, rec, 1)
    rec.close()
    lay = open_run(tmp_path / "l.h5").layers().set_index("layer")
    assert list(lay.recorded) == [True, True, False]
    assert list(lay.activation) == ["relu", "gelu", ""] and list(lay.rule) == ["relu", "gelu", ""]
    assert list(lay.relu_fed) == [True, False, False] and list(lay.relu_path) == ["direct", "none", "none"]


def test_mode_existing_file_is_refused_replaced_or_continued(tmp_path):
    path = tmp_path / "m.h5"
    net = _mlp()
    rec = GradientRecorder(net, path, window=2)
    _train(net, rec, 4)
    rec.close()
    rec = GradientRecorder(net, path, window=2)  # default mode "x"
    F.cross_entropy(net(torch.randn(4, 5)), torch.randint(0, 3, (4,))).backward()
    with pytest.raises(GradscopeError, match="mode='a'"):
        rec.step()
    assert len(open_run(path).moments(layer="0")) == 2  # nothing lost
    rec = GradientRecorder(net, path, window=2, mode="w")
    _train(net, rec, 2)
    rec.close()
    assert len(open_run(path).moments(layer="0")) == 1


class _Branchy(nn.Module):
    """Two heads; head b runs only on even steps, so after zero_grad(set_to_none=True) its
    .grad is None on odd steps (a branch not run)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b = nn.Linear(5, 4), nn.Linear(5, 4)
        prune.random_unstructured(self.b, "weight", amount=0.5)
        self.use_b = True

    def forward(self, x):
        return self.a(x) + (self.b(x) if self.use_b else 0)


def test_layer_without_grad_on_some_steps_against_numpy(tmp_path):
    """Issue 22 item 8: steps where a layer's .grad is None are not its steps: its rows count
    only the steps it had a gradient in, so the derived 'all' view adds numel zeros per such
    step only, and population() divides by those steps (numpy reference, float64)."""
    net = _Branchy()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    rec = GradientRecorder(net, tmp_path / "b.h5", window=4, layers="all", population=True,
                           example_input=torch.randn(2, 5))
    keep_b = net.b.weight_mask.bool().numpy()
    sq = {"a": np.zeros((4, 5)), "b": np.zeros((4, 5))}
    had = {"a": 0, "b": 0}
    for s in range(8):
        net.use_b = s % 2 == 0
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(torch.randn(6, 5)), torch.randint(0, 4, (6,))).backward()
        for name in ("a", "b"):
            g = weight_param(getattr(net, name)).grad
            if g is not None:
                had[name] += 1
                sq[name] += g.double().numpy() ** 2
        rec.step()
        opt.step()
    rec.close()
    assert had == {"a": 8, "b": 4}
    run = open_run(tmp_path / "b.h5")
    s = run.moments(view="survivors").set_index(["window", "layer"])
    a = run.moments(view="all").set_index(["window", "layer"])
    for w in (0, 1):
        assert s.loc[(w, "a"), "steps"] == 4 and s.loc[(w, "b"), "steps"] == 2
        assert s.loc[(w, "b"), "count"] == 2 * int(keep_b.sum())
        assert a.loc[(w, "b"), "count"] == 2 * 20 and a.loc[(w, "a"), "count"] == 4 * 20
    tot = run.moments().groupby("layer")["sumsq"].sum()
    assert tot["b"] == pytest.approx(sq["b"][keep_b].sum(), rel=1e-9)
    pop = run.population(reference_round=0).set_index("layer")
    assert pop.loc["b", "steps"] == 4 and pop.loc["a", "steps"] == 8
    assert pop.loc["b", "rms"] == pytest.approx(np.sqrt(sq["b"][keep_b].sum() / (keep_b.sum() * 4)), rel=1e-5)
    assert pop.loc["a", "rms"] == pytest.approx(np.sqrt(sq["a"].sum() / (20 * 8)), rel=1e-5)
    pooled = (sq["a"].sum() + sq["b"][keep_b].sum()) / (20 * 8 + keep_b.sum() * 4)
    assert pop.loc["pooled", "rms"] == pytest.approx(np.sqrt(pooled), rel=1e-5)


def test_window_numbers_are_step_div_n_with_gaps(tmp_path):
    """Issue 22 item 8: with window=N a window is numbered step // N (docs/hdf5-format.md), so a
    window holding no recorded step leaves a gap: every=3, window=2 records steps 0, 3, 6 as
    windows 0, 1, 3, whose spans (every optimizer step, recorded or not) start at 0, 2, 6."""
    net = _mlp()
    rec = GradientRecorder(net, tmp_path / "g.h5", window=2, every=3)
    _train(net, rec, 8)
    rec.close()
    m = open_run(tmp_path / "g.h5").moments(layer="0")
    assert list(m.window) == [0, 1, 3] and list(m.step_start) == [0, 2, 6] and (m.steps == 1).all()


def test_epoch_windows_are_epoch_numbers_uninterrupted_and_resumed(tmp_path):
    """One window per epoch is window = epoch, also when an epoch records no step (every=10,
    4-step epochs): an uninterrupted run and one resumed at epoch 2 give the same keys."""
    keys = []
    for resume in (False, True):
        net = _mlp()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        path = tmp_path / f"e{int(resume)}.h5"
        spans = [(0, 3, "x")] if not resume else [(0, 2, "x"), (2, 3, "a")]
        for e0, e1, mode in spans:
            rec = GradientRecorder(net, path, preset="economy", mode=mode, example_input=torch.randn(2, 5))
            st = TrainState(model=net, optimizer=opt, steps_per_epoch=4, epochs=3, step=4 * e0, epoch=e0,
                            resumed=e0 > 0)
            call_all([rec], "on_round_start", st)
            for e in range(e0, e1):
                st.epoch = e
                call_all([rec], "on_epoch_start", st)
                for _ in range(4):
                    opt.zero_grad()
                    F.cross_entropy(net(torch.randn(2, 5)), torch.tensor([0, 1])).backward()
                    call_all([rec], "on_after_backward", st)
                    opt.step()
                    st.step += 1
                call_all([rec], "on_epoch_end", st)
            if e1 == 3:
                call_all([rec], "on_round_end", st)
            rec.close() if e1 == 3 else rec._disc.remove()
        m = open_run(path).moments(layer="0")
        keys.append(list(zip(m["round"], m["window"], m["step_start"])))
    assert keys[0] == keys[1] == [(0, 0, 0), (0, 2, 8)]  # epoch 2's span starts at its first step


def test_huge_gradients_overflowing_population_sums_are_reported(tmp_path, capsys):
    """Issue 22 item 8: gradients of ~1e20 overflow the float32 population sums (+inf) while
    the float64 moments stay finite: the recorder warns, and `repair --check` no longer says OK."""
    from gradscope.cli import main

    net = _mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    path = tmp_path / "huge.h5"
    with pytest.warns(RecorderWarning) as w:
        rec = GradientRecorder(net, path, population=True, layers="all", example_input=torch.randn(2, 5))
        for _ in range(2):
            opt.zero_grad()
            (F.cross_entropy(net(torch.randn(4, 5)), torch.randint(0, 3, (4,))) * 1e21).backward()
            rec.step()
            opt.step()
        rec.close()
    msgs = " | ".join(str(x.message) for x in w)
    assert "|g| up to" in msgs and "overflowed float32" in msgs
    run = open_run(path)
    assert np.isfinite(run.moments()["sumsq"]).all()
    assert np.isinf(run.population()["rms"]).any()
    assert main(["repair", "--check", str(path)]) == 0
    out = capsys.readouterr().out
    assert ": OK" not in out and "warning: the fixed-population sums of g^2 of round 0 overflowed" in out
    assert "warning: gradients with |g| up to" in out


def test_nonfinite_gradients_warn(tmp_path):
    net = _mlp()
    rec = GradientRecorder(net, tmp_path / "nf.h5", layers="all", example_input=torch.randn(2, 5))
    F.cross_entropy(net(torch.randn(4, 5)), torch.randint(0, 3, (4,))).backward()
    net[0].weight.grad[0, 0] = float("nan")
    rec.step()
    with pytest.warns(RecorderWarning, match="1 non-finite gradient values"):
        rec.close()
    assert open_run(tmp_path / "nf.h5").verify()["warnings"][0].startswith("1 non-finite gradient values")
