"""Training: the plain loop with callbacks, the round runner (prune -> rewind -> train), the Oracle."""
from gradscope.train.loop import evaluate, train_epoch
from gradscope.train.runner import PruningRun, format_header, format_row

__all__ = ["PruningRun", "evaluate", "format_header", "format_row", "train_epoch"]
