"""``silo-auto``: SILO whose S-curve is re-calibrated from the run after every round.

The factory holds the prior (preset or flags) and, once calibration takes over, the
calibrated parameters. Its callback (``SiloAutoCalibration``) re-calibrates at each round's
end from the run file and is checkpointed with the run (``state_dict``), so a resumed run
trains every round at the LR an uninterrupted one would.
"""
from __future__ import annotations

from typing import Callable, Optional

from gradscope import GradscopeError
from gradscope.calibrate.core import MIN_POINTS, calibrate_run, default_view
from gradscope.schedules.factories import SiloSchedule
from gradscope.schedules.registry import SCHEDULES, register_schedule

_CURVE = ("lo", "hi", "beta", "midpoint")


class SiloAuto(SiloSchedule):
    """SILO with closed-loop calibration. Until the calibration from the rounds recorded so
    far passes the same gate as `gradscope calibrate` (status "supported": the measured rise
    beyond the pruning-only null, with enough rounds), it uses its prior parameters (preset
    or flags); afterwards the calibrated (lo fixed at round 0's max_lr, hi, beta, midpoint)."""

    name = "silo-auto"
    PEAK_PARAMS = {**SiloSchedule.PEAK_PARAMS, "gamma": 1.0, "statistic": "std",
                   "min_points": MIN_POINTS}

    def _check(self) -> None:
        super()._check()
        if not (isinstance(self.gamma, (int, float)) and self.gamma > 0):
            raise GradscopeError(f"schedule parameter 'gamma' must be > 0, got {self.gamma!r}")
        self.gamma = float(self.gamma)
        self.min_points = int(self.min_points)
        if not hasattr(self, "prior"):
            self.prior = {k: getattr(self, k) for k in _CURVE}
            self.calibrated_at: Optional[int] = None  # the round after which calibration took over
            self.calibration = None  # the last successful Calibration (not checkpointed: its numbers are)
            self.reason = "not calibrated yet"

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

    def round_params(self, info) -> dict:
        out = super().round_params(info)
        if self.calibrated_at is None:
            out["note"] = f"silo-auto: prior S-curve ({self.reason})"
        else:
            out["note"] = (f"silo-auto: calibrated S-curve since round {self.calibrated_at} "
                           f"(lo {self.lo:.4g}, hi {self.hi:.4g}, beta {self.beta:.3g}, midpoint {self.midpoint:.3g})")
        out["calibrated"] = self.calibrated_at is not None
        return out

    def callbacks(self, paths, log: Callable[[str], None]) -> list:
        return [SiloAutoCalibration(self, paths.run_h5, log)]


class SiloAutoCalibration:
    """Callback: at each round's end, re-calibrate the SiloAuto factory from the run file."""

    state_key = "silo-auto"

    def __init__(self, factory: SiloAuto, run_h5, log: Callable[[str], None] = print):
        self.factory, self.run_h5, self.log = factory, run_h5, log

    def on_round_end(self, state) -> None:
        from gradscope.store import open_run  # noqa: PLC0415

        f = self.factory
        if not self.run_h5.exists():
            return
        with open_run(self.run_h5) as reader:
            ok = f.observe(reader)
        if ok and f.calibrated_at is None:
            f.calibrated_at = int(state.round)
            self.log(f"silo-auto: calibration takes over after round {state.round}")

    def state_dict(self) -> dict:
        f = self.factory
        return {"params": {k: getattr(f, k) for k in _CURVE}, "calibrated_at": f.calibrated_at,
                "reason": f.reason}

    def load_state_dict(self, d: dict) -> None:
        f = self.factory
        for k, v in d["params"].items():
            setattr(f, k, float(v))
        f.calibrated_at = d.get("calibrated_at")
        f.reason = d.get("reason", f.reason)


def register() -> None:
    """Register ``silo-auto`` in the schedule registry (defaults: the silo defaults)."""
    register_schedule("silo-auto", SiloAuto, dict(SCHEDULES.get("silo").defaults))
