"""A seeded randomised pass over hostile command lines (issue 22's "bad-flag suite, new seed").

Each case takes a tiny valid command (digits, 1 round, 1 epoch, 64 images) and replaces one or
two flags with hostile values (huge, tiny, NaN, negative, wrong type, long strings, special
paths). Each runs in its own process with a time limit, in a scratch folder. Classes:
clean (exit 2, one line ``gradscope: error:``), accepted (exit 0: listed for review), traceback,
not one line (exit 2 but more lines / other exit), hang (past the limit), outside (a file
appeared outside the case's own folder).

    PYTHONPATH=. python scripts/fuzz_cli.py --seed 7 --cases 60
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ["--dataset", "digits", "--model", "small_cnn", "--rounds", "1", "--epochs", "1", "--threads", "1",
        "--no-progress", "--train-subset", "64", "--batch-size", "32"]
NUMBERS = ["0", "-1", "1e308", "-1e308", "nan", "inf", "-inf", "1e-320", "2", "18446744073709551616",
           "100000000000000000000", "1e20", "0x10", "abc", "", " ", "1.5", "1,2"]
PATHS = ["/sys/kernel/x", "/proc/self/mem", "/dev/full", "/dev/null", "FILE/sub", "LOOP", "FIFO", "DIR",
         "a" * 300, "a" * 5000, "RO"]
RUN_FLAGS = {"--epochs": NUMBERS, "--rounds": NUMBERS, "--prune-rate": NUMBERS, "--max-lr": NUMBERS,
             "--weight-decay": NUMBERS, "--momentum": NUMBERS, "--seed": NUMBERS, "--threads": ["100000", "0", "-3"],
             "--batch-size": NUMBERS, "--train-subset": NUMBERS, "--val-size": NUMBERS, "--lag": NUMBERS,
             "--out": PATHS, "--schedule-file": PATHS + ["JSON_HUGE", "JSON_NULL"], "--cache-dir": PATHS,
             "--sample-k": NUMBERS, "--bins": NUMBERS, "--window": NUMBERS}
READ_FLAGS = {"fit": {"--bootstrap": NUMBERS, "--seed": NUMBERS, "--models": ["", ",", "normal,normal", "x"],
                      "--view": ["", "x"], "--statistic": ["", "x"]},
              "calibrate": {"-o": PATHS, "--rounds-planned": NUMBERS, "--gamma": NUMBERS, "--lo": NUMBERS},
              "report": {"-o": PATHS, "--bootstrap": NUMBERS},
              "export": {"LOGDIR": PATHS}}


def _path(token: str, box: Path) -> str:
    """Concrete hostile paths inside the case's box (and a few system ones)."""
    if token == "FILE/sub":
        return str(box / "afile" / "sub")
    if token == "LOOP":
        return str(box / "loop1")
    if token == "FIFO":
        return str(box / "fifo")
    if token == "DIR":
        return str(box / "adir")
    if token == "RO":
        return str(box / "ro" / "x")
    if token == "JSON_HUGE":
        return str(box / "huge.json")
    if token == "JSON_NULL":
        return str(box / "null.json")
    if token.startswith("../"):
        return str(box / token)  # .. stays inside the scratch root, outside the box
    return token if token.startswith("/") else str(box / token)


def _box(root: Path, i: int) -> Path:
    box = root / f"case{i}"
    box.mkdir()
    (box / "afile").write_text("x")
    (box / "loop1").symlink_to(box / "loop2")
    (box / "loop2").symlink_to(box / "loop1")
    os.mkfifo(box / "fifo")
    (box / "adir").mkdir()
    (box / "ro").mkdir()
    os.chmod(box / "ro", 0o555)
    (box / "huge.json").write_text('{"schedule": "silo", "lo": 1e308, "hi": 1e308}')
    (box / "null.json").write_text("null")
    return box


def make_cases(rng: random.Random, n: int, run_h5: str) -> list[list[str]]:
    cases = []
    for _ in range(n):
        verb = rng.choice(["prune", "profile", "fit", "calibrate", "report", "export"])
        if verb in ("prune", "profile"):
            flags = dict(zip(BASE[0::2], BASE[1::2]))
            flags.pop("--no-progress", None)
            for f in rng.sample(sorted(RUN_FLAGS), rng.choice([1, 2])):
                flags[f] = rng.choice(RUN_FLAGS[f])
            flags.setdefault("--out", "OUT")
            argv = [verb, "--no-progress"] + [x for k, v in flags.items() for x in (k, v)]
        else:
            opts = READ_FLAGS[verb]
            f = rng.choice(sorted(opts))
            v = rng.choice(opts[f])
            if verb == "export":
                argv = ["export", "tensorboard", run_h5, v]
            else:
                argv = [verb, run_h5, f, v] + (["-o", "OUT/r.html"] if verb == "report" and f != "-o" else [])
        cases.append(argv)
    return cases


def snapshot(root: Path) -> set:
    return {str(p) for p in root.rglob("*")} if root.exists() else set()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--run", required=True, help="a small recorded run file (e.g. from `gradscope profile`)")
    ns = ap.parse_args(argv)
    rng = random.Random(ns.seed)
    root = Path(tempfile.mkdtemp(prefix="gs-fuzz-"))
    run_h5 = str(root / "run.h5")
    shutil.copyfile(ns.run, run_h5)
    counts: collections.Counter = collections.Counter()
    bad = []
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg")
    for i, case in enumerate(make_cases(rng, ns.cases, run_h5)):
        box = _box(root, i)
        argv = [a if a not in ("OUT", "OUT/r.html") else str(box / "out" / ("r.html" if a.endswith("html") else ""))
                for a in case]
        argv = [_path(a, box) if a in PATHS or a in ("JSON_HUGE", "JSON_NULL") else a for a in argv]
        if "OUT/r.html" in case:
            (box / "out").mkdir(exist_ok=True)
        before = snapshot(root) - snapshot(box)
        try:
            r = subprocess.run([sys.executable, "-m", "gradscope", *argv], capture_output=True, text=True, env=env,
                               cwd=box, timeout=ns.timeout, stdin=subprocess.DEVNULL)
            lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
            if "Traceback" in r.stderr:
                cls = "traceback"
            elif r.returncode == 0:
                cls = "accepted (exit 0)"
            elif r.returncode == 2 and len(lines) == 1 and lines[0].startswith("gradscope: error:"):
                cls = "clean"
            else:
                cls = "not one line"
        except subprocess.TimeoutExpired:
            cls, r, lines = "hang", None, []
        after = snapshot(root) - snapshot(box)
        if after - before - {run_h5}:
            cls = "outside"
        counts[cls] += 1
        short = [a if len(a) < 60 else a[:20] + f"...({len(a)})" for a in argv]
        if cls not in ("clean",):
            bad.append((cls, short, lines[-1][:200] if lines else ""))
        os.chmod(box / "ro", 0o755)
    print(f"{sum(counts.values())} hostile command lines (seed {ns.seed}):")
    for k, v in counts.most_common():
        print(f"  {v:4d} {k}")
    for b in bad:
        print("  ", *b)
    shutil.rmtree(root, ignore_errors=True)
    return 0 if not (counts["traceback"] or counts["hang"] or counts["outside"] or counts["not one line"]) else 1


if __name__ == "__main__":
    sys.exit(main())
