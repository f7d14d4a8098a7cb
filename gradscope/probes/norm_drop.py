"""``norm-drop``: ALLR's ‖θ − θ_pruned‖/‖θ‖ (Zimmer et al. 2023), which the runner computes when it
prunes (``gradscope.pruning.norm_drop``, before rewinding) and hands every round in
``RoundInfo.norm_drop``; this probe only reports it with ALLR's implied peak
``allr_peak(norm_drop, step_pruned, max_lr)`` (``gradscope.schedules.curves``) and the unclipped
estimate norm_drop/√s that the peak clips (with T_retrain = T_orig ALLR's clip makes the peak
constant, so the estimate is what can predict). Round 0 has none.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch

from gradscope.schedules.curves import allr_peak


def probe(model: torch.nn.Module, masks: Optional[Mapping[str, torch.Tensor]], loader, config: Mapping[str, Any]) -> dict:
    """config: norm_drop, step_pruned (from the round's RoundInfo), max_lr (round 0's)."""
    nd, s = config.get("norm_drop"), config.get("step_pruned")
    out = {"norm_drop": nd, "step_pruned": s, "passes": 0.0,
           "estimate": float(nd) / math.sqrt(float(s)) if nd is not None and s else None}
    if out["estimate"] is not None and config.get("max_lr"):
        out["allr_peak"] = allr_peak(float(nd), float(s), float(config["max_lr"]))  # clipped to [max_lr·ratio, max_lr]
    return out
