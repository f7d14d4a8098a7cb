"""GradientRecorder: per-layer gradient histograms and exact moments, per window, per view.

Plain loops::

    with GradientRecorder(model, "run.h5", window=100) as rec:
        for x, y in data:
            loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward()
            rec.step(); opt.step()

A loop without ``start_round``/``end_round`` calls is round 0 (``close()`` writes its row).
The trainer attaches the recorder as a callback instead (on_after_backward -> step,
on_epoch_end -> end the window and store epoch metrics, on_round_end -> store the round's row).
"""
from __future__ import annotations

import json
import os
import time
import warnings
import weakref
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from gradscope import GradscopeError, InternalError
from gradscope.pruning import weight_mask, weight_param
from gradscope.record.accumulate import WindowAccumulator, linear_edges, log_edges
from gradscope.record.discover import LayerDiscovery, LayerInfo, Rule, _matches, _rules, select_layers
from gradscope.store import schema as S
from gradscope.store.writer import RunWriter

# Cost tiers (Cockpit style). A preset fills in every / views / population / sample_k where
# they are not given; explicit arguments win. Relative cost of step() against "default":
# economy ~0.1x (every 10th step), full ~3x (a second pass for "relative", one more for the
# fixed population, and a top-K per layer for the samples).
PRESETS: dict[str, dict] = {
    "economy": {"every": 10, "views": ("survivors",), "population": False, "sample_k": 0},
    "default": {"every": 1, "views": ("survivors",), "population": False, "sample_k": 0},
    "full": {"every": 1, "views": ("survivors", "relative"), "population": True, "sample_k": 256},
}
RECORDED_VIEWS = ("survivors", "relative")  # stored as rows; "all" is derived from "survivors" by the reader
VIEW_CODES = {"survivors": 0, "relative": 1}
HUGE_GRAD = 1e18  # |g| above this draws a warning (g^2 overflows float32 near 1.8e19)
RELATIVE_EPS = 1e-8  # |g| / (|w| + eps): eps only guards a surviving weight that is exactly 0


class RecorderWarning(UserWarning):
    """Something in the user's loop makes the recorded numbers mean less than they seem."""


def weight_and_mask(module: nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Deprecated alias of ``gradscope.pruning.weight_param`` / ``weight_mask`` (bool mask or None)."""
    return weight_param(module), weight_mask(module)


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


def _window_seed(seed: int, round: int, window: int) -> int:
    """The sampling seed of one window, from the run's seed and the window's key."""
    return int(np.random.SeedSequence([int(seed) % 2**63, int(round), int(window)]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


def _num(x) -> Optional[float]:
    try:
        return None if x is None else float(x)
    except (TypeError, ValueError):
        return None


def _raw_mask(module: nn.Module):
    return getattr(module, "weight_mask", None)


def _views(views, population: Optional[bool]) -> tuple[tuple[str, ...], bool]:
    """Validate ``views=``: recorded views, plus "all" (always derivable) and "fixed-population"."""
    names = (views,) if isinstance(views, str) else tuple(views)
    known = RECORDED_VIEWS + ("all", "fixed-population")
    bad = [v for v in names if v not in known]
    if bad or not names:
        raise GradscopeError(f"views={views!r}: choose from {', '.join(known)}")
    if "fixed-population" in names:
        if population is False:
            raise GradscopeError("views include 'fixed-population' but population=False")
        population = True
    rec = tuple(v for v in RECORDED_VIEWS if v in names or v == "survivors")  # "all" needs survivors
    return rec, bool(population)


class GradientRecorder:
    """Records per-window histograms (fixed edges) and exact moments of weight gradients.

    Which layers (``layers``): the conv/linear layers that feed an elementwise activation —
    "relu" (default; ReLU or ReLU6), "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu",
    "hardswish", ... (``gradscope.record.ACTIVATIONS``; a list selects several) — found by
    watching forward passes through normalisations, residual adds, pooling, concatenation,
    slicing and reshapes; or "all". include / exclude: name regexes on top. Layers with
    frozen weights (requires_grad=False) are skipped; modules sharing one Parameter are
    recorded once. Discovery watches every forward before the first ``step()`` (and the dry
    run on ``example_input``, which also reports a bad selection at construction); a layer
    first run later is watched and reported with a RecorderWarning if it feeds the rule.

    What (``views``): "survivors" (default: the unpruned weights' gradients), "relative"
    (|g| / (|w| + relative_eps) on survivors; BatchNorm makes a layer's gradient scale as
    1/||w||, which this removes). "all" (pruned weights as zero gradients) is derived by the
    reader from "survivors" and the kept counts. population=True also stores, per round, each
    recorded weight's sum of g^2 with the round's mask (the "fixed-population" view).

    When (``window``, ``every``): a window of ``window`` optimizer steps (None: one per epoch,
    ended by the trainer or ``flush()``); only every ``every``-th step is recorded.
    ``preset``: "economy" (every 10th step), "default" (every step, survivors), "full"
    (survivors + relative, population, 256 samples per layer and window): see PRESETS.

    Histograms: ``bins`` / ``hist_range`` / ``hist_min`` / ``hist_max`` (log-spaced magnitudes
    unless hist_range). sample_k: seeded uniform sample of K raw values per layer and window.
    File: ``mode`` "x" (create; an existing file is an error), "a" (continue the run in it),
    "w" (replace it). ``prune_rate`` / ``max_lr`` (or per round in ``start_round``) go into the
    file so ``gradscope calibrate`` needs no flags. ``config``: stored as the run's config.
    """

    def __init__(self, model: nn.Module, path: str, *, window: Optional[int] = None, every: Optional[int] = None,
                 preset: Optional[str] = None, views: Optional[Sequence[str]] = None,
                 population: Optional[bool] = None, relative_eps: Optional[float] = None, bins: int = 201,
                 hist_range: Optional[float] = None, layers: Rule = "relu", include: Optional[str] = None,
                 exclude: Optional[str] = None, sample_k: Optional[int] = None, seed: int = 0,
                 config: Optional[dict] = None, example_input: Any = None, hist_min: float = 1e-10,
                 hist_max: float = 10.0, mode: str = "x", max_lr: Optional[float] = None,
                 prune_rate: Optional[float] = None):
        if preset is not None and preset not in PRESETS:
            raise GradscopeError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        base = PRESETS[preset or "default"]
        every = base["every"] if every is None else every
        sample_k = base["sample_k"] if sample_k is None else sample_k
        views, population = _views(base["views"] if views is None else views,
                                   base["population"] if population is None else population)
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise GradscopeError(f"window must be a positive number of steps or None, got {window!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise GradscopeError(f"every must be a positive integer (record every k-th step), got {every!r}")
        if not isinstance(sample_k, int) or sample_k < 0:
            raise GradscopeError(f"sample_k must be >= 0, got {sample_k}")
        eps = RELATIVE_EPS if relative_eps is None else relative_eps
        if not (isinstance(eps, (int, float)) and np.isfinite(eps) and eps > 0):
            raise GradscopeError(f"relative_eps must be a positive number, got {relative_eps!r}")
        if mode not in ("x", "a", "w"):
            raise GradscopeError(f"mode must be 'x' (create), 'a' (continue) or 'w' (replace), got {mode!r}")
        for name, v in (("max_lr", max_lr), ("prune_rate", prune_rate)):
            if v is not None and not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise GradscopeError(f"{name} must be a positive number, got {v!r}")
        if prune_rate is not None and prune_rate >= 1:
            raise GradscopeError(f"prune_rate is the fraction pruned per round, in (0, 1); got {prune_rate}")
        _rules(layers)
        self.model, self.path = model, os.fspath(path)
        self.window, self.every, self.sample_k, self.seed = window, every, int(sample_k), int(seed)
        self.views, self.population, self.relative_eps = views, population, float(eps)
        self.layers_opt, self.include, self.exclude = layers, include, exclude
        self.mode, self.max_lr = mode, _num(max_lr)
        if hist_range is not None:
            self.edges, self.edge_kind = linear_edges(bins, float(hist_range)), "linear"
        else:
            self.edges, self.edge_kind = log_edges(bins, hist_min, hist_max), "log"
        self.config = dict(config) if config else {
            "recorder": {"window": window, "every": every, "preset": preset, "views": list(views),
                         "population": population, "relative_eps": eps, "bins": bins, "hist_range": hist_range,
                         "layers": layers if isinstance(layers, str) else list(layers), "include": include,
                         "exclude": exclude, "sample_k": sample_k, "seed": seed, "hist_min": hist_min,
                         "hist_max": hist_max}}
        if prune_rate is not None:
            self._set_prune_rate(float(prune_rate))
        self.infos: Optional[list[LayerInfo]] = None
        self.recorded: list[LayerInfo] = []
        self.skipped: dict[str, str] = {}  # layer name -> why it is not recorded (frozen, shared)
        self.writer: Optional[RunWriter] = None
        self.acc: Optional[WindowAccumulator] = None
        self.racc: Optional[WindowAccumulator] = None
        self._early: list[tuple[str, Any]] = []  # writer calls queued before the file exists
        self._failed: Optional[GradscopeError] = None
        self.closed = False
        # position: the recorder's one set of counters (the trainer sets them only at round start)
        self.round, self.epoch, self._step, self._win = 0, 0, 0, 0
        self._win_start: Optional[int] = None
        self._win_last = -1
        self._span_start = 0  # the optimizer step the current window began at
        self._round_open = False
        self._round_meta: dict = {}
        self._round_t0 = time.perf_counter()
        self._need_layer_rounds = True
        self._layer_rows: Optional[list] = None
        self._last_metrics: dict = {}
        # masks, gradient accumulation, AMP, population
        self._mask_key: Any = None
        self._mask: Optional[torch.Tensor] = None
        self._marker: Any = None
        self._opt_steps = 0
        self._opt_hook = None
        self._warned: set[str] = set()
        self._fp16_autocast = False
        self._pop: Optional[torch.Tensor] = None
        self._pop_steps = 0
        self._disc: Optional[LayerDiscovery] = LayerDiscovery(model)
        if example_input is not None:
            try:
                self._disc.dry_run(example_input)
                self.recorded = self._select()  # a bad selection is reported now; final at the first step
            except BaseException:
                self._disc.remove()
                raise

    # ------------------------------------------------------------------ setup
    def _set_prune_rate(self, p: float) -> None:
        prune = self.config.setdefault("prune", {})
        have = prune.get("prune_rate") if isinstance(prune, dict) else None
        if have is not None and abs(float(have) - p) > 1e-12:
            raise GradscopeError(f"prune_rate={p} contradicts the config's prune.prune_rate={have}")
        prune["prune_rate"] = p

    def _warn(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(msg, RecorderWarning, stacklevel=3)

    def _select(self) -> list[LayerInfo]:
        infos = self._disc.infos
        skip, owner = {}, {}
        for i in infos:
            p = weight_param(i.module)
            if not p.requires_grad:
                skip[i.index] = "frozen: requires_grad=False"
            elif id(p) in owner:
                first = infos[owner[id(p)]]
                skip[i.index] = f"shares its weight with {first.name}"
                for a, r in i.activations.items():  # the shared gradient sums both uses
                    first.activations[a] = min(first.activations.get(a, r), r)
            else:
                owner[id(p)] = i.index
        if self.layers_opt != "all" and not any(i.seen for i in infos):
            raise GradscopeError("GradientRecorder.step() before any observed forward pass: the recorder finds the "
                                 f"layers feeding {self.layers_opt!r} by watching model(x); create it before the first "
                                 "forward pass, or pass example_input= (or layers='all')")
        rec = select_layers(infos, self.layers_opt, self.include, self.exclude, skip=skip)
        self.skipped = {infos[k].name: v for k, v in skip.items()}
        return rec

    def _setup(self) -> None:
        """At the first step: fix the recorded layers, open the file, build the accumulators."""
        if self._failed is not None:
            raise self._failed
        try:
            self.recorded = self._select()
            rec = {i.index for i in self.recorded}
            self._open_writer([i.row(i.index in rec) for i in self._disc.infos])
        except GradscopeError as e:  # a bad selection or a file that must not be written: stop watching
            self._failed = e
            self._disc.remove()
            raise
        self._fp16_autocast = self._disc.fp16_autocast
        self.infos = self._disc.freeze(on_late=self._late_layer)
        dev = weight_param(self.recorded[0].module).device
        sizes = [i.numel for i in self.recorded]
        self.acc = WindowAccumulator(sizes, self.edges, dev, sample_k=self.sample_k, seed=self.seed)
        if "relative" in self.views:
            self.racc = WindowAccumulator(sizes, self.edges, dev, sample_k=self.sample_k, seed=self.seed)
        self._offsets = np.cumsum([0] + sizes)
        me = weakref.ref(self)

        def count_opt_step(optimizer, args, kwargs) -> None:  # global hook: must not keep the recorder alive
            r = me()
            if r is not None:
                r._opt_steps += 1
        self._opt_hook = register_optimizer_step_post_hook(count_opt_step)
        for kind, payload in self._early:
            self._write(kind, payload)
        self._early.clear()

    def _open_writer(self, layer_rows: list[dict]) -> None:
        """The one place the run file is created or opened (schema v2 writer)."""
        self.writer = RunWriter(self.path, config=self.config, edges=self.edges, edge_kind=self.edge_kind,
                                layers=layer_rows, sample_k=self.sample_k, views=self.views,
                                relative_eps=self.relative_eps if "relative" in self.views else None,
                                population=self.population, mode=self.mode)

    def _write(self, kind: str, payload) -> None:
        if kind == "add_layer_rounds":
            self.writer.add_layer_rounds(payload)
        else:
            getattr(self.writer, kind)(**payload)

    def _open_for_queued(self) -> None:
        """Open the file for rows queued before any step (a run resumed after its round's last
        epoch writes the round's row without training): possible once the layers are known."""
        if (self.writer is None and self._early and self._failed is None
                and (self.layers_opt == "all" or any(i.seen for i in self._disc.infos))):
            self._setup()

    def _queue(self, kind: str, payload) -> None:
        if self.writer is None:
            self._early.append((kind, payload))
        else:
            self._write(kind, payload)

    def _late_layer(self, info: LayerInfo) -> None:
        if self.layers_opt == "all" or not info.activations:
            return
        feeds = [r for r in _rules(self.layers_opt) if _matches(info, r)]
        if feeds:
            self._warn(f"late:{info.name}", f"layer {info.name!r} ran for the first time after recording began "
                       f"(round {self.round}, step {self._step}) and feeds {feeds[0]}, but it is not recorded: "
                       "the layers were fixed at the first step(). Run a forward pass through every branch before "
                       "the first step() (or pass example_input= that does), or use layers='all'")

    # ------------------------------------------------------------------ masks
    def _fresh_masks(self) -> torch.Tensor:
        parts = []
        for i in self.recorded:
            m = weight_mask(i.module)
            p = weight_param(i.module)
            parts.append(m.reshape(-1) if m is not None else torch.ones(p.numel(), dtype=torch.bool, device=p.device))
        return torch.cat(parts)

    def _masks(self) -> bool:
        """Rebuild the flat mask if a mask buffer was replaced or changed in place; True if rebuilt."""
        key = tuple((id(m), m._version) if m is not None else None
                    for m in (_raw_mask(i.module) for i in self.recorded))
        if key == self._mask_key:
            return False
        if self._mask_key is not None and self._win_last >= 0:
            self._warn("mask-mid-round", f"a weight mask changed during round {self.round} without "
                       "start_round(): the round's kept counts (layer_rounds) describe its masks at its first "
                       "step; call rec.start_round(k) after pruning")
        self._set_mask(self._fresh_masks(), key)
        return True

    def _set_mask(self, mask: torch.Tensor, key) -> None:
        self._mask, self._mask_key = mask, key

    def check_masks(self, where: str = "") -> bool:
        """Compare the masks in use with the modules' masks now (one host sync); True if they
        changed without the recorder seeing it (an edit through ``.data``). Done once per window."""
        if self._mask is None or self._masks():  # a visible change (new buffer, in-place op) is taken as is
            return False
        fresh = self._fresh_masks()
        if torch.equal(fresh, self._mask):
            return False
        names = [i.name for i, a, b in zip(self.recorded, fresh.split(list(np.diff(self._offsets))),
                                            self._mask.split(list(np.diff(self._offsets)))) if not torch.equal(a, b)]
        self._warn("mask-data", f"the mask of layer(s) {', '.join(names)} changed without the recorder seeing it "
                   f"({where}; an edit through .data such as mask.data[:] = m, mask.data.copy_(m) or mask.data = t "
                   "bypasses torch's version counter): the new mask is used from now on, but earlier steps of "
                   "this window may have counted pruned weights as survivors. Change masks with mask.copy_(m), "
                   "torch.nn.utils.prune or gradscope.pruning.set_masks, and call rec.start_round(k) after pruning")
        self._set_mask(fresh, self._mask_key)
        return True

    # ------------------------------------------------------------------ per step
    def step(self, scaler=None) -> None:
        """Record the current ``.grad`` of the recorded layers (call once per optimizer step, after
        backward and, with gradient accumulation, after the last micro-batch)."""
        if self.closed:
            raise GradscopeError("GradientRecorder.step() after close()")
        if self.acc is None:
            self._setup()
        s = self._step
        if s % self.every == 0:
            self._record(scaler, s)
        self._step = s + 1
        if self.window is not None and self._step % self.window == 0:
            self.flush()

    def _record(self, scaler, s: int) -> None:
        self._round_open = True
        if self._need_layer_rounds:
            self._store_layer_rounds()
        params = [weight_param(i.module) for i in self.recorded]
        self._check_accumulation(params, scaler)
        if self._win_start is None:
            if self.window is not None:  # window = step // N (a window without recorded steps leaves a gap)
                self._win = s // self.window
            self.check_masks(f"found at the start of window {self._win} of round {self.round}")
            self._win_start = s
            if self.sample_k:  # each window's samples from its own seed: the same after a resume
                for acc in (self.acc, self.racc):
                    if acc is not None:
                        acc.reseed(_window_seed(self.seed, self.round, self._win))
        self._masks()
        inv = inverse_scale(scaler)
        if inv is None and scaler is None and self._fp16_autocast:
            self._warn("amp", "the model ran under float16 autocast but step() got no GradScaler: if the loss is "
                       "scaled, gradients are recorded multiplied by the loss scale. Pass the scaler, "
                       "rec.step(scaler): it divides by the scale, or does nothing once scaler.unscale_(optimizer) ran")
        grads = [None if p.grad is None else p.grad.detach() for p in params]  # None: no gradient, left out
        if all(g is None for g in grads):  # no recorded layer has a gradient: nothing of this step to record
            self._warn("no-grad", f"step() found no .grad on any recorded layer (round {self.round}, step {s}): "
                       "the step is not recorded; call rec.step() after loss.backward()")
            return
        # the accumulator copies the survivors (the flat mask, unchanged object while the masks are)
        # straight from each .grad into its buffer: no concatenated copy of all gradients per step
        self.acc.add(grads, self._mask, scale=inv)
        if self.racc is not None or self.population:
            scaled = [None if g is None else (g.float() * inv if inv is not None else g.float()) for g in grads]
        if self.racc is not None:
            self.racc.add([None if g is None else g.abs() / (p.detach().float().abs() + self.relative_eps)
                           for g, p in zip(scaled, params)], self._mask)
        if self.population:
            if self._pop is None:
                self._pop = torch.zeros(int(self._offsets[-1]), dtype=torch.float32, device=self._mask.device)
            elif self._pop.device != self._mask.device or self._pop.numel() != int(self._offsets[-1]):
                if self._pop.numel() != int(self._offsets[-1]):
                    raise GradscopeError("the checkpointed fixed-population sums do not match the recorded layers; "
                                         "delete checkpoint.pt to start the run again")
                self._pop = self._pop.to(self._mask.device)
            for j, g in enumerate(scaled):
                if g is None:
                    continue
                a, b = int(self._offsets[j]), int(self._offsets[j + 1])
                g = g.reshape(-1)
                gz = torch.where(self._mask[a:b] & torch.isfinite(g), g, 0.0)
                self._pop[a:b].addcmul_(gz, gz)
            self._pop_steps += 1
        self._win_last = s

    def _check_accumulation(self, params: list, scaler) -> None:
        """Two recorded steps with no optimizer step, parameter change or scaler update between them
        mean step() runs per micro-batch: the windows then hold partial gradient sums."""
        scale = getattr(scaler, "_scale", None)
        marker = (self._opt_steps, tuple(p._version for p in params),
                  scale._version if isinstance(scale, torch.Tensor) else None)
        if self._marker is not None and marker == self._marker:
            self._warn("accumulation", "step() was called twice with no optimizer step in between: with gradient "
                       "accumulation call rec.step() once per optimizer step, after the last micro-batch's "
                       "backward; otherwise each micro-batch's partial gradient sum is recorded as a step")
        self._marker = marker

    # ------------------------------------------------------------------ windows and metadata
    def _queue_window(self, check_masks: bool = True) -> None:
        if self.acc is None or self.acc.steps == 0:
            return
        if self._win_start is None:
            raise InternalError("a window with steps but no start step")
        if check_masks:
            self.check_masks(f"found at the end of window {self._win} of round {self.round}")
        hosts = [("survivors", self.acc.to_host())]
        if self.racc is not None:
            hosts.append(("relative", self.racc.to_host()))
        L = len(self.recorded)
        mom = np.zeros(L * len(hosts), dtype=S.MOMENTS_DTYPE)
        for v, (view, h) in enumerate(hosts):
            rows = mom[v * L: (v + 1) * L]
            rows["round"], rows["epoch"], rows["window"] = self.round, self.epoch, self._win
            # the window's first and last optimizer step, recorded or not (with every=k a round's
            # length stays known: round k of an export starts where round k-1 ended)
            start = min(self._win_start, self._span_start)
            if self.window is not None:  # window w of step // N spans steps w*N .. (w+1)*N - 1
                start = max(start, self._win * self.window)
            rows["step_start"] = start
            rows["step_end"] = max(self._win_last, self._step - 1)
            rows["layer"] = [i.index for i in self.recorded]
            if "view" in mom.dtype.names:
                rows["view"] = VIEW_CODES[view]
            if "steps" in mom.dtype.names:  # per layer: a step where a layer had no .grad is not its step
                rows["steps"] = h["layer_steps"]
            for c in S.MOMENT_COLUMNS:
                rows[c] = h[c]
        self._check_values(hosts[0][1])
        hist = np.concatenate([h["hist"] for _, h in hosts])
        samples = np.concatenate([h["samples"] for _, h in hosts]) if self.sample_k else None
        self.acc.reset()
        if self.racc is not None:
            self.racc.reset()
        self.writer.add_window(mom, hist, samples)
        self._win += 1
        self._win_start = None
        self._span_start = self._step

    def _check_values(self, h: dict) -> None:
        """Warn (once each) about non-finite gradients (left out of every statistic) and huge ones."""
        nf = int(np.sum(h["nonfinite"]))
        if nf:
            self._warn("nonfinite", f"{nf} non-finite gradient values (NaN/inf) in window {self._win} of round "
                       f"{self.round}: they are counted in 'nonfinite' and left out of every statistic")
        with np.errstate(invalid="ignore"):
            big = float(np.nanmax(np.fmax(np.abs(h["min"]), np.abs(h["max"])), initial=0.0))
        if big > HUGE_GRAD:
            self._warn("huge", f"gradients with |g| up to {big:.3g} in window {self._win} of round {self.round}: "
                       "statistics of such values mean little (the run diverged?); the fixed population's "
                       "float32 sums overflow above ~1.8e19")

    def flush(self) -> None:
        """End the current window and write it (and any queued metadata) to the file."""
        self._queue_window()
        self._open_for_queued()
        if self.writer is not None:
            self.writer.commit()

    def _store_layer_rounds(self) -> None:
        """Kept/numel of every layer in this round (masks at the round's first recorded step)."""
        if self.infos is None:
            return
        rows = []
        for i in self.infos:
            m = weight_mask(i.module)
            kept = i.numel if m is None else int(m.sum())
            rows.append({"round": self.round, "layer": i.index, "numel": i.numel, "kept": kept,
                         "sparsity": 1.0 - kept / i.numel})
        self._layer_rows = rows
        self._queue("add_layer_rounds", rows)
        self._need_layer_rounds = False

    def start_round(self, round: int, **meta: Any) -> None:
        """Begin pruning round ``round`` (ends the previous one if ``end_round`` was not called).

        ``meta`` may hold max_lr (round 0's is what ``gradscope calibrate`` starts from),
        prune_rate, sparsity, target_sparsity and schedule (a dict of the round's schedule
        parameters). Call it after pruning, before the round's first step.
        """
        if isinstance(round, bool) or not isinstance(round, (int, np.integer)) or round < 0:
            raise GradscopeError(f"round must be a non-negative integer, got {round!r}")
        if self._round_open:  # the masks may already be the next round's: no mask check
            self._end_round({}, check_masks=False)
        elif self.acc is not None and self.acc.steps:
            self._queue_window(check_masks=False)
            self.writer.commit()
        p = _num(meta.get("prune_rate"))
        if p is not None and self.writer is None:
            self._set_prune_rate(p)
        self.round, self._step, self._win, self.epoch = int(round), 0, 0, 0
        self._win_start, self._win_last, self._span_start = None, -1, 0
        self._round_meta = dict(meta)
        self._round_t0 = time.perf_counter()
        self._round_open = True
        self._need_layer_rounds = True
        self._layer_rows = None
        self._marker = None
        self._mask_key = None  # re-derive the masks (pruning happened)
        self._pop, self._pop_steps = None, 0

    def _position(self, step: int, epoch: int) -> None:
        """Continue the round at ``step`` (optimizer steps taken) in ``epoch``: used on resume."""
        self._step, self.epoch = int(step), int(epoch)
        self._span_start = self._step
        self._win = self.epoch if self.window is None else self._step // self.window

    def end_round(self, **metrics: Any) -> None:
        """Write the last window, the fixed population and the round's row (sparsity, max_lr,
        schedule, accuracy, time)."""
        self._end_round(metrics, check_masks=True)

    def _end_round(self, metrics: dict, check_masks: bool) -> None:
        self._queue_window(check_masks)
        if self._need_layer_rounds:
            self._store_layer_rounds()
        if self.population and self._pop_steps and self.writer is None and self._failed is None \
                and (self.layers_opt == "all" or any(i.seen for i in self._disc.infos)):
            self._setup()  # resumed after the round's last epoch: its restored sums still need the file
        if self.population and self._pop_steps and self.writer is not None:
            if self._mask is None:
                self._masks()
            n_inf = int(torch.isinf(self._pop).sum())
            if n_inf:
                self._warn("pop-inf", f"the fixed-population sums of g^2 of round {self.round} overflowed float32 "
                           f"(+inf) for {n_inf} weights (|g| above ~1.8e19); their RMS is infinite")
            self.writer.add_population(self.round, self._pop.cpu().numpy().astype(np.float32),
                                       np.packbits(self._mask.cpu().numpy()), self._pop_steps)
        self._pop, self._pop_steps = None, 0
        meta = {**self._round_meta}
        met = {**self._last_metrics, **metrics}
        sched = dict(meta.get("schedule") or {}) if isinstance(meta.get("schedule"), dict) else {}
        if meta.get("prune_rate") is not None:
            sched.setdefault("prune_rate", _num(meta["prune_rate"]))
        max_lr = _num(meta.get("max_lr", sched.get("max_lr", self.max_lr)))
        sparsity = _num(meta.get("sparsity"))
        if sparsity is None and self._layer_rows:  # pruned fraction of the pruned (masked) layers
            masked = {i.index for i in self.infos if _raw_mask(i.module) is not None}
            rows = [r for r in self._layer_rows if r["layer"] in masked] or self._layer_rows
            sparsity = 1.0 - sum(r["kept"] for r in rows) / sum(r["numel"] for r in rows)
        self._queue("add_round", {
            "round": self.round, "sparsity": sparsity, "target_sparsity": _num(meta.get("target_sparsity")),
            "max_lr": max_lr, "schedule": json.dumps(sched, sort_keys=True, default=str),
            "val_acc": _num(met.get("val_acc")), "test_acc": _num(met.get("test_acc")),
            "train_loss": _num(met.get("train_loss")), "time_s": time.perf_counter() - self._round_t0})
        self._open_for_queued()
        if self.writer is not None:
            self.writer.commit()
        self._last_metrics = {}
        self._round_open = False

    def close(self) -> None:
        """Write what is left (a loop without round calls gets its round-0 row here) and stop
        watching the model; safe to call twice."""
        if self.closed:
            return
        try:
            if self._round_open:
                self.end_round()
            else:
                self.flush()
        finally:
            self.closed = True
            if self._disc is not None:
                self._disc.remove()
            if self._opt_hook is not None:
                self._opt_hook.remove()
                self._opt_hook = None
            if self.writer is not None:  # releases the run file's writer lock (.NAME.lock) now, not at exit
                self.writer.close()

    def __enter__(self) -> "GradientRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ Callback hooks
    def on_run_start(self, state) -> None:
        if getattr(state, "config", None) and self.writer is None:
            p = self.config.get("prune", {}).get("prune_rate") if isinstance(self.config.get("prune"), dict) else None
            self.config = dict(state.config)
            if p is not None:
                self._set_prune_rate(float(p))

    # ------------------------------------------------------------------ checkpointed state
    # The runner checkpoints callbacks with a state_key after every epoch: what the recorder
    # sums over a whole round (the fixed population) must survive a kill inside the round.
    state_key = "gradient-recorder"

    def state_dict(self) -> dict:
        """The round's running fixed-population sums (None without population), at the step reached."""
        pop = None if self._pop is None else self._pop.detach().cpu().clone()
        return {"round": int(self.round), "step": int(self._step), "pop": pop, "pop_steps": int(self._pop_steps)}

    def load_state_dict(self, d: dict) -> None:
        self._resume_state = dict(d) if isinstance(d, dict) else None

    def _restore_round(self, step: int) -> None:
        """Resumed mid-round at ``step``: take back the population sums of the steps before it."""
        d = getattr(self, "_resume_state", None)
        self._resume_state = None
        if not self.population:
            return
        if d is not None and d.get("round") == self.round and d.get("step") == step:
            pop = d.get("pop")
            if pop is None or (isinstance(pop, torch.Tensor) and pop.dtype == torch.float32 and pop.dim() == 1):
                self._pop, self._pop_steps = pop, int(d.get("pop_steps") or 0)
                return
        self._warn("pop-resume", f"resumed inside round {self.round} without the recorder's checkpointed state "
                   f"(a checkpoint from an older gradscope?): the round's fixed-population record holds only "
                   f"the steps from {step} on")

    def on_round_start(self, state) -> None:
        info = getattr(state, "info", None)
        meta: dict = {"schedule": dict(getattr(state, "schedule", None) or {})}
        if info is not None:
            meta.update(sparsity=info.sparsity, target_sparsity=info.target_sparsity)
        self.start_round(state.round, **meta)
        if int(getattr(state, "step", 0) or 0) > 0:  # resumed mid-round: continue at the trainer's position
            self._position(state.step, state.epoch)
            self._restore_round(int(state.step))

    def on_epoch_start(self, state) -> None:
        self.epoch = int(state.epoch)
        if self.window is None and self._win_start is None:  # one window per epoch: window = epoch,
            self._win = self.epoch  # also when an earlier epoch recorded no step (every=k), as on resume
            self._span_start = self._step  # and its span is this epoch's steps, resumed or not

    def on_after_backward(self, state) -> None:
        self.step(getattr(state, "scaler", None))

    def on_epoch_end(self, state) -> None:
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
