"""Training: the plain loop with callbacks, the round trainer, the runner that sequences rounds
(prune -> rewind -> train), the Oracle."""
from gradscope.train.context import TrainContext, build_context, resolve_device, seed_everything
from gradscope.train.loop import evaluate, train_epoch
from gradscope.train.runner import PruningRun
from gradscope.train.table import format_header, format_row
from gradscope.train.trainer import Diverged, RoundTrainer, make_optimizer

__all__ = ["Diverged", "PruningRun", "RoundTrainer", "TrainContext", "build_context", "evaluate",
           "format_header", "format_row", "make_optimizer", "resolve_device", "seed_everything",
           "train_epoch"]
