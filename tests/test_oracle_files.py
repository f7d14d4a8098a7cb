"""The Oracle writes only inside its run and uses only its own round start states and
candidate files: a symlinked RUN/oracle, another run's start.pt and a candidate file under
another candidate's name are each one clear error, with nothing written outside the run."""
import os
import shutil

from gradscope.cli import main

ARGS = ["oracle", "--dataset", "digits", "--model", "small_cnn", "--epochs", "1", "--threads", "1", "--no-progress",
        "--batch-size", "64", "--rounds", "1", "--schedule", "lth", "--grid", "0.01,0.05,0.25", "--seeds", "1",
        "--max-extend", "0", "--val-size", "200"]


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradscope: error:"), err
    return err[0]


def test_symlinked_oracle_folder_is_refused_and_untouched(tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(outside, run / "oracle")
    assert main([*ARGS, "--workers", "0", "--out", str(run)]) == 2
    assert "symlink" in _err(capsys)
    assert list(outside.iterdir()) == []


def test_foreign_start_state_and_misnamed_candidate_are_refused(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*ARGS, "--workers", "0", "--seed", "0", "--out", str(a)]) == 0
    assert main([*ARGS, "--workers", "0", "--seed", "1", "--out", str(b)]) == 0
    capsys.readouterr()
    start = a / "oracle" / "round_0" / "start.pt"
    keep = start.read_bytes()
    shutil.copy(b / "oracle" / "round_0" / "start.pt", start)  # another run's round-0 start state
    job = ["oracle-candidate", "--out", str(a), "--round", "0", "--max-lr", "0.01", "--seed", "0"]
    assert main(job) == 2
    assert "belongs to another run" in _err(capsys)
    start.write_bytes(keep)
    assert main(ARGS + ["--seed", "0", "--out", str(a)]) == 0  # its own start state: the Oracle runs
    capsys.readouterr()
    rd = a / "oracle" / "round_0"
    files = sorted(rd.glob("lr_*.pt"))
    assert len(files) == 3
    # a candidate file under another candidate's name (max_lr 0.01's result as 0.05's)
    shutil.copy(rd / files[0].name, rd / "moved.pt")
    for f in files:
        f.unlink()
    (rd / "candidates.json").unlink(missing_ok=True)
    (a / "rounds.json").unlink()
    (a / "checkpoint.pt").unlink(missing_ok=True)
    lr01 = rd / files[0].name
    shutil.move(rd / "moved.pt", lr01)
    name05 = files[0].name.replace("0.01", "0.05")
    assert name05 != files[0].name
    shutil.copy(lr01, rd / name05)
    shutil.copy(lr01, rd / files[0].name.replace("0.01", "0.25"))
    assert main(ARGS + ["--seed", "0", "--out", str(a)]) == 2
    assert "not round 0, max_lr 0.05" in _err(capsys)


def test_start_state_of_another_round_is_refused(tmp_path, capsys):
    import torch

    a = tmp_path / "a"
    assert main([*ARGS, "--workers", "0", "--out", str(a)]) == 0
    capsys.readouterr()
    start = a / "oracle" / "round_0" / "start.pt"
    ck = torch.load(start, weights_only=True)
    ck["info"]["round"] = 3
    torch.save(ck, start)
    assert main(["oracle-candidate", "--out", str(a), "--round", "0", "--max-lr", "0.01", "--seed", "0"]) == 2
    assert "start state of round 3, not of round 0" in _err(capsys)


def test_silo_auto_is_refused_by_the_oracle(tmp_path, capsys):
    """The Oracle sets every round's peak itself: silo-auto (with or without --predictor) decides nothing there."""
    args = [a for a in ARGS if a != "lth"]
    args[args.index("--schedule") + 1:args.index("--schedule") + 1] = ["silo-auto"]
    for extra in ([], ["--predictor", "noise-scale", "--probes", "noise-scale"]):
        assert main([*args, *extra, "--workers", "0", "--out", str(tmp_path / "o")]) == 2
        assert "would decide nothing" in _err(capsys)
    assert not (tmp_path / "o").exists()
