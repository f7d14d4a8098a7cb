"""``silo-auto``: SILO whose S-curve is re-calibrated from the run after every round."""
from __future__ import annotations


from gradscope import GradscopeError
from gradscope.calibrate.core import MIN_POINTS, calibrate_run
from gradscope.schedules.factories import SiloSchedule, register_schedule


class SiloAuto(SiloSchedule):
    """SILO with closed-loop calibration. Until ``min_points`` rounds with x > 0 are
    recorded and the pooled ``statistic`` visibly narrows (trend CI above 0), it uses its
    prior parameters (preset or flags); afterwards the calibrated (lo fixed at round 0's
    max_lr, hi, beta, midpoint)."""

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
            self.prior = {k: getattr(self, k) for k in ("lo", "hi", "beta", "midpoint")}
            self.calibration = None

    def observe(self, reader) -> bool:
        """Re-calibrate from the rounds recorded so far; True if the calibration is now used."""
        from gradscope.fit.run import fit_run  # noqa: PLC0415

        p = self.p if self.p is not None else None
        try:
            fit = fit_run(reader, per="round", models=(), bootstrap=0, store=False) \
                if self.statistic in ("std", "meanabs") else \
                fit_run(reader, per="round", models=(self.statistic,), bootstrap=100, store=False)
            tr = fit.trend
            tr = tr[(tr["layer"] == "pooled") & (tr["statistic"] == self.statistic)]
            if tr.empty or not bool(tr["narrows"].iloc[0]):
                return False
            cal = calibrate_run(reader, gamma=self.gamma, statistic=self.statistic, lo=None,
                                p=p, lag=self.lag, shape=self.shape, fix_lo=True, fit=fit,
                                min_points=self.min_points,
                                x="measured" if self.use_measured else "planned")
        except GradscopeError:
            return False
        for k in ("lo", "hi", "beta", "midpoint"):
            setattr(self, k, cal.params[k])
        self.calibration = cal
        return True


def register() -> None:
    """Register ``silo-auto`` in the schedule registry (defaults: the silo defaults)."""
    from gradscope.schedules.factories import _REGISTRY  # noqa: PLC0415

    defaults = dict(_REGISTRY["silo"][1])
    register_schedule("silo-auto", SiloAuto, defaults)
