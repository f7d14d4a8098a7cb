"""Tests for gradscope.schedules and gradscope.plot.schedules (tiny optimizers, no training)."""
from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch

import matplotlib

matplotlib.use("Agg")

from gradscope import GradscopeError  # noqa: E402
from gradscope.config import ScheduleConfig  # noqa: E402
from gradscope.schedules import (RoundInfo, RoundLR, SiloSchedule, allr_peak, get_schedule, list_schedules,
                                 planned_pruned_fraction, planned_round_info, register_schedule,
                                 s_curve, schedule_from_config)


def _opt(lr: float = 1.0, groups: int = 1) -> torch.optim.Optimizer:
    torch.manual_seed(0)
    params = [{"params": [torch.nn.Parameter(torch.randn(3))], "lr": lr * (i + 1)} for i in range(groups)]
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def _info(k: int = 0, p: float = 0.2, spe: int = 10, epochs: int = 1, **kw) -> RoundInfo:
    base = planned_round_info(k, p, spe, epochs)
    return RoundInfo(**{**base.__dict__, **kw})


def _run(sched, opt, n: int) -> list[float]:
    """LR used by each of n optimizer steps (read before the step), stepping the scheduler."""
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def _released(x, lo, hi, beta):
    # The released SILO formula, written out independently of s_curve.
    if x <= 0:
        return lo
    return lo + (hi - lo) * x**beta / (x**beta + (1 - x) ** beta)


# ----------------------------------------------------------------------------- S-curve
def test_s_curve_equals_released_formula_and_generalises_midpoint():
    xs = np.linspace(0.0, 1.0, 41)
    got = s_curve(xs, 0.03, 0.07, 5.0)
    want = [_released(x, 0.03, 0.07, 5.0) for x in xs]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert isinstance(s_curve(0.3, 0.03, 0.07, 5.0), float)
    # midpoint: half-way value sits at x = midpoint; ends stay lo / hi; monotone increasing
    for m in (0.2, 0.5, 0.8):
        assert s_curve(m, 1.0, 3.0, 4.0, midpoint=m) == pytest.approx(2.0, abs=1e-12)
        ys = s_curve(xs, 1.0, 3.0, 4.0, midpoint=m)
        assert ys[0] == 1.0 and ys[-1] == 3.0 and np.all(np.diff(ys) >= 0)
    assert s_curve(0.3, 1.0, 3.0, 4.0, midpoint=0.2) > s_curve(0.3, 1.0, 3.0, 4.0, midpoint=0.5)


def test_planned_pruned_fraction():
    assert planned_pruned_fraction(0, 0.2, 1) == 0.0
    assert planned_pruned_fraction(1, 0.2, 1) == 0.0
    assert planned_pruned_fraction(3, 0.2, 1) == pytest.approx(1 - 0.8**2)
    assert planned_pruned_fraction(3, 0.2, 0) == pytest.approx(1 - 0.8**3)
    np.testing.assert_allclose(planned_pruned_fraction(np.arange(5), 0.5, 2), [0, 0, 0, 0.5, 0.75])


def test_resnet20_preset_peaks():
    f = get_schedule("silo", preset="resnet20")
    peaks = [f.peak_lr(_info(k, p=0.2)) for k in range(7)]
    want = [_released(1 - 0.8 ** (k - 1) if k > 1 else 0.0, 0.03, 0.07, 5) for k in range(7)]
    np.testing.assert_allclose(peaks, want, rtol=1e-12)
    np.testing.assert_allclose(peaks, [0.030, 0.030, 0.030, 0.0321, 0.0476, 0.0645, 0.0689], atol=1e-4)
    vgg = get_schedule("silo", preset="vgg19")
    assert vgg.peak_lr(_info(0)) == pytest.approx(0.04)
    assert vgg.peak_lr(_info(24)) == pytest.approx(0.10, abs=1e-4)


def test_silo_p_none_follows_run_prune_rate_and_preset_fixes_it():
    f = get_schedule("silo")  # p None -> info.prune_rate
    info = _info(4, p=0.5)
    assert f.peak_lr(info) == pytest.approx(_released(1 - 0.5**3, 0.03, 0.07, 5))
    g = get_schedule("silo", preset="resnet20")  # p = 0.2 as released
    assert g.peak_lr(info) == pytest.approx(_released(1 - 0.8**3, 0.03, 0.07, 5))


def test_measured_variant_uses_roundinfo_sparsity():
    f = get_schedule("silo", x="measured", lo=0.01, hi=0.05)
    assert get_schedule("silo", use_measured=True, lo=0.01, hi=0.05) == f  # older spelling
    # planned p would give x = 0.2 for round 2; measured prev_sparsity 0.5 is the midpoint
    info = _info(2, p=0.2, sparsity=0.7, prev_sparsity=0.5)
    assert f.peak_lr(info) == pytest.approx(0.03)
    assert f.peak_lr(_info(2, prev_sparsity=0.6, sparsity=0.7)) == pytest.approx(_released(0.6, 0.01, 0.05, 5))
    g = f.with_params(lag=0)  # lag 0 reads this round's sparsity
    assert g.peak_lr(info) == pytest.approx(_released(0.7, 0.01, 0.05, 5))
    with pytest.raises(GradscopeError, match="lag"):
        f.with_params(lag=2)


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("total,kw", [
    (100, dict(pct_start=0.1, div_factor=100.0, final_div_factor=100.0)),
    (37, dict(pct_start=0.3, div_factor=25.0, final_div_factor=1e4, anneal="linear")),
    (50, dict(pct_start=0.25, div_factor=10.0, final_div_factor=50.0, three_phase=True)),
    (7, dict(pct_start=0.1, div_factor=100.0, final_div_factor=100.0)),  # tiny round
])
def test_one_cycle_matches_torch_onecycle(total, kw):
    peak = 0.07
    ref_opt = _opt()
    ref = torch.optim.lr_scheduler.OneCycleLR(
        ref_opt, max_lr=peak, total_steps=total, cycle_momentum=False,
        anneal_strategy=kw.get("anneal", "cos"),
        **{k: v for k, v in kw.items() if k != "anneal"})
    f = get_schedule("constant", max_lr=peak, shape="one-cycle", **kw)
    opt = _opt()
    sched = f.build(opt, _info(0, spe=total, epochs=1))
    want, got = _run(ref, ref_opt, total), _run(sched, opt, total)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)
    assert 0.9 * peak < max(got) <= peak * (1 + 1e-12)


def _run_momentum(sched, opt, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    return out


def test_clr_preset_is_le_hua_onecycle_with_momentum_cycling():
    def ref():
        o = _opt()
        return o, torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=60, pct_start=0.1,
                                                      div_factor=100, final_div_factor=100)
    ref_opt, ref_s = ref()
    opt = _opt()
    sched = get_schedule("clr").build(opt, _info(3, spe=20, epochs=3))
    np.testing.assert_allclose(_run(sched, opt, 60), _run(ref_s, ref_opt, 60), rtol=1e-13)
    ref_opt, ref_s = ref()
    opt = _opt()
    sched = get_schedule("clr").build(opt, _info(3, spe=20, epochs=3))
    got, want = _run_momentum(sched, opt, 60), _run_momentum(ref_s, ref_opt, 60)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert max(got) == pytest.approx(0.95) and min(got) == pytest.approx(0.85, abs=1e-3)
    # AdamW: beta1 cycles instead
    p = torch.nn.Parameter(torch.zeros(2))
    adam = torch.optim.AdamW([p], lr=0.1)
    sched = get_schedule("clr").build(adam, _info(3, spe=20, epochs=3))
    assert adam.param_groups[0]["betas"] == (pytest.approx(0.95), 0.999)


def test_warmup_step_values_at_specific_steps():
    f = get_schedule("silo", preset="resnet20")  # warm-up 10 %, drops at 50 % and 64 %
    info = _info(5, p=0.2, spe=10, epochs=50)  # 500 steps: drops at epochs 25 and 32
    peak = f.peak_lr(info)
    lrs = f.lrs(info)
    assert len(lrs) == 500
    assert lrs[0] == pytest.approx(peak / 50)  # warm-up over round(0.1 * 500) = 50 steps
    assert lrs[24] == pytest.approx(peak * 25 / 50)
    assert lrs[49] == pytest.approx(peak)
    assert lrs[249] == pytest.approx(peak)
    assert lrs[250] == pytest.approx(0.1 * peak)
    assert lrs[319] == pytest.approx(0.1 * peak)
    assert lrs[320] == pytest.approx(0.01 * peak)
    assert lrs[499] == pytest.approx(0.01 * peak)
    # the scheduler gives the same values as the closed form
    opt = _opt()
    np.testing.assert_allclose(_run(f.build(opt, info), opt, 500), lrs, rtol=1e-15)


def test_lrr_drops_at_renda_epochs_91_and_136():
    f = get_schedule("lrr")
    info = _info(2, spe=391, epochs=182)
    lrs = f.lrs(info)
    assert lrs[91 * 391 - 1] == 0.1 and lrs[91 * 391] == pytest.approx(0.01)
    assert lrs[136 * 391 - 1] == pytest.approx(0.01) and lrs[136 * 391] == pytest.approx(0.001)
    from gradscope.schedules import implied_rewind
    assert implied_rewind("lrr") == "lr" and implied_rewind("lth") == "init"


def test_lrr_is_renda_step_schedule_without_warmup():
    f = get_schedule("lrr")
    lrs = f.lrs(_info(2, spe=4, epochs=10))  # 40 steps; drops at floor(0.5*40) and floor(136/182*40 = 29.9)
    assert lrs[0] == 0.1 and lrs[19] == 0.1
    assert lrs[20] == pytest.approx(0.01) and lrs[28] == pytest.approx(0.01)
    assert lrs[29] == pytest.approx(0.001)


def test_cosine_matches_torch_cosine_annealing():
    total, peak, eta_min = 30, 0.1, 0.002
    ref_opt = _opt(lr=peak)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=total, eta_min=eta_min)
    opt = _opt()
    sched = get_schedule("cosine", max_lr=peak, eta_min=eta_min).build(opt, _info(1, spe=total))
    np.testing.assert_allclose(_run(sched, opt, total), _run(ref, ref_opt, total), rtol=1e-12)
    w = get_schedule("cosine", max_lr=peak, warmup=0.2).lrs(_info(0, spe=total))
    assert w[0] == pytest.approx(peak / 6) and w[5] == pytest.approx(peak) and w[7] < w[6] <= peak


def test_triangular_matches_torch_cycliclr():
    total, peak = 40, 0.05
    ref_opt = _opt()
    ref = torch.optim.lr_scheduler.CyclicLR(ref_opt, base_lr=peak / 5, max_lr=peak, step_size_up=10,
                                            mode="triangular", cycle_momentum=False)
    opt = _opt()
    f = get_schedule("silo", lo=peak, hi=peak, shape="triangular", cycles=2, div_factor=5.0)
    sched = f.build(opt, _info(3, spe=total))
    np.testing.assert_allclose(_run(sched, opt, total), _run(ref, ref_opt, total), rtol=1e-12)


def test_param_groups_keep_their_lr_ratio_and_stepping_past_the_round_raises():
    opt = _opt(groups=2)  # groups at lr 1 and 2: the larger follows the closed form, the other half of it
    sched = get_schedule("lrr").build(opt, _info(1, spe=2, epochs=2))
    for _ in range(3):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.0005), pytest.approx(0.001)]
    opt.step()
    sched.step()  # the step after the round's 4th optimizer step: allowed, as OneCycleLR allows it
    with pytest.raises(GradscopeError, match="stepped 5 times; the round has 4 steps"):
        sched.step()  # torch's OneCycleLR raises here too ("Tried to step 5 times")
    ref = torch.optim.lr_scheduler.OneCycleLR(_opt(), max_lr=0.1, total_steps=4)
    for _ in range(4):
        ref.optimizer.step()
        ref.step()
    with pytest.raises(ValueError, match="Tried to step 5 times"):
        ref.optimizer.step()
        ref.step()
    p = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.SGD([{"params": [p[0]], "lr": 0.1}, {"params": [p[1]], "lr": 0.01}], lr=0.1)
    sched = get_schedule("constant", max_lr=0.5).build(opt, _info(0, spe=3))
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.5), pytest.approx(0.05)]
    assert sched.get_last_lr() == [pytest.approx(0.5), pytest.approx(0.05)]


def test_round_lr_validates_its_arguments():
    opt = _opt()
    with pytest.raises(GradscopeError, match="total_steps"):
        RoundLR(opt, total_steps=0, peak=0.1, shape="cosine")
    with pytest.raises(GradscopeError, match="peak"):
        RoundLR(opt, total_steps=10, peak=-0.1, shape="cosine")
    with pytest.raises(GradscopeError, match="milestones"):
        RoundLR(opt, total_steps=10, peak=0.1, shape="warmup-step",
                shape_params={"milestones": [0.5], "factors": [0.1, 0.01]})
    with pytest.raises(GradscopeError, match="zigzag"):
        RoundLR(opt, total_steps=10, peak=0.1, shape="zigzag")


def test_plain_loop_constructor_builds_round_k():
    opt = _opt()
    f = get_schedule("silo", preset="resnet20")
    sched = f.scheduler(opt, round=5, total_steps=100)
    assert sched.total_steps == 100 and sched.round == 5
    assert sched.peak == pytest.approx(f.peak_lr(planned_round_info(5, 0.2, 100, 1)))
    assert sched.peak == pytest.approx(0.0645, abs=1e-4)


# ----------------------------------------------------------------------------- ALLR
def test_allr_peak_and_clipping():
    assert allr_peak(0.1, 0.25, 0.1) == pytest.approx(0.1)  # 0.2·η clipped up to ratio 1 -> η
    assert allr_peak(0.1, 0.25, 0.1, retrain_ratio=0.1) == pytest.approx(0.02)  # inside
    assert allr_peak(0.01, 0.25, 0.1, retrain_ratio=0.5) == pytest.approx(0.05)  # lower clip
    assert allr_peak(0.9, 0.25, 0.1, retrain_ratio=0.1) == pytest.approx(0.1)  # upper clip
    f = get_schedule("allr", max_lr=0.2, orig_epochs=20)
    assert f.peak_lr(_info(0, epochs=2)) == 0.2  # round 0: η_max
    info = _info(3, epochs=2, norm_drop=0.1, step_pruned=0.25)  # ratio 2/20
    assert f.peak_lr(info) == pytest.approx(0.1 / 0.5 * 0.2)
    info = _info(3, epochs=2, norm_drop=0.001, step_pruned=0.25)
    assert f.peak_lr(info) == pytest.approx(0.2 * 2 / 20)
    with pytest.raises(GradscopeError, match="norm_drop"):
        f.peak_lr(_info(2, epochs=2))
    lrs = f.lrs(_info(0, spe=10, epochs=2))  # BIMP: cosine warm-up from 0 over int(0.1*20) = 2 steps
    np.testing.assert_allclose(lrs[:4], [0.0, 0.1, 0.2, 0.2], atol=1e-15)  # peak at step W, held at W+1
    np.testing.assert_allclose(lrs[3:], 0.2 * (1 - np.arange(17) / 18), atol=1e-15)  # then LinearLR


# ----------------------------------------------------------------------------- state
def test_resume_mid_round_gives_identical_lrs():
    f = get_schedule("silo", preset="vgg19", shape="one-cycle", pct_start=0.2)
    info = _info(4, spe=6, epochs=3)
    opt = _opt()
    full = _run(f.build(opt, info), opt, 18)

    opt1 = _opt()
    s1 = f.build(opt1, info)
    first = _run(s1, opt1, 7)
    buf = io.BytesIO()
    torch.save(s1.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)  # plain values only
    assert all(isinstance(v, (int, float, str, bool, list, dict)) for v in state.values())

    opt2 = _opt()  # new optimizer at step-0 LR, new scheduler, then load
    s2 = f.build(opt2, info)
    s2.load_state_dict(state)
    rest = _run(s2, opt2, 11)
    assert first + rest == full
    assert s2.get_last_lr() == [opt2.param_groups[0]["lr"]]


def test_scheduler_and_factory_pickle_round_trip():
    f = get_schedule("silo", preset="resnet20").with_peak(0.05)
    g = pickle.loads(pickle.dumps(f))
    assert g == f and g.params() == f.params()
    opt = _opt()
    sched = g.build(opt, _info(3, spe=5, epochs=2))
    _run(sched, opt, 4)
    clone = pickle.loads(pickle.dumps(sched))
    assert isinstance(clone, RoundLR)
    a = _run(sched, opt, 6)
    b = _run(clone, clone.optimizer, 6)
    assert a == b


def test_params_are_json_and_rebuild_equal_factories():
    for name in list_schedules():
        f = get_schedule(name)
        p = json.loads(json.dumps(f.params()))
        assert get_schedule(name, **p) == f, name  # 'name' in params is accepted
        assert get_schedule(**p) == f, name
        assert get_schedule(name, **{k: v for k, v in p.items() if k != "name"}) == f, name


def test_with_peak_keeps_shape_and_fixes_peak():
    f = get_schedule("silo", preset="resnet20")
    g = f.with_peak(0.2)
    assert f.forced_peak is None  # the original is unchanged
    for k in (0, 3, 6):
        info = _info(k, spe=10, epochs=2)
        assert g.peak_lr(info) == 0.2
        np.testing.assert_allclose(g.lrs(info), f.lrs(info) * 0.2 / f.peak_lr(info), rtol=1e-12)
    assert g.round_params(_info(3))["max_lr"] == 0.2
    assert g.with_peak(None).peak_lr(_info(6)) == pytest.approx(f.peak_lr(_info(6)))
    with pytest.raises(GradscopeError, match="forced_peak"):
        f.with_peak(-1.0)


def test_subclass_with_params_keeps_class_and_extra_state():
    class Auto(SiloSchedule):
        name = "silo-auto-test"

    register_schedule("silo-auto-test", Auto)
    f = get_schedule("silo-auto-test", lo=0.02, hi=0.08)
    f.history = [1, 2]
    g = f.with_params(beta=3.0, midpoint=0.4)
    assert type(g) is Auto and g.history == [1, 2] and g.beta == 3.0 and g.lo == 0.02
    assert f.beta == 5.0
    info = _info(5)
    assert g.peak_lr(info) == pytest.approx(s_curve(1 - 0.8**4, 0.02, 0.08, 3.0, 0.4))
    h = g.with_params(shape="one-cycle")  # shape change: old shape's params dropped
    assert "milestones" not in h.params() and h.params()["pct_start"] == 0.3


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name,kw,match", [
    ("nope", {}, "unknown schedule 'nope'"),
    ("silo", {"gamma": 1}, "gamma"),
    ("silo", {"beta": -1.0}, "beta"),
    ("silo", {"lo": 0.1, "hi": 0.05}, "'hi'"),
    ("silo", {"midpoint": 1.0}, "midpoint"),
    ("silo", {"lag": 1.5}, "lag"),
    ("silo", {"preset": "resnet50"}, "resnet50"),
    ("silo", {"shape": "zigzag"}, "zigzag"),
    ("silo", {"milestones": [0.5], "factors": [0.1, 0.01]}, "milestones"),
    ("silo", {"warmup": 0.6}, "warmup"),
    ("lth", {"lo": 0.1}, "lo"),
    ("lth", {"max_lr": "fast"}, "max_lr"),
    ("clr", {"pct_start": 1.5}, "pct_start"),
    ("cosine", {"pct_start": 0.3}, "pct_start"),
    ("lth", {"preset": "resnet20"}, "preset"),
])
def test_bad_params_raise_gradscope_error(name, kw, match):
    with pytest.raises(GradscopeError, match=match):
        get_schedule(name, **kw)


def test_bad_round_info_raises():
    f = get_schedule("lth")
    with pytest.raises(GradscopeError, match="sparsity"):
        _info(1, sparsity=1.5)
    with pytest.raises(GradscopeError, match="steps_per_epoch"):
        f.build(_opt(), _info(1, spe=0))


# ----------------------------------------------------------------------------- config
def test_schedule_from_config_file_and_flags(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"lo": 0.02, "hi": 0.09, "shape": "one-cycle", "pct_start": 0.2}))
    f = schedule_from_config(ScheduleConfig(schedule="silo", schedule_file=str(path), hi=0.1, p=0.3))
    assert (f.lo, f.hi, f.p, f.shape, f.shape_params["pct_start"]) == (0.02, 0.1, 0.3, "one-cycle", 0.2)
    ypath = tmp_path / "s.yaml"
    ypath.write_text("max_lr: 0.05\nwarmup: 0.2\n")
    g = schedule_from_config(ScheduleConfig(schedule="lth", schedule_file=str(ypath)))
    assert g.max_lr == 0.05 and g.shape_params["warmup"] == 0.2
    # a file written from params() reproduces the factory
    ppath = tmp_path / "p.json"
    ppath.write_text(json.dumps(f.params()))
    assert schedule_from_config(ScheduleConfig(schedule="silo", schedule_file=str(ppath))) == f
    h = schedule_from_config(ScheduleConfig(schedule="silo", preset="vgg19", x="measured"))
    assert (h.lo, h.hi, h.x) == (0.04, 0.10, "measured")


def test_schedule_from_config_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"lo": 0.02, "bogus": 1}))
    before = bad.read_text()
    with pytest.raises(GradscopeError, match="bogus"):
        schedule_from_config(ScheduleConfig(schedule="silo", schedule_file=str(bad)))
    assert bad.read_text() == before  # never touches the user's file
    with pytest.raises(GradscopeError, match="does not exist"):
        schedule_from_config(ScheduleConfig(schedule_file=str(tmp_path / "missing.json")))
    broken = tmp_path / "broken.json"
    broken.write_text("{lo: ")
    with pytest.raises(GradscopeError, match="not valid JSON"):
        schedule_from_config(ScheduleConfig(schedule_file=str(broken)))
    other = tmp_path / "lth.json"
    other.write_text(json.dumps(get_schedule("lth").params()))
    with pytest.raises(GradscopeError, match="--schedule lth"):
        schedule_from_config(ScheduleConfig(schedule="silo", schedule_file=str(other)))
    with pytest.raises(GradscopeError, match="unknown schedule"):
        schedule_from_config(ScheduleConfig(schedule="sgdr"))
    with pytest.raises(GradscopeError, match="beta"):
        schedule_from_config(ScheduleConfig(schedule="silo", beta=0.0))


# ----------------------------------------------------------------------------- plots
def test_plot_schedules_and_peaks_draw_one_line_per_schedule():
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    from gradscope.plot.schedules import plot_peaks, plot_schedules

    facs = {"SILO": get_schedule("silo", preset="resnet20"), "LRR": get_schedule("lrr"),
            "CLR": get_schedule("clr"), "ALLR": get_schedule("allr")}
    ax = plot_schedules(facs, rounds=8, steps_per_round=20, prune_rate=0.2)
    assert isinstance(ax, Axes) and len(ax.lines) == len(facs)
    silo_line = ax.lines[0]
    assert len(silo_line.get_xdata()) == 8 * 20
    peaks = [facs["SILO"].peak_lr(_info(k)) for k in range(8)]
    assert max(silo_line.get_ydata()) == pytest.approx(max(peaks))
    fig, ax2 = plt.subplots()
    assert plot_peaks(facs, rounds=8, prune_rate=0.2, ax=ax2) is ax2
    assert len(ax2.lines) == len(facs)
    np.testing.assert_allclose(ax2.lines[0].get_ydata(), peaks)
    with pytest.raises(GradscopeError):
        plot_peaks({"x": 1}, rounds=3, prune_rate=0.2)
    plt.close("all")


# ----------------------------------------------------------------------------- fidelity to references
# Each reference is the other code's own scheduler (torch) or formula, run step by step; the
# max abs difference asserted is in the test name/docstring.

def test_milestones_floor_rule_equals_multisteplr_for_T_3_to_13():
    """max abs diff 0: drop i at step floor(m_i·T), as MultiStepLR(milestones=[floor(m_i·T)]) per epoch."""
    from gradscope.schedules import milestone_step
    for T in range(3, 14):
        lrs = get_schedule("constant", max_lr=1.0, shape="warmup-step", milestones=[0.5, 0.75],
                           factors=[0.1, 0.01]).lrs(_info(0, spe=1, epochs=T))
        o = _opt()
        ref = torch.optim.lr_scheduler.MultiStepLR(o, milestones=[T // 2, (3 * T) // 4], gamma=0.1)
        want = _run(ref, o, T)
        assert np.max(np.abs(np.array(want) - lrs)) < 1e-15, T
        assert milestone_step(0.5, T) == T // 2  # the same side for T = 3, 7, 11 and 5, 9, 13
        if T >= 4:
            assert 0.01 in [pytest.approx(v) for v in lrs]  # no drop skipped
    lrs = get_schedule("constant", max_lr=1.0, shape="warmup-step").lrs(_info(0, spe=1, epochs=3))
    np.testing.assert_allclose(lrs, [1.0, 0.1, 0.01])  # round() put both drops on step 2: [1, 1, 0.01]
    assert milestone_step(136 / 182, 182 * 391) == 136 * 391  # float error absorbed


def test_lrr_orig_epochs_runs_the_last_t_epochs_of_the_original():
    """max abs diff 0 against the original 182-epoch schedule's tail (t = 50); slr squeezes (diff 0.099)."""
    spe, T, t = 3, 182, 50
    orig = get_schedule("lrr").lrs(_info(0, spe=spe, epochs=T))
    f = get_schedule("lrr", orig_epochs=T)
    tail = f.lrs(_info(2, spe=spe, epochs=t))
    assert np.max(np.abs(tail - orig[-t * spe:])) == 0.0
    opt = _opt()
    np.testing.assert_array_equal(_run(f.build(opt, _info(2, spe=spe, epochs=t)), opt, t * spe), tail)
    assert np.array_equal(f.lrs(_info(0, spe=spe, epochs=t)), get_schedule("slr").lrs(_info(0, spe=spe, epochs=t)))
    squeezed = get_schedule("slr").lrs(_info(2, spe=spe, epochs=t))
    assert np.max(np.abs(squeezed - tail)) == pytest.approx(0.099)  # the number
    # default orig_epochs: the round's own length -> today's behaviour
    assert np.array_equal(get_schedule("lrr").lrs(_info(2, spe=spe, epochs=t)), squeezed)
    from gradscope.schedules import implied_rewind
    assert implied_rewind("slr") == "lr"
    with pytest.raises(GradscopeError, match="orig_epochs must be at least"):
        get_schedule("lrr", orig_epochs=10).lrs(_info(2, spe=spe, epochs=t))


def _bimp_reference(n: int, peak: float) -> list[float]:
    """BIMP's define_retrain_schedule for ALLR (runners/baseRunner.py l.526, 551-563, 595-608), torch schedulers."""
    from bisect import bisect_right

    class SequentialSchedulers(torch.optim.lr_scheduler.SequentialLR):  # BIMP utilities/lr_schedulers.py
        def __init__(self, **kwargs):
            self.optimizer = kwargs["schedulers"][0].optimizer
            super().__init__(**kwargs)

        def step(self):
            self.last_epoch += 1
            idx = bisect_right(self._milestones, self.last_epoch)
            self._schedulers[idx].step()

    o = _opt()
    w = int(0.1 * n)
    for g in o.param_groups:
        g["lr"] = 0.0 if w > 0 else peak
    lin = torch.optim.lr_scheduler.LinearLR(optimizer=o, start_factor=1.0, end_factor=0., total_iters=n - w)
    lin.base_lrs = [peak]
    if w > 0:
        warm = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=w, eta_min=peak)
        lin = SequentialSchedulers(optimizer=o, schedulers=[warm, lin], milestones=[w + 1])
    return _run(lin, o, n)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("n", [5, 20, 100, 137])
def test_allr_shape_equals_bimp_per_step(n):
    """max abs diff < 1e-15·peak vs BIMP's schedulers (int(0.1·n) warm-up, cosine from 0, peak at step W)."""
    peak = 0.3
    got = get_schedule("allr", max_lr=peak).lrs(_info(0, spe=n))
    want = _bimp_reference(n, peak)
    assert np.max(np.abs(got - np.array(want))) < 1e-15
    w = int(0.1 * n)
    if w:
        assert got[0] == 0.0 and got[w] == pytest.approx(peak) and got[w - 1] < peak


def test_allr_norm_counts_module_weights_and_biases_only_as_bimp():
    """BIMP's get_model_norm_square (utilities.py l.18-27) vs ours: equal (rel diff < 1e-6, float32), bare parameters left out."""
    from gradscope import pruning as P

    class WithBare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)
            self.bn = torch.nn.BatchNorm1d(3)
            self.pos = torch.nn.Parameter(torch.full((5,), 2.0))  # a ViT position embedding, say

    torch.manual_seed(0)
    m = WithBare()
    P.attach_masks({"fc": m.fc})
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0] = False
    P.set_masks({"fc": m.fc}, {"fc": mask})

    def bimp(model):
        sq = 0.
        for _, module in model.named_modules():
            for t in ("weight", "bias"):
                if hasattr(module, t) and getattr(module, t) is not None:
                    sq += torch.norm(getattr(module, t).detach(), p=2) ** 2
        return float(sq)

    assert P.parameter_norm_sq(m) == pytest.approx(bimp(m), rel=1e-6)  # BIMP sums in float32
    everything = sum(float(p.detach().pow(2).sum()) for p in m.parameters())
    assert everything - P.parameter_norm_sq(m) > 20.0 - 1e-9  # the bare 5·2² and the pruned weights


def test_lth_warmup_equals_open_lth():
    """max abs diff < 1e-15: open_lth's LambdaLR(lr·min(1, it/W)·gamma^bisect(milestones, it)), 0 at step 0."""
    import bisect
    n, spe, peak = 40, 4, 0.1
    w, ms = int(round(0.1 * n)), [20, 30]
    o = _opt(lr=peak)
    ref = torch.optim.lr_scheduler.LambdaLR(
        o, lambda it: min(1.0, it / w) * 0.1 ** bisect.bisect(ms, it))
    got = get_schedule("lth").lrs(_info(0, spe=spe, epochs=n // spe))
    assert np.max(np.abs(got - np.array(_run(ref, o, n)))) < 1e-15
    assert got[0] == 0.0 and got[w] == pytest.approx(peak)


def test_triangular_cycles_momentum_like_torch_cycliclr():
    """max abs diff < 1e-12 in LR and momentum vs CyclicLR(mode='triangular') with its default momentum 0.8-0.9."""
    total, peak = 40, 0.05
    ref_opt = _opt()
    ref = torch.optim.lr_scheduler.CyclicLR(ref_opt, base_lr=peak / 5, max_lr=peak, step_size_up=10,
                                            mode="triangular")
    opt = _opt()
    sched = get_schedule("constant", max_lr=peak, shape="triangular", cycles=2, div_factor=5.0).build(
        opt, _info(3, spe=total))
    got, want = [], []
    for _ in range(total):
        got.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
        want.append((ref_opt.param_groups[0]["lr"], ref_opt.param_groups[0]["momentum"]))
        opt.step(), sched.step(), ref_opt.step(), ref.step()
    assert np.max(np.abs(np.array(got) - np.array(want))) < 1e-12
    assert min(m for _, m in got) == pytest.approx(0.8) and max(m for _, m in got) == pytest.approx(0.9)


def test_cycling_momentum_on_an_optimizer_without_it_raises():
    p = torch.nn.Parameter(torch.zeros(2))
    rprop = torch.optim.Rprop([p], lr=0.1)
    with pytest.raises(ValueError, match="momentum"):  # torch's own behaviour
        torch.optim.lr_scheduler.OneCycleLR(rprop, max_lr=0.1, total_steps=10)
    for name, kw in (("clr", {}), ("constant", {"shape": "triangular"})):
        with pytest.raises(GradscopeError, match="neither momentum nor betas"):
            get_schedule(name, **kw).build(rprop, _info(0, spe=10))
    get_schedule("clr", cycle_momentum=False).build(rprop, _info(0, spe=10))  # fine without cycling


def _released_resnet20_lrs(max_lr: float, spe: int, epochs: int = 50) -> list[float]:
    """resnet_20_cifar_10.py l.36-41, 205-208, 331-347, transcribed: the LR each iteration sets."""
    stepsize = 20000
    slope = max_lr / stepsize
    iteration_num, out = 0, []
    curr_lr = 0  # args.lr default 0, set at iter_ == 0
    for iter_ in range(epochs):
        for _ in range(spe):
            iteration_num = iteration_num + 1
            if iteration_num <= 20000:
                curr_lr = curr_lr + slope
            if iter_ >= 25:
                curr_lr = max_lr / 10
            if iter_ >= 32:
                curr_lr = max_lr / 100
            out.append(curr_lr)
    return out


def _released_vgg19_lrs(max_lr: float, spe: int, epochs: int = 160) -> list[float]:
    """vgg_19_cifar_10.py l.38-41, 334-351, transcribed."""
    slope = max_lr / 10000
    iteration_num, out = 0, []
    for iter_ in range(epochs):
        for _ in range(spe):
            iteration_num = iteration_num + 1
            curr_lr = iteration_num * slope
            if iter_ >= 14:
                curr_lr = max_lr
            if iter_ >= 80:
                curr_lr = max_lr / 10
            if iter_ >= 120:
                curr_lr = max_lr / 100
            out.append(curr_lr)
    return out


@pytest.mark.parametrize("spe", [563, 782])
def test_silo_released_shape_equals_the_released_scripts_per_step(spe):
    """max abs diff < 1e-13 (ResNet-20 file, 50 epochs: it adds slope up 20000 times in float) and < 1e-15
    (VGG-19 file, 160 epochs: it multiplies) at 563 and 782 steps per epoch."""
    f = get_schedule("silo", preset="released-resnet20")
    info = _info(0, spe=spe, epochs=50)
    peak = f.peak_lr(info)
    assert peak == 0.03  # round 0: the released max_lr = 0.03
    got = f.lrs(info)
    want = np.array(_released_resnet20_lrs(peak, spe))
    assert np.max(np.abs(got - want)) < 1e-13
    assert max(got) == pytest.approx(peak * min(25 * spe, 20000) / 20000)  # 0.70·max_lr at 563
    g = get_schedule("silo", preset="released-vgg19")
    info = _info(0, spe=spe, epochs=160)
    peak = g.peak_lr(info)
    got = g.lrs(info)
    assert np.max(np.abs(got - np.array(_released_vgg19_lrs(peak, spe)))) < 1e-15
    if spe == 782:
        assert max(got) / peak == pytest.approx(14 * 782 / 10000)  # the overshoot to 1.095·max_lr
    short = g.with_params(epochs=20, drop_epochs=[16, 18])  # the per-batch scheduler gives the same values
    info = _info(0, spe=spe // 50, epochs=20)
    opt = _opt()
    np.testing.assert_array_equal(_run(short.build(opt, info), opt, info.total_steps), short.lrs(info))


def test_silo_released_peaks_follow_the_released_cal():
    """Round k's max_lr equals the scripts' cal(1-(1-0.2)^(k-1)) (0.03/0.04 up to round 1), diff < 1e-15."""
    def cal(x, beta, alpha, offset):
        return alpha * 1 / (1 + (x / (1 - x)) ** (-beta)) + offset
    for preset, (alpha, offset) in (("released-resnet20", (0.04, 0.03)), ("released-vgg19", (0.06, 0.04))):
        f = get_schedule("silo", preset=preset)
        for k in range(0, 12):
            want = offset if k <= 1 else cal(1 - (1 - 20 / 100) ** (k - 1), 5, alpha, offset)
            assert abs(f.peak_lr(_info(k, spe=50, epochs=50)) - want) < 1e-15


def test_silo_released_needs_whole_epochs():
    f = get_schedule("silo", preset="released-resnet20")
    with pytest.raises(GradscopeError, match="counts epochs as released .50 per round., but the round has 3"):
        f.lrs(_info(0, spe=50, epochs=3))  # 150 steps would divide into 50 "epochs" of 3: refused
    with pytest.raises(GradscopeError, match="whole epochs"):
        f.lrs(_info(0, spe=21, epochs=1))  # a plain loop's 21 steps are not 50 epochs
    assert len(f.with_params(epochs=3).lrs(_info(0, spe=7, epochs=3))) == 21
    with pytest.raises(GradscopeError, match="drop_epochs"):
        f.with_params(drop_epochs=[32, 25])


def test_calibrated_file_stores_the_whole_within_round_shape(tmp_path):
    """silo.json carries the profiled run's shape parameters, so training with it equals the run (diff 0)."""
    import pandas as pd

    from gradscope.calibrate.core import _run_shape, calibrate_points
    from gradscope.schedules import load_schedule

    profiled = get_schedule("silo", preset="released-resnet20").with_params(epochs=4, drop_epochs=[2, 3],
                                                                            ramp_steps=30)
    rounds = pd.DataFrame({"round": [1, 0], "schedule": [json.dumps({"shape": "constant"}),
                                                         json.dumps(profiled.params())]})
    shape, params = _run_shape(rounds, None)
    assert shape == "silo-released" and params["ramp_steps"] == 30 and params["drop_epochs"] == [2, 3]
    assert _run_shape(rounds, "cosine") == ("cosine", {})  # another shape asked for: its defaults
    x = planned_pruned_fraction(np.arange(10), 0.2, 1)
    pts = pd.DataFrame({"round": np.arange(10), "x": x, "ratio": 1.0,
                        "implied_max_lr": s_curve(x, 0.03, 0.08, 4.0) * np.exp(0.01 * np.sin(np.arange(10)))})
    cal = calibrate_points(pts, p=0.2, shape=shape, shape_params=params)
    cal.to_file(tmp_path / "silo.json", force=True)
    f = load_schedule(str(tmp_path / "silo.json"))
    assert f.shape == "silo-released" and f.shape_params == profiled.shape_params
    info = _info(4, spe=10, epochs=4)
    lrs, ref = f.lrs(info), profiled.with_params(lo=f.lo, hi=f.hi, beta=f.beta, midpoint=f.midpoint).lrs(info)
    assert np.max(np.abs(lrs - ref)) == 0.0


def test_older_silo_presets_differ_from_the_released_lr_by_the_documented_amount():
    """Per step at 563 steps/epoch: preset resnet20 vs released-resnet20 max diff 0.859·max_lr;
    vgg19 vs released-vgg19 0.212·max_lr (docs/recipe-silo-code.md)."""
    for old, new, epochs, want in (("resnet20", "released-resnet20", 50, 0.859), ("vgg19", "released-vgg19", 160, 0.212)):
        info = _info(0, spe=563, epochs=epochs)
        a, b = get_schedule("silo", preset=old), get_schedule("silo", preset=new)
        assert a.peak_lr(info) == b.peak_lr(info)
        assert np.max(np.abs(a.lrs(info) - b.lrs(info))) / a.peak_lr(info) == pytest.approx(want, abs=5e-4)


def test_a_triangular_state_saved_before_momentum_cycling_resumes_as_it_was():
    opt = _opt()
    sched = get_schedule("constant", max_lr=0.1, shape="triangular").build(opt, _info(0, spe=20))
    state = sched.state_dict()
    state["shape_params"] = {"cycles": 1, "div_factor": 10.0}  # as an older gradscope saved it
    for k in ("shape_total", "offset"):
        state.pop(k)
    opt2 = _opt()
    s2 = get_schedule("constant", max_lr=0.1, shape="triangular").build(opt2, _info(0, spe=20))
    s2.load_state_dict(state)
    opt2.param_groups[0]["momentum"] = 0.9
    for _ in range(5):
        opt2.step()
        s2.step()
    assert opt2.param_groups[0]["momentum"] == 0.9  # not cycled: the old run's behaviour
    assert opt2.param_groups[0]["lr"] == pytest.approx(sched.lr_at(5))
