"""Regenerate docs/cli.md from the parser itself (run after changing flags).

    .venv/bin/python scripts/gen_cli_docs.py
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ["COLUMNS"] = "100"  # stable wrapping

from gradscope.cli import build_parser  # noqa: E402

HEAD = """# gradscope command line

Every command and its flags, as printed by `gradscope COMMAND --help` (this page is generated
by `scripts/gen_cli_docs.py`). User errors print one line `gradscope: error: ...` and exit
with status 2.
"""


def main() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    parts = [HEAD, "```text\n" + parser.format_help().rstrip() + "\n```\n"]
    for name, p in sub.choices.items():
        parts.append(f"## gradscope {name}\n\n```text\n{p.format_help().rstrip()}\n```\n")
    out = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    out.write_text("\n".join(parts))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
