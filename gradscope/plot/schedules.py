"""Figures of LR schedules over pruning rounds: the per-step LR and the S-curve of peaks."""
from __future__ import annotations

from typing import Optional

import numpy as np

from gradscope import GradscopeError
from gradscope.plot.figures import integer_ticks, label_identical, new_axes, place_legend, series_styles
from gradscope.schedules import ScheduleFactory, planned_round_info


def _axes(ax):
    return new_axes(ax, (8, 3.5))


def _check(factories: dict, rounds: int, prune_rate: float) -> None:
    if not factories:
        raise GradscopeError("plot needs at least one schedule")
    bad = [k for k, f in factories.items() if not isinstance(f, ScheduleFactory)]
    if bad:
        raise GradscopeError(f"not schedule factories: {', '.join(map(str, bad))}")
    if int(rounds) != rounds or rounds < 1:
        raise GradscopeError(f"rounds must be a positive integer, got {rounds!r}")
    if not 0.0 <= prune_rate < 1.0:
        raise GradscopeError(f"prune_rate must be in [0, 1), got {prune_rate!r}")


def plot_schedules(factories: dict[str, ScheduleFactory], rounds: int, steps_per_round: int,
                   prune_rate: float, ax=None, norm_drop: Optional[float] = 0.1):
    """Each schedule's per-step LR across ``rounds`` rounds (x = round + fraction of round).

    One line per schedule; dotted vertical lines mark round boundaries. Rounds follow the
    planned sparsity ``1 − (1 − prune_rate)^k``; ``norm_drop`` is the nominal
    ‖θ−θ_pruned‖/‖θ‖ given to ALLR.
    """
    _check(factories, rounds, prune_rate)
    if int(steps_per_round) != steps_per_round or steps_per_round < 1:
        raise GradscopeError(f"steps_per_round must be a positive integer, got {steps_per_round!r}")
    ax = _axes(ax)
    frac = np.arange(steps_per_round) / steps_per_round
    curves = []
    for label, f in factories.items():
        xs, ys = [], []
        for k in range(rounds):
            info = planned_round_info(k, prune_rate, steps_per_round, 1, norm_drop)
            xs.append(k + frac)
            ys.append(f.lrs(info))
        curves.append((np.concatenate(xs), np.concatenate(ys)))
    labels = label_identical([str(k) for k in factories], curves)
    for (x, y), label, st in zip(curves, labels, series_styles(len(curves))):
        ax.plot(x, y, label=label, color=st["color"], ls=st["ls"], lw=st["lw"], zorder=st["zorder"])
    ax.vlines(np.arange(1, rounds), 0, 1, transform=ax.get_xaxis_transform(),
              colors="0.7", linestyles=":", lw=0.8)
    ax.set_xlim(0, rounds)
    integer_ticks(ax.xaxis)
    ax.set_xlabel("pruning round (tick = start of the round)")
    ax.set_ylabel("learning rate")
    place_legend(ax)  # beside the curves, never over them
    return ax


def plot_peaks(factories: dict[str, ScheduleFactory], rounds: int, prune_rate: float, ax=None,
               norm_drop: Optional[float] = 0.1):
    """Each schedule's peak LR (max_lr) per round: SILO's S-curve against fixed peaks.

    One line per schedule; the top axis shows the planned sparsity of each round.
    """
    _check(factories, rounds, prune_rate)
    ax = _axes(ax)
    ks = np.arange(rounds)
    curves = [(ks, [f.peak_lr(planned_round_info(int(k), prune_rate, 1, 1, norm_drop)) for k in ks])
              for f in factories.values()]
    labels = label_identical([str(k) for k in factories], curves)
    for (x, y), label, st in zip(curves, labels, series_styles(len(curves))):
        ax.plot(x, y, label=label, **st)
    ax.set_xlabel("pruning round")
    integer_ticks(ax.xaxis)
    ax.set_ylabel("max_lr (peak learning rate of the round)")
    top = ax.secondary_xaxis("top")
    step = max(1, rounds // 8)
    top.set_xticks(ks[::step])
    top.set_xticklabels([f"{100 * (1 - (1 - prune_rate) ** k):.0f}%" for k in ks[::step]])
    top.set_xlabel("planned sparsity (% of weights pruned)")
    place_legend(ax)
    return ax
