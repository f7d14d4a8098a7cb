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
    lrs = f.lrs(_info(2, spe=4, epochs=10))  # 40 steps
    assert lrs[0] == 0.1 and lrs[19] == 0.1
    assert lrs[20] == pytest.approx(0.01) and lrs[29] == pytest.approx(0.01)
    assert lrs[30] == pytest.approx(0.001)


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


def test_param_groups_keep_their_lr_ratio_and_overrun_holds_last_value():
    opt = _opt(groups=2)  # groups at lr 1 and 2: the larger follows the closed form, the other half of it
    sched = get_schedule("lrr").build(opt, _info(1, spe=2, epochs=2))
    for _ in range(10):  # past the 4 steps of the round: no error, last value kept
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.0005), pytest.approx(0.001)]
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
    lrs = f.lrs(_info(0, spe=10, epochs=2))  # BIMP: warm-up over 10 %, then linear decay to 0
    np.testing.assert_allclose(lrs[:2], [0.1, 0.2])
    np.testing.assert_allclose(lrs[2:], 0.2 * (1 - np.arange(18) / 18))


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
