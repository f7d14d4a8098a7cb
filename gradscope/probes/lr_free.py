"""``lr-free``: what a learning-rate-free optimizer would choose for this round, after a short
masked probe: D-Adaptation SGD's step size d·lr/‖g0‖ (Defazio & Mishchenko 2023) for a run
that trains with SGD, Prodigy's d·lr (Mishchenko & Defazio 2023, an Adam-type step) for AdamW.

The optimizers are the authors' packages (``dadaptation``, ``prodigyopt``: pure Python, torch
only; ``pip install 'gradscope[lrfree]'``), stepped ``steps`` times on leaf clones of the
surviving weights (``Functional``: the model, its BatchNorm statistics and the run's optimizer
are never touched). Masks: the clones start with pruned coordinates at exactly zero, every
gradient is projected onto the surviving coordinates and every step is followed by the
projection again, so pruned weights stay exactly zero and add nothing to the estimate's sums
(weight decay on a masked raw weight would). Their ``step`` is a ``torch.optim`` step, whose
global step hooks (a recorder's step counter) would fire: they are set aside for the probe.

Known behaviour (their trackers): d only grows (``d = max(d, d̂)``) and may stay at ``d0``
for many steps when d̂ ≤ 0 (dadaptation#42), so the record says whether d grew; a probe
of ``steps`` steps measures the estimate's early value, which in the papers' analysis is a
lower bound on the distance to the solution D = ‖x0 − x*‖ that approaches it within a constant
factor. The predictor reads ``step_lr`` (the step size the optimizer would take).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Mapping, Optional

import torch

from gradscope import GradscopeError
from gradscope.probes.base import Functional, finite, loss_of, take_batches

DEFAULTS = {"lr_free_steps": 100, "d0": 1e-6, "momentum": 0.9, "weight_decay": 0.0, "optimizer": "sgd"}
KINDS = {"sgd": "dadapt-sgd", "adamw": "prodigy"}


def check_available(optimizer: str) -> None:
    """One clear message now if the run's optimizer has no counterpart or its package is missing."""
    kind = KINDS.get(str(optimizer).lower())
    if kind is None:
        raise GradscopeError(f"lr-free: no learning-rate-free counterpart of optimizer {optimizer!r}; "
                             f"known: {', '.join(KINDS)}")
    pkg = "dadaptation" if kind == "dadapt-sgd" else "prodigyopt"
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec(pkg) is None:
        raise GradscopeError(f"the lr-free probe needs the package {pkg!r} (pip install 'gradscope[lrfree]'); "
                             "drop lr-free from --probes or install it")


def _optimizer(kind: str, params: list, c: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The package's optimizer (lr = 1, as their READMEs ask), or one clear message if it is missing."""
    try:
        if kind == "dadapt-sgd":
            from dadaptation import DAdaptSGD  # noqa: PLC0415

            return DAdaptSGD(params, lr=1.0, momentum=float(c["momentum"]), weight_decay=float(c["weight_decay"]),
                             d0=float(c["d0"]))
        from prodigyopt import Prodigy  # noqa: PLC0415

        return Prodigy(params, lr=1.0, weight_decay=float(c["weight_decay"]), d0=float(c["d0"]))
    except ImportError:
        pkg = "dadaptation" if kind == "dadapt-sgd" else "prodigyopt"
        raise GradscopeError(f"the lr-free probe needs the package {pkg!r} (pip install 'gradscope[lrfree]'); "
                             "drop lr-free from --probes or install it") from None


@contextlib.contextmanager
def _optimizer_hooks_muted() -> Iterator[None]:
    """torch.optim's global step (pre/post) hooks do not see the probe's optimizer steps."""
    from torch.optim import optimizer as O  # noqa: PLC0415

    pre, post = O._global_optimizer_pre_hooks, O._global_optimizer_post_hooks
    O._global_optimizer_pre_hooks, O._global_optimizer_post_hooks = type(pre)(), type(post)()
    try:
        yield
    finally:
        O._global_optimizer_pre_hooks, O._global_optimizer_post_hooks = pre, post


def run_steps(f: Functional, batches, kind: str, c: Mapping[str, Any]) -> tuple[dict, dict]:
    """Step the package's optimizer ``lr_free_steps`` times on ``f``'s clones (batches cycled);
    return (d, g0 norm, step size, d's history) and the final clones (for tests)."""
    steps = int(c["lr_free_steps"])
    if steps < 1:
        raise GradscopeError(f"lr-free needs at least 1 step, got {steps}")
    with torch.no_grad():
        params = {n: v.detach().clone().requires_grad_(True) for n, v in f.masked(f.params).items()}
    names = list(params)
    opt = _optimizer(kind, [params[n] for n in names], c)
    ds, losses = [], []
    with _optimizer_hooks_muted():
        for t in range(steps):
            x, y = batches[t % len(batches)]
            loss = f.loss(params, x, y)
            losses.append(finite(float(loss.detach()), f"the loss at lr-free step {t}"))
            g = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
            g = f.project({n: (gi if gi is not None else torch.zeros_like(params[n])) for n, gi in zip(names, g)})
            for n in names:
                params[n].grad = g[n].detach().clone()
            opt.step()
            with torch.no_grad():
                for n, p in f.project(params).items():
                    params[n].copy_(p)
            ds.append(float(opt.param_groups[0]["d"]))
    group = opt.param_groups[0]
    d, lr = float(group["d"]), float(group["lr"])
    g0 = float(group.get("g0_norm", float("nan"))) if kind == "dadapt-sgd" else None
    step_lr = d * lr / g0 if kind == "dadapt-sgd" else d * lr
    if not math.isfinite(step_lr):
        raise GradscopeError(f"lr-free: the {kind} step size is not finite ({step_lr}); the gradient at this "
                             "round's start is zero or not finite")
    return ({"optimizer": kind, "d": d, "lr": lr, "d_lr": d * lr, "g0_norm": g0, "step_lr": step_lr,
             "d0": float(c["d0"]), "d_grew": d > float(c["d0"]), "d_history": ds, "loss": losses,
             "steps": steps}, params)


def probe(model: torch.nn.Module, masks: Optional[Mapping[str, torch.Tensor]], loader, config: Mapping[str, Any]) -> dict:
    """D-Adaptation SGD's (or, for AdamW runs, Prodigy's) d and step size after a short masked probe.

    config: lr_free_steps (default 100), d0, momentum, weight_decay, optimizer (the run's: sgd ->
    D-Adaptation SGD, adamw -> Prodigy), batches (training batches cycled; default lr_free_steps),
    seed, loss."""
    c = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    check_available(c["optimizer"])
    kind = KINDS[str(c["optimizer"]).lower()]
    f = Functional(model, masks, loss_of(c))
    batches = take_batches(loader, int(c.get("batches") or c["lr_free_steps"]))
    res, _ = run_steps(f, batches, kind, c)
    res["note"] = None if res["d_grew"] else (f"d stayed at d0 = {res['d0']:g} for all {res['steps']} steps "
                                              "(d-hat <= 0): the estimate is the initial guess, not a measurement")
    res["passes"] = float(res["steps"])
    return res
