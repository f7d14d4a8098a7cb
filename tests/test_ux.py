"""What a new user sees (issue 24): where the docs' commands write, help texts, log lines."""
from __future__ import annotations

import re
import shlex

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
