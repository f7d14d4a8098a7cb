"""Weight rewinding after pruning, one registry entry per mode.

A mode rewinds the model in place (or keeps the trained weights) and says what it did;
``finetune`` also replaces the schedule of rounds after the first with ``finetune``;
``reinit`` draws new random weights (the released SILO code's default ``--prune_type
reinit``). ``PreviousWeights`` keeps the weights one epoch before a round's end, for the
``delta`` (|Δw|) pruning strategies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from gradscope import GradscopeError
from gradscope import pruning as P
from gradscope.registry import Registry


@dataclass(frozen=True)
class Rewind:
    apply: Callable[[nn.Module, dict], str]  # (model, saved states) -> rewind point, for the record
    schedule: Optional[str] = None  # schedule forced on rounds after the first, if any
    needs: Optional[str] = None  # the saved state it loads ("init" or "early")


def _load(which: str, label: Callable[[dict], str]):
    def apply(model: nn.Module, states: dict) -> str:
        if states.get(which) is None:
            raise GradscopeError(f"no {which} weights were saved to rewind to")
        P.load_plain_state(model, states[which])
        return label(states)
    return apply


REWINDS: Registry[Rewind] = Registry("rewind mode", "--rewind")
REWINDS.register("init", Rewind(_load("init", lambda s: "init (step 0)"), needs="init"))
REWINDS.register("early", Rewind(_load("early", lambda s: f"round 0 step {s['rewind_step']}"), needs="early"))
REWINDS.register("lr", Rewind(lambda m, s: "none (keep trained weights; lr)"))
REWINDS.register("finetune", Rewind(lambda m, s: "none (keep trained weights; finetune)", schedule="finetune"))


def _reinit(model: nn.Module, states: dict) -> str:
    """New random weights under the kept masks, seeded per run and round: the model's own
    ``reinitialize(generator)`` if it has one, else the released script's ``weight_init`` for
    vgg19_silo-like models and Kaiming (gradscope's init) for the rest. BatchNorm running
    statistics are kept, as the released ``model.apply(weight_init)`` keeps them."""
    import torch  # noqa: PLC0415

    from gradscope.models.init import reinitialize  # noqa: PLC0415

    seed = int(states.get("seed", 0))
    reinitialize(model, torch.Generator().manual_seed(seed))
    P.refresh_weights(model.modules())
    return f"reinit (new random weights, seed {seed})"


REWINDS.register("reinit", Rewind(_reinit))

REWIND_MODES = tuple(REWINDS.names())  # older name


def rewind_mode(cfg) -> str:
    """The run's rewinding: ``--rewind``, else what its schedule's recipe implies."""
    from gradscope.schedules import implied_rewind  # noqa: PLC0415

    if cfg.schedule.schedule == "silo-auto":
        import gradscope.calibrate  # noqa: F401, PLC0415 - registers silo-auto
    return REWINDS.key(cfg.prune.rewind or implied_rewind(cfg.schedule.schedule))


def round_schedule(factory, mode: str, k: int, round0=None):
    """The schedule of round k: ``factory``, or the mode's forced schedule after round 0.

    ``finetune`` fine-tunes at the final LR of the original training, as Renda et al. 2020
    define FT ("fine-tune at the final learning rate of the original training"): given
    ``round0`` (round 0's RoundInfo), that is ``factory``'s LR at round 0's last step (0.01 x
    max_lr for lth's warm-up-step); without it, or when that LR is 0 (cosine), the finetune
    registry default (0.001).
    """
    forced = REWINDS.get(mode).schedule
    if forced and k > 0 and factory.name != forced:
        from gradscope.schedules import get_schedule  # noqa: PLC0415

        final = final_lr(factory, round0) if forced == "finetune" else None
        return get_schedule(forced, **({"max_lr": final} if final else {}))
    return factory


def final_lr(factory, info) -> "Optional[float]":
    """``factory``'s LR at the last step of the round ``info`` describes (None if unknown or 0)."""
    if info is None or not hasattr(factory, "lrs"):
        return None
    lr = float(factory.lrs(info)[-1])
    return lr if lr > 0 else None


class PreviousWeights:
    """Keeps the prunable layers' effective weights at the start of each round's last epoch
    (= after epoch T−1, what the released code saves as ``model_prev``, resnet_20_cifar_10.py
    l.240-241), checkpointed with the run so that a resumed run prunes by the same |Δw|. With
    one epoch per round that is the round's start (after rewinding)."""

    state_key = "previous_weights"

    def __init__(self, layers: dict):
        self.layers = layers
        self.prev: Optional[dict] = None

    def on_epoch_start(self, state) -> None:
        if state.epoch == state.epochs - 1:
            self.prev = {k: v.detach().cpu().clone() for k, v in P.effective_weights(self.layers).items()}

    def state_dict(self) -> dict:
        return {"prev": self.prev}

    def load_state_dict(self, d: dict) -> None:
        self.prev = d.get("prev")
