"""What a new user sees (issue 24): where the docs' commands write, help texts, log lines."""
from __future__ import annotations

import re
import shlex

import pytest

from conftest import ROOT


def _doc_commands(path):
    """Each `gradscope ...` line of the fenced bash blocks of a doc, as argv lists."""
    text = (ROOT / path).read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("gradscope "):
                out.append(shlex.split(line))
    return out


def test_tutorial_writes_only_under_runs():
    """Running the tutorial from a checkout leaves nothing untracked outside runs/ (ignored)."""
    cmds = _doc_commands("docs/tutorial.md")
    assert len(cmds) >= 10
    written = []
    for argv in cmds:
        for i, a in enumerate(argv):
            if a in ("-o", "--out"):
                written.append(argv[i + 1])
        if argv[1:3] == ["export", "tensorboard"]:
            written.append(argv[4])
    assert len(written) >= 12
    outside = [w for w in written if not w.startswith("runs/")]
    assert not outside, outside
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "runs/" in ignored
    # the commands' own defaults (report.html, plot's KIND.png) in the checkout's root are ignored too
    assert {"/report.html", "/*.png", "/tb/"} <= set(ignored)


@pytest.fixture(scope="module")
def cli():
    """(parser, {command: subparser}), built once, help wrapped at 100 columns."""
    import os

    from gradscope.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    parser = build_parser()
    yield parser, parser.commands
    if old is None:
        os.environ.pop("COLUMNS", None)
    else:
        os.environ["COLUMNS"] = old


def test_every_command_help_ends_with_real_examples_and_a_docs_pointer(cli):
    """Each verb's --help ends with one or two examples (which parse) and a pointer to the docs."""
    from gradscope.cli import DOCS_POINTER, EXAMPLES

    parser, commands = cli
    assert set(EXAMPLES) == set(commands)
    for name, sp in commands.items():
        text = sp.format_help()
        assert text.rstrip().endswith(DOCS_POINTER), name
        assert 1 <= len(EXAMPLES[name]) <= 2
        for ex in EXAMPLES[name]:
            assert f"\n  {ex}\n" in text, (name, ex)  # kept on one line, not re-wrapped
            argv = shlex.split(ex)[1:]
            assert argv[0] == name
            parser.parse_args(argv)  # a real command line: it parses (exits 2 if not)


def test_analysis_help_names_values_and_defaults(cli):
    """No argparse-made metavars (STATISTIC, VIEW, GRID_POINTS, WORKERS), every default said in one
    form "(default: X)", --window lists all|last, every option has help (issue 24.7)."""
    import argparse

    _, commands = cli
    own = {"fit", "calibrate", "plot", "report", "export", "repair", "oracle-candidate"}
    oracle_own = {"--grid", "--grid-points", "--seeds", "--max-extend", "--workers", "--ray", "--ray-address",
                  "--gpus-per-candidate"}
    for name, sp in commands.items():
        text = sp.format_help()
        assert not re.search(r"\(default [^:]", text), name
        for a in sp._actions:
            if isinstance(a, argparse._HelpAction) or not a.option_strings:
                continue
            if name not in own and not (name == "oracle" and a.option_strings[0] in oracle_own):
                continue
            where = f"{name} {a.option_strings[0]}"
            assert a.help, where
            if a.nargs != 0:
                assert (a.metavar is not None or a.choices) and a.metavar != a.dest.upper(), where
            if a.default not in (None, False) and not a.required:
                assert "(default: " in a.help, where
        if "--window" in text and name in own:
            assert "{all,last}" in text, name
    for name in ("fit", "calibrate", "plot", "report"):
        assert "{survivors,all,relative}" in commands[name].format_help()


def test_schedule_defaults_are_said_not_none(cli):
    """--lo/--hi say the released ResNet-20 constants are used (not "default: none"); profile's
    --max-lr says 0.05 as its description does (issue 24.2, 24.7)."""
    _, commands = cli
    for name in ("prune", "profile", "oracle"):
        helps = {a.option_strings[0]: a.help for a in commands[name]._actions if a.option_strings}
        assert "0.03, the released ResNet-20 constant" in helps["--lo"]
        assert "0.07, the released ResNet-20 constant" in helps["--hi"]
        assert "none" not in helps["--max-lr"]
    assert "(default: 0.05 here" in {a.option_strings[0]: a.help for a in commands["profile"]._actions
                                     if a.option_strings}["--max-lr"]


def test_output_options_are_one_convention(cli):
    """-o/--out everywhere a command writes a file (calibrate keeps --output as an alias)."""
    _, commands = cli
    for name in ("calibrate", "plot", "report"):
        opts = {o for a in commands[name]._actions for o in a.option_strings}
        assert {"-o", "--out"} <= opts, name


def test_notebooks_open_on_the_gradscope_kernel_with_readable_figures():
    """JupyterLab opens them on the kernel scripts/_venv.sh installs; no 16-inch side-by-side
    figures (tiny text at notebook width); no YAML dump, no 24-row trend table; notebook 03 runs
    SILO from notebook 02's calibrated file, or says it is not calibrated (issue 24.11, 24.2)."""
    import nbformat

    venv = (ROOT / "scripts" / "_venv.sh").read_text()
    src = {}
    for p in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(p, as_version=4)
        assert nb.metadata["kernelspec"]["name"] == "gradscope", p.name
        assert f'--name {nb.metadata["kernelspec"]["name"]} ' in venv
        assert f'--display-name "{nb.metadata["kernelspec"]["display_name"]}"' in venv
        src[p.stem[:2]] = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        for w, h in re.findall(r"figsize=\((\d+(?:\.\d+)?), (\d+(?:\.\d+)?)\)", src[p.stem[:2]]):
            assert float(w) <= 10, (p.name, w)
    assert "read_text()" not in src["02"] and "rounds=25" not in src["02"]
    assert 'format_trend(fit, statistic="std")' in src["01"]
    assert 'silo-calibrated.yaml' in src["02"] and 'silo-calibrated.yaml' in src["03"]
    assert "schedule_file = str(silo_path)" in src["03"] and "NOT calibrated" in src["03"]
    assert "plot_run_schedules" in src["03"]


def test_compile_cache_and_no_cuda_notice(tmp_path, monkeypatch):
    """Before torch.compile: Inductor caches under gradscope's cache folder (a user's own
    TORCHINDUCTOR_CACHE_DIR wins), and cpp_extension's "No CUDA runtime is found" line is gone on
    CPU while other warnings stay (issue 24.8)."""
    import subprocess

    from conftest import PY, cli_env
    from gradscope.compile_env import inductor_cache_dir

    code = ("import logging, os\n"
            "from gradscope.compile_env import prepare_compile; prepare_compile()\n"
            "import torch, torch.utils.cpp_extension as ext\n"
            "log = logging.getLogger('torch.utils.cpp_extension')\n"
            "log.warning('another warning')\n"
            "print(os.environ.get('TORCHINDUCTOR_CACHE_DIR'), torch.cuda.is_available(), flush=True)\n"
            "print('--- without the filter', file=os.sys.stderr, flush=True)\n"
            "log.filters.clear(); ext._find_cuda_home()\n")
    env = {**cli_env(), "CUDA_HOME": str(tmp_path), "GRADSCOPE_CACHE": str(tmp_path / "cache")}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    p = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    cache, cuda = p.stdout.split()
    assert cache == str(tmp_path / "cache" / "inductor")
    before, after = p.stderr.split("--- without the filter")
    assert "another warning" in before
    if cuda == "False":
        assert "No CUDA runtime is found" not in before, before
        assert "No CUDA runtime is found" in after  # what the filter removes
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "own"))
    assert inductor_cache_dir() == str(tmp_path / "own")


def test_ddp_wrap_and_global_batchnorm_raise_no_future_warning(tmp_path, monkeypatch):
    """torchrun printed two FutureWarnings per rank (DDP's broadcast_buffers, the deprecated
    differentiable all_reduce); both are ours to avoid, other warnings still show (issue 24.8)."""
    import warnings

    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gradscope.train import distributed as D

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            DDP(nn.Linear(3, 2), **D.no_buffer_sync(DDP))
            monkeypatch.setattr(D, "active", lambda: True)  # the all-reduce path, on a 1-rank group
            bn = D.GlobalBatchNorm(4).train()
            x = torch.randn(8, 4, 3, 3, requires_grad=True)
            y = bn(x)
            y.sum().backward()
        ref = nn.BatchNorm2d(4).train()(x.detach())
        assert torch.allclose(y, ref, atol=1e-5)  # the same numbers as torch's BatchNorm on one rank
        with pytest.warns(UserWarning, match="still shown"):
            warnings.warn("still shown", UserWarning)
    finally:
        dist.destroy_process_group()


def test_local_ray_is_started_with_explicit_token_auth(monkeypatch):
    """--workers N starts a local Ray: token auth is asked for explicitly (Ray's own default, so no
    'enabled by default' notice); a user's RAY_AUTH_MODE and a cluster address are left alone."""
    import os
    import types

    from gradscope.train import ray_jobs

    seen = []
    fake = types.SimpleNamespace(is_initialized=lambda: False,
                                 init=lambda address=None, **kw: seen.append((address, os.environ.get("RAY_AUTH_MODE"))))
    monkeypatch.setattr(ray_jobs, "import_ray", lambda: fake)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    ray_jobs.ensure_ray(None, num_cpus=1)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray_jobs.ensure_ray(None, num_cpus=1)
    monkeypatch.delenv("RAY_AUTH_MODE")
    ray_jobs.ensure_ray("head:6379")
    assert seen == [(None, "token"), (None, "disabled"), ("head:6379", None)]


def test_decoding_into_the_cache_says_so_once(tmp_path, capsys):
    """A dataset decoded into the cache prints one line before and one after (off a terminal too:
    stderr), and a later load from the cache prints nothing (issue 24.9)."""
    import torch

    from gradscope.data import imagefiles

    src = tmp_path / "images.tar"
    src.write_bytes(b"x")
    def build():
        split = {"x": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "y": torch.zeros(2, dtype=torch.int64)}
        return {"classes": ["a"], **{f"{s}_{k}": v for s in ("train", "test") for k, v in split.items()}}

    imagefiles.cached(str(tmp_path / "cache"), "toy", str(src), build)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("gradscope: decoding toy from ") and "into the dataset cache" in err[0]
    assert re.fullmatch(r"gradscope: decoded toy in [0-9.]+ s", err[1])
    imagefiles.cached(str(tmp_path / "cache"), "toy", str(src), build)
    assert capsys.readouterr().err == ""
