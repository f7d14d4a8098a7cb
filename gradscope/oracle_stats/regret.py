"""Score max_lr predictors by what they cost in accuracy on the Oracle's fitted curve.

Regret of a prediction in one round = the Oracle's fitted accuracy at its optimum minus its
fitted accuracy at the predicted max_lr (``round.fitted_accuracy``: the local quadratic round
the argmax, linear in log max_lr elsewhere on the grid; a prediction outside the grid is
clamped to the nearest end and counted in ``outside_grid``; in a round whose optimum is at a
grid edge the regret is a lower bound). It is computed on every
bootstrap replicate of the Oracle's accuracy curve, so the Oracle's own uncertainty is in
every CI. A predictor "beats constant" only when the CI of its paired regret difference to
the constant (same replicates, same rounds) excludes 0 below; with several trajectories that
CI is over trajectories (``slope.random_effects``), with one it is within-trajectory only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import numpy as np
from scipy import stats

from gradscope import GradscopeError
from gradscope.oracle_stats.round import OptimumEstimate, fitted_accuracy, local_optimum
from gradscope.oracle_stats.slope import random_effects


@dataclass
class OracleRound:
    """One round of one trajectory as the Oracle saw it (``estimate`` carries ``boot_acc``)."""

    trajectory: str
    round: int
    sparsity: float
    estimate: OptimumEstimate


Predictions = Union[Mapping, Sequence[float], float]


def _lookup(pred: Predictions, i: int, r: OracleRound, name: str) -> float:
    """A predictor's max_lr for round ``r`` (index ``i`` of the rounds): a number for every round,
    a sequence aligned with the rounds, or a mapping by (trajectory, round) or by round."""
    if isinstance(pred, (int, float)):
        v = pred
    elif isinstance(pred, Mapping):
        v = pred.get((r.trajectory, r.round), pred.get(r.round))
    else:
        v = pred[i] if i < len(pred) else None
    if v is None or not (isinstance(v, (int, float, np.floating)) and math.isfinite(v) and v > 0):
        raise GradscopeError(f"predictor {name!r} has no positive max_lr for trajectory {r.trajectory!r} "
                             f"round {r.round} (pass only the rounds to score)")
    return float(v)


def round_regrets(rounds: Sequence[OracleRound], predicted: Mapping[str, Predictions]):
    """Per round and predictor: max_lr, regret (accuracy points) with its bootstrap CI (95 %),
    whether the prediction lies inside the Oracle's CI and outside the grid. Also returns the
    replicates: ``{(predictor, trajectory): [B, rounds]}`` regret in points."""
    import pandas as pd  # noqa: PLC0415

    if not rounds:
        raise GradscopeError("no Oracle rounds to score")
    if not predicted:
        raise GradscopeError("no predictor to score")
    rows, reps = [], {}
    for i, r in enumerate(rounds):
        e = r.estimate
        if e.boot_acc is None:
            raise GradscopeError(f"trajectory {r.trajectory!r} round {r.round}: the Oracle's bootstrap curves "
                                 "(boot_acc) are missing; re-analyse the round's candidates")
        logx = np.log(e.grid)
        mean = np.asarray([e.mean_acc[g] for g in e.grid], float)
        peak = float(local_optimum(logx, mean)[1])
        peak_b = local_optimum(logx, e.boot_acc)[1]
        for name, pred in predicted.items():
            lr = _lookup(pred, i, r, name)
            f, outside = fitted_accuracy(logx, mean, math.log(lr))
            fb, _ = fitted_accuracy(logx, e.boot_acc, math.log(lr))
            reg_b = 100 * (peak_b - fb)
            reps.setdefault((name, r.trajectory), []).append(reg_b)
            lo, hi = np.quantile(reg_b, [0.025, 0.975])
            inside = e.status == "interior" and e.lo is not None and e.lo <= lr <= e.hi
            rows.append({"trajectory": r.trajectory, "round": r.round, "sparsity": r.sparsity, "predictor": name,
                         "max_lr": lr, "status": e.status, "optimum": e.optimum, "ci_lo": e.lo, "ci_hi": e.hi,
                         "regret_points": 100 * (peak - float(f)), "regret_lo": float(lo), "regret_hi": float(hi),
                         "in_oracle_ci": bool(inside), "outside_grid": outside})
    B = min(len(a) for v in reps.values() for a in v)
    return pd.DataFrame(rows), {k: np.stack([a[:B] for a in v], axis=1) for k, v in reps.items()}


def _combine(per_traj: dict, level: float) -> tuple[float, float, float, str]:
    """Mean over rounds per trajectory, then across trajectories: (estimate, lo, hi, scope)."""
    names = sorted(per_traj)
    if len(names) == 1:
        point, reps = per_traj[names[0]]
        a = (1 - level) / 2
        lo, hi = np.quantile(reps, [a, 1 - a])
        return float(point), float(lo), float(hi), "within-trajectory only"
    est = [per_traj[n][0] for n in names]
    var = [float(np.var(per_traj[n][1], ddof=1)) for n in names]
    mu, lo, hi, _ = random_effects(est, var, level)
    return mu, lo, hi, f"over {len(names)} trajectories"


def score_predictions(rounds: Sequence[OracleRound], predicted: Mapping[str, Predictions], *,
                      constant: Union[str, float] = "constant", level: float = 0.95):
    """One row per predictor: rounds scored, mean regret (accuracy points) with its CI, Spearman's
    rho between prediction and optimum across interior rounds (mean over trajectories), the share
    of interior rounds whose prediction lies inside the Oracle's CI, predictions outside the grid,
    the paired regret difference to ``constant`` with its CI, and the verdict ("beats constant",
    "worse than constant", "cannot tell"). ``constant``: the name of the constant predictor in
    ``predicted``, or a max_lr used in every round (added as "constant")."""
    import pandas as pd  # noqa: PLC0415

    if not 0 < level < 1:
        raise GradscopeError(f"level must be in (0, 1), got {level}")
    predicted = dict(predicted)
    if not isinstance(constant, str):
        predicted["constant"] = float(constant)
        constant = "constant"
    if constant not in predicted:
        raise GradscopeError(f"the constant predictor {constant!r} is not among the predictors "
                             f"({', '.join(predicted)}); name it with constant=")
    table, reps = round_regrets(rounds, predicted)
    trajs = sorted({r.trajectory for r in rounds})
    out = []
    for name in predicted:
        t = table[table["predictor"] == name]
        point = {tr: float(t.loc[t["trajectory"] == tr, "regret_points"].mean()) for tr in trajs}
        reg = _combine({tr: (point[tr], reps[(name, tr)].mean(axis=1)) for tr in trajs}, level)
        row = {"predictor": name, "rounds": len(t), "trajectories": len(trajs),
               "regret_points": reg[0], "regret_lo": reg[1], "regret_hi": reg[2], "level": level, "scope": reg[3]}
        rhos = []
        inner = t[t["status"] == "interior"]
        for tr in trajs:
            u = inner[inner["trajectory"] == tr]
            if len(u) >= 3 and u["max_lr"].nunique() > 1:
                rhos.append(float(stats.spearmanr(u["max_lr"], u["optimum"]).statistic))
        row["spearman_rho"] = float(np.mean(rhos)) if rhos else float("nan")
        row["rho_trajectories"] = len(rhos)
        row["interior_rounds"] = len(inner)
        row["share_in_oracle_ci"] = float(inner["in_oracle_ci"].mean()) if len(inner) else float("nan")
        row["outside_grid"] = int(t["outside_grid"].sum())
        if name == constant:
            row.update(diff_vs_constant=0.0, diff_lo=float("nan"), diff_hi=float("nan"), verdict="(the constant)")
        else:
            c = table[table["predictor"] == constant]
            d = _combine({tr: (point[tr] - float(c.loc[c["trajectory"] == tr, "regret_points"].mean()),
                               reps[(name, tr)].mean(axis=1) - reps[(constant, tr)].mean(axis=1)) for tr in trajs},
                         level)
            row.update(diff_vs_constant=d[0], diff_lo=d[1], diff_hi=d[2],
                       verdict="beats constant" if d[2] < 0 else "worse than constant" if d[1] > 0 else "cannot tell")
        out.append(row)
    return pd.DataFrame(out)
