"""``silo-auto``: SILO whose S-curve is re-calibrated from the run after every round.

The factory holds the prior (preset or flags) and, once calibration takes over, the
calibrated parameters. Its callback (``SiloAutoCalibration``) re-calibrates at each round's
end and is checkpointed with the run (``state_dict``), so a resumed run trains every round
at the LR an uninterrupted one would. It calibrates from the run file's recorded gradients,
or, with ``predictor=NAME`` (``--predictor``), from that probe's per-round values in
RUN/probes.json through ``calibrate_predictor`` (no recorder needed); a predictor's prior is
the fixed peak lo (round 0's max_lr): a rise is used only once the gate supports it.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

from gradscope import GradscopeError
from gradscope.calibrate.core import MIN_POINTS, calibrate_run, default_view
from gradscope.schedules.factories import SiloSchedule
from gradscope.schedules.registry import SCHEDULES, register_schedule

_CURVE = ("lo", "hi", "beta", "midpoint")
_GATE_KEYS = ("status", "slope", "slope_lo", "slope_hi", "dof", "level", "min_rise", "n", "min_dof", "rounds_needed")


class SiloAuto(SiloSchedule):
    """SILO with closed-loop calibration. Until the calibration from the rounds recorded so
    far passes the same gate as `gradscope calibrate` (status "supported": the measured rise
    beyond the pruning-only null, with enough rounds), it uses its prior parameters (preset
    or flags; with a ``predictor``, the fixed peak lo); afterwards the calibrated (lo fixed
    at round 0's max_lr, hi, beta, midpoint)."""

    name = "silo-auto"
    PEAK_PARAMS = {**SiloSchedule.PEAK_PARAMS, "gamma": 1.0, "statistic": "std",
                   "min_points": MIN_POINTS, "predictor": None}

    def _check(self) -> None:
        super()._check()
        if not (isinstance(self.gamma, (int, float)) and self.gamma > 0):
            raise GradscopeError(f"schedule parameter 'gamma' must be > 0, got {self.gamma!r}")
        self.gamma = float(self.gamma)
        self.min_points = int(self.min_points)
        if self.predictor is not None:
            from gradscope.probes.registry import split_predictor  # noqa: PLC0415

            if not isinstance(self.predictor, str) or not self.predictor.strip():
                raise GradscopeError(f"--predictor must name a probe (e.g. bn-norm, lr-range:steep), got {self.predictor!r}")
            spec, variant = split_predictor(self.predictor.strip())  # unknown name or variant: one error
            self.predictor = f"{spec.name}:{variant}" if variant else spec.name
        if not hasattr(self, "prior"):
            self.prior = {k: getattr(self, k) for k in _CURVE}
            self.calibrated_at: Optional[int] = None  # the round after which calibration took over
            self.calibration = None  # the last successful Calibration (not checkpointed: its numbers are)
            self.reason = "not calibrated yet"
            self.gate: dict = {}  # the last verdict's gate numbers (predictor mode), checkpointed
            self.max_lr0: Optional[float] = None  # round 0's max_lr (predictor mode), checkpointed

    @property
    def probe(self) -> Optional[str]:
        """The probe the predictor reads (``lr-range`` for ``lr-range:steep``), or None."""
        return None if self.predictor is None else self.predictor.partition(":")[0]

    def check_run(self, config, probe_names: Sequence[str]) -> None:
        """Before anything is written: a predictor needs its probe among the run's ``--probes``."""
        if self.predictor is None:
            return
        if self.probe not in probe_names:
            have = ", ".join(probe_names) or "none"
            raise GradscopeError(f"--predictor {self.predictor} reads the {self.probe} probe, but the run measures "
                                 f"{'only ' if probe_names else ''}{have} (--probes); add --probes {self.probe}")

    def _peak(self, info) -> float:
        if self.predictor is not None and self.calibrated_at is None:
            return float(self.lo)  # the fixed peak until the predictor's calibration passes the gate
        return super()._peak(info)

    def observe(self, reader) -> bool:
        """Re-calibrate from the rounds recorded so far; True if the calibration is now used."""
        from gradscope.fit.core import BINNED_STATS, MOMENT_STATS  # noqa: PLC0415
        from gradscope.fit.run import fit_run  # noqa: PLC0415

        try:
            binned_or_exact = self.statistic in (*MOMENT_STATS, *BINNED_STATS)
            view = default_view(reader)  # the one default (gradscope.views), as `gradscope calibrate`
            fit = fit_run(reader, per="round", models=(), bootstrap=0, store=False, view=view) \
                if binned_or_exact else fit_run(reader, per="round", models=(self.statistic,), bootstrap=100,
                                                store=False, view=view)
            cal = calibrate_run(reader, gamma=self.gamma, statistic=self.statistic, lo=None,
                                p=self.p, lag=self.lag, shape=self.shape, fix_lo=True, fit=fit,
                                min_points=self.min_points, x=self.x, view=view)
        except GradscopeError as e:
            self.reason = str(e)
            return False
        if cal.status != "supported":
            self.reason = f"the calibration is {cal.status} (view {view}; the pruning-only null gate)"
            return False
        for k in _CURVE:
            setattr(self, k, cal.params[k])
        self.calibration = cal
        self.reason = "calibrated"
        return True

    def observe_predictor(self, run_dir, at: str = "start") -> bool:
        """Re-calibrate from the predictor's values in RUN/probes.json (the path of
        ``calibrate --predictor``, lo fixed at round 0's max_lr); True if the calibration is now used."""
        from gradscope.calibrate.predictor import calibrate_predictor  # noqa: PLC0415

        lo = self.max_lr0 if self.max_lr0 is not None else self.prior["lo"]
        try:
            cal, _, (shape, note) = calibrate_predictor(run_dir, self.predictor, at=at, lo=lo, p=self.p, lag=self.lag,
                                                        x=self.x, min_points=self.min_points, fix_lo=True)
        except GradscopeError as e:
            self.gate, self.reason = {}, str(e)
            return False
        self.gate = {k: (float(cal.rise[k]) if k not in ("status",) else cal.rise[k]) for k in _GATE_KEYS
                     if k in cal.rise}
        if note:
            self.gate["shape"] = note
        if cal.status != "supported":
            self.reason = f"status {cal.status}"
            return False
        for k in _CURVE:
            setattr(self, k, float(cal.params[k]))
        self.calibration = cal
        self.reason = "status supported"
        return True

    def verdict_line(self, k: int, rounds: Optional[int] = None) -> str:
        """Predictor mode, after round k (of ``rounds``): one labelled line (predictor, status,
        slope with CI, what the next round trains at)."""
        g = self.gate
        if g and "slope" in g:
            lvl = f"{100 * g.get('level', 0.95):.0f} %"
            fin = all(math.isfinite(g.get(key, math.nan)) for key in ("slope", "slope_lo", "slope_hi"))
            slope = (f"slope of log implied max_lr on x {g['slope']:.3g} ({lvl} CI {g['slope_lo']:.3g} to "
                     f"{g['slope_hi']:.3g}, {int(g.get('dof', 0))} dof; 'supported' needs the CI above "
                     f"log {math.exp(g.get('min_rise', 0)):.3g})") if fin else \
                f"slope of log implied max_lr on x: none yet ({int(g.get('n', 0))} points)"
            status = f"status {g['status']}"
            if g["status"] == "underdetermined":
                slope += (f"; the gate needs {int(g.get('min_dof', 0))} dof, {int(g.get('rounds_needed', 0))} rounds "
                          "incl. round 0")
        else:
            status, slope = "status not calibrated", self.reason
        then = f"round {k + 1}" + (" (if the run is extended)" if rounds is not None and k + 1 >= rounds else "")
        if self.calibrated_at is not None:
            nxt = (f"the calibrated S-curve (since round {self.calibrated_at}: lo {self.lo:.4g}, hi {self.hi:.4g}, "
                   f"beta {self.beta:.3g}, midpoint {self.midpoint:.3g}) sets the max_lr of {then}")
        else:
            nxt = f"keeps the fixed peak max_lr {self.lo:.4g} (round 0's) for {then}"
        return f"silo-auto after round {k}: predictor {self.predictor}, {status} ({slope}): {nxt}"

    def round_params(self, info) -> dict:
        out = super().round_params(info)
        if self.predictor is not None:
            if self.calibrated_at is None:
                out["note"] = (f"silo-auto: fixed peak max_lr {self.lo:.4g} (round 0's) until the calibration from "
                               f"predictor {self.predictor} is supported")
            else:
                out["note"] = (f"silo-auto: S-curve calibrated from predictor {self.predictor} since round "
                               f"{self.calibrated_at} (lo {self.lo:.4g}, hi {self.hi:.4g}, beta {self.beta:.3g}, "
                               f"midpoint {self.midpoint:.3g})")
            out["predictor_gate"] = dict(self.gate)  # the verdict the round's max_lr was set by
        elif self.calibrated_at is None:
            out["note"] = f"silo-auto: prior S-curve ({self.reason})"
        else:
            out["note"] = (f"silo-auto: calibrated S-curve since round {self.calibrated_at} "
                           f"(lo {self.lo:.4g}, hi {self.hi:.4g}, beta {self.beta:.3g}, midpoint {self.midpoint:.3g})")
        out["calibrated"] = self.calibrated_at is not None
        return out

    def callbacks(self, paths, log: Callable[[str], None]) -> list:
        return [SiloAutoCalibration(self, paths.run_h5, log)]


class SiloAutoCalibration:
    """Callback: at each round's end, re-calibrate the SiloAuto factory from the run file (or,
    with a predictor, from RUN/probes.json beside it)."""

    state_key = "silo-auto"

    def __init__(self, factory: SiloAuto, run_h5, log: Callable[[str], None] = print):
        self.factory, self.run_h5, self.log = factory, run_h5, log

    def on_round_end(self, state) -> None:
        f = self.factory
        k = int(state.round)
        if f.predictor is not None:
            if k == 0 or f.max_lr0 is None:
                mx = (state.schedule or {}).get("max_lr") if k == 0 else None
                f.max_lr0 = float(mx) if mx is not None else f.max_lr0
            probes_at = ((state.config or {}).get("probe") or {}).get("probes_at", "start")
            ok = f.observe_predictor(self.run_h5.parent, at="epoch1" if probes_at == "epoch1" else "start")
        else:
            from gradscope.store import open_run  # noqa: PLC0415

            if not self.run_h5.exists():
                return
            with open_run(self.run_h5) as reader:
                ok = f.observe(reader)
        if ok and f.calibrated_at is None:
            f.calibrated_at = k
            self.log(f"silo-auto: calibration takes over after round {k}")
        if f.predictor is not None:
            self.log(f.verdict_line(k, ((state.config or {}).get("prune") or {}).get("rounds")))

    def state_dict(self) -> dict:
        f = self.factory
        return {"params": {k: getattr(f, k) for k in _CURVE}, "calibrated_at": f.calibrated_at,
                "reason": f.reason, "gate": dict(getattr(f, "gate", {})), "max_lr0": getattr(f, "max_lr0", None)}

    def load_state_dict(self, d: dict) -> None:
        f = self.factory
        for k, v in d["params"].items():
            setattr(f, k, float(v))
        f.calibrated_at = d.get("calibrated_at")
        f.reason = d.get("reason", f.reason)
        f.gate = dict(d.get("gate") or {})
        f.max_lr0 = d.get("max_lr0")


def register() -> None:
    """Register ``silo-auto`` in the schedule registry (defaults: the silo defaults)."""
    register_schedule("silo-auto", SiloAuto, dict(SCHEDULES.get("silo").defaults))
