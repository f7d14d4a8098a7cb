"""Reading a schedule from a ``ScheduleConfig``: a JSON/YAML file, then the flags set."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from gradscope import GradscopeError
from gradscope.schedules import params as V
from gradscope.schedules.factories import ScheduleFactory
from gradscope.schedules.registry import SCHEDULES, get_schedule

# ScheduleConfig fields that are schedule parameters of the same name (None = not set).
FLAG_PARAMS = ("max_lr", "lo", "hi", "beta", "midpoint", "lag", "shape", "preset", "p", "x", "orig_epochs",
               "predictor")
# What `gradscope calibrate` writes beside the parameters (read, not used as parameters).
FILE_NOTES = ("uncertainty", "source", "prediction", "points", "notes", "status", "warnings")


class ScheduleFileWarning(UserWarning):
    """A schedule file that loads but whose calibration says it should not be trusted."""


def read_schedule_file(path: str) -> dict:
    """The mapping in a JSON or YAML (by extension) schedule file; never evaluates code."""
    p = Path(path)
    if not p.is_file():
        raise GradscopeError(f"schedule file {path} does not exist")
    yaml_ = p.suffix.lower() in (".yaml", ".yml")
    try:
        text = p.read_text()
        if yaml_:
            import yaml  # noqa: PLC0415

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any read/parse error becomes one clear message
        raise GradscopeError(f"schedule file {path} is not valid {'YAML' if yaml_ else 'JSON'}: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if data is None:
        raise GradscopeError(f"schedule file {path} holds no parameters (it is empty or null); write a mapping "
                             "such as {\"schedule\": \"silo\", \"lo\": 0.03, \"hi\": 0.07}")
    if not isinstance(data, dict):
        raise GradscopeError(f"schedule file {path} must hold a mapping of parameter names to values")
    return data


def _file_params(path: str) -> tuple[Any, dict]:
    """(the schedule a file names, or None; its parameters without calibrate's notes)."""
    params = read_schedule_file(path)
    notes = params.get("notes") if isinstance(params.get("notes"), dict) else {}
    status = params.get("status", notes.get("status"))
    if status is not None and status != "supported":
        if status not in ("flat", "falling", "underdetermined"):
            raise GradscopeError(f"schedule file {path} has calibration status {status!r}; gradscope calibrate "
                                 "writes 'supported', 'flat', 'falling' or 'underdetermined'")
        why = ("too few rounds for a verdict" if status == "underdetermined"
               else "its data did not support a rising S-curve")
        warnings.warn(f"schedule file {path} has calibration status {status!r}: {why} (calibrate writes such a "
                      "file only with --force); a fixed max_lr may serve as well", ScheduleFileWarning, stacklevel=3)
    name = params.pop("name", params.pop("schedule", None))
    for key in FILE_NOTES:
        params.pop(key, None)
    return name, params


def schedule_from_config(cfg) -> ScheduleFactory:
    """The factory for a ``ScheduleConfig``: parameters from ``cfg.schedule_file`` (JSON/YAML),
    then the flags that are not None. A file made from ``factory.params()`` works as is."""
    name = SCHEDULES.key(cfg.schedule)  # unknown name: one error listing the known ones
    params: dict[str, Any] = {}
    if getattr(cfg, "schedule_file", None):
        fname, params = _file_params(cfg.schedule_file)
        fname = name if fname is None else fname
        if fname != name and not (fname == "silo" and name == "silo-auto"):
            raise GradscopeError(f"schedule file {cfg.schedule_file} is for schedule {fname!r} "
                                 f"but the schedule is {name!r}; pass --schedule {fname}")
    flags = {k: getattr(cfg, k) for k in FLAG_PARAMS if getattr(cfg, k, None) is not None}
    entry = SCHEDULES.get(name)
    return get_schedule(name, **V.layer(params, flags, entry.cls.PEAK_PARAMS))


def load_schedule(path: str, **overrides: Any) -> ScheduleFactory:
    """The factory a schedule file describes (e.g. ``gradscope calibrate``'s silo.json, or a
    saved ``factory.params()`` with a ``schedule`` key), for a plain training loop."""
    name, params = _file_params(path)
    if name is None:
        raise GradscopeError(f"schedule file {path} does not say which schedule it is for: add "
                             f"\"schedule\": NAME (one of {', '.join(SCHEDULES.names())})")
    name = SCHEDULES.key(name)
    return get_schedule(name, **V.layer(params, overrides, SCHEDULES.get(name).cls.PEAK_PARAMS))
