"""Oracle candidates and study commands as Ray tasks on a local Ray instance (2 CPUs, as in CI).

Ray is an optional extra: these tests skip, saying so, only where it is not installed.
"""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from gradscope import GradscopeError
from gradscope.cli import main
from gradscope.train.checkpoint import load_torch
from gradscope.train.oracle import CandidateJob

from conftest import PY, ROOT, cli_env

ORACLE = ["oracle", "--dataset", "digits", "--model", "small_cnn", "--epochs", "1", "--threads", "1",
          "--no-progress", "--batch-size", "64", "--rounds", "2", "--schedule", "lth",
          "--grid", "0.02,0.05,0.2", "--seeds", "1", "--max-extend", "0"]


def test_ray_missing_is_one_clear_line(tmp_path):
    """Without Ray installed, --ray says how to get it (one line, exit 2), whatever else is there."""
    code = ("import sys; sys.modules['ray'] = None; from gradscope.cli import main; "
            f"sys.exit(main({[*ORACLE, '--rounds', '1', '--out', str(tmp_path / 'o'), '--ray']!r}))")
    r = subprocess.run([PY, "-c", code], env=cli_env(), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("gradscope: error:") == 1 and "pip install 'gradscope[ray]'" in r.stderr


def test_ray_start_timeout_is_one_clear_error(monkeypatch):
    """ray.init raises a bare Exception when its node times out on a loaded machine (seen with
    --workers 2): one GradscopeError, not a traceback."""
    import types

    from gradscope.train import ray_jobs

    def init(**kw):
        raise Exception("node timed out during startup")  # noqa: TRY002 - what Ray raises

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=init)
    monkeypatch.setattr(ray_jobs, "import_ray", lambda: fake)
    with pytest.raises(GradscopeError, match="could not start or reach a local Ray instance: node timed out"):
        ray_jobs.ensure_ray(num_cpus=2)


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray instance for the module; drivers started by the tests join it."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'gradscope[ray]'); not installed")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + (old or "")  # Ray's workers import this gradscope
    # Ray gives its raylet a hard-coded 30 s to register (ray/_private/node.py), which a loaded
    # machine can miss: a failed start is retried (a timing of Ray's, not of what is tested)
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception("...timed out during startup")
            ray.shutdown()
            if "timed out" not in str(e) or attempt == 2:
                raise
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same Oracle, candidates one after the other in this process."""
    d = tmp_path_factory.mktemp("ray")
    out = d / "seq"
    assert main([*ORACLE, "--cache-dir", str(d / "cache"), "--out", str(out), "--workers", "1"]) == 0
    return out


def _candidates(out: Path) -> dict:
    """Candidate file name -> (val_acc, test_acc, per-example val correctness)."""
    res = {}
    for f in sorted((out / "oracle").glob("round_*/lr_*.pt")):
        d = load_torch(f, what="an Oracle candidate")
        res[f"{f.parent.name}/{f.name}"] = (d["result"]["val_acc"], d["result"]["test_acc"], d["val_correct"])
    return res


def _same_as(reference: Path, out: Path) -> None:
    a, b = _candidates(reference), _candidates(out)
    assert sorted(a) == sorted(b) and len(a) == 2 * 3
    for k in a:
        assert a[k][:2] == b[k][:2], k
        assert torch.equal(a[k][2], b[k][2]), k
    ra, rb = (json.loads((d / "rounds.json").read_text()) for d in (reference, out))
    assert [(r["max_lr"], r["val_acc"], r["test_acc"]) for r in ra] == [(r["max_lr"], r["val_acc"], r["test_acc"]) for r in rb]


def _oracle_cli(out: Path, *extra, address: str, wait=True):
    env = {**cli_env(), "RAY_ADDRESS": address}  # `--ray` joins the test's Ray instead of starting one
    cmd = [PY, "-m", "gradscope", *ORACLE, "--cache-dir", str(out.parent / "cache"), "--out", str(out), *extra]
    p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return p
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr[-3000:]
    return stdout


def test_oracle_on_ray_gives_the_same_candidates(ray_address, reference):
    out = reference.parent / "ray"
    stdout = _oracle_cli(out, "--ray", address=ray_address)
    assert "as Ray tasks" in stdout
    _same_as(reference, out)


@dataclass(frozen=True)
class _KilledOnce(CandidateJob):
    """A candidate whose first attempt dies (SIGKILL) after training, as it is about to write its result."""

    marker: str = ""

    def run(self, threads=None):
        m = Path(self.marker)
        if not m.exists():
            m.touch()
            import gradscope.train.oracle as O
            O.save_torch = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        return super().run(threads)


def test_killed_worker_is_rerun_and_the_command_continues(ray_address, reference):
    """A candidate's worker is killed mid-job: Ray runs it again, no half-written file is left,
    and the same command then continues (finished candidates are not run again)."""
    import ray

    from gradscope.train.ray_jobs import RayExecutor

    ray.cloudpickle.register_pickle_by_value(sys.modules[_KilledOnce.__module__])
    out = reference.parent / "killed"
    args = [*ORACLE, "--cache-dir", str(reference.parent / "cache"), "--out", str(out)]
    assert main([*args, "--workers", "0"]) == 0  # round 0's start state, candidates printed
    killed = _KilledOnce(str(out), 0, 0.05, 0, marker=str(out / "killed-once"))
    jobs = [CandidateJob(str(out), 0, 0.02), killed, CandidateJob(str(out), 0, 0.2)]
    RayExecutor(ray_address, max_retries=2).run(jobs, log=lambda s: None)
    assert Path(killed.marker).exists() and all(j.done for j in jobs)  # it died once, then finished
    assert not list((out / "oracle").rglob("*.tmp"))
    before = {p: p.stat().st_mtime_ns for p in (out / "oracle" / "round_0").glob("lr_*.pt")}
    _oracle_cli(out, "--ray", address=ray_address)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    _same_as(reference, out)


def test_killed_driver_continues_where_it_stopped(ray_address, reference):
    """The driver (the `gradscope oracle --ray` process) is killed once candidates have finished;
    starting it again runs only what is missing and ends as the sequential run does."""
    out = reference.parent / "driver"
    p = _oracle_cli(out, "--ray", address=ray_address, wait=False)
    deadline = time.time() + 300
    while not list((out / "oracle").glob("round_*/lr_*.pt")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.kill()
    p.communicate()
    done = {f: f.stat().st_mtime_ns for f in (out / "oracle").glob("round_*/lr_*.pt")}
    assert 0 < len(done) < 6
    _oracle_cli(out, "--ray", address=ray_address)
    assert {f: f.stat().st_mtime_ns for f in done} == done
    _same_as(reference, out)


def test_run_configs_runs_commands_and_resumes(ray_address, tmp_path):
    """Study configurations as Ray tasks: each command runs in its own process, a second call
    finds them finished, and a failing command is named with its log."""
    from gradscope.train.ray_jobs import run_configs

    base = ["prune", "--dataset", "digits", "--model", "small_cnn", "--epochs", "1", "--threads", "1",
            "--no-progress", "--rounds", "1", "--cache-dir", str(tmp_path / "cache")]
    cmds = [[*base, "--max-lr", str(lr), "--schedule", "lth", "--out", str(tmp_path / f"run{i}")]
            for i, lr in enumerate((0.02, 0.1))]
    res = run_configs(cmds, tmp_path / "logs", address=ray_address, log=lambda s: None)
    assert [r.ok for r in res] == [True, True]
    rows = [json.loads((tmp_path / f"run{i}" / "rounds.json").read_text()) for i in range(2)]
    assert [r[0]["max_lr"] for r in rows] == [0.02, 0.1]
    t0 = [(tmp_path / f"run{i}" / "round_0.pt").stat().st_mtime_ns for i in range(2)]
    run_configs(cmds, tmp_path / "logs2", address=ray_address, log=lambda s: None)
    assert [(tmp_path / f"run{i}" / "round_0.pt").stat().st_mtime_ns for i in range(2)] == t0
    with pytest.raises(GradscopeError, match="1 of 2 commands failed") as e:
        run_configs([cmds[0], [*base, "--model", "nope", "--out", str(tmp_path / "bad")]], tmp_path / "logs3",
                    address=ray_address, log=lambda s: None)
    log = str(e.value).split("see ")[1]
    assert "unknown model" in Path(log).read_text()
