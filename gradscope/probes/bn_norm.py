"""``bn-norm``: the BatchNorm effective-LR ratio of each layer that feeds a BatchNorm.

For a layer followed by BN the loss is invariant to the layer's weight scale, so its effective
LR is η/‖w‖². After pruning and rewinding the layer keeps r_k = ‖m⊙θ_rewind‖² / ‖θ_rewind‖² of
its squared norm (magnitude pruning keeps the large weights, so r_k exceeds the density).
Keeping round 0's effective LR then implies η_k = r_k·η_0, pooled over the layers by
parameter count. Free: no data pass beyond one traced forward to find the BN-fed layers.
``θ_rewind`` is the weight before the mask (``weight_orig``, or the weight itself with an
external mask).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from gradscope import GradscopeError
from gradscope.probes.base import Functional, bn_followed, loss_of, take_batches


def probe(model: torch.nn.Module, masks: Optional[Mapping[str, torch.Tensor]], loader, config: Mapping[str, Any]) -> dict:
    """Per BN-fed layer: r_k, density, parameter count; pooled r (by parameter count) and
    ``implied_max_lr = r·max_lr`` when ``config["max_lr"]`` is given. No BatchNorm: an error."""
    f = Functional(model, masks, loss_of(config))
    pm = f.masks
    example = take_batches(loader, 1)[0][0][:2]
    pairs = bn_followed(model, example, f.forward)
    if not pairs:
        raise GradscopeError(f"bn-norm needs layers followed by BatchNorm; {type(model).__name__} has none "
                             "(drop bn-norm from --probes for this model)")
    params = dict(model.named_parameters())
    layers = {}
    for layer, bn in pairs.items():
        pname = f"{layer}.weight_orig" if f"{layer}.weight_orig" in params else f"{layer}.weight"
        w = params[pname].detach().double()
        m = pm.get(pname)
        m = torch.ones_like(w) if m is None else m.double()
        full = float(w.pow(2).sum())
        kept = float((w * m).pow(2).sum())
        if full == 0:
            raise GradscopeError(f"bn-norm: layer {layer!r} has an all-zero weight; its norm ratio is undefined")
        layers[layer] = {"bn": bn, "ratio": kept / full, "density": float(m.mean()), "numel": w.numel()}
    n = sum(v["numel"] for v in layers.values())
    pooled = sum(v["ratio"] * v["numel"] for v in layers.values()) / n
    out = {"ratio": pooled, "layers": layers, "passes": 0.0}
    if config.get("max_lr"):
        out["implied_max_lr"] = pooled * float(config["max_lr"])
    return out
