"""The per-round table the runner prints: one fixed-width row per round."""
from __future__ import annotations

_COLS = [("round", "{:>5}", "{:>5d}"), ("sparsity", "{:>9}", "{:>8.1%} "), ("target_sparsity", "{:>8}", "{:>7.1%} "),
         ("max_lr", "{:>8}", "{:>8.4f}"), ("train_loss", "{:>10}", "{:>10.4f}"), ("val_acc", "{:>8}", "{:>7.2%} "),
         ("test_acc", "{:>9}", "{:>8.2%} "), ("time_s", "{:>7}", "{:>6.1f}s")]


def format_header() -> str:
    names = {"target_sparsity": "target", "train_loss": "loss", "time_s": "time"}
    return " ".join(h.format(names.get(n, n)) for n, h, _ in _COLS)


def format_row(r: dict) -> str:
    def cell(n, f):
        v = r.get(n)
        try:
            return f.format(v)
        except (TypeError, ValueError):
            return f.format(float("nan")) if isinstance(v, float) else f"{'-':>{len(f.format(0.0 if 'd' not in f else 0))}}"
    return " ".join(cell(n, f) for n, _, f in _COLS)
