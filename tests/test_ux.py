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
    assert "runs/" in (ROOT / ".gitignore").read_text().split()


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
