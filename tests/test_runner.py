import json
import random
import subprocess
import time
from pathlib import Path

import pytest
import torch

from gradscope import GradscopeError
from gradscope.callbacks import Callback
from gradscope.train import PruningRun
from gradscope.train.checkpoint import load_torch

from conftest import PY, ROOT, cli_env


def test_three_rounds_sparsity_and_accuracy(tiny_config):
    lines = []
    df = PruningRun(tiny_config, log=lines.append).run()
    assert list(df["round"]) == [0, 1, 2]
    assert df["sparsity"].tolist() == pytest.approx([0.0, 0.2, 0.36], abs=1e-3)
    assert (df["val_acc"] > 0.5).all()  # 10 classes: chance is 0.1
    out = Path(tiny_config.out)
    assert json.loads((out / "rounds.json").read_text())[2]["sparsity"] == pytest.approx(0.36, abs=1e-3)
    assert "torch" in json.loads((out / "versions.json").read_text())["versions"]
    r2 = load_torch(out / "round_2.pt", what="round file")
    masks = r2["masks"]
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert 1 - kept / total == pytest.approx(0.36, abs=1e-3)
    assert r2["result"]["rewind_point"].startswith("init")
    assert len(r2["epochs"]) == 1 and "val_acc" in r2["epochs"][0]
    assert any("36.0%" in l for l in lines)
    # a finished run is not trained again
    again = PruningRun(tiny_config, log=lambda s: None).run()
    assert again["val_acc"].tolist() == df["val_acc"].tolist()


class _Snap(Callback):
    def __init__(self, run):
        self.run, self.at_start = run, {}

    def on_round_start(self, state):
        self.at_start[state.round] = {n: (l.weight_orig.detach().clone(), l.weight_mask.detach().clone())
                                      for n, l in self.run.ctx.layers.items()}


@pytest.mark.parametrize("mode", ["init", "lr", "early"])
def test_rewind_modes(tiny_config, mode):
    tiny_config.prune.rewind = mode
    tiny_config.prune.rounds = 2
    tiny_config.prune.rewind_step = 3 if mode == "early" else None
    run = PruningRun(tiny_config, log=lambda s: None)
    snap = _Snap(run)
    run.user_callbacks.append(snap)
    run.run()
    w0 = snap.at_start[0]
    w1 = snap.at_start[1]
    end0 = load_torch(Path(tiny_config.out) / "round_0.pt", what="round file")
    for n in w0:
        same_as_init = torch.equal(w1[n][0], w0[n][0])
        assert same_as_init == (mode == "init"), n
        assert (w1[n][1] == 0).any()  # pruned before round 1 starts
    if mode == "early":
        assert run.state.early is not None
        for n in w0:
            assert torch.equal(w1[n][0], run.state.early[n + ".weight"])
    assert end0["result"]["round"] == 0


def test_refuses_full_sparsity_and_bad_flags(tiny_config):
    tiny_config.prune.rounds = 200
    tiny_config.prune.prune_rate = 0.5
    with pytest.raises(GradscopeError, match="100 %"):
        PruningRun(tiny_config, log=lambda s: None).run()
    tiny_config.prune.rounds = 2
    tiny_config.prune.rewind = "sideways"
    with pytest.raises(GradscopeError, match="--rewind"):
        PruningRun(tiny_config)


def test_other_config_in_same_dir_is_refused(tiny_config):
    tiny_config.prune.rounds = 1
    PruningRun(tiny_config, log=lambda s: None).run()
    tiny_config.train.epochs = 2
    with pytest.raises(GradscopeError, match="different config"):
        PruningRun(tiny_config, log=lambda s: None).run()


def _cmd(out):
    return [PY, "-m", "gradscope", "prune", "--dataset", "digits", "--model", "small_cnn", "--rounds", "3",
            "--epochs", "2", "--batch-size", "32", "--threads", "1", "--no-progress", "--schedule", "lth",
            "--max-lr", "0.05", "--cache-dir", str(Path(out).parent / "cache"), "--out", str(out)]


def _kill_then_finish(cmd, started: Path, times: int, seed: int) -> None:
    """SIGKILL ``cmd`` at random moments after ``started`` appears, ``times`` times; then let it finish."""
    rng = random.Random(seed)
    for _ in range(times):
        p = subprocess.Popen(cmd, env=cli_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not started.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 1.5))
        p.kill()
        p.wait()
    subprocess.run(cmd, check=True, env=cli_env(), cwd=ROOT, capture_output=True)


def test_sigkill_resume_matches_uninterrupted(tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(_cmd(ref), check=True, env=cli_env(), cwd=ROOT, capture_output=True)
    killed = tmp_path / "killed"
    _kill_then_finish(_cmd(killed), killed / "checkpoint.pt", times=3, seed=0)
    a = json.loads((ref / "rounds.json").read_text())
    b = json.loads((killed / "rounds.json").read_text())
    for ra, rb in zip(a, b, strict=True):
        for key in ("round", "sparsity", "val_acc", "test_acc", "train_loss", "max_lr"):
            assert ra[key] == rb[key], (key, ra, rb)
    for k in range(3):
        ma = load_torch(ref / f"round_{k}.pt", what="round file")["masks"]
        mb = load_torch(killed / f"round_{k}.pt", what="round file")["masks"]
        assert all(torch.equal(ma[n], mb[n]) for n in ma)


def test_failed_start_leaves_out_dir_usable(tiny_config):
    tiny_config.data.dataset = "cifar10"
    tiny_config.data.data_root = "/nonexistent/cifar"
    with pytest.raises(GradscopeError, match="CIFAR-10 not found"):
        PruningRun(tiny_config, log=lambda s: None).run()
    assert not (Path(tiny_config.out) / "config.json").exists()
    tiny_config.data.dataset, tiny_config.data.data_root = "digits", None
    tiny_config.prune.rounds = 1
    tiny_config.record.record = True
    df = PruningRun(tiny_config, log=lambda s: None).run()
    assert len(df) == 1 and (Path(tiny_config.out) / "run.h5").exists()


def test_sigkill_during_profile_keeps_run_file_exact(tmp_path):
    """A recorded run killed and resumed holds exactly the windows of an uninterrupted one."""
    from gradscope.store import open_run

    def cmd(out):
        c = _cmd(out)
        c[c.index("prune")] = "profile"
        return c

    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(cmd(ref), check=True, env=cli_env(), cwd=ROOT, capture_output=True)
    _kill_then_finish(cmd(killed), killed / "run.h5", times=2, seed=1)
    keys = ["round", "window", "layer"]
    with open_run(ref / "run.h5") as a, open_run(killed / "run.h5") as b:
        ma, mb = a.moments().sort_values(keys).reset_index(drop=True), b.moments().sort_values(keys).reset_index(drop=True)
        assert not mb.duplicated(keys).any()
        assert len(ma) == len(mb) == 3 * 2 * ma["layer"].nunique()
        for col in ("count", "sum", "sumsq", "min", "max"):
            assert (ma[col].to_numpy() == mb[col].to_numpy()).all(), col
        ca, _, ia = a.histograms()
        cb, _, ib = b.histograms()
        oa, ob = ia.sort_values(keys).index, ib.sort_values(keys).index
        assert (ca[oa] == cb[ob]).all()
        assert len(a.rounds()) == len(b.rounds()) == 3


def test_divergence_stops_with_a_clear_error_and_keeps_earlier_rounds(tiny_config):
    """A finite but exploding loss (max_lr 1e3) is divergence, not a result."""
    from gradscope.train import Diverged

    tiny_config.schedule.max_lr = 1e3
    with pytest.raises(Diverged, match="diverged in round 0"):
        PruningRun(tiny_config, log=lambda s: None).run()
    assert (Path(tiny_config.out) / "checkpoint.pt").exists()  # the run is still there to inspect


def test_adamw_path_trains_with_the_same_schedules(tiny_config):
    """--optimizer adamw: AdamW with beta1 = momentum and decoupled weight decay; ViTs' no-decay
    parameters (norms, embeddings) in a group of their own."""
    from gradscope.train import make_optimizer
    from gradscope.models import get_model
    from gradscope.config import TrainConfig

    tiny_config.train.optimizer = "adamw"
    tiny_config.schedule.max_lr = 0.003
    tiny_config.prune.rounds = 2
    df = PruningRun(tiny_config, log=lambda s: None).run()
    assert (df["val_acc"] > 0.3).all() and df["max_lr"].tolist() == [0.003, 0.003]
    vit = get_model("vit_tiny", (1, 8, 8), 10)
    opt = make_optimizer(vit, TrainConfig(optimizer="adamw", weight_decay=0.05, momentum=0.9), 0.001)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.9, 0.999)
    decays = {g["weight_decay"] for g in opt.param_groups}
    assert decays == {0.05, 0.0}
    nodecay = next(g for g in opt.param_groups if g["weight_decay"] == 0.0)
    assert any(p is vit.pos_embed for p in nodecay["params"])


def test_user_model_from_module_callable(tiny_config, tmp_path, monkeypatch):
    pkg = tmp_path / "mymodels.py"
    pkg.write_text("import torch.nn as nn\n"
                   "def build(shape, k):\n"
                   "    return nn.Sequential(nn.Flatten(), nn.Linear(shape[0]*shape[1]*shape[2], 32), nn.ReLU(),"
                   " nn.Linear(32, k))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tiny_config.model.model = "mymodels:build"
    tiny_config.prune.rounds = 2
    df = PruningRun(tiny_config, log=lambda s: None).run()
    assert df["sparsity"].tolist() == pytest.approx([0.0, 0.2], abs=1e-3)
    tiny_config.model.model = "mymodels:nothere"
    tiny_config.out = str(tmp_path / "other")
    with pytest.raises(GradscopeError, match="no attribute"):
        PruningRun(tiny_config, log=lambda s: None).run()


def test_silo_auto_state_is_checkpointed():
    """The calibrated curve is callback state: saved, restored, and it sets the peak."""
    import gradscope.calibrate  # noqa: F401
    from gradscope.calibrate.auto import SiloAutoCalibration
    from gradscope.schedules import get_schedule, planned_round_info

    a = get_schedule("silo-auto", lo=0.03, hi=0.05)
    info = planned_round_info(6, 0.2)
    prior = a.peak_lr(info)
    cb = SiloAutoCalibration(a, Path("unused.h5"))
    a.hi, a.calibrated_at = 0.09, 3
    saved = json.loads(json.dumps(cb.state_dict()))  # plain values only
    b = get_schedule("silo-auto", lo=0.03, hi=0.05)
    SiloAutoCalibration(b, Path("unused.h5")).load_state_dict(saved)
    assert b.peak_lr(info) == a.peak_lr(info) > prior and b.calibrated_at == 3
    assert "calibrated S-curve since round 3" in b.round_params(info)["note"]


def test_progress_bars_follow_the_terminal(tiny_config, monkeypatch):
    from gradscope.train.trainer import progress_enabled

    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert progress_enabled(None) is False and progress_enabled(True) is True and progress_enabled(False) is False


def test_a_finished_run_says_so_and_more_rounds_extend_it(tiny_config):
    """Re-running a finished run: one 'already complete; nothing to do' line. --rounds 3 on a
    finished 2-round run trains round 2 only; earlier rounds stay as they were; fewer rounds
    than finished, or any other change, is refused before anything is written (issue 24.6)."""
    import json

    tiny_config.prune.rounds = 2
    first = PruningRun(tiny_config, log=lambda s: None).run()
    out = Path(tiny_config.out)
    before = (out / "round_1.pt").read_bytes()
    lines = []
    PruningRun(tiny_config, log=lines.append).run()
    assert any("already complete; nothing to do" in l for l in lines), lines
    tiny_config.prune.rounds = 3
    lines = []
    table = PruningRun(tiny_config, log=lines.append).run()
    assert any(l.startswith(f"extending {out} from 2 to 3 rounds") for l in lines), lines
    assert not any("nothing to do" in l for l in lines)
    assert list(table["round"]) == [0, 1, 2]
    assert table["test_acc"][:2].tolist() == first["test_acc"].tolist()  # rounds 0 and 1 untouched
    assert (out / "round_1.pt").read_bytes() == before
    assert json.loads((out / "config.json").read_text())["prune"]["rounds"] == 3
    tiny_config.prune.rounds = 2
    with pytest.raises(GradscopeError, match="already holds 3 finished rounds"):
        PruningRun(tiny_config, log=lambda s: None).run()
    assert json.loads((out / "config.json").read_text())["prune"]["rounds"] == 3  # nothing rewritten
    tiny_config.prune.rounds, tiny_config.prune.prune_rate = 4, 0.3
    with pytest.raises(GradscopeError, match=r"different config \(prune.prune_rate\); only --rounds may change"):
        PruningRun(tiny_config, log=lambda s: None).run()


def test_silo_defaults_are_said_and_stored(tiny_config):
    """--schedule silo without lo/hi/preset/file: one line names the released ResNet-20 constants
    and that they were not made for this model; config.json stores every value used (issue 24.2)."""
    tiny_config.prune.rounds = 1
    tiny_config.schedule.schedule, tiny_config.schedule.max_lr = "silo", None
    lines = []
    PruningRun(tiny_config, log=lines.append).run()
    note = [l for l in lines if l.startswith("schedule silo:")]
    assert len(note) == 1 and "lo 0.03, hi 0.07, beta 5, midpoint 0.5" in note[0], lines
    assert "not for small_cnn" in note[0] and "--schedule-file" in note[0]
    saved = json.loads((Path(tiny_config.out) / "config.json").read_text())
    assert saved["schedule"]["lo"] is None  # what was given ...
    rows = json.loads((Path(tiny_config.out) / "rounds.json").read_text())
    assert rows[0]["n_test"] > 100 and rows[0]["n_val"] > 100  # the sizes behind each accuracy's uncertainty
    used = saved["schedule_used"]  # ... and what ran
    assert used["name"] == "silo" and (used["lo"], used["hi"], used["beta"], used["midpoint"]) == (0.03, 0.07, 5.0, 0.5)
    tiny_config.schedule.lo, tiny_config.schedule.hi = 0.02, 0.04  # given: no line
    tiny_config.schedule.beta, tiny_config.schedule.midpoint = 4.0, 0.4
    tiny_config.out += "-given"
    lines = []
    PruningRun(tiny_config, log=lines.append).run()
    assert not any(l.startswith("schedule silo:") for l in lines)


def test_off_a_terminal_a_heartbeat_line_per_epoch(tiny_config, monkeypatch):
    """No progress bars (not a terminal): with GRADSCOPE_HEARTBEAT_S=0 every epoch (and step) says
    it is alive; with the default 30 s a seconds-long run prints only its table (issue 24.9)."""
    tiny_config.prune.rounds, tiny_config.train.epochs = 1, 2
    monkeypatch.setenv("GRADSCOPE_HEARTBEAT_S", "0")
    lines = []
    PruningRun(tiny_config, log=lines.append).run()
    done = [l for l in lines if " done: train_loss " in l]
    assert [l.split(" done")[0] for l in done] == ["  round 0 epoch 1/2", "  round 0 epoch 2/2"]
    assert all("val_acc " in l and "s into the round" in l for l in done)
    assert any(l.startswith("  round 0 epoch 1/2: step 1/") for l in lines)
    monkeypatch.delenv("GRADSCOPE_HEARTBEAT_S")
    tiny_config.out += "-quiet"
    lines = []
    PruningRun(tiny_config, log=lines.append).run()
    assert not any("s into the round" in l for l in lines)
    monkeypatch.setenv("GRADSCOPE_HEARTBEAT_S", "soon")
    with pytest.raises(GradscopeError, match="GRADSCOPE_HEARTBEAT_S must be a number"):
        PruningRun(tiny_config, log=lambda s: None).run()
