"""``lr-range``: the LR range test (Smith 2017) on a functional copy of the round's start network.

SGD (or AdamW, as the run trains; its momentum and weight decay) from the start weights while the LR grows
exponentially step by step, one probe batch per step (the loader's first pass, cycled when
it has fewer batches than steps), until the smoothed loss exceeds 4x its
minimum (fastai's stop rule). Records the whole curve (lr, raw loss, smoothed loss), the
divergence point (first LR whose smoothed loss exceeds 4x the minimum so far), the LR at the
raw loss's minimum (``instability_lr``) and each implementation's suggestion, computed as they
compute it. The smoothed divergence point lags the instability: on L = lam/2 w^2 (plain GD
stable below 2/lam) with 100 steps from 1e-4 to 10 it lies at 7.8 x 2/lam, because the
EMA remembers the high early loss; ``instability_lr`` is the first LR above 2/lam there
(tests/test_probes.py).

- fastai ``lr_find`` (2.7): recorder losses are an EMA (beta 0.98, debiased); suggestions use
  ``lrs[num_it//10:-5]``: ``valley`` (longest decreasing run, 2/3 in), ``slide`` (interval
  slide, lr_diff 15, thresh 0.005), ``minimum`` (lr at the lowest loss / 10), ``steep`` (most
  negative d loss / d log lr);
- torch-lr-finder ``LRFinder.range_test`` + ``plot(suggest_lr=True)``: its own smoothing
  (``smooth_f`` 0.05, not debiased), skip 10 points at the start and 5 at the end, the argmin
  of ``np.gradient`` (index-spaced, which the exponential LR steps make log-spaced).

Written here rather than calling those libraries: both step the user's model and optimizer in
place (fastai#3013: state left behind), and neither knows masks; the suggestion rules are
ported as they are so that the numbers are the ones a user of either would get.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np
import torch

from gradscope import GradscopeError
from gradscope.probes.base import Functional, loss_of, take_batches

DEFAULTS = {"lr_min": 1e-5, "lr_max": 10.0, "steps": 100, "beta": 0.98, "diverge": 4.0,
            "momentum": 0.9, "weight_decay": 0.0, "optimizer": "sgd"}
RULES = ("valley", "slide", "minimum", "steep", "torch-lr-finder")


def lr_steps(lr_min: float, lr_max: float, steps: int) -> np.ndarray:
    """The exponentially growing LRs of the test (fastai's and torch-lr-finder's 'exp' mode)."""
    return lr_min * (lr_max / lr_min) ** (np.arange(steps) / max(steps - 1, 1))


def smooth_debiased(losses, beta: float) -> np.ndarray:
    """fastai's ``AvgSmoothLoss``: EMA with factor ``beta``, divided by 1 - beta^(i+1)."""
    out, avg = [], 0.0
    for i, v in enumerate(losses):
        avg = beta * avg + (1 - beta) * float(v)
        out.append(avg / (1 - beta ** (i + 1)))
    return np.asarray(out, float)


def smooth_tlf(losses, smooth_f: float = 0.05) -> np.ndarray:
    """torch-lr-finder's smoothing: first loss as is, then smooth_f * loss + (1 - smooth_f) * prev."""
    out = []
    for i, v in enumerate(losses):
        out.append(float(v) if i == 0 else smooth_f * float(v) + (1 - smooth_f) * out[-1])
    return np.asarray(out, float)


def divergence_index(smoothed: np.ndarray, factor: float = 4.0) -> Optional[int]:
    """First index whose smoothed loss exceeds ``factor`` x the minimum so far (or is not finite)."""
    best = math.inf
    for i, v in enumerate(smoothed):
        if not math.isfinite(v) or (i > 0 and v > factor * best):
            return i
        best = min(best, v)
    return None


# fastai's rules (fastai/callback/schedule.py), on numpy arrays
def valley(lrs: np.ndarray, losses: np.ndarray) -> float:
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return float(lrs[max_start + int(sections) + int(sections / 2)])


def slide(lrs: np.ndarray, losses: np.ndarray, lr_diff: int = 15, thresh: float = 0.005) -> float:
    grad = np.gradient(losses)
    r, l = -1, -1 - lr_diff
    lr = lrs[l]
    while l >= -len(losses) and abs(grad[r] - grad[l]) > thresh:
        lr = lrs[l]
        r -= 1
        l -= 1
    return float(lr)


def minimum(lrs: np.ndarray, losses: np.ndarray) -> float:
    return float(lrs[int(np.argmin(losses))]) / 10


def steep(lrs: np.ndarray, losses: np.ndarray) -> float:
    grads = (losses[1:] - losses[:-1]) / (np.log(lrs[1:]) - np.log(lrs[:-1]))
    return float(lrs[int(np.argmin(grads))])


def tlf_steepest(lrs: np.ndarray, losses: np.ndarray, skip_start: int = 10, skip_end: int = 5) -> Optional[float]:
    l, s = lrs[skip_start:len(lrs) - skip_end], losses[skip_start:len(losses) - skip_end]
    if len(s) < 2:
        return None
    return float(l[int(np.argmin(np.gradient(s)))])


def suggestions(lrs: np.ndarray, raw: np.ndarray, planned_steps: int, beta: float = 0.98) -> dict:
    """Each rule's suggestion for a recorded curve (None where too few points remain)."""
    sm = smooth_debiased(raw, beta)
    a, b = planned_steps // 10, len(sm) - 5
    fl, fs = lrs[a:b], sm[a:b]
    ok = np.isfinite(fs)
    if not ok.all():  # fastai drops from the first NaN on
        cut = int(np.argmin(ok))
        fl, fs = fl[:cut], fs[:cut]
    out: dict[str, Optional[float]] = {}
    out["valley"] = valley(fl, fs) if len(fs) >= 2 else None
    out["slide"] = slide(fl, fs) if len(fs) > 16 else None
    out["minimum"] = minimum(fl, fs) if len(fs) >= 1 else None
    out["steep"] = steep(fl, fs) if len(fs) >= 2 else None
    tl = smooth_tlf(raw)
    out["torch-lr-finder"] = tlf_steepest(lrs[:len(tl)], tl) if np.isfinite(tl).all() else \
        tlf_steepest(lrs[:int(np.argmin(np.isfinite(tl)))], tl[:int(np.argmin(np.isfinite(tl)))])
    return out


class _Optimizer:
    """The run's update rule written out (torch's SGD: L2 decay, momentum without dampening;
    AdamW: decoupled decay, eps 1e-8), because a ``torch.optim`` optimizer would fire the global
    step hooks other instruments count steps with (the recorder's)."""

    def __init__(self, params, kind: str, momentum: float, weight_decay: float):
        self.params, self.kind, self.beta, self.wd, self.t = params, kind, momentum, weight_decay, 0
        self.buf = [None] * len(params)
        self.v = [torch.zeros_like(p) for p in params] if kind == "adamw" else None

    @torch.no_grad()
    def step(self, grads, lr: float) -> None:
        self.t += 1
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if g is None:
                continue
            if self.kind == "adamw":
                p.mul_(1 - lr * self.wd)
                m = self.buf[i] = g.clone().mul_(1 - self.beta) if self.buf[i] is None else \
                    self.buf[i].mul_(self.beta).add_(g, alpha=1 - self.beta)
                self.v[i].mul_(0.999).addcmul_(g, g, value=0.001)
                mh, vh = m / (1 - self.beta ** self.t), self.v[i] / (1 - 0.999 ** self.t)
                p.sub_(lr * mh / (vh.sqrt() + 1e-8))
            else:
                d = g.add(p, alpha=self.wd) if self.wd else g
                if self.beta:
                    d = self.buf[i] = d.clone() if self.buf[i] is None else self.buf[i].mul_(self.beta).add_(d)
                p.sub_(lr * d)


def probe(model: torch.nn.Module, masks: Optional[Mapping[str, torch.Tensor]], loader, config: Mapping[str, Any]) -> dict:
    """Run the range test; return the curve, divergence point and suggestions (see module docstring).

    config: lr_min, lr_max, steps, optimizer (sgd | adamw), momentum, weight_decay, beta (fastai smoothing), diverge (4),
    loss (callable; default cross-entropy). A loss that is not finite at the first step, or
    that diverges at the first LR steps, is an error: no LR is safe for this network."""
    c = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    steps = int(c["steps"])
    if not (0 < c["lr_min"] < c["lr_max"]) or steps < 10:
        raise GradscopeError(f"lr-range needs 0 < lr_min < lr_max and >= 10 steps, got {c['lr_min']}, {c['lr_max']}, {steps}")
    f = Functional(model, masks, loss_of(c))
    batches = take_batches(loader, steps)
    lrs = lr_steps(c["lr_min"], c["lr_max"], steps)
    params = {n: p.requires_grad_(True) for n, p in f.params.items()}
    opt = _Optimizer(list(params.values()), str(c["optimizer"]), float(c["momentum"]), float(c["weight_decay"]))
    raw: list[float] = []
    div = None
    for i, lr in enumerate(lrs):
        x, y = batches[i % len(batches)]
        loss = f.loss(params, x, y)
        raw.append(float(loss.detach()))
        d = divergence_index(smooth_debiased(raw, c["beta"]), c["diverge"])
        if d is not None:
            div = d
            break
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        opt.step(grads, float(lr))
        with torch.no_grad():  # pruned coordinates stay exactly zero (weight decay would move weight_orig)
            for n, m in f.masks.items():
                params[n].mul_(m)
    if div is not None and div <= 1:
        raise GradscopeError(f"lr-range: the loss diverged at the first step (lr {lrs[0]:.3g}, loss {raw[0]:.4g}); "
                             "lower --lr-range-min, or the network at this round's start cannot be trained")
    raw_a = np.asarray(raw, float)
    sm = smooth_debiased(raw_a, c["beta"])
    rec_lrs = lrs[:len(raw_a)]
    sug = suggestions(rec_lrs, raw_a, steps, c["beta"])
    return {"lr": rec_lrs.tolist(), "loss": raw_a.tolist(), "smoothed": sm.tolist(),
            "divergence_lr": float(rec_lrs[div]) if div is not None else None,
            "min_loss_lr": float(rec_lrs[int(np.nanargmin(sm))]),
            # the LR of the step after which the raw loss is lowest: on a quadratic, the first LR above 2/lambda
            "instability_lr": float(rec_lrs[int(np.nanargmin(raw_a))]) if np.isfinite(raw_a).any() else None,
            "suggestions": sug, "steps_run": len(raw_a), "steps_planned": steps,
            "passes": float(len(raw_a)),  # one forward + backward per step
            "settings": {k: c[k] for k in DEFAULTS}}
