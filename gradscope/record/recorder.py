"""GradientRecorder: per-layer gradient histograms and moments of unpruned weights, per window.

Plain loops::

    with GradientRecorder(model, "run.h5", window=100) as rec:
        for x, y in data:
            loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward()
            rec.step(); opt.step()

The trainer attaches it as a callback instead (on_after_backward -> step, on_epoch_end ->
flush the window and store epoch metrics, on_round_end -> store round metadata).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from gradscope import GradscopeError
from gradscope.record.accumulate import WindowAccumulator, linear_edges, log_edges
from gradscope.record.discover import LayerInfo, find_layers, lazy_find_layers, select_layers
from gradscope.store import schema as S
from gradscope.store.writer import RunWriter


def weight_and_mask(module: nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The trainable weight of a (possibly torch-pruned) module and its mask (None = unpruned)."""
    mask = getattr(module, "weight_mask", None)
    if mask is not None and hasattr(module, "weight_orig"):
        return module.weight_orig, mask
    return module.weight, None


def inverse_scale(scaler) -> Optional[torch.Tensor]:
    """1/scale of an AMP GradScaler whose gradients are still scaled, else None (no host sync).

    Gradients already unscaled with ``scaler.unscale_(optimizer)`` are left alone.
    """
    if scaler is None or not getattr(scaler, "is_enabled", lambda: True)():
        return None
    try:
        from torch.amp.grad_scaler import OptState  # noqa: PLC0415
        states = getattr(scaler, "_per_optimizer_states", {}) or {}
        if any(s.get("stage") is OptState.UNSCALED for s in states.values()):
            return None
    except ImportError:  # pragma: no cover
        pass
    scale = getattr(scaler, "_scale", None)
    if scale is None:
        return None
    return torch.reciprocal(scale.float())


def _num(x) -> Optional[float]:
    try:
        return None if x is None else float(x)
    except (TypeError, ValueError):
        return None


class GradientRecorder:
    """Records per-window histograms (fixed edges) and exact moments of unpruned weight gradients.

    layers: "relu" (conv/linear layers feeding a ReLU) or "all"; include / exclude: name regexes.
    window: steps per window (None: a window per epoch, ended by on_epoch_end or ``flush()``).
    bins / hist_range / hist_min / hist_max: edges (log-spaced magnitudes unless hist_range).
    sample_k: seeded uniform sample of K raw unpruned values per layer and window.
    example_input: find ReLU-fed layers now with a dry run; else on the model's first forward.
    """

    def __init__(self, model: nn.Module, path: str, *, window: Optional[int] = None, bins: int = 201,
                 hist_range: Optional[float] = None, layers: str = "relu", include: Optional[str] = None,
                 exclude: Optional[str] = None, sample_k: int = 0, seed: int = 0,
                 config: Optional[dict] = None, example_input: Any = None,
                 hist_min: float = 1e-10, hist_max: float = 10.0):
        if window is not None and (not isinstance(window, int) or window < 1):
            raise GradscopeError(f"window must be a positive number of steps or None, got {window!r}")
        if sample_k < 0:
            raise GradscopeError(f"sample_k must be >= 0, got {sample_k}")
        if layers not in ("relu", "all"):
            raise GradscopeError(f"layers must be 'relu' or 'all', got {layers!r}")
        self.model, self.path = model, os.fspath(path)
        self.window, self.sample_k, self.seed = window, int(sample_k), int(seed)
        self.layers_opt, self.include, self.exclude = layers, include, exclude
        if hist_range is not None:
            self.edges, self.edge_kind = linear_edges(bins, float(hist_range)), "linear"
        else:
            self.edges, self.edge_kind = log_edges(bins, hist_min, hist_max), "log"
        self.config = dict(config) if config else {
            "recorder": {"window": window, "bins": bins, "hist_range": hist_range, "layers": layers,
                         "include": include, "exclude": exclude, "sample_k": sample_k, "seed": seed,
                         "hist_min": hist_min, "hist_max": hist_max}}
        self.infos: Optional[list[LayerInfo]] = None
        self.recorded: list[LayerInfo] = []
        self.writer: Optional[RunWriter] = None
        self.acc: Optional[WindowAccumulator] = None
        self._early: list[tuple[str, Any]] = []  # metadata queued before the file exists
        self._mask_key: Any = None
        self.round, self.epoch, self._step, self._win = 0, 0, 0, 0
        self._win_start: Optional[int] = None
        self._round_meta: dict = {}
        self._round_t0 = time.perf_counter()
        self._need_layer_rounds = True
        self._last_metrics: dict = {}
        self._callback_mode = False
        self.closed = False
        self._disc = None
        if example_input is not None:
            self._setup(find_layers(model, example_input))
        else:
            self._disc = lazy_find_layers(model, self._setup)

    # ------------------------------------------------------------------ setup
    def _setup(self, infos: list[LayerInfo]) -> None:
        self.infos = infos
        self.recorded = select_layers(infos, self.layers_opt, self.include, self.exclude)
        rec = {i.index for i in self.recorded}
        self.writer = RunWriter(self.path, config=self.config, edges=self.edges, edge_kind=self.edge_kind,
                                layers=[i.row(i.index in rec) for i in infos], sample_k=self.sample_k)
        w, _ = weight_and_mask(self.recorded[0].module)
        self.acc = WindowAccumulator([i.numel for i in self.recorded], self.edges, w.device,
                                     sample_k=self.sample_k, seed=self.seed)
        for kind, payload in self._early:
            getattr(self.writer, kind)(**payload) if kind != "add_layer_rounds" else self.writer.add_layer_rounds(payload)
        self._early.clear()

    def _queue(self, kind: str, payload) -> None:
        if self.writer is None:
            self._early.append((kind, payload))
        elif kind == "add_layer_rounds":
            self.writer.add_layer_rounds(payload)
        else:
            getattr(self.writer, kind)(**payload)

    def _masks(self, params: list) -> tuple[torch.Tensor, torch.Tensor]:
        mods = [i.module for i in self.recorded]
        masks = [weight_and_mask(m)[1] for m in mods]
        key = tuple((id(m), m._version) if m is not None else None for m in masks)
        if key != self._mask_key:
            parts = [(m.reshape(-1) != 0) if m is not None else torch.ones(p.numel(), dtype=torch.bool, device=p.device)
                     for m, p in zip(masks, params)]
            self._mask = torch.cat(parts)
            self._mask_i64 = self._mask.to(torch.int64)
            self._mask_key = key
        return self._mask, self._mask_i64

    # ------------------------------------------------------------------ per step
    def step(self, scaler=None) -> None:
        """Accumulate the current ``.grad`` of the recorded layers (call once per optimizer step,
        after backward and, with accumulation, after the last micro-batch)."""
        if self.closed:
            raise GradscopeError("GradientRecorder.step() after close()")
        if self.acc is None:
            raise GradscopeError("GradientRecorder.step() before any forward pass through the model: "
                                 "call model(x) (or pass example_input=) so it can find the ReLU-fed layers")
        if self._need_layer_rounds:
            self._store_layer_rounds()
        params = [weight_and_mask(i.module)[0] for i in self.recorded]
        mask, _ = self._masks(params)
        if self._win_start is None:
            self._win_start = self._step
        # a layer with no gradient (grad None) is left out of this step
        self.acc.add([p.grad for p in params], mask, scale=inverse_scale(scaler))
        self._step += 1
        if self.window is not None and self._step % self.window == 0:
            self.flush()

    # ------------------------------------------------------------------ windows and metadata
    def _queue_window(self) -> None:
        if self.acc is None or self.acc.steps == 0:
            return
        h = self.acc.to_host()
        self.acc.reset()
        L = len(self.recorded)
        mom = np.zeros(L, dtype=S.MOMENTS_DTYPE)
        mom["round"], mom["epoch"], mom["window"] = self.round, self.epoch, self._win
        mom["step_start"], mom["step_end"] = self._win_start, self._step - 1
        mom["layer"] = [i.index for i in self.recorded]
        for c in S.MOMENT_COLUMNS:
            mom[c] = h[c]
        self.writer.add_window(mom, h["hist"], h.get("samples"))
        self._win += 1
        self._win_start = None

    def flush(self) -> None:
        """End the current window and write it (and any queued metadata) to the file."""
        self._queue_window()
        if self.writer is not None:
            self.writer.commit()

    def _store_layer_rounds(self) -> None:
        if self.infos is None:
            return
        rows = []
        for i in self.infos:
            _, m = weight_and_mask(i.module)
            kept = i.numel if m is None else int((m != 0).sum())
            rows.append({"round": self.round, "layer": i.index, "numel": i.numel, "kept": kept,
                         "sparsity": 1.0 - kept / i.numel})
        self._layer_rows = rows
        self._queue("add_layer_rounds", rows)
        self._need_layer_rounds = False

    def start_round(self, round: int, **meta: Any) -> None:
        """Begin pruning round ``round``; ``meta`` may hold sparsity, target_sparsity, schedule, max_lr."""
        if self.acc is not None and self.acc.steps:
            self.flush()
        self.round, self._step, self._win, self.epoch = int(round), 0, 0, 0
        self._win_start = None
        self._round_meta = dict(meta)
        self._round_t0 = time.perf_counter()
        self._need_layer_rounds = True
        self._layer_rows = None
        if self.infos is not None:
            self._store_layer_rounds()

    def end_round(self, **metrics: Any) -> None:
        """Flush the last window and store the round's row (sparsity, schedule, accuracy, time)."""
        self._queue_window()
        if self._need_layer_rounds:
            self._store_layer_rounds()
        meta = {**self._round_meta}
        met = {**self._last_metrics, **metrics}
        sched = meta.get("schedule") or {}
        sparsity = _num(meta.get("sparsity"))
        if sparsity is None and self._layer_rows:
            sparsity = 1.0 - sum(r["kept"] for r in self._layer_rows) / sum(r["numel"] for r in self._layer_rows)
        self._queue("add_round", {
            "round": self.round, "sparsity": sparsity, "target_sparsity": _num(meta.get("target_sparsity")),
            "max_lr": _num(sched.get("max_lr", meta.get("max_lr"))) if isinstance(sched, dict) else _num(meta.get("max_lr")),
            "schedule": json.dumps(sched, sort_keys=True, default=str),
            "val_acc": _num(met.get("val_acc")), "test_acc": _num(met.get("test_acc")),
            "train_loss": _num(met.get("train_loss")), "time_s": time.perf_counter() - self._round_t0})
        if self.writer is not None:
            self.writer.commit()
        self._last_metrics = {}

    def close(self) -> None:
        """Write what is left and stop; safe to call twice."""
        if self.closed:
            return
        self.flush()
        if self._disc is not None:
            self._disc.remove()
        self.closed = True

    def __enter__(self) -> "GradientRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ Callback hooks
    def on_run_start(self, state) -> None:
        self._callback_mode = True
        if getattr(state, "config", None) and self.writer is None:
            self.config = dict(state.config)

    def on_round_start(self, state) -> None:
        info = getattr(state, "info", None)
        meta = {"schedule": dict(getattr(state, "schedule", {}) or {})}
        if info is not None:
            meta.update(sparsity=info.sparsity, target_sparsity=info.target_sparsity)
        self.start_round(state.round, **meta)
        self._step = int(state.step)

    def on_epoch_start(self, state) -> None:
        self.epoch = int(state.epoch)
        if self.acc is None or self.acc.steps == 0:
            self._step = int(state.step)
            self._win = self.epoch if self.window is None else self._step // self.window

    def on_after_backward(self, state) -> None:
        self.epoch = int(state.epoch)
        self._step = int(state.step)
        self.step(getattr(state, "scaler", None))

    def on_epoch_end(self, state) -> None:
        self.epoch = int(state.epoch)
        if self.window is None:
            self._queue_window()
        m = dict(getattr(state, "metrics", {}) or {})
        self._last_metrics = m
        self._queue("add_epoch", {"round": self.round, "epoch": self.epoch, "train_loss": _num(m.get("train_loss")),
                                  "val_acc": _num(m.get("val_acc")), "test_acc": _num(m.get("test_acc")),
                                  "lr": _num(m.get("lr"))})
        if self.writer is not None:
            self.writer.commit()

    def on_round_end(self, state) -> None:
        if getattr(state, "schedule", None):
            self._round_meta.setdefault("schedule", dict(state.schedule))
        self.end_round(**(getattr(state, "metrics", {}) or {}))

    def on_run_end(self, state) -> None:
        self.close()
