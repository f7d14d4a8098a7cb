"""When the probes run: ``ProbeCallback`` measures them at each round's start (``on_round_start``,
before the round's first step: the pruned, rewound network) and/or after the round's first
epoch (``on_epoch_end`` of epoch 0), and appends the records to RUN/probes.json.

It is attached by the runner for ``--probes`` in ``prune``, ``profile`` and ``oracle`` (the Oracle
calls ``on_round_start`` once per round before its candidates; its candidates are separate
jobs, so "after one epoch" is not available there). A round whose records exist is not
measured again (a resume); a round resumed mid-way has lost its start state, and says so.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

from gradscope import GradscopeError
from gradscope import pruning as P
from gradscope.callbacks import TrainState
from gradscope.probes.measure import measure
from gradscope.probes.registry import PROBES
from gradscope.store.probes import as_jsonable, has_record, read_probes, upsert_probes

WHEN = ("start", "epoch1", "both")
ORACLE_DEFAULT = (7, 3)  # grid points x seeds of `gradscope oracle`'s defaults, for the cost share


class ProbeCallback:
    """Runs ``names`` on the run's model at the chosen times and stores the results."""

    def __init__(self, names: Sequence[str], ctx, run_dir, *, at: str = "start", settings: Optional[dict] = None,
                 repeats: int = 3, seed: int = 0, oracle: Optional[tuple[int, int]] = None,
                 log: Callable[[str], None] = print, epochs: int = 1):
        if at not in WHEN:
            raise GradscopeError(f"--probes-at must be one of {', '.join(WHEN)}, got {at!r}")
        self.names = [PROBES.key(n) for n in names]
        self.ctx, self.run_dir, self.at, self.log = ctx, run_dir, at, log
        self.settings = dict(settings or {})
        self.repeats, self.seed = int(repeats), int(seed)
        grid, seeds = oracle or ORACLE_DEFAULT
        self.oracle_passes = float(grid * seeds * epochs * ctx.steps_per_epoch)
        self.oracle_is_default = oracle is None

    # ------------------------------------------------------------------ loaders
    def _loader(self, seed: int):
        from gradscope.data import BatchLoader  # noqa: PLC0415

        tl, data = self.ctx.train_loader, self.ctx.data
        ld = BatchLoader(tl.x, tl.y, tl.batch_size, shuffle=True, augment=tl.augment, mean=data.mean, std=data.std,
                         device=tl.device, seed=seed, drop_last=len(tl.y) >= tl.batch_size,
                         channels_last=tl.channels_last)
        ld.set_epoch(0)
        return ld

    # ------------------------------------------------------------------ hooks
    def on_run_start(self, state: TrainState) -> None:
        """Refuse bn-norm on a model without BatchNorm-fed layers, and lr-free without its optimizer
        package, before anything trains."""
        if "lr-free" in self.names:
            from gradscope.probes.lr_free import check_available  # noqa: PLC0415

            check_available(self.settings.get("optimizer") or "sgd")
        if "bn-norm" in self.names:
            from gradscope.probes.base import Functional, bn_followed, preserved  # noqa: PLC0415

            x = next(iter(self._loader(self.seed)))[0][:2]
            with preserved(self.ctx.model, self.seed):
                f = Functional(self.ctx.model, P.current_masks(self.ctx.layers), lambda o, y: o.sum())
                if not bn_followed(self.ctx.model, x, f.forward):
                    raise GradscopeError(f"--probes bn-norm needs layers followed by BatchNorm; the model "
                                         f"{type(self.ctx.model).__name__} has none (drop bn-norm from --probes)")

    def on_round_start(self, state: TrainState) -> None:
        if self.at in ("start", "both"):
            self._run(state, "start")

    def on_epoch_end(self, state: TrainState) -> None:
        if self.at in ("epoch1", "both") and state.epoch == 0:
            self._run(state, "epoch1")

    def _run(self, state: TrainState, when: str) -> None:
        k = int(state.round)
        have = read_probes(self.run_dir, required=False)
        todo = [n for n in self.names if not has_record(have, k, when, n)]
        if not todo:
            return
        if when == "start" and state.resumed:
            self.log(f"  probes round {k}: not measured at the start (the run resumed mid-round; the start state is gone)")
            return
        info = state.info
        model = self.ctx.model
        masks = P.current_masks(self.ctx.layers)
        cfg = {**self.settings, "max_lr": (state.schedule or {}).get("max_lr"),
               "norm_drop": getattr(info, "norm_drop", None), "step_pruned": getattr(info, "step_pruned", None)}
        recs = []
        for name in todo:
            m = measure(name, model, masks, self._loader, cfg, repeats=self.repeats, seed=self.seed,
                        oracle_passes=self.oracle_passes)
            m.update(round=k, at=when, sparsity=getattr(info, "sparsity", None),
                     oracle_cost_assumed=self.oracle_is_default,
                     settings={kk: v for kk, v in cfg.items() if isinstance(v, (int, float, str)) or v is None})
            recs.append(as_jsonable(m))
            self.log("  " + format_record(m))
        upsert_probes(self.run_dir, recs)


def _g(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4g}"


def format_record(m: dict) -> str:
    """One labelled line per measured probe: its main number, CV over the repeats, cost."""
    spec = PROBES.get(m["probe"])
    first = spec.variants[0] or "value"
    vals = m["values"][first]
    cvs = m["cv"].get(first)
    extra = ""
    if m["probe"] == "noise-scale":
        extra = f", B_simple {_g(m['result'].get('b_simple'))} at batch {m['result'].get('batch_size')}"
    elif m["probe"] == "sharpness" and m["result"].get("stable_lr"):
        extra = f", stability limit 2(1+beta)/lambda_max {_g(m['result']['stable_lr'])}"
    elif m["probe"] == "eps-opt":
        extra = (f", eps_max {_g(m['result'].get('eps_max'))}, B_noise {_g(m['result'].get('b_noise'))} "
                 f"at batch {m['result'].get('batch_size')}")
    elif m["probe"] == "lr-free":
        extra = (f", {m['result'].get('optimizer')} d {_g(m['result'].get('d'))} after {m['result'].get('steps')} steps"
                 f"{'' if m['result'].get('d_grew') else ' (d never grew from d0)'}")
    elif m["probe"] == "lr-range":
        extra = f", divergence LR {_g(m['result'].get('divergence_lr'))}"
    return (f"probe {m['probe']} round {m['round']} ({m['at']}): {spec.label} {_g(vals[0])}{extra} "
            f"(CV over {m['repeats']} repeats {_g(cvs)}); cost {_g(m['fb_equiv'])} forward+backward passes, "
            f"{_g(100 * m['share_of_oracle_round'] if m.get('share_of_oracle_round') is not None else None)} % of an "
            f"Oracle round{' (7 x 3 grid assumed)' if m.get('oracle_cost_assumed') else ''}")
