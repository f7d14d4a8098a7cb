"""``RUN/probes.json``: the probes' results (gradscope.probes), one record per (round, when, probe).

Not in run.h5: ``prune`` and ``oracle`` runs have no run file (the Oracle refuses to record),
and the records are small nested dicts (a range test's curve, per-layer ratios). The file is
JSON with a CRC-32 over its records in the canonical form of ``gradscope.store.checksum``
(``value_crc``), written atomically (``mkstemp`` beside it, fsync, rename): a kill leaves the
old file or the new one, and any edit or damage is refused on reading.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from gradscope import GradscopeError
from gradscope.store.checksum import value_crc
from gradscope.store.diskio import write_error

FORMAT = "gradscope-probes/1"
FILENAME = "probes.json"


def probes_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / FILENAME


def _canonical(records: list) -> list:
    return json.loads(json.dumps(records, sort_keys=True, allow_nan=True))


def read_probes(run_dir: str | os.PathLike, *, required: bool = True) -> list[dict]:
    """The records of RUN/probes.json (checksum verified); [] when absent and not required."""
    p = probes_path(run_dir)
    if p.is_symlink() or (p.exists() and not p.is_file()):
        raise GradscopeError(f"{p} is not a regular file; refusing to read it")
    if not p.exists():
        if required:
            raise GradscopeError(f"{p} does not exist: run with --probes (prune, profile or oracle) first")
        return []
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise GradscopeError(f"{p} is not readable JSON ({type(e).__name__}); it was damaged: delete it to "
                             "measure the probes again") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("records"), list):
        raise GradscopeError(f"{p} is not a gradscope probes file (format {FORMAT})")
    if value_crc(_canonical(d["records"])) != d.get("crc32"):
        raise GradscopeError(f"{p} fails its checksum: it was edited or damaged; delete it to measure the probes again")
    return d["records"]


def write_probes(run_dir: str | os.PathLike, records: Iterable[dict]) -> None:
    """Replace RUN/probes.json with ``records`` atomically (sorted by round, when, probe)."""
    order = {"start": 0, "epoch1": 1}
    recs = sorted(_canonical(list(records)), key=lambda r: (r["round"], order.get(r["at"], 9), r["probe"]))
    text = json.dumps({"format": FORMAT, "crc32": value_crc(recs), "records": recs}, indent=1, sort_keys=True)
    p = probes_path(run_dir)
    if p.is_symlink() or (p.exists() and not p.is_file()):
        raise GradscopeError(f"{p} is not a regular file; refusing to replace it")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        tmp = None
    except OSError as e:
        raise write_error(str(p), "probe results", e) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def upsert_probes(run_dir: str | os.PathLike, new: Iterable[dict]) -> list[dict]:
    """Add records, replacing any of the same (round, at, probe); return all records."""
    new = list(new)
    keys = {(r["round"], r["at"], r["probe"]) for r in new}
    old = [r for r in read_probes(run_dir, required=False) if (r["round"], r["at"], r["probe"]) not in keys]
    write_probes(run_dir, old + new)
    return read_probes(run_dir)


def has_record(records: Iterable[dict], round_: int, at: str, probe: str) -> bool:
    return any(r["round"] == round_ and r["at"] == at and r["probe"] == probe for r in records)


def as_jsonable(obj: Any) -> Any:
    """Numbers, strings, lists and dicts only (numpy and torch scalars made Python numbers)."""
    if isinstance(obj, dict):
        return {str(k): as_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj
