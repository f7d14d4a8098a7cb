"""Is a measured widening (or narrowing) just BatchNorm's scale invariance?

For a conv followed by BatchNorm, the loss is invariant to the scale of the conv's weights,
so its weight gradient scales like 1/||w||. Pruning (with rewinding to init) shrinks ||w||
of every layer; this script divides that effect out: per layer and round it compares the
recorded gradient std with std * ||w_init * mask_k|| / ||w_init|| (the "scale-free" std).

    python analysis/bn_scale_check.py RUN_DIR
Needs a run recorded with `gradscope profile` (run.h5, round_K.pt, checkpoint.pt), rewound
to init. Uses only the public API.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from gradscope.store import open_run
from gradscope.train.checkpoint import load_torch


def main(run_dir: str) -> pd.DataFrame:
    run = Path(run_dir)
    ck = load_torch(run / "checkpoint.pt", what="checkpoint")
    init = ck["state"]["init"] if "state" in ck else ck["init_state"]  # format 2, or gradscope 0.1
    with open_run(run / "run.h5") as r:
        m = r.moments()
        relu = set(r.layers().query("relu_fed")["layer"])
    m = m[m["layer"].isin(relu)]
    g = m.groupby(["round", "layer"])[["count", "sum", "sumsq"]].sum().reset_index()
    g["std"] = np.sqrt(g["sumsq"] / g["count"] - (g["sum"] / g["count"]) ** 2)
    norms = []
    for k in sorted(g["round"].unique()):
        masks = load_torch(run / f"round_{k}.pt", what="round file", required=("masks",))["masks"]
        for layer in relu:
            w = init[layer + ".weight"]
            norms.append({"round": k, "layer": layer,
                          "norm_ratio": float((w * masks[layer]).norm() / w.norm())})
    g = g.merge(pd.DataFrame(norms), on=["round", "layer"])
    g["std_scale_free"] = g["std"] * g["norm_ratio"]
    base = g[g["round"] == 0].set_index("layer")
    g["std_ratio"] = g["std"] / g["layer"].map(base["std"])
    g["scale_free_ratio"] = g["std_scale_free"] / g["layer"].map(base["std_scale_free"])
    out = g.groupby("round")[["norm_ratio", "std_ratio", "scale_free_ratio"]].median()
    print("median over ReLU-fed layers, relative to round 0:")
    print(out.to_string(float_format=lambda v: f"{v:.3f}"))
    return out


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/r20-profile8")
