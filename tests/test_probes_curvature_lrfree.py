"""Issue 20, second part: McCandlish's eps_opt (``eps-opt``), the learning-rate-free optimizer's
estimate (``lr-free``: D-Adaptation SGD / Prodigy after a short masked probe), sharpness's
cheaper solvers, and the study's merge of a second probes run into the committed data.
Each against a known answer or an independent computation; purity and masks as for every probe."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune

from gradscope import GradscopeError
from gradscope.probes import PROBES, measure
from gradscope.probes import eps_opt, lr_free, sharpness
from gradscope.probes.base import Functional
from torch.optim.optimizer import register_optimizer_step_post_hook
from probe_nets import _one_thread, batches, tiny_bn_mlp  # noqa: E402,F401 - _one_thread is an autouse fixture


# ----------------------------------------------------------------------------- eps-opt
class Regression(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.lin = nn.Linear(len(w), 1, bias=False).double()
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor(np.array([w]), dtype=torch.float64))

    def forward(self, x):
        return self.lin(x).squeeze(1)


def test_eps_opt_on_linear_regression_with_known_h_sigma_and_g():
    """loss = 1/2 (w.x - y)^2, x ~ N(0, C), y = w*.x + noise (sd s): with u = w - w*, G = C u and
    Sigma = C u u^T C + (u^T C u + s^2) C (Gaussian fourth moments). H is the Hessian of the mean
    loss over the probe's Hessian batches, X^T X / N, computed here directly; then
    G^T H G, tr(H Sigma) = tr(H C u u^T C) + (u^T C u + s^2) tr(H C) and eps_opt are known.
    The last coordinate is pruned: everything lives on the first three."""
    rng = np.random.default_rng(0)
    c_diag, s, size, n, m = np.array([1.0, 2.0, 0.5, 3.0]), 0.5, 16, 800, 2
    w_star, w0 = np.array([1.0, -1.0, 2.0, 0.3]), np.array([0.0, 0.5, 1.0, 0.0])
    xs = rng.standard_normal((n, size, 4)) * np.sqrt(c_diag)
    ys = xs @ w_star + s * rng.standard_normal((n, size))
    data = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in zip(xs, ys)]
    mask = torch.tensor([[True, True, True, False]])
    got = eps_opt.probe(Regression(w0), {"lin": mask}, data,
                        {"batches": n, "hessian_batches": m, "loss": lambda o, y: 0.5 * ((o - y) ** 2).mean()})
    k = slice(0, 3)  # the surviving coordinates (the pruned weight is 0 in the model: w0[3] = 0)
    xh = xs[:m].reshape(-1, 4)[:, k]
    H = xh.T @ xh / len(xh)
    C, u = np.diag(c_diag[k]), (w0 - w_star)[k]
    # the pruned coordinate is not a variable, but w*'s x_3 term stays in the residual: extra
    # label noise of variance C_3 w*_3^2, independent of the surviving inputs
    s2 = s ** 2 + c_diag[3] * w_star[3] ** 2
    G = C @ u
    Sigma = np.outer(G, G) + (u @ C @ u + s2) * C
    ghg, g2 = float(G @ H @ G), float(G @ G)
    tr_hs, tr_s = float(np.trace(H @ Sigma)), float(np.trace(Sigma))
    assert got["gHg"] == pytest.approx(ghg, rel=0.08)
    assert got["grad_sq"] == pytest.approx(g2, rel=0.08)
    assert got["trace_h_sigma"] == pytest.approx(tr_hs, rel=0.08)
    assert got["trace_sigma"] == pytest.approx(tr_s, rel=0.08)
    eps_max, b_noise = g2 / ghg, tr_hs / ghg
    assert got["eps_max"] == pytest.approx(eps_max, rel=0.1)
    assert got["b_noise"] == pytest.approx(b_noise, rel=0.1)
    assert got["eps_opt"] == pytest.approx(eps_max / (1 + b_noise / size), rel=0.1)
    assert got["batch_size"] == size and got["hvps"] == n + 1 and got["hessian_batches"] == m


def test_eps_opt_equals_its_formulas_computed_by_hand_on_a_batchnorm_network():
    """The probe's HVPs and masks against torch.autograd.functional.hessian of a hand-written loss."""
    model, masks = tiny_bn_mlp()
    bs = batches(3, 8)
    got = eps_opt.probe(model, masks, bs, {"batches": 3})
    f = Functional(model, masks, F.cross_entropy)
    names = f.names
    flat0 = torch.cat([f.params[n].reshape(-1) for n in names]).detach()
    shapes = [f.params[n].shape for n in names]
    sizes = [f.params[n].numel() for n in names]
    keep = torch.cat([(f.masks[n].reshape(-1) > 0) if n in f.masks else torch.ones(s, dtype=torch.bool)
                      for n, s in zip(names, sizes)])

    def unflat(v):
        return {n: t.view(sh) for n, t, sh in zip(names, torch.split(v, sizes), shapes)}

    def batch_loss(v, x, y):
        return f.loss(unflat(v), x, y)

    grads = torch.stack([torch.autograd.functional.jacobian(lambda v: batch_loss(v, x, y), flat0)[keep] for x, y in bs])
    H = sum(torch.autograd.functional.hessian(lambda v: batch_loss(v, x, y), flat0) for x, y in bs) / len(bs)
    H = H[keep][:, keep]
    n, b = len(bs), 8
    mean = grads.mean(0)
    dev = grads - mean
    tr_hs = b / (n - 1) * float(sum(d @ H @ d for d in dev))
    tr_s = b / (n - 1) * float((dev ** 2).sum())
    ghg = float(mean @ H @ mean) - tr_hs / (n * b)
    g2 = float(mean @ mean) - tr_s / (n * b)
    assert got["trace_h_sigma"] == pytest.approx(tr_hs, rel=1e-8)
    assert got["gHg"] == pytest.approx(ghg, rel=1e-8)
    assert got["grad_sq"] == pytest.approx(g2, rel=1e-8)
    if ghg > 0 and g2 > 0:
        assert got["eps_opt"] == pytest.approx(g2 / ghg / (1 + tr_hs / ghg / b), rel=1e-8)
    else:
        assert got["eps_opt"] is None and got["note"]


def test_eps_opt_bad_input():
    model, masks = tiny_bn_mlp()
    with pytest.raises(GradscopeError, match="eps-opt needs at least 2 batches"):
        eps_opt.probe(model, masks, batches(1, 8), {"batches": 4})
    with pytest.raises(GradscopeError, match="eps-opt needs equal batch sizes"):
        eps_opt.probe(model, masks, batches(1, 8) + batches(1, 6), {"batches": 2})


# ----------------------------------------------------------------------------- lr-free


class Point(nn.Module):
    """A model whose output is its own weight vector: the loss is any function of the weights."""

    def __init__(self, x0):
        super().__init__()
        self.lin = nn.Linear(len(x0), 1, bias=False).double()
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor(np.array([x0]), dtype=torch.float64))

    def forward(self, x):
        return self.lin.weight.reshape(-1)


def test_dadapt_d_approaches_the_distance_to_the_solution_from_below():
    """f = 1/2 |x - x*|^2 from x0 = 0: D = |x*|. D-Adaptation's d-hat never exceeds D on a convex f
    (Defazio & Mishchenko 2023, the lemma behind their Theorem 1), and on this quadratic every
    gradient points at x*, so d-hat = 2 sum_i lr_i <g_i, s_i> / |s| is (to first order in the
    steps) the distance travelled towards x*: once the iterate has converged, d lies in [D/2, D].
    A pruned coordinate (x*'s last) is not a variable: D is the distance on the surviving ones."""
    pytest.importorskip("dadaptation")
    xs = torch.tensor([3.0, -1.0, 2.0, 0.5, 7.0], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True, False]])
    loss = lambda w, y: 0.5 * ((w - xs * mask[0]) ** 2).sum()  # noqa: E731
    got = lr_free.probe(Point(np.zeros(5)), {"lin": mask}, [(torch.zeros(1), torch.zeros(1))],
                        {"lr_free_steps": 60, "momentum": 0.0, "weight_decay": 0.0, "loss": loss})
    D = float(xs[:4].norm())
    assert D / 2 <= got["d"] <= D * (1 + 1e-9)
    assert got["d_grew"] and got["note"] is None and got["optimizer"] == "dadapt-sgd"
    assert got["loss"][-1] < 1e-6 * got["loss"][0]  # it converged, so the bound's regime was reached
    assert got["step_lr"] == pytest.approx(got["d"] / got["g0_norm"])
    assert got["g0_norm"] == pytest.approx(D)  # |g0| = |x0 - x*| on the surviving coordinates


def _package_run(cls, model, bs, steps, **kw):
    """The package's optimizer on the model itself, as its README uses it."""
    opt = cls(model.parameters(), lr=1.0, **kw)
    for t in range(steps):
        x, y = bs[t % len(bs)]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return opt.param_groups[0]["d"], [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_lr_free_is_the_packages_own_trajectory(optimizer):
    """Without masks the probe's d is the one the package reaches stepping a copy of the model."""
    mod = pytest.importorskip("dadaptation" if optimizer == "sgd" else "prodigyopt")
    cls = mod.DAdaptSGD if optimizer == "sgd" else mod.Prodigy
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    bs = batches(3, 16)
    kw = {"momentum": 0.9, "weight_decay": 1e-3, "d0": 1e-6} if optimizer == "sgd" else {"weight_decay": 1e-3, "d0": 1e-6}
    got = lr_free.probe(model, None, bs, {"lr_free_steps": 12, "optimizer": optimizer, **kw})
    twin = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    twin.load_state_dict(model.state_dict())
    d, _ = _package_run(cls, twin, bs, 12, **kw)
    assert got["d"] == pytest.approx(d, rel=1e-10)
    assert got["optimizer"] == ("dadapt-sgd" if optimizer == "sgd" else "prodigy")


def test_lr_free_keeps_pruned_weights_exactly_zero_and_fires_no_optimizer_hook():
    pytest.importorskip("dadaptation")
    fired = []
    h = register_optimizer_step_post_hook(lambda opt, a, k: fired.append(1))
    try:
        for torch_pruned in (True, False):  # prune's weight_orig * weight_mask, and an external mask
            model, masks = tiny_bn_mlp(prune_mask=torch_pruned)
            f = Functional(model, masks, F.cross_entropy)
            c = {**lr_free.DEFAULTS, "lr_free_steps": 15, "weight_decay": 0.1}
            res, params = lr_free.run_steps(f, batches(3, 16), "dadapt-sgd", c)
            name = "0.weight_orig" if torch_pruned else "0.weight"
            assert torch.equal(params[name][~masks["0"]], torch.zeros(int((~masks["0"]).sum()), dtype=torch.float64))
            assert bool((params[name][masks["0"]] != f.params[name][masks["0"]]).all())  # the survivors moved
            assert len(res["d_history"]) == 15
    finally:
        h.remove()
    assert fired == []


def test_lr_free_bad_input_gives_one_clear_message(monkeypatch):
    model, masks = tiny_bn_mlp()
    with pytest.raises(GradscopeError, match="no learning-rate-free counterpart of optimizer 'rmsprop'"):
        lr_free.probe(model, masks, batches(2, 8), {"optimizer": "rmsprop"})
    monkeypatch.setitem(sys.modules, "dadaptation", None)  # as if it were not installed
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "dadaptation" else real(n, *a))
    with pytest.raises(GradscopeError, match=r"needs the package 'dadaptation' \(pip install 'gradscope\[lrfree\]'\)"):
        lr_free.probe(model, masks, batches(2, 8), {})


# ----------------------------------------------------------------------------- sharpness's solvers
def test_power_iteration_finds_the_top_eigenvalue_even_when_a_negative_one_dominates():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    A = q @ np.diag([-9.0, -1.0, 0.5, 1.0, 2.0, 3.0]) @ q.T
    v0 = rng.standard_normal(6)
    assert sharpness.power_iteration(lambda v: A @ v, v0, tol=1e-10, maxiter=2000) == pytest.approx(3.0, rel=1e-6)
    B = q @ np.diag([0.1, 0.2, 0.3, 0.4, 1.0, 5.0]) @ q.T
    assert sharpness.power_iteration(lambda v: B @ v, v0, tol=1e-10, maxiter=500) == pytest.approx(5.0, rel=1e-8)
    with pytest.raises(GradscopeError, match="power iteration did not converge in 3"):
        sharpness.power_iteration(lambda v: B @ v, v0, tol=1e-14, maxiter=3)


def test_cheaper_sharpness_settings_agree_with_the_exact_masked_hessian():
    """Lanczos with 6 vectors (the default now) and power iteration against eigvalsh of the exact
    Hessian on the surviving weights."""
    model, masks = tiny_bn_mlp()
    bs = batches(2, 16)
    f = Functional(model, masks, F.cross_entropy)
    names, sizes = f.names, [f.params[n].numel() for n in f.names]
    shapes = [f.params[n].shape for n in names]
    flat0 = torch.cat([f.params[n].reshape(-1) for n in names]).detach()
    keep = torch.cat([(f.masks[n].reshape(-1) > 0) if n in f.masks else torch.ones(s, dtype=torch.bool)
                      for n, s in zip(names, sizes)])
    H = sum(torch.autograd.functional.hessian(
        lambda v: f.loss({n: t.view(sh) for n, t, sh in zip(names, torch.split(v, sizes), shapes)}, x, y), flat0)
        for x, y in bs) / len(bs)
    top = float(np.linalg.eigvalsh(H[keep][:, keep].numpy())[-1])
    for cfg, rel in (({}, 1e-2), ({"method": "power", "tol": 1e-8, "maxiter": 3000}, 1e-4),
                     ({"ncv": 20, "tol": 1e-6}, 1e-6)):
        got = sharpness.probe(model, masks, bs, {"batches": 2, "blocks": False, **cfg})
        assert got["lambda_max"] == pytest.approx(top, rel=rel), cfg
    with pytest.raises(GradscopeError, match="unknown method 'qr'"):
        sharpness.probe(model, masks, bs, {"method": "qr"})


# ----------------------------------------------------------------------------- registry and study
def test_new_predictors_read_their_numbers_and_repeat_with_noise():
    pytest.importorskip("dadaptation")
    model, masks = tiny_bn_mlp(torch.float32)
    bs = batches(4, 16, dtype=torch.float32)
    for name, key in (("eps-opt", "value"), ("lr-free", "value")):
        m = measure(name, model, masks, lambda s: bs[(s % 3):] + bs[:(s % 3)], {"lr_free_steps": 5, "batches": 3},
                    repeats=2, seed=1)
        assert len(m["values"][key]) == 2 and m["fb_equiv"] > 0
        assert m["values"][key][0] == PROBES.get(name).value(m["result"], "")
    m = measure("sharpness", model, masks, lambda s: bs, {"batches": 2}, repeats=1)
    blocks = m["result"]["blocks"]
    assert blocks and m["values"]["bn-blocks"][0] == max(b["lambda_norm_sq"] for b in blocks.values())


def test_extract_probes_merges_the_second_run_and_keeps_the_committed_records(tmp_path):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "analysis"))
    from calibration_analysis import extract_probes
    from gradscope.store.probes import read_probes, write_probes

    def rec(k, probe, v):
        return {"round": k, "at": "start", "probe": probe, "values": {"value": [v]}, "cv": {"value": None}}
    dest = tmp_path / "data" / "cfg" / "t0"
    dest.mkdir(parents=True)
    (dest / "oracle.npz").write_bytes(b"kept")
    (dest / "profile.csv").write_text("round\n0\n")
    write_probes(dest, [rec(0, "noise-scale", 0.7), rec(1, "noise-scale", 0.8)])
    run = tmp_path / "runs" / "cfg" / "t0" / "probes2"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"prune": {"rounds": 2}}))
    (run / "rounds.json").write_text(json.dumps([{"round": 0}, {"round": 1}]))
    write_probes(run, [rec(0, "sharpness", 10.0), rec(1, "sharpness", 12.0)])
    unfinished = tmp_path / "runs" / "cfg" / "t1" / "probes2"
    unfinished.mkdir(parents=True)
    (unfinished / "config.json").write_text(json.dumps({"prune": {"rounds": 2}}))
    (unfinished / "rounds.json").write_text(json.dumps([{"round": 0}]))
    write_probes(unfinished, [rec(0, "sharpness", 1.0)])
    extract_probes(tmp_path / "runs", tmp_path / "data")
    extract_probes(tmp_path / "runs", tmp_path / "data")  # idempotent
    got = {(r["round"], r["probe"]): r["values"]["value"][0] for r in read_probes(dest)}
    assert got == {(0, "noise-scale"): 0.7, (1, "noise-scale"): 0.8, (0, "sharpness"): 10.0, (1, "sharpness"): 12.0}
    assert (dest / "oracle.npz").read_bytes() == b"kept" and (dest / "profile.csv").read_text() == "round\n0\n"
    assert not (tmp_path / "data" / "cfg" / "t1").exists()


def test_a_prune_run_with_the_new_probes_trains_bit_identically_and_their_rules_read_them(tmp_path):
    """prune (no recorder) with and without eps-opt, lr-free and sharpness: the same rounds, masks
    and final model; the records are there and each implied-max_lr rule reads them (`calibrate
    --predictor` itself needs >= 3 pruned rounds: tests/test_probes.py runs it on the older probes)."""
    pytest.importorskip("dadaptation")
    from gradscope.calibrate.predictor import predictor_points, predictor_values
    from gradscope.config import RunConfig
    from gradscope.store.probes import read_probes
    from gradscope.train import PruningRun
    from gradscope.train.checkpoint import load_torch

    def cfg(out, probes=None):
        c = RunConfig()
        c.data.dataset, c.data.train_subset, c.data.batch_size, c.data.cache_dir = "digits", 256, 64, str(tmp_path / "c")
        c.model.model, c.train.epochs, c.train.threads, c.train.progress = "lenet_300_100", 1, 1, False
        c.prune.rounds, c.schedule.schedule, c.schedule.max_lr = 2, "lth", 0.05
        c.record.record = False
        c.probe.probes, c.probe.probe_repeats = probes, 1
        c.out = str(out)
        return c

    logs = []
    PruningRun(cfg(tmp_path / "plain"), log=lambda s: None).run()
    PruningRun(cfg(tmp_path / "probed", "eps-opt,lr-free,sharpness"), log=logs.append).run()

    def trained(out):
        rows = [{k: v for k, v in r.items() if k != "time_s"} for r in json.loads((out / "rounds.json").read_text())]
        rf = [load_torch(out / f"round_{k}.pt", what="round file") for k in range(2)]
        return rows, [r["masks"] for r in rf], load_torch(out / "checkpoint.pt", what="checkpoint")["model"]
    (ra, ma, sa), (rb, mb, sb) = trained(tmp_path / "plain"), trained(tmp_path / "probed")
    assert ra == rb
    assert all(torch.equal(a[k], b[k]) for a, b in zip(ma, mb) for k in a)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    recs = {(r["round"], r["probe"]): r for r in read_probes(tmp_path / "probed")}
    assert set(recs) == {(k, p) for k in (0, 1) for p in ("eps-opt", "lr-free", "sharpness")}
    assert recs[(1, "lr-free")]["result"]["optimizer"] == "dadapt-sgd" and recs[(1, "lr-free")]["result"]["steps"] == 100
    assert recs[(1, "sharpness")]["values"]["bn-blocks"] == [None]  # LeNet has no BatchNorm block
    assert any("probe eps-opt round 1 (start): McCandlish's eps_opt" in l and "B_noise" in l for l in logs)
    assert any("probe lr-free round 1 (start)" in l and "dadapt-sgd d" in l for l in logs)
    all_recs = read_probes(tmp_path / "probed")
    for name, key, inverse in (("eps-opt", "eps_opt", False), ("lr-free", "step_lr", False),
                               ("sharpness", "lambda_max", True)):
        pts = predictor_points(predictor_values(all_recs, name), name, max_lr0=0.05, p=0.2).set_index("round")
        v0, v1 = recs[(0, name)]["result"][key], recs[(1, name)]["result"][key]
        assert pts.loc[0, "implied_max_lr"] == 0.05
        assert pts.loc[1, "implied_max_lr"] == pytest.approx(0.05 * (v0 / v1 if inverse else v1 / v0)), name


def test_a_full_extract_merges_the_first_probes_run_without_dropping_the_second_runs_records(tmp_path):
    """`extract` from runs that hold only profile, probes and Oracle (the second probes run lives in
    another folder) keeps the committed second-run records."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "analysis"))
    from calibration_analysis import _merge_probes
    from gradscope.store.probes import read_probes, write_probes

    dest, first = tmp_path / "dest", tmp_path / "probes"
    dest.mkdir()
    first.mkdir()
    write_probes(dest, [{"round": 0, "at": "start", "probe": "sharpness", "values": {"value": [9.0]}},
                        {"round": 0, "at": "start", "probe": "noise-scale", "values": {"value": [0.1]}}])
    write_probes(first, [{"round": 0, "at": "start", "probe": "noise-scale", "values": {"value": [0.7]}}])
    assert _merge_probes(first, dest) == 1
    got = {r["probe"]: r["values"]["value"][0] for r in read_probes(dest)}
    assert got == {"sharpness": 9.0, "noise-scale": 0.7}


def test_a_run_with_lr_free_but_without_its_package_stops_before_training(tmp_path, monkeypatch):
    import importlib.util
    from gradscope.config import RunConfig
    from gradscope.train import PruningRun

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "dadaptation" else real(n, *a))
    c = RunConfig()
    c.data.dataset, c.data.train_subset, c.data.batch_size, c.data.cache_dir = "digits", 128, 64, str(tmp_path / "c")
    c.model.model, c.train.epochs, c.train.threads, c.train.progress = "lenet_300_100", 1, 1, False
    c.prune.rounds, c.schedule.schedule, c.schedule.max_lr, c.record.record = 2, "lth", 0.05, False
    c.probe.probes, c.out = "noise-scale,lr-free", str(tmp_path / "run")
    with pytest.raises(GradscopeError, match="the lr-free probe needs the package 'dadaptation'"):
        PruningRun(c, log=lambda s: None).run()
    assert not (tmp_path / "run" / "rounds.json").exists() and not (tmp_path / "run" / "probes.json").exists()
