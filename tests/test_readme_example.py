"""The README's 'attach the recorder to your own training loop' example runs as written:
record (the Python block) -> fit -> calibrate (the shell block that follows it)."""
import json
import os
import re
import shlex
import subprocess

import pytest
import torch
from torch import nn

from gradscope.store import open_run

from conftest import PY, ROOT, cli_env


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread per test


def _env():
    return {**cli_env(), "OMP_NUM_THREADS": "1"}


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Attach the recorder to your own training loop")
    return text[start: text.index("\n## ", start + 1)]


def test_readme_recorder_snippet_record_fit_calibrate(tmp_path, monkeypatch):
    sec = _section()
    code = re.search(r"```python\n(.*?)```", sec, re.S).group(1)
    shell = re.search(r"```bash\n(.*?)```", sec, re.S).group(1)
    assert "GradientRecorder" in code and "rec.step()" in code
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    xs, ys = torch.randn(96, 1, 8, 8), torch.randint(0, 3, (96,))
    loader = [(xs[i:i + 8], ys[i:i + 8]) for i in range(0, len(ys), 8)] * 10  # 120 steps per round
    ns = {"model": model, "loader": loader, "loss_fn": nn.functional.cross_entropy,
          "opt": torch.optim.SGD(model.parameters(), lr=0.05)}
    monkeypatch.chdir(tmp_path)
    exec(code, ns)  # noqa: S102 - our own README
    with open_run(tmp_path / "run.h5") as r:
        m = r.moments()
        rounds = r.rounds()
        assert set(m["layer"]) == {"0"}  # only the conv feeds a ReLU (through BatchNorm)
        assert list(rounds["round"]) == [0, 1, 2, 3, 4] and (rounds["max_lr"] == 0.05).all()
        assert rounds["sparsity"].tolist() == pytest.approx([1 - 0.8 ** k for k in range(5)], abs=0.01)
        assert r.config["prune"]["prune_rate"] == 0.2
        assert len(m) == 5 * 2  # per round: a window of 100 steps and the rest, flushed by end_round
        kept = r.layer_rounds().query("layer == '0'").set_index("round")["kept"]
        assert int(m["count"].sum()) == sum(120 * kept[k] for k in range(5))
    for line in shell.strip().splitlines():
        cmd = shlex.split(line.split("#")[0])
        assert cmd[0] == "gradscope"
        out = subprocess.run([PY, "-m", "gradscope", *cmd[1:]], cwd=tmp_path, env=_env(), capture_output=True,
                             text=True, timeout=300)
        if cmd[1] == "fit":
            assert out.returncode == 0, out.stderr
            table = out.stdout.split("\n\n")[0].splitlines()
            assert len(table) >= 2 + 5  # a title, a header and a row per round
        else:  # 5 rounds give 3 residual dof: no verdict either way, and nothing is written
            assert out.returncode == 2, out.stdout + out.stderr
            assert "view survivors" in out.stdout and "underdetermined" in out.stdout
            assert "6 rounds" in out.stdout + out.stderr and "--force" in out.stderr
            assert not (tmp_path / "silo.json").exists()
            # the papers' view: its rise is mostly sqrt(density), split off and printed as such
            allv = subprocess.run([PY, "-m", "gradscope", *cmd[1:], "--view", "all"], cwd=tmp_path,
                                  env=_env(), capture_output=True, text=True, timeout=300)
            assert allv.returncode == 2 and "density alone (pruning-only null)" in allv.stdout
            assert not (tmp_path / "silo.json").exists()


def test_readme_plain_loop_without_rounds_is_round_0(tmp_path):
    """No start_round/end_round: close() writes round 0, and `gradscope fit` prints real tables."""
    from gradscope.record import GradientRecorder

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = GradientRecorder(model, tmp_path / "run.h5", window=10, max_lr=0.1)
    for _ in range(25):
        loss = nn.functional.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 3, (8,)))
        opt.zero_grad()
        loss.backward()
        rec.step()
        opt.step()
    from gradscope.store.diskio import run_file_lock_path

    lock = run_file_lock_path(str(tmp_path / "run.h5"))
    assert os.path.exists(lock)  # the recorder's writer holds the run file while it records
    rec.close()
    assert not os.path.exists(lock)  # close() releases it at once (it lasted until garbage collection)
    with open_run(tmp_path / "run.h5") as r:
        rounds = r.rounds()
        assert list(rounds["round"]) == [0] and rounds["max_lr"][0] == 0.1 and rounds["sparsity"][0] == 0.0
        assert list(r.layer_rounds()["kept"]) == [512, 96]
        assert len(r.moments()) == 3
    out = subprocess.run([PY, "-m", "gradscope", "fit", "run.h5", "--bootstrap", "0"], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    narrowing = out.stdout.split("\n\n")[0].splitlines()
    assert len(narrowing) == 3 and narrowing[2].split()[0] == "0"  # title, header, round 0


def _schedule_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Use a gradscope schedule in your own training loop")
    return text[start: text.index("\n## ", start + 1)]


def test_readme_schedule_snippet_runs_as_written_and_raises_max_lr_along_the_s_curve():
    code = re.search(r"```python\n(.*?)```", _schedule_section(), re.S).group(1)
    code = code.replace("    # prune, rewind ...", "    peaks.append(max(seen)); seen.clear()")
    code = code.replace("opt.step(); sched.step()", "opt.step(); sched.step(); seen.append(sched.get_last_lr()[0])")
    model = nn.Linear(4, 2)
    xs, ys = torch.randn(40, 4), torch.randint(0, 2, (40,))
    ns = {"model": model, "loader": [(xs[i:i + 8], ys[i:i + 8]) for i in range(0, 40, 8)], "epochs": 4,
          "loss_fn": nn.functional.cross_entropy, "opt": torch.optim.SGD(model.parameters(), lr=0.1),
          "peaks": [], "seen": []}
    exec(code, ns)  # noqa: S102 - our own README
    assert isinstance(ns["sched"], torch.optim.lr_scheduler.LRScheduler)
    peaks = ns["peaks"]
    assert len(peaks) == 6 and peaks[0] == pytest.approx(0.02, rel=0.05) and peaks[-1] > 3 * peaks[0]
    assert all(b >= a - 1e-12 for a, b in zip(peaks, peaks[1:]))  # max_lr never falls along the S-curve


def test_load_schedule_reads_a_calibrated_file(tmp_path):
    from gradscope import GradscopeError
    from gradscope.schedules import get_schedule, load_schedule

    f = tmp_path / "silo.json"
    f.write_text(json.dumps({"schedule": "silo", "lo": 0.03, "hi": 0.09, "status": "supported", "notes": ["x"]}))
    assert load_schedule(str(f)).params() == get_schedule("silo", lo=0.03, hi=0.09).params()
    f.write_text(json.dumps({"lo": 0.03}))
    with pytest.raises(GradscopeError, match="does not say which schedule"):
        load_schedule(str(f))
