"""Files gradscope reads back never run code, and damaged ones end in one line (issue 16);
writes fail in one line and keep the previous file; stale temp files are cleaned (issue 11)."""
from __future__ import annotations

import ast
import errno
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PY, ROOT, cli_env
from gradscope import GradscopeError, InternalError
from gradscope.cli import main
import faultlib as F
from gradscope.train import checkpoint as C
from gradscope.train.checkpoint import clean_stale_temps, load_torch, save_json, save_torch

RUN_ARGS = ["--dataset", "digits", "--rounds", "2", "--epochs", "1", "--threads", "1", "--no-progress",
            "--batch-size", "64", "--schedule", "lth", "--max-lr", "0.05"]


class Payload:
    """A pickle whose loading would create ``marker`` (what a hostile file would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_malicious(path: Path, marker: Path, fmt: str, keys=("result", "model")) -> None:
    """A file shaped like ours (a dict with the expected keys) whose values carry the payload."""
    obj = {k: Payload(marker) for k in keys}
    if fmt == "torch":
        torch.save(obj, path)  # zip container with the pickle inside, as torch.save writes
    else:
        with open(path, "wb") as f:  # a bare pickle, as pickle.dump writes
            pickle.dump(obj, f)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def run_cli(capsys, argv) -> tuple[int, list[str]]:
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


def assert_one_line(rc: int, lines: list[str], *words: str) -> None:
    assert rc == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("gradscope: error: ")
    assert "Traceback" not in lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def prune_run(tmp_path_factory) -> Path:
    """A finished 2-round prune run (checkpoint.pt, round_0.pt, round_1.pt)."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert main(["prune", *RUN_ARGS, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(prune_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(prune_run, dst)
    return dst


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory) -> Path:
    """An Oracle run waiting for its round-0 candidates (start.pt written, nothing trained)."""
    out = tmp_path_factory.mktemp("oracle") / "run"
    rc = main(["oracle", *RUN_ARGS, "--grid", "0.01,0.05,0.25", "--seeds", "1", "--workers", "0", "--out", str(out)])
    assert rc == 0 and (out / "oracle" / "round_0" / "start.pt").exists()  # jobs handed out: exit 0
    return out


@pytest.fixture
def oracle_copy(oracle_run, tmp_path) -> Path:
    dst = tmp_path / "orun"
    shutil.copytree(oracle_run, dst)
    return dst


# ----------------------------------------------------------------------------- checkpoint
@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_resume_refuses_malicious_checkpoint_without_running_it(run_copy, tmp_path, capsys, fmt):
    marker = tmp_path / "PWNED"
    write_malicious(run_copy / "checkpoint.pt", marker, fmt, keys=("pos", "model"))
    rc, lines = run_cli(capsys, ["prune", *RUN_ARGS, "--out", str(run_copy)])
    assert_one_line(rc, lines, str(run_copy / "checkpoint.pt"),
                    "is not a gradscope checkpoint or was written by an unsafe tool; refusing to load it")
    assert not marker.exists()


def test_resume_with_truncated_checkpoint_is_one_line(run_copy, capsys):
    truncate(run_copy / "checkpoint.pt")
    rc, lines = run_cli(capsys, ["prune", *RUN_ARGS, "--out", str(run_copy)])
    assert_one_line(rc, lines, str(run_copy / "checkpoint.pt"), "truncated or corrupt")


@pytest.mark.parametrize("obj, words", [([1, 2, 3], "holds a list"), ({"model": {}}, "lacks 'state'")])
def test_resume_with_wrong_structure_checkpoint_is_one_line(run_copy, capsys, obj, words):
    torch.save(obj, run_copy / "checkpoint.pt")
    rc, lines = run_cli(capsys, ["prune", *RUN_ARGS, "--out", str(run_copy)])
    assert_one_line(rc, lines, str(run_copy / "checkpoint.pt"), "not a", "gradscope checkpoint", words)


def test_resume_of_a_sound_checkpoint_still_works(run_copy, capsys):
    """The safe loader reads what gradscope writes: resuming a finished run replays its table."""
    rc = main(["prune", *RUN_ARGS, "--out", str(run_copy)])
    out = capsys.readouterr().out
    assert rc == 0 and "resuming" in out


# ----------------------------------------------------------------------------- round file
# No command reads round_K.pt back yet; the runner and analysis scripts load it with load_torch.
ROUND = dict(what="round file", required=("result", "masks"))


def test_round_file_loads_safely(prune_run):
    d = load_torch(prune_run / "round_1.pt", **ROUND)
    assert d["result"]["round"] == 1 and all(isinstance(m, torch.Tensor) for m in d["masks"].values())


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_malicious_round_file_is_refused(run_copy, tmp_path, fmt):
    marker = tmp_path / "PWNED"
    path = run_copy / "round_1.pt"
    write_malicious(path, marker, fmt, keys=("result", "masks"))
    with pytest.raises(GradscopeError, match="not a gradscope round file or was written by an unsafe tool; "
                                             "refusing to load it") as e:
        load_torch(path, **ROUND)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    if fmt == "torch":  # torch.save's pickle protocol reaches the GLOBAL opcode, which is named
        assert "it asks for posix.system, which is not a plain type" in str(e.value)
    assert not marker.exists()


def test_truncated_and_wrong_structure_round_files(run_copy):
    path = run_copy / "round_1.pt"
    truncate(path)
    with pytest.raises(GradscopeError, match="truncated or corrupt") as e:
        load_torch(path, **ROUND)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    torch.save({"result": {}}, path)
    with pytest.raises(GradscopeError, match="lacks 'masks'"):
        load_torch(path, **ROUND)


# ----------------------------------------------------------------------------- Oracle
def _cand(orun: Path) -> Path:
    return orun / "oracle" / "round_0" / "lr_0.05.pt"


CAND_ARGS = ["--round", "0", "--max-lr", "0.05"]


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_oracle_candidate_refuses_malicious_result(oracle_copy, tmp_path, capsys, fmt):
    marker = tmp_path / "PWNED"
    write_malicious(_cand(oracle_copy), marker, fmt, keys=("result", "model", "ri"))
    rc, lines = run_cli(capsys, ["oracle-candidate", "--out", str(oracle_copy), *CAND_ARGS])
    assert_one_line(rc, lines, str(_cand(oracle_copy)), "is not a gradscope Oracle candidate result or was "
                    "written by an unsafe tool; refusing to load it")
    assert not marker.exists()


def test_oracle_refuses_malicious_result_when_choosing(oracle_copy, tmp_path, capsys):
    """The Oracle itself (not only oracle-candidate) loads every candidate safely."""
    marker = tmp_path / "PWNED"
    for v in ("0.01", "0.05", "0.25"):
        write_malicious(oracle_copy / "oracle" / "round_0" / f"lr_{v}.pt", marker, "torch", keys=("result", "model", "ri"))
    rc, lines = run_cli(capsys, ["oracle", *RUN_ARGS, "--grid", "0.01,0.05,0.25", "--seeds", "1", "--workers", "0",
                                 "--out", str(oracle_copy)])
    assert_one_line(rc, lines, "refusing to load it")
    assert not marker.exists()


def test_oracle_candidate_refuses_malicious_start_state(oracle_copy, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    start = oracle_copy / "oracle" / "round_0" / "start.pt"
    write_malicious(start, marker, "torch", keys=("model", "results", "round_extra"))
    rc, lines = run_cli(capsys, ["oracle-candidate", "--out", str(oracle_copy), *CAND_ARGS])
    assert_one_line(rc, lines, str(start), "refusing to load it")
    assert not marker.exists()


def test_oracle_candidate_truncated_and_wrong_structure(oracle_copy, capsys):
    torch.save({"result": {"round": 0}}, _cand(oracle_copy))
    good = _cand(oracle_copy).read_bytes()
    _cand(oracle_copy).write_bytes(good[: len(good) // 2])
    rc, lines = run_cli(capsys, ["oracle-candidate", "--out", str(oracle_copy), *CAND_ARGS])
    assert_one_line(rc, lines, str(_cand(oracle_copy)), "truncated or corrupt")
    torch.save({"model": {}}, _cand(oracle_copy))
    rc, lines = run_cli(capsys, ["oracle-candidate", "--out", str(oracle_copy), *CAND_ARGS])
    assert_one_line(rc, lines, str(_cand(oracle_copy)), "lacks 'result'")


# ----------------------------------------------------------------------------- dataset cache
@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A CIFAR-style folder: 10 classes, 2 train and 1 test 32x32 PNG each."""
    from PIL import Image
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("test", 1)):
        for c in range(10):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _load(root: Path, cache: Path):
    from gradscope.data import load_dataset
    return load_dataset("cifar10", str(root), cache_dir=str(cache), val_fraction=0.0)


def _cache_file(cache: Path) -> Path:
    files = list(cache.glob("cifar10-*.pt"))
    assert len(files) == 1, files
    return files[0]


def _reload_warns(root, cache, *words):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        b = _load(root, cache)
    msgs = [str(x.message) for x in w if "dataset cache" in str(x.message)]
    assert len(msgs) == 1 and "\n" not in msgs[0], msgs
    for word in words:
        assert word in msgs[0], (word, msgs[0])
    return b


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_malicious_dataset_cache_is_refused_and_rebuilt(image_folder, tmp_path, fmt):
    cache, marker = tmp_path / "cache", tmp_path / "PWNED"
    first = _load(image_folder, cache)
    path = _cache_file(cache)
    write_malicious(path, marker, fmt, keys=("train_x", "train_y", "test_x", "test_y", "classes"))
    again = _reload_warns(image_folder, cache, str(path), "unsafe tool; refused it", "decoding the dataset again")
    assert not marker.exists()
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.test_y, again.test_y)
    assert "train_x" in torch.load(path, weights_only=True)  # rebuilt in place, loadable again


@pytest.mark.parametrize("damage, words", [
    ("truncate", "truncated or corrupt"),
    ("float", "train_x is not a uint8"),
    ("labels", "labels outside"),
    ("list", "holds a list"),
])
def test_damaged_dataset_cache_is_one_warning_and_rebuilt(image_folder, tmp_path, damage, words):
    cache = tmp_path / "cache"
    first = _load(image_folder, cache)
    path = _cache_file(cache)
    d = torch.load(path, weights_only=True)
    if damage == "truncate":
        truncate(path)
    elif damage == "float":
        torch.save({**d, "train_x": d["train_x"].float()}, path)
    elif damage == "labels":
        torch.save({**d, "test_y": d["test_y"] + 100}, path)
    else:
        torch.save([d["train_x"]], path)
    again = _reload_warns(image_folder, cache, str(path), words)
    assert torch.equal(first.train_x, again.train_x)


def test_default_cache_dir(monkeypatch, tmp_path):
    from gradscope.data.cache import default_cache_dir, resolve_cache_dir
    monkeypatch.delenv("GRADSCOPE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "gradscope")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: absolute paths only
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "gradscope")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "gradscope")
    monkeypatch.setenv("GRADSCOPE_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == str(tmp_path / "mine")
    assert resolve_cache_dir(None) == str(tmp_path / "mine") and resolve_cache_dir("x/y") == "x/y"


def test_cache_goes_to_the_default_dir_when_none_given(image_folder, tmp_path, monkeypatch):
    from gradscope.data import imagefiles
    monkeypatch.setenv("GRADSCOPE_CACHE", str(tmp_path / "envcache"))
    d = imagefiles.cached(None, "cifar10", str(image_folder), lambda: {"classes": ["a"], **{
        f"{s}_{t}": (torch.zeros(1, 3, 2, 2, dtype=torch.uint8) if t == "x" else torch.zeros(1, dtype=torch.int64))
        for s in ("train", "test") for t in "xy"}})
    assert d["classes"] == ["a"] and len(list((tmp_path / "envcache").glob("cifar10-*.pt"))) == 1


# ----------------------------------------------------------------------------- load_torch
def test_load_torch_missing_and_folder(tmp_path):
    with pytest.raises(GradscopeError, match="does not exist"):
        load_torch(tmp_path / "nope.pt", what="checkpoint")
    with pytest.raises(GradscopeError, match="is a folder"):
        load_torch(tmp_path, what="checkpoint")


@pytest.mark.parametrize("content", [b"", b"hello world\n", os.urandom(4096)])
def test_load_torch_garbage_is_one_line(tmp_path, content):
    p = tmp_path / "checkpoint.pt"
    p.write_bytes(content)
    with pytest.raises(GradscopeError) as e:
        load_torch(p, what="checkpoint")
    assert str(p) in str(e.value) and "\n" not in str(e.value)
    assert "truncated or corrupt" in str(e.value) or "refusing to load it" in str(e.value)


# ----------------------------------------------------------------------------- save_torch / save_json
def test_save_torch_round_trips_plain_types_and_converts_numpy_scalars(tmp_path):
    m = torch.nn.BatchNorm1d(3)
    obj = {"sd": m.state_dict(), "f": np.float64(0.5), "i": np.int64(3), "t": (1, "a", None), "s": {1, 2},
           "nested": [{"x": torch.ones(2), "b": True}], 1: "int key"}
    save_torch(obj, tmp_path / "a.pt", what="checkpoint")
    back = load_torch(tmp_path / "a.pt", what="checkpoint")
    assert type(back["f"]) is float and back["f"] == 0.5 and type(back["i"]) is int
    assert back["t"] == (1, "a", None) and back["s"] == {1, 2} and back[1] == "int key"
    assert torch.equal(back["nested"][0]["x"], torch.ones(2))
    assert back["sd"]._metadata == m.state_dict()._metadata  # module versions survive


def test_save_torch_refuses_what_it_could_not_load_back(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Info:
        round: int = 0

    with pytest.raises(InternalError, match=r"obj\['info'\].*asdict"):
        save_torch({"info": Info()}, tmp_path / "a.pt")
    with pytest.raises(InternalError, match="ndarray"):
        save_torch({"a": np.zeros(2)}, tmp_path / "a.pt")
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_new_files_follow_umask_and_replacements_keep_their_mode(tmp_path):
    old = os.umask(0o022)
    try:
        save_json({"a": 1}, tmp_path / "rounds.json")
        assert (tmp_path / "rounds.json").stat().st_mode & 0o777 == 0o644  # mkstemp alone gives 0600
        os.chmod(tmp_path / "rounds.json", 0o640)
        save_json({"a": 2}, tmp_path / "rounds.json")
        assert (tmp_path / "rounds.json").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left on the device"),
                                         (errno.EDQUOT, "disk quota exceeded"),
                                         (errno.EIO, "input/output error")])
def test_write_error_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch, code, words):
    path = tmp_path / "checkpoint.pt"
    save_torch({"v": 1}, path)
    before = path.read_bytes()

    def full(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(C.os, "fsync", full)
    with pytest.raises(GradscopeError) as e:
        save_torch({"v": 2}, path, what="checkpoint")
    msg = str(e.value)
    assert msg.startswith(f"cannot write checkpoint {path}: {words}") and "previous checkpoint.pt is unchanged" in msg
    assert "\n" not in msg
    assert path.read_bytes() == before and not _temps(tmp_path)


def test_write_error_inside_torch_save_is_unwrapped(tmp_path, monkeypatch):
    """torch.save reports a failed write as RuntimeError('... unexpected pos ...'): find the OSError."""
    real = C.os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, k):
            return getattr(self.f, k)

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(C.os, "fdopen", lambda fd, mode: Full(real(fd, mode)))
    with pytest.raises(GradscopeError, match="no space left on the device; no round_3.pt was written"):
        save_torch({"w": torch.zeros(1000)}, tmp_path / "round_3.pt", what="round file")
    assert not list(tmp_path.iterdir())


def test_file_size_limit_in_a_real_process(tmp_path):
    """EFBIG from RLIMIT_FSIZE (what `ulimit -f` sets): one line, the old checkpoint intact."""
    path = tmp_path / "checkpoint.pt"
    save_torch({"w": torch.zeros(10)}, path)
    before = path.read_bytes()
    code = textwrap.dedent(f"""
        import resource, torch
        from gradscope import GradscopeError
        from gradscope.train.checkpoint import save_torch
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        try:
            save_torch({{"w": torch.zeros(200_000)}}, {str(path)!r}, what="checkpoint")
        except GradscopeError as e:
            print(e)
    """)
    r = subprocess.run([PY, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"cannot write checkpoint {path}: file too large"), r.stdout
    assert path.read_bytes() == before and not _temps(tmp_path)


def test_prune_under_a_file_size_limit_fails_in_one_line_then_resumes(tmp_path):
    """The CLI under `ulimit -f`: exit 2 with one line, and the same command later completes."""
    out = tmp_path / "run"
    args = [PY, "-m", "gradscope", "prune", *RUN_ARGS, "--out", str(out)]

    def limit():
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))  # config/rounds fit, a checkpoint does not

    r = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=300, preexec_fn=limit)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert re.match(rf"gradscope: error: cannot write .*{re.escape(str(out / 'checkpoint.pt'))}: file too large", lines[0])
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert main(["prune", *RUN_ARGS, "--out", str(out)]) == 0  # no limit now: the same command completes
    assert (out / "round_1.pt").exists()


def _without_dac_override() -> None:
    """preexec_fn: drop root's power to ignore file modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone from the exec'd process
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_permission_denied_is_one_line(tmp_path):
    """EACCES in a read-only run folder (root ignores modes, so as root without CAP_DAC_OVERRIDE)."""
    run = tmp_path / "run"
    save_torch({"v": 1}, run / "checkpoint.pt")
    before = (run / "checkpoint.pt").read_bytes()
    os.chmod(run, 0o555)
    code = textwrap.dedent(f"""
        from gradscope import GradscopeError
        from gradscope.train.checkpoint import save_torch
        try:
            save_torch({{"v": 2}}, {str(run / 'checkpoint.pt')!r}, what="checkpoint")
        except GradscopeError as e:
            print(e)
    """)
    try:
        r = subprocess.run([PY, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=120,
                           preexec_fn=_without_dac_override if os.geteuid() == 0 else None)
    finally:
        os.chmod(run, 0o755)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (f"cannot write checkpoint {run / 'checkpoint.pt'}: permission denied; the "
                                f"previous checkpoint.pt is unchanged. Fix that and run the same command "
                                f"again to continue")
    assert (run / "checkpoint.pt").read_bytes() == before and not _temps(run)


# ----------------------------------------------------------------------------- stale temps
def test_clean_stale_temps_removes_only_our_leftovers(tmp_path):
    run = tmp_path / "run"
    ordr = run / "oracle" / "round_2"
    ordr.mkdir(parents=True)
    ours = [run / ".checkpoint.pt.ab12cd_9.tmp", run / ".round_3.pt.zzzzzzzz.tmp", run / ".rounds.json.k2j4h5g6.tmp",
            run / ".config.json.aaaaaaaa.tmp", run / ".versions.json.bbbbbbbb.tmp"]
    old_oracle = [ordr / ".lr_0.05.pt.cccccccc.tmp", ordr / ".start.pt.dddddddd.tmp", ordr / ".candidates.json.eeeeeeee.tmp"]
    young_oracle = [ordr / ".lr_0.1.pt.ffffffff.tmp"]  # a candidate job may be writing it right now
    not_ours = [run / ".notes.txt.abcdefgh.tmp", run / ".checkpoint.pt.short.tmp", run / "checkpoint.pt.abcdefgh.tmp",
                run / "run.h5", run / ".run.h5.abcdefgh.tmp", run / "checkpoint.pt"]
    for p in ours + old_oracle + young_oracle + not_ours:
        p.write_bytes(b"x")
    hour_ago = time.time() - 7200
    for p in old_oracle:
        os.utime(p, (hour_ago, hour_ago))
    removed = clean_stale_temps(run)
    assert sorted(removed) == sorted(ours + old_oracle)
    assert all(not p.exists() for p in ours + old_oracle)
    assert all(p.exists() for p in young_oracle + not_ours)
    assert clean_stale_temps(tmp_path / "absent") == []


def test_a_killed_write_leaves_a_temp_that_clean_stale_temps_removes(tmp_path):
    """SIGKILL during a checkpoint write: the old file survives, the temp is cleaned on reopening."""
    path = tmp_path / "run" / "checkpoint.pt"
    save_torch({"v": 1}, path)
    code = textwrap.dedent(f"""
        import os, signal, torch
        from gradscope.train import checkpoint as C
        def die(fd):
            os.kill(os.getpid(), signal.SIGKILL)
        C.os.fsync = die
        C.save_torch({{"v": torch.zeros(1000)}}, {str(path)!r})
    """)
    r = subprocess.run([PY, "-c", code], env=cli_env(), capture_output=True, timeout=120)
    assert r.returncode == -9
    left = _temps(path.parent)
    assert len(left) == 1 and left[0].name.startswith(".checkpoint.pt.")
    assert load_torch(path, what="checkpoint") == {"v": 1}
    assert clean_stale_temps(path.parent) == left and not _temps(path.parent)


# ----------------------------------------------------------------------------- nothing else evaluates text
_ALLOWED_TORCH_LOAD = {"gradscope/train/checkpoint.py", "gradscope/data/cache.py"}


def test_library_never_evaluates_or_unpickles_text():
    """No eval/exec, pickle loads, unsafe YAML or numpy pickles; torch.load only in the two safe loaders,
    and there with weights_only=True."""
    bad = []
    for f in sorted((ROOT / "gradscope").rglob("*.py")):
        rel = f.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(f.read_text(), rel)):
            if not isinstance(node, ast.Call):
                continue
            fn = ast.unparse(node.func)
            kws = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if fn in ("eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec"):
                bad.append(f"{rel}:{node.lineno} {fn}")
            elif re.fullmatch(r"(c?pickle|dill|marshal|shelve|joblib)\.(load|loads|open)|pickle\.Unpickler", fn):
                bad.append(f"{rel}:{node.lineno} {fn}")
            elif re.fullmatch(r"yaml\.(load|load_all|unsafe_load|full_load|unsafe_load_all|full_load_all)", fn):
                bad.append(f"{rel}:{node.lineno} {fn}")
            elif fn in ("np.load", "numpy.load") and kws.get("allow_pickle") != "False":
                bad.append(f"{rel}:{node.lineno} {fn} without allow_pickle=False")
            elif fn == "torch.load" and (rel not in _ALLOWED_TORCH_LOAD or kws.get("weights_only") != "True"):
                bad.append(f"{rel}:{node.lineno} torch.load")
            elif fn.endswith("read_pickle") or fn.endswith("read_hdf"):
                bad.append(f"{rel}:{node.lineno} {fn}")
    assert not bad, bad


# ----------------------------------------------------------------------------- reads outside the file (issue 22 item 3)
def _outside_storage(path: Path, outside: Path, how: str) -> None:
    """Replace the run file's ``samples`` with a dataset whose data lies in ``outside``."""
    import h5py

    with h5py.File(path, "r+") as f:
        shape, dtype = f["samples"].shape, f["samples"].dtype
        del f["samples"]
        if how == "external storage":
            f.create_dataset("samples", shape=shape, dtype=dtype, external=[(str(outside), 0, h5py.h5f.UNLIMITED)])
        elif how == "virtual dataset":
            with h5py.File(outside.with_suffix(".h5"), "w") as g:
                g["x"] = np.full(shape, 7.0, dtype=dtype)
            lay = h5py.VirtualLayout(shape=shape, dtype=dtype)
            lay[:] = h5py.VirtualSource(str(outside.with_suffix(".h5")), "x", shape=shape)
            f.create_virtual_dataset("samples", lay, fillvalue=np.nan)
        elif how == "external link":
            with h5py.File(outside.with_suffix(".h5"), "w") as g:
                g["x"] = np.full(shape, 7.0, dtype=dtype)
            f["samples"] = h5py.ExternalLink(str(outside.with_suffix(".h5")), "x")
        else:  # a soft link to another dataset of the same file
            f["samples"] = h5py.SoftLink("/hist")


@pytest.mark.parametrize("how", ["external storage", "virtual dataset", "external link", "soft link"])
def test_run_file_with_data_outside_itself_is_refused(tmp_path, capsys, how):
    """A crafted run file whose ``samples`` lives in another file (here: a 'secret' file beside
    it) is refused at opening, in one line; `repair --check` does not say OK."""
    from tests import faultlib as F

    from gradscope.store import open_run

    p = tmp_path / "run.h5"
    F.write_run(p, sample_k=4).commit()
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"root:x:0:0:secret\n" * 64)
    _outside_storage(p, outside, how)
    with pytest.raises(GradscopeError, match=r"refused: .*'/samples' is") as e:
        open_run(p).samples()
    assert "\n" not in str(e.value) and "secret" not in str(e.value)
    rc, lines = run_cli(capsys, ["repair", str(p), "--check"])
    assert_one_line(rc, lines, "samples")
    assert not any("OK" in line for line in capsys.readouterr().out.splitlines())


def test_run_file_with_internal_storage_still_opens(tmp_path):
    """The check refuses only outside data: an ordinary file (chunked, contiguous and compact
    datasets) still reads."""
    import h5py

    from tests import faultlib as F

    from gradscope.store import open_run

    p = tmp_path / "run.h5"
    F.write_run(p, sample_k=4).commit()
    with h5py.File(p, "r+") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        h5py.h5d.create(f["derived"].id, b"note_compact", h5py.h5t.STD_I64LE, h5py.h5s.create_simple((3,)), dcpl=dcpl)
        assert f["derived/note_compact"].id.get_create_plist().get_layout() == h5py.h5d.COMPACT
        f["derived"].create_dataset("note_contiguous", data=np.arange(3))
    vals, _ = open_run(p).samples()
    assert vals.shape[1] == 4


def test_oracle_candidate_result_of_the_wrong_type_is_one_line(oracle_copy, capsys):
    """Issue 22 item 11: a candidate file holding {"result": 1} (a loadable file of the wrong
    shape) is one line, from oracle-candidate and from the Oracle choosing among candidates."""
    torch.save({"result": 1, "model": {}}, _cand(oracle_copy))
    rc, lines = run_cli(capsys, ["oracle-candidate", "--out", str(oracle_copy), *CAND_ARGS])
    assert_one_line(rc, lines, str(_cand(oracle_copy)), "result")
    for v in ("0.01", "0.05", "0.25"):
        torch.save({"result": 1, "model": {}, "epochs": [], "val_correct": torch.zeros(3, dtype=torch.uint8)},
                   oracle_copy / "oracle" / "round_0" / f"lr_{v}.pt")
    rc, lines = run_cli(capsys, ["oracle", *RUN_ARGS, "--grid", "0.01,0.05,0.25", "--seeds", "1", "--workers", "0",
                                 "--out", str(oracle_copy)])
    assert_one_line(rc, lines, "result")


def test_oracle_candidate_with_another_model_than_its_start_state_is_one_line(oracle_copy, capsys):
    """Issue 22 item 11: oracle-candidate --model naming another architecture than the start
    state's is one line naming the mismatch."""
    rc, lines = run_cli(capsys, ["oracle-candidate", "--out", str(oracle_copy), *CAND_ARGS, "--model", "lenet300"])
    assert_one_line(rc, lines, "start state")


# ----------------------------------------------------------------------------- one atomic writer (issue 22)
def _victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim.txt"
    v.write_text("precious")
    return v


def test_atomic_writer_never_follows_a_planted_temp_name(tmp_path):
    """A symlink planted at every name the old writers used (OUT.tmp, .OUT.tmp) is never followed."""
    from gradscope.atomic import atomic_text
    from gradscope.calibrate import calibrate_run
    from gradscope.fit.synthetic import make_synthetic_run

    victim = _victim(tmp_path)
    out = tmp_path / "silo.json"
    for name in ("silo.json.tmp", ".silo.json.tmp", "cli.tmp"):
        (tmp_path / name).symlink_to(victim)
    sp = 1 - 0.8 ** np.arange(6)
    cal = calibrate_run(make_synthetic_run({"c1": 0.01 * (1 - sp) ** 0.4}, n=5_000, seed=1))
    cal.to_file(out, force=True)
    atomic_text(tmp_path / "notes.txt", "x")
    assert victim.read_text() == "precious" and json.loads(out.read_text())["schedule"] == "silo"
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    assert left == [".silo.json.tmp", "cli.tmp", "silo.json.tmp"]  # only the planted links, untouched
    assert all((tmp_path / n).is_symlink() for n in left)


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo", "device"])
def test_atomic_writer_refuses_a_non_regular_target(tmp_path, kind):
    """A symlink, folder, FIFO or device node at the target is refused in one line and left as it
    was (a plain open() would write through the link, block on the FIFO, or fill /dev/full)."""
    from gradscope.atomic import atomic_text

    victim = _victim(tmp_path)
    out = tmp_path / "out.json"
    if kind == "symlink":
        out.symlink_to(victim)
    elif kind == "directory":
        out.mkdir()
    elif kind == "fifo":
        os.mkfifo(out)
    else:
        out = F.char_device(tmp_path)
    before = os.lstat(out)
    with pytest.raises(GradscopeError, match="refusing to write .* it is a") as e:
        atomic_text(out, "{}", "the parameters")
    assert "\n" not in str(e.value)
    after = os.lstat(out)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev)
    assert victim.read_text() == "precious" and not _temps(tmp_path)
    if kind == "symlink":  # the run directory's own writes refuse it too
        with pytest.raises(GradscopeError, match="symbolic link"):
            save_json({"a": 1}, out)
        assert victim.read_text() == "precious"


@pytest.mark.parametrize("code, words", [(errno.EROFS, "read-only file system"),
                                         (errno.ENAMETOOLONG, "too long")])
def test_atomic_writer_failure_to_create_the_temp_is_one_line(tmp_path, monkeypatch, code, words):
    from gradscope.atomic import atomic_text

    def refuse(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(GradscopeError, match=words) as e:
        atomic_text(tmp_path / "x.json", "{}", "the parameters")
    assert "\n" not in str(e.value) and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- a foreign checkpoint (issue 22)
def _forge_config(run: Path, *, keep_hash: bool, **train) -> None:
    from gradscope.train.runner import config_hash

    ck = load_torch(run / "checkpoint.pt", what="checkpoint")
    ck["config"]["train"].update(train)
    if keep_hash:
        ck["config_sha256"] = config_hash(ck["config"])
    else:
        ck.pop("config_sha256", None)
    save_torch(ck, run / "checkpoint.pt")


@pytest.mark.parametrize("keep_hash", [True, False], ids=["hashed", "pre-hash checkpoint"])
def test_a_checkpoint_of_another_run_is_refused(run_copy, capsys, keep_hash):
    """Another run's checkpoint (another seed) put into the run directory: one line, no resume,
    rounds.json untouched. A checkpoint from before the hash carries its config: compared too."""
    ck = load_torch(run_copy / "checkpoint.pt", what="checkpoint")
    assert len(ck["config_sha256"]) == 64  # written with every checkpoint
    before = (run_copy / "rounds.json").read_bytes()
    _forge_config(run_copy, keep_hash=keep_hash, seed=7)
    rc, lines = run_cli(capsys, ["prune", *RUN_ARGS, "--out", str(run_copy)])
    assert_one_line(rc, lines, "belongs to another run", "checkpoint.pt")
    assert (run_copy / "rounds.json").read_bytes() == before


def test_a_pre_hash_checkpoint_of_this_run_still_resumes(run_copy, capsys):
    _forge_config(run_copy, keep_hash=False)  # the same config, no hash: a checkpoint of an older gradscope
    assert main(["prune", *RUN_ARGS, "--out", str(run_copy)]) == 0
    assert "resuming" in capsys.readouterr().out


def test_a_fifo_as_checkpoint_is_refused_without_blocking(run_copy, capsys):
    (run_copy / "checkpoint.pt").unlink()
    os.mkfifo(run_copy / "checkpoint.pt")
    with pytest.raises(GradscopeError, match="FIFO"):
        load_torch(run_copy / "checkpoint.pt", what="checkpoint")


# ----------------------------------------------------------------------------- cleaning stays inside (issue 22)
@pytest.mark.parametrize("linked", ["oracle", "oracle/round_0"])
def test_clean_stale_temps_never_follows_a_symlink_out_of_the_run(tmp_path, linked):
    outside = tmp_path / "outside"
    outside.mkdir()
    theirs = outside / ".start.pt.abcdefgh.tmp"  # named like our temps, old
    theirs.write_bytes(b"x")
    hour_ago = time.time() - 7200
    os.utime(theirs, (hour_ago, hour_ago))
    run = tmp_path / "run"
    (run / linked).parent.mkdir(parents=True)
    (run / linked).symlink_to(outside if linked == "oracle/round_0" else tmp_path)
    if linked == "oracle":
        (tmp_path / "round_0").symlink_to(outside)  # RUN/oracle/round_0 -> outside through the link
    assert clean_stale_temps(run) == [] and theirs.exists()
