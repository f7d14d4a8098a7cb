"""The README's 'attach the recorder to your own training loop' example runs as written:
record (the Python block) -> fit -> calibrate (the shell block that follows it)."""
import json
import re
import shlex
import subprocess

import pytest
import torch
from torch import nn

from gradscope.store import open_run

from conftest import PY, ROOT, cli_env


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only contend on a shared CI machine
    yield
    torch.set_num_threads(n)


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
        else:  # random data does not narrow: calibrate says so and writes nothing, as README says
            assert out.returncode == 2 and "--force" in out.stderr and "status" in out.stdout + out.stderr
            assert not (tmp_path / "silo.json").exists()
            forced = subprocess.run([PY, "-m", "gradscope", *cmd[1:], "--force"], cwd=tmp_path, env=_env(),
                                    capture_output=True, text=True, timeout=300)
            assert forced.returncode == 0, forced.stderr
    params = json.loads((tmp_path / "silo.json").read_text())
    assert params["lo"] == pytest.approx(0.05, rel=0.5) and params["p"] == 0.2
    assert params["notes"]["status"] in ("flat", "falling")  # the file says what the data support


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
    rec.close()
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
