"""The probes (gradscope.probes): each against an independent computation with a known answer,
their purity (a probe leaves model, masks, BatchNorm statistics, RNGs and optimizer as found;
pruned weights stay exactly zero), bad input, and a run with probes (bit-identical training,
the stored records, resume)."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune

from gradscope import GradscopeError
from gradscope.probes import PROBES, measure, parse_probes
from gradscope.probes import bn_norm, lr_range, noise_scale, sharpness
from probe_nets import _one_thread, batches, tiny_bn_mlp  # noqa: E402,F401 - _one_thread is an autouse fixture


# ----------------------------------------------------------------------------- sharpness
def _exact_loss(theta, m, bs):
    """The mean over batches of cross-entropy, written out by hand (independent of the probe)."""
    w1, b1, g, beta, w2, b2 = torch.split(theta, [12, 4, 4, 4, 8, 2])
    w1, w2 = w1.view(4, 3), w2.view(2, 4)
    total = 0
    for x, y in bs:
        h = x @ (w1 * m).T + b1
        h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5) * g + beta
        total = total + F.cross_entropy(torch.relu(h) @ w2.T + b2, y)
    return total / len(bs)


def test_sharpness_matches_eigvalsh_of_the_exact_masked_hessian():
    model, masks = tiny_bn_mlp()
    bs = batches(2, 16)
    p = dict(model.named_parameters())
    theta = torch.cat([p["0.weight_orig"].reshape(-1), p["0.bias"], p["1.weight"], p["1.bias"],
                       p["3.weight"].reshape(-1), p["3.bias"]]).detach()
    mf = masks["0"].double()
    H = torch.autograd.functional.hessian(lambda t: _exact_loss(t, mf, bs), theta).numpy()
    keep = np.concatenate([masks["0"].reshape(-1).numpy(), np.ones(len(theta) - 12, bool)])
    want = np.linalg.eigvalsh(H[np.ix_(keep, keep)]).max()
    got = sharpness.probe(model, masks, bs, {"batches": 2, "tol": 1e-10, "momentum": 0.9, "max_lr": 0.1})
    assert got["lambda_max"] == pytest.approx(want, rel=1e-6)
    assert got["stable_lr"] == pytest.approx(2 * 1.9 / want, rel=1e-6)
    assert got["limit_at_max_lr"] == pytest.approx(2 * 1.9 / 0.1)
    # the first layer feeds the BatchNorm: its own block, times its squared (masked) norm
    k1 = masks["0"].reshape(-1).numpy()
    block = H[:12, :12][np.ix_(k1, k1)]
    lam_b = np.linalg.eigvalsh(block).max()
    nsq = float(((p["0.weight_orig"].detach() * mf) ** 2).sum())
    b = got["blocks"]["0"]
    assert b["lambda_max"] == pytest.approx(lam_b, rel=1e-4)
    assert b["lambda_norm_sq"] == pytest.approx(lam_b * nsq, rel=1e-4)
    # with the pruned weights as variables (at zero) the top eigenvalue differs: the projection matters
    t0 = theta.clone()
    t0[:12] *= mf.reshape(-1)
    H_all = torch.autograd.functional.hessian(lambda t: _exact_loss(t, torch.ones_like(mf), bs), t0).numpy()
    assert abs(np.linalg.eigvalsh(H_all).max() - want) > 1e-3 * want


# ----------------------------------------------------------------------------- lr-range
class Quadratic(nn.Module):
    """L(w) = lam/2 * w^2 through a 1x1 linear layer: plain GD is stable for lr < 2/lam."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 1, bias=False).double()
        nn.init.ones_(self.lin.weight)

    def forward(self, x):
        return self.lin(x)


def test_lr_range_divergence_point_on_a_quadratic():
    lam, steps = 10.0, 100
    cfg = {"lr_min": 1e-4, "lr_max": 10.0, "steps": steps, "momentum": 0.0, "weight_decay": 0.0,
           "loss": lambda out, y: 0.5 * lam * (out ** 2).mean()}
    data = [(torch.ones(4, 1, dtype=torch.float64), torch.zeros(4))]
    got = lr_range.probe(Quadratic(), None, data, cfg)
    # independent: the GD recurrence w <- (1 - lr lam) w, fastai's debiased EMA, 4x the minimum
    lrs = 1e-4 * (1e5) ** (np.arange(steps) / (steps - 1))
    w, avg, best, want = 1.0, 0.0, np.inf, None
    for i, lr in enumerate(lrs):
        loss = 0.5 * lam * w * w
        avg = 0.98 * avg + 0.02 * loss
        sm = avg / (1 - 0.98 ** (i + 1))
        if i > 0 and sm > 4 * best:
            want = lr
            break
        best = min(best, sm)
        w -= lr * lam * w
    assert got["divergence_lr"] == pytest.approx(want, rel=1e-9)
    # the smoothed rule lags the known stable limit 2/lam (the EMA remembers the early loss) ...
    assert 2 / lam < got["divergence_lr"] == pytest.approx(7.78 * 2 / lam, rel=0.01)
    # ... while the raw loss turns at the first LR above it
    ratio = lrs[1] / lrs[0]
    assert 2 / lam < got["instability_lr"] <= 2 / lam * ratio
    assert len(got["lr"]) == len(got["loss"]) == len(got["smoothed"]) == got["steps_run"]


def test_lr_range_rules_as_fastai_and_torch_lr_finder_compute_them():
    lrs = np.geomspace(1e-4, 1, 60)
    x = np.log10(lrs)
    losses = 2 - np.tanh(2 * (x + 2)) + np.where(x > -0.5, 20 * (x + 0.5) ** 2, 0)  # steepest at 1e-2, min near 10^-0.45
    assert lr_range.steep(lrs, losses) == pytest.approx(lrs[int(np.argmin(np.diff(losses) / np.diff(np.log(lrs))))])
    assert 0.007 < lr_range.steep(lrs, losses) < 0.015
    assert lr_range.minimum(lrs, losses) == pytest.approx(lrs[int(np.argmin(losses))] / 10)
    v = lr_range.valley(lrs, losses)  # 2/3 down the longest decreasing run, which starts at the first point
    run_end = int(np.argmin(losses))
    assert v == pytest.approx(lrs[run_end // 3 + run_end // 6], rel=1e-12) or lrs[0] < v < lrs[run_end]
    assert lr_range.tlf_steepest(lrs, losses) == pytest.approx(lrs[10 + int(np.argmin(np.gradient(losses[10:-5])))])


# ----------------------------------------------------------------------------- noise scale
class LinearScore(nn.Module):
    """loss = -mean(w . x): each example's gradient is -x, so G = -E[x] and Sigma = Cov[x]."""

    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, 1, bias=False).double()

    def forward(self, x):
        return self.lin(x)


def test_noise_scale_on_known_sigma_and_gradient():
    d, size, n = 5, 16, 600
    G = np.array([1.0, 0.5, 0.0, -0.3, 0.2])
    sd = np.array([1.0, 2.0, 0.5, 1.5, 3.0])
    rng = np.random.default_rng(0)
    data = [(torch.tensor(G + sd * rng.standard_normal((size, d))), torch.zeros(size)) for _ in range(n)]
    mask = torch.tensor([[True, True, True, True, False]])  # the last coordinate is pruned
    cfg = {"batches": n, "loss": lambda out, y: -out.mean()}
    got = noise_scale.probe(LinearScore(d), {"lin": mask}, data, cfg)
    keep = mask.numpy().ravel()
    g2, tr = float((G[keep] ** 2).sum()), float((sd[keep] ** 2).sum())
    assert got["grad_sq"] == pytest.approx(g2, rel=0.1)
    assert got["trace_sigma"] == pytest.approx(tr, rel=0.1)
    assert got["b_simple"] == pytest.approx(tr / g2, rel=0.15)
    assert got["batch_size"] == size and got["lr_factor"] == pytest.approx(1 / (1 + got["b_simple"] / size))


# ----------------------------------------------------------------------------- BN norm ratio
def test_bn_norm_ratio_computed_directly():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6),
                          nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 3))
    masks = {}
    for name in ("0", "3", "7"):
        w = model.get_submodule(name).weight.detach()
        masks[name] = w.abs() > w.abs().flatten().kthvalue(int(0.4 * w.numel())).values  # keep the largest 60 %
        prune.custom_from_mask(model.get_submodule(name), "weight", masks[name])
    data = [(torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))]
    got = bn_norm.probe(model, masks, data, {"max_lr": 0.1})
    assert set(got["layers"]) == {"0", "3"}  # the linear layer feeds no BatchNorm
    num = den = 0.0
    for name in ("0", "3"):
        w = model.get_submodule(name).weight_orig.detach().double().numpy()
        m = masks[name].numpy()
        r = (w[m] ** 2).sum() / (w ** 2).sum()
        assert got["layers"][name]["ratio"] == pytest.approx(r, rel=1e-12)
        assert r > m.mean()  # magnitude pruning keeps the large weights
        num, den = num + r * w.size, den + w.size
    assert got["ratio"] == pytest.approx(num / den, rel=1e-12)
    assert got["implied_max_lr"] == pytest.approx(0.1 * num / den)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_gives_one_clear_message():
    plain = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    with pytest.raises(GradscopeError, match="bn-norm needs layers followed by BatchNorm; Sequential has none"):
        bn_norm.probe(plain, None, batches(1, 4), {})
    model, masks = tiny_bn_mlp()
    with pytest.raises(GradscopeError, match=r"layer '0' is 100 % pruned"):
        sharpness.probe(model, {"0": torch.zeros(4, 3, dtype=torch.bool)}, batches(1, 8), {})
    cfg = {"lr_min": 1e3, "lr_max": 1e6, "steps": 20, "momentum": 0.0, "loss": lambda o, y: 0.5 * 10 * (o ** 2).mean()}
    with pytest.raises(GradscopeError, match="diverged at the first step"):
        lr_range.probe(Quadratic(), None, [(torch.ones(2, 1, dtype=torch.float64), torch.zeros(2))], cfg)
    with pytest.raises(GradscopeError, match="unknown probe 'hessian'"):
        parse_probes("bn-norm,hessian")
    assert parse_probes("cheap, lr-range,bn-norm") == ["bn-norm", "norm-drop", "noise-scale", "lr-range"]


# ----------------------------------------------------------------------------- purity
def _state(model, opt):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
            {m: m.training for m in model.modules()},
            torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate(),
            json.dumps({k: v for k, v in opt.state_dict().items() if k != "state"}),
            {k: {kk: vv.clone() for kk, vv in s.items()} for k, s in opt.state_dict()["state"].items()})


def _same(a, b):
    for x, y in zip(a, b):
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                _same([x[k]], [y[k]])
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y)
        elif isinstance(x, np.ndarray):
            assert np.array_equal(x, y)
        else:
            assert x == y


def test_every_probe_leaves_model_bn_stats_rngs_and_optimizer_as_found():
    model, masks = tiny_bn_mlp(torch.float32, prune_mask=True)
    bs = batches(4, 16, dtype=torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = F.cross_entropy(model(bs[0][0]), bs[0][1])
    loss.backward()
    opt.step()  # momentum buffers, gradients and moved BN statistics to keep
    model.eval()  # a probe runs in train mode and must put eval back
    before = _state(model, opt)
    weight_obj = model[0].weight
    cfg = {"steps": 12, "batches": 2, "max_lr": 0.1, "norm_drop": 0.2, "step_pruned": 0.2}
    for name in PROBES.names():
        measure(name, model, masks, lambda s: bs, cfg, repeats=2, seed=3)
    _same(before, _state(model, opt))
    assert model[0].weight is weight_obj  # prune's plain weight attribute is the one it was


def test_pruned_weights_stay_exactly_zero_during_every_probe():
    for torch_pruned in (True, False):  # prune's weight_orig * weight_mask, and external masks
        model, masks = tiny_bn_mlp(torch.float32, prune_mask=torch_pruned)
        seen = []

        def check(mod, inp, out):
            seen.append(bool((mod.weight[~masks["0"]] == 0).all()))
        h = model[0].register_forward_hook(check)
        bs = batches(4, 16, dtype=torch.float32)
        for name in ("lr-range", "sharpness", "noise-scale"):
            PROBES.get(name).fn(model, masks, bs, {"steps": 15, "batches": 2, "lr_max": 100.0, "weight_decay": 0.1})
        h.remove()
        assert len(seen) > 30 and all(seen)


# ----------------------------------------------------------------------------- in a run
def _cfg(out, cache, **probe):
    from gradscope.config import RunConfig
    c = RunConfig()
    c.data.dataset, c.data.train_subset, c.data.batch_size, c.data.cache_dir = "digits", 320, 64, str(cache)
    c.model.model, c.train.epochs, c.train.threads, c.train.progress = "small_cnn", 1, 1, False
    c.prune.rounds, c.schedule.schedule, c.schedule.max_lr = 2, "lth", 0.05
    for k, v in probe.items():
        setattr(c.probe, k, v)
    c.out = str(out)
    return c


def _trained(out):
    from gradscope.train.checkpoint import load_torch
    rows = json.loads((out / "rounds.json").read_text())
    for r in rows:
        r.pop("time_s")
    rf = [load_torch(out / f"round_{k}.pt", what="round file") for k in range(2)]
    ck = load_torch(out / "checkpoint.pt", what="checkpoint")
    return rows, rf, ck["model"]


def test_a_run_with_probes_trains_bit_identically_and_stores_checked_records(tmp_path, capsys):
    """profile (recorder on) with and without probes: same training, same recorded gradients."""
    import h5py
    from gradscope.cli import main
    from gradscope.store.probes import read_probes
    from gradscope.train import PruningRun
    logs = []
    plain = _cfg(tmp_path / "plain", tmp_path / "c")
    probed = _cfg(tmp_path / "probed", tmp_path / "c", probes="cheap,lr-range", probes_at="both",
                  lr_range_steps=12, probe_repeats=2)
    plain.record.record = probed.record.record = True
    PruningRun(plain, log=lambda s: None).run()
    PruningRun(probed, log=logs.append).run()
    (rows_a, rf_a, m_a), (rows_b, rf_b, m_b) = _trained(tmp_path / "plain"), _trained(tmp_path / "probed")
    assert rows_a == rows_b
    for a, b in zip(rf_a, rf_b):
        assert [{k: v for k, v in x.items() if k != "time_s"} for x in a["epochs"]] == \
            [{k: v for k, v in y.items() if k != "time_s"} for y in b["epochs"]]
        assert all(torch.equal(a["masks"][k], b["masks"][k]) for k in a["masks"])
    assert m_a.keys() == m_b.keys() and all(torch.equal(m_a[k], m_b[k]) for k in m_a)
    with h5py.File(tmp_path / "plain" / "run.h5") as fa, h5py.File(tmp_path / "probed" / "run.h5") as fb:
        for name in ("hist", "moments", "layer_rounds"):
            assert fa[name].shape[0] > 0 and np.array_equal(fa[name][()], fb[name][()]), name
    recs = read_probes(tmp_path / "probed")
    keys = {(r["round"], r["at"], r["probe"]) for r in recs}
    assert keys == {(k, at, p) for k in (0, 1) for at in ("start", "epoch1")
                    for p in ("bn-norm", "norm-drop", "noise-scale", "lr-range")}
    by = {(r["round"], r["at"], r["probe"]): r for r in recs}
    assert by[(0, "start", "bn-norm")]["values"]["value"] == [1.0]  # nothing pruned yet
    assert 0 < by[(1, "start", "bn-norm")]["values"]["value"][0] < 1
    assert by[(0, "start", "norm-drop")]["values"]["value"] == [None] and by[(1, "start", "norm-drop")]["values"]["value"][0] > 0
    ns = by[(1, "start", "noise-scale")]
    assert ns["repeats"] == 2 and len(set(ns["seeds"])) == 2 and ns["cv"]["value"] is not None
    assert ns["fb_equiv"] > 0 and ns["share_of_oracle_round"] > 0
    assert any("probe lr-range round 1 (start): suggested LR (fastai valley)" in l for l in logs)
    # fit's per-round table shows the probes beside the narrowing
    assert main(["fit", str(tmp_path / "probed"), "--no-store", "--bootstrap", "0", "--models", "normal"]) == 0
    out = capsys.readouterr().out
    assert "bn_norm_r" in out and "lr_valley" in out and "probe columns from RUN/probes.json" in out
    # a second start resumes a finished run: nothing measured again, the file unchanged
    before = (tmp_path / "probed" / "probes.json").read_bytes()
    PruningRun(probed, log=lambda s: None).run()
    assert (tmp_path / "probed" / "probes.json").read_bytes() == before
    # an edited file is refused
    p = tmp_path / "probed" / "probes.json"
    p.write_text(p.read_text().replace('"round": 1', '"round": 2', 1))
    with pytest.raises(GradscopeError, match="fails its checksum"):
        read_probes(tmp_path / "probed")


def test_probe_options_are_checked_before_anything_is_written(tmp_path):
    from gradscope.cli import main
    from gradscope.train import PruningRun
    from gradscope.train.oracle import OracleRounds
    with pytest.raises(GradscopeError, match="only --probes-at start is measured in `gradscope oracle`"):
        PruningRun(_cfg(tmp_path / "o", tmp_path / "c", probes="bn-norm", probes_at="epoch1"),
                   rounds=OracleRounds([0.01, 0.02, 0.04], seeds=1))
    c = _cfg(tmp_path / "lenet", tmp_path / "c", probes="all")
    c.model.model = "lenet_300_100"
    with pytest.raises(GradscopeError, match="--probes bn-norm needs layers followed by BatchNorm; the model LeNet300100"):
        PruningRun(c, log=lambda s: None).run()
    assert not (tmp_path / "lenet" / "round_0.pt").exists()  # refused before anything trained
    assert main(["prune", "--probes", "bn-norm,hessian", "--out", str(tmp_path / "x")]) == 2
    with pytest.raises(SystemExit) as e:
        main(["prune", "--probes-at", "later", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- calibrate --predictor
def _fake_run(d, values: dict, probe: str, key: str = "value", p=0.2, max_lr0=0.05):
    """A run directory with config.json, rounds.json and probes.json holding ``values`` per round."""
    from gradscope.store.probes import write_probes
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"prune": {"prune_rate": p}, "schedule": {"lag": 1}}))
    (d / "rounds.json").write_text(json.dumps([{"round": 0, "max_lr": max_lr0}]))
    recs = [{"round": k, "at": "start", "probe": probe, "sparsity": 1 - (1 - p) ** k,
             "values": {key: [v, v]}, "cv": {key: 0.0}, "fb_equiv": 1.0, "share_of_oracle_round": 0.01}
            for k, v in values.items()]
    write_probes(d, recs)
    return d


def test_calibrate_predictor_builds_each_rule_and_names_the_shape(tmp_path, capsys):
    from gradscope.calibrate.predictor import calibrate_predictor
    from gradscope.cli import main
    k = np.arange(7)
    lam = 20.0 / (1 + 3 * (1 - 0.8 ** np.maximum(k - 1, 0)))  # sharpness falls, so the implied max_lr rises
    run = _fake_run(tmp_path / "sharp", dict(zip(k.tolist(), lam.tolist())), "sharpness")
    cal, values, (shape, note) = calibrate_predictor(run, "sharpness")
    assert np.allclose(cal.points["implied_max_lr"], 0.05 * lam[0] / lam)
    assert np.allclose(cal.points["x"], np.maximum(1 - 0.8 ** (k - 1), 0))
    assert shape == "rising" and note == "" and cal.status == "supported"
    r = np.array([1, 0.99, 0.97, 0.94, 0.9, 0.86, 0.82])  # bn-norm: r_k <= 1 can only fall
    run = _fake_run(tmp_path / "bn", dict(zip(k.tolist(), r.tolist())), "bn-norm")
    cal, _, (shape, note) = calibrate_predictor(run, "bn-norm")
    assert np.allclose(cal.points["implied_max_lr"], 0.05 * r)
    assert shape == "falling" and "not the S-shaped rise" in note
    sug = {0: 0.01, 1: 0.0101, 2: 0.0099, 3: 0.01, 4: 0.0102, 5: 0.0098}
    run = _fake_run(tmp_path / "lr", sug, "lr-range", key="steep")
    cal, _, (shape, note) = calibrate_predictor(run, "lr-range:steep")
    assert np.allclose(cal.points["implied_max_lr"], [0.05 * v / 0.01 for v in sug.values()])
    assert shape == "flat" and "says a constant max_lr" in note
    nd = {0: None, 1: 0.1, 2: 0.2, 3: 0.3, 4: 0.35, 5: 0.4}
    run = _fake_run(tmp_path / "nd", {kk: (v if v is not None else float("nan")) for kk, v in nd.items()}, "norm-drop")
    cal, _, _ = calibrate_predictor(run, "norm-drop")  # no norm drop in round 0: the constant is fitted on round 1
    assert np.allclose(cal.points["implied_max_lr"], [0.05, 0.05, 0.1, 0.15, 0.175, 0.2])
    from gradscope.calibrate.predictor import probe_table
    t = probe_table(tmp_path / "bn")
    assert list(t.columns) == ["round", "bn_norm_r"] and np.allclose(t["bn_norm_r"], r)
    assert main(["calibrate", str(tmp_path / "bn"), "--predictor", "bn-norm"]) == 0
    out = capsys.readouterr().out
    assert "predictor bn-norm: max_lr(k) = max_lr(0) * r(k) / r(0)" in out and "shape: the implied max_lr falls" in out
    assert main(["calibrate", str(tmp_path / "bn"), "--predictor", "sharpness"]) == 2
    assert "no sharpness records measured at 'start'" in capsys.readouterr().err


def test_plot_probes_draws_every_recorded_predictor_and_the_range_test(tmp_path):
    from gradscope.plot.probes import plot_probes
    from gradscope.store.probes import read_probes, write_probes
    run = _fake_run(tmp_path / "run", {0: 1.0, 1: 0.95, 2: 0.9}, "bn-norm")
    curve = {"lr": [1e-3, 1e-2, 1e-1, 1.0], "smoothed": [2.3, 2.1, 1.9, 9.0], "loss": [2.3, 2.0, 1.8, 30.0],
             "divergence_lr": 1.0, "suggestions": {"valley": 1e-2}}
    extra = [{"round": k, "at": "start", "probe": "lr-range", "sparsity": 0.2 * k, "result": curve,
              "values": {"valley": [0.01 * (1 + k)]}, "cv": {"valley": None}} for k in range(3)]
    write_probes(run, read_probes(run) + extra)
    ax = plot_probes(run)
    lines = {l.get_label(): l for l in ax.get_lines()}
    assert np.allclose(lines["bn-norm"].get_ydata(), [0.05, 0.0475, 0.045])
    assert np.allclose(lines["lr-range:valley"].get_ydata(), [0.05, 0.1, 0.15])
    assert "constant max_lr 0.05 (round 0's)" in lines
    ax = plot_probes(run, probe="lr-range")
    assert sum(l.get_label().startswith("round ") for l in ax.get_lines()) == 3
    with pytest.raises(GradscopeError, match="not a directory"):
        plot_probes(tmp_path / "run" / "probes.json")


def test_oracle_measures_the_probes_at_each_round_start(tmp_path):
    from gradscope.store.probes import read_probes
    from gradscope.train import PruningRun
    from gradscope.train.oracle import OracleRounds
    cfg = _cfg(tmp_path / "o", tmp_path / "c", probes="bn-norm,noise-scale", probe_repeats=2)
    cfg.prune.rounds = 2
    PruningRun(cfg, rounds=OracleRounds([0.01, 0.05, 0.25], seeds=1, max_extend=0), log=lambda s: None).run()
    recs = read_probes(tmp_path / "o")
    assert {(r["round"], r["probe"]) for r in recs} == {(k, p) for k in (0, 1) for p in ("bn-norm", "noise-scale")}
    ns = next(r for r in recs if r["probe"] == "noise-scale" and r["round"] == 1)
    assert ns["oracle_cost_assumed"] is False
    assert ns["oracle_round_passes"] == 3 * 1 * 1 * (320 // 64)  # grid x seeds x epochs x steps (320 training images)
    assert ns["share_of_oracle_round"] == pytest.approx(ns["fb_equiv"] / ns["oracle_round_passes"])


def test_probes_measure_with_dropout_off_and_batchnorm_on_batch_statistics():
    model, masks = tiny_bn_mlp()
    with_drop = nn.Sequential(*model[:3], nn.Dropout(0.5), *model[3:])
    bs = batches(2, 16)
    cfg = {"batches": 2, "tol": 1e-10, "blocks": False}
    from gradscope.probes import preserved
    with preserved(model, 0):
        a = sharpness.probe(model, masks, bs, cfg)["lambda_max"]
    with preserved(with_drop, 0):
        b = sharpness.probe(with_drop, masks, bs, cfg)["lambda_max"]
    assert a == pytest.approx(b, rel=1e-9) and with_drop[3].training  # dropout's own flag is restored


def test_probes_are_invisible_to_the_runs_other_instruments():
    """The recorder counts optimizer steps with a global hook and discovers layers with forward
    hooks: a probe must trigger neither (and leave both registered)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook
    model, masks = tiny_bn_mlp(torch.float32)
    calls = {"module": 0, "global": 0, "optimizer": 0}

    def bump(k):
        return lambda *a, **kw: calls.__setitem__(k, calls[k] + 1)
    hs = [model[0].register_forward_hook(bump("module")), nn.modules.module.register_module_forward_hook(bump("global")),
          register_optimizer_step_post_hook(bump("optimizer"))]
    try:
        bs = batches(3, 8, dtype=torch.float32)
        for name in PROBES.names():
            measure(name, model, masks, lambda s: bs, {"steps": 12, "batches": 2}, repeats=1)
        assert calls == {"module": 0, "global": 0, "optimizer": 0}
        model(bs[0][0])
        assert calls["module"] == 1 and calls["global"] >= 1  # still registered
        assert (model[0].weight[~masks["0"]] == 0).all()  # prune's own hook was kept throughout
    finally:
        for h in hs:
            h.remove()


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_range_test_update_rule_is_torchs(kind):
    torch.manual_seed(0)
    ref = [torch.randn(3, 2), torch.randn(4)]
    mine = [p.clone() for p in ref]
    opt_ref = (torch.optim.SGD(ref, lr=0.1, momentum=0.9, weight_decay=0.01) if kind == "sgd"
               else torch.optim.AdamW(ref, lr=0.1, betas=(0.9, 0.999), weight_decay=0.01))
    opt = lr_range._Optimizer(mine, kind, 0.9, 0.01)
    for lr in (0.01, 0.03, 0.1, 0.3):
        grads = [torch.randn_like(p) for p in ref]
        for p, g in zip(ref, grads):
            p.grad = g.clone()
        for grp in opt_ref.param_groups:
            grp["lr"] = lr
        opt_ref.step()
        opt.step(grads, lr)
    for a, b in zip(ref, mine):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_probes_json_writes_atomically_and_its_stale_temps_are_swept(tmp_path, monkeypatch):
    import os as _os
    from gradscope.store.probes import read_probes, upsert_probes
    from gradscope.train.checkpoint import clean_stale_temps
    rec = {"round": 0, "at": "start", "probe": "bn-norm", "values": {"value": [1.0]}, "cv": {"value": None}}
    upsert_probes(tmp_path, [rec])
    before = (tmp_path / "probes.json").read_bytes()

    def boom(*a):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(_os, "replace", boom)
    with pytest.raises(GradscopeError, match="writing probe results to .*probes.json failed: .*no space"):
        upsert_probes(tmp_path, [{**rec, "round": 1}])
    monkeypatch.undo()
    assert (tmp_path / "probes.json").read_bytes() == before and read_probes(tmp_path)[0]["round"] == 0
    assert not list(tmp_path.glob(".probes.json.*.tmp"))  # the failed write removed its temp
    stale = tmp_path / ".probes.json.ab12cd_9.tmp"
    stale.write_bytes(b"x")
    assert clean_stale_temps(tmp_path) == [stale]
