"""Sharpness's cost and noise under cheaper solver settings, on the calibration study's networks
(issue 20): λ_max at a round's start by each setting, 3 repeats (probe seeds as the runs use
them), CV, Hessian-vector products, forward+backward equivalents and share of an Oracle round.

The round's starting network is rebuilt from a finished probes run (read only): its config, the
rewind state (``checkpoint.pt``'s init) and the round's masks (``round_K.pt``); the probe loader
is the ProbeCallback's. Before measuring, the recorded noise-scale values of that round are
re-measured and must match exactly (the network and batches are the ones the run probed).

    python analysis/sharpness_settings.py --run /work/main/analysis/runs/calibration/digits-small_cnn/t0/probes --round 3
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

SETTINGS = {  # name -> sharpness config
    "ARPACK 20 vectors, tol 1e-3, 4 batches (old default)": {"ncv": 20, "tol": 1e-3, "batches": 4},
    "6 Lanczos vectors, tol 1e-2, 4 batches (new default)": {"ncv": 6, "tol": 1e-2, "batches": 4},
    "6 Lanczos vectors, tol 1e-2, 2 batches": {"ncv": 6, "tol": 1e-2, "batches": 2},
    "power iteration, tol 1e-2, 2 batches": {"method": "power", "tol": 1e-2, "batches": 2},
}


def network(run: Path, k: int):
    """The run's context with round ``k``'s masks and the rewind state loaded, and its ProbeCallback."""
    from gradscope import pruning as P
    from gradscope.config import RunConfig
    from gradscope.probes.callback import ProbeCallback
    from gradscope.train.checkpoint import load_torch
    from gradscope.train.context import build_context

    c = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    c.train.threads = 1
    ctx = build_context(c)
    init = load_torch(run / "checkpoint.pt", what="checkpoint")["state"]["init"]
    if k > 0:
        P.set_masks(ctx.layers, load_torch(run / f"round_{k}.pt", what="round file")["masks"])
    P.load_plain_state(ctx.model, init)
    cb = ProbeCallback(["sharpness"], ctx, "/nonexistent", settings={"momentum": c.train.momentum},
                       epochs=c.train.epochs, seed=c.train.seed)
    return ctx, cb, P.current_masks(ctx.layers)


def main(argv=None) -> None:
    from gradscope.probes.measure import measure
    from gradscope.store.probes import read_probes

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a finished probes run of the calibration study")
    p.add_argument("--round", type=int, default=3)
    ns = p.parse_args(argv)
    run = Path(ns.run)
    ctx, cb, masks = network(run, ns.round)
    rec = [r for r in read_probes(run) if r["round"] == ns.round and r["probe"] == "noise-scale"]
    if rec:
        m = measure("noise-scale", ctx.model, masks, cb._loader, {}, repeats=3, seed=cb.seed)
        same = m["values"]["value"] == rec[0]["values"]["value"]
        print(f"check: noise-scale lr_factor re-measured {m['values']['value']} vs recorded "
              f"{rec[0]['values']['value']}: {'identical' if same else 'DIFFERENT'}")
        if not same:
            raise SystemExit("the rebuilt network is not the one the run probed")
    for name, cfg in SETTINGS.items():
        m = measure("sharpness", ctx.model, masks, cb._loader, {"momentum": 0.9, **cfg}, repeats=3, seed=cb.seed,
                    oracle_passes=cb.oracle_passes)
        vals = m["values"]["value"]
        print(f"{name}: lambda_max per repeat {', '.join(f'{v:.5g}' for v in vals)}; CV over 3 repeats "
              f"{m['cv']['value']:.3g}; HVPs {m['result']['hvps']}; passes counted {m['passes_counted']:.0f}; "
              f"wall {np.median(m['seconds']):.2f} s = {m['fb_equiv']:.0f} forward+backward equivalents = "
              f"{100 * m['share_of_oracle_round']:.1f} % of an Oracle round ({cb.oracle_passes:.0f} passes)")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
