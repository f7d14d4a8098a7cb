"""``gradscope repair RUN.h5``: check a run file, or recover the committed data of a damaged or
truncated one (keeping a backup). Flags in, library calls out.

Wire-up (gradscope/cli.py): ``from gradscope.store.commands import register`` in ``_EXTRA``.
"""
from __future__ import annotations

import os

from gradscope import GradscopeError


def _run_file(arg: str) -> str:
    if os.path.isdir(arg) and os.path.isfile(os.path.join(arg, "run.h5")):
        return os.path.join(arg, "run.h5")
    return arg


def _cmd_repair(ns) -> int:
    from gradscope.store import recovery as R  # noqa: PLC0415

    path = _run_file(ns.run)
    if ns.check:
        info = R.check(path)
        sums = "checksums verified" if info["checksums"] else "no checksums: values checked for consistency"
        cut = ""
        if info["truncated"]:
            cut = "; its end was cut off by a failed write (`gradscope repair` restores it" + \
                  (", as does continuing the run)" if info["schema_version"] >= 2 else ")")
        warn = info.get("warnings") or []
        state = "OK" if not warn else f"readable, {len(warn)} warning{'s' if len(warn) > 1 else ''}"
        print(f"{path}: {state} (schema {info['schema_version']}, {sums}): {info['windows']} windows, "
              f"{info['rounds']} rounds, {info['epochs']} epochs, {info['derived']} derived tables{cut}")
        for w in warn:
            print(f"  warning: {w}")
        return 0
    if ns.no_backup and not ns.yes:
        raise GradscopeError("--no-backup replaces the file without a copy of the original; add --yes to confirm")
    res = R.repair(path, backup=not ns.no_backup)
    print(res.summary())
    return 0


def register(subparsers) -> None:
    """Add the ``repair`` subcommand to the ``gradscope`` parser."""
    s = subparsers.add_parser(
        "repair", help="check a run file; recover the committed data of a damaged or truncated one",
        description="Rewrites RUN.h5 from its committed, readable rows (the original is kept as RUN.h5.bak): "
                    "restores a file cut short by a full disk or file-size limit, drops a torn tail, keeps "
                    "the longest readable prefix of a damaged file, and converts schema-1 files to schema 2. "
                    "A healthy current file is left alone.")
    s.add_argument("run", metavar="RUN.h5", help="the run file (or a run directory holding run.h5)")
    s.add_argument("--check", action="store_true",
                   help="only read and check every committed row; change nothing (exit 2 if damaged)")
    s.add_argument("--no-backup", action="store_true", help="do not keep the original as RUN.h5.bak (needs --yes)")
    s.add_argument("--yes", action="store_true", help="confirm --no-backup")
    s.set_defaults(func=_cmd_repair)
