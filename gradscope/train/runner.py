"""The round runner: train, then per round prune -> rewind -> train again, resumably.

A run directory holds ``config.json``, ``versions.json`` (package versions, git commit), ``checkpoint.pt`` (atomic, written after every epoch
and at every round boundary), ``round_K.pt`` (masks, metrics, rewind point of round K),
``rounds.json`` (the per-round table) and, when recording, ``run.h5``. Starting the same
command again continues from the checkpoint; a finished run is not trained again.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from gradscope import GradscopeError
from gradscope.callbacks import TrainState, call_all
from gradscope.config import RunConfig
from gradscope.train.checkpoint import load_torch, save_json, save_torch
from gradscope.train.loop import evaluate, train_epoch
from gradscope import pruning as P

REWIND_MODES = ("init", "early", "lr", "finetune")
_VOLATILE = {("train", "progress"), ("train", "threads"), ("train", "device"), ("data", "cache_dir")}  # may change on resume


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise GradscopeError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GradscopeError(f"--device {name} asked for, but no CUDA GPU is available")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_key(round_: int, epoch: int) -> int:
    """The data-order key of (round, epoch): the loader's shuffle depends only on it and the seed."""
    return round_ * 100_003 + epoch


def _comparable(cfg: dict) -> dict:
    return {s: {k: v for k, v in sec.items() if (s, k) not in _VOLATILE} if isinstance(sec, dict) else sec
            for s, sec in cfg.items() if s != "out"}


class PruningRun:
    """Iterative pruning with rewinding on one dataset and model (see module docstring)."""

    def __init__(self, config: RunConfig, callbacks: Sequence = (), schedule=None,
                 log: Callable[[str], None] = print):
        self.cfg = config
        self.out = Path(config.out)
        self.log = log
        self.user_callbacks = list(callbacks)
        self._schedule = schedule
        self._check_config()

    # ------------------------------------------------------------------ set-up
    def _check_config(self) -> None:
        c = self.cfg
        if c.prune.rewind not in REWIND_MODES:
            raise GradscopeError(f"unknown --rewind {c.prune.rewind!r}; known: {', '.join(REWIND_MODES)}")
        if c.prune.prune_method not in P.PRUNE_METHODS:
            raise GradscopeError(f"unknown --prune-method {c.prune.prune_method!r}; known: {', '.join(P.PRUNE_METHODS)}")
        if c.train.epochs < 1:
            raise GradscopeError(f"--epochs must be at least 1; got {c.train.epochs}")
        if c.data.batch_size < 1:
            raise GradscopeError(f"--batch-size must be at least 1; got {c.data.batch_size}")
        if not 0.0 <= c.data.val_fraction < 1.0:
            raise GradscopeError(f"--val-fraction must be in [0, 1); got {c.data.val_fraction}")
        if c.schedule.schedule == "silo-auto" and not c.record.record:
            c.record.record = True  # silo-auto calibrates from the recorded gradients

    def schedule_factory(self):
        if self._schedule is None:
            if self.cfg.schedule.schedule == "silo-auto":
                import gradscope.calibrate  # noqa: F401 - registers silo-auto
            from gradscope.schedules import schedule_from_config
            self._schedule = schedule_from_config(self.cfg.schedule)
        return self._schedule

    def _setup(self) -> None:
        c = self.cfg
        from gradscope.data import BatchLoader, load_dataset_from_config
        from gradscope.models import get_model

        if c.train.threads:
            torch.set_num_threads(c.train.threads)
        self.device = resolve_device(c.train.device)
        seed_everything(c.train.seed)
        self.data = load_dataset_from_config(c.data, c.train.seed)
        seed_everything(c.train.seed)
        model = get_model(c.model.model, self.data.input_shape, self.data.num_classes)
        self.channels_last = bool(c.train.channels_last and len(self.data.input_shape) == 3
                                  and any(isinstance(m, nn.Conv2d) for m in model.modules()))
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.layers = P.prunable_layers(model, c.prune.prune_first, c.prune.prune_last)
        P.attach_masks(self.layers)
        self.total_prunable = sum(m.weight_orig.numel() for m in self.layers.values())
        P.check_schedule(self.total_prunable, c.prune.rounds, c.prune.prune_rate)
        self.model = model
        self.net = torch.compile(model) if c.train.compile else model
        d = self.data
        common = dict(mean=d.mean, std=d.std, device=self.device, channels_last=self.channels_last)
        self.train_loader = BatchLoader(d.train_x, d.train_y, c.data.batch_size, shuffle=True,
                                        augment=d.augment if c.data.augment else "none",
                                        seed=c.train.seed, drop_last=len(d.train_y) >= c.data.batch_size,
                                        **common)  # no tiny last batch: it would skew gradient statistics
        if len(self.train_loader) == 0:
            raise GradscopeError("the training set is empty (check --train-subset / --val-fraction)")
        self.val_loader = BatchLoader(d.val_x, d.val_y, 512, shuffle=False, **common) if len(d.val_y) else None
        self.test_loader = BatchLoader(d.test_x, d.test_y, 512, shuffle=False, **common)
        self.steps_per_epoch = len(self.train_loader)
        if c.prune.rewind == "early":
            rs = c.prune.rewind_step if c.prune.rewind_step is not None else self.steps_per_epoch
            if not 0 <= rs <= self.steps_per_epoch * c.train.epochs:
                raise GradscopeError(f"--rewind-step {rs} is outside round 0 (0..{self.steps_per_epoch * c.train.epochs} steps)")
            self.rewind_step = rs
        else:
            self.rewind_step = 0
        self.callbacks = list(self.user_callbacks)
        if c.record.record:
            from dataclasses import asdict
            from gradscope.record import GradientRecorder
            rec = {k: v for k, v in asdict(c.record).items() if k != "record"}
            example = next(iter(self.val_loader or self.test_loader))[0][:2]
            self.callbacks.insert(0, GradientRecorder(self.model, str(self.out / "run.h5"), **rec, seed=c.train.seed,
                                                      config=c.to_dict(), example_input=example))

    def _write_config(self, check_only: bool = False) -> None:
        """Refuse an --out that holds another run's config; else save ours (after set-up worked)."""
        path = self.out / "config.json"
        mine = self.cfg.to_dict()
        if path.exists():
            try:
                theirs = json.loads(path.read_text())
            except (OSError, ValueError):
                raise GradscopeError(f"{path} is unreadable; use another --out or delete it") from None
            if _comparable(theirs) != _comparable(mine):
                diff = sorted(f"{s}.{k}" for s, sec in _comparable(mine).items() if isinstance(sec, dict)
                              for k in sec if theirs.get(s, {}).get(k) != sec[k])
                raise GradscopeError(f"{self.out} holds a run with a different config ({', '.join(diff)}); "
                                     f"use another --out to start a new run")
        if not check_only:
            from gradscope.store.writer import git_commit, package_versions
            self.out.mkdir(parents=True, exist_ok=True)
            save_json(mine, path)
            save_json({"versions": package_versions(), "git_commit": git_commit()}, self.out / "versions.json")

    # ------------------------------------------------------------------ state
    def _checkpoint(self, **pos) -> None:
        self.pos.update(pos)
        save_torch({
            "pos": dict(self.pos), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None and self.pos["epoch"] > 0 else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None and self.pos["epoch"] > 0 else None,
            "init_state": self.init_state, "early_state": self.early_state, "results": self.results,
            "epochs_log": self.epochs_log, "round_extra": self.round_extra, "config": self.cfg.to_dict(),
        }, self.out / "checkpoint.pt")

    def _restore(self, ck: dict) -> None:
        self.model.load_state_dict(ck["model"])
        P.refresh_weights(self.layers.values())
        self.pos = ck["pos"]
        self.init_state, self.early_state = ck["init_state"], ck["early_state"]
        self.results, self.epochs_log, self.round_extra = ck["results"], ck["epochs_log"], ck["round_extra"]
        self._resume_opt = ck["optimizer"], ck["scheduler"]

    # ------------------------------------------------------------------ rounds
    def _prune_and_rewind(self, k: int) -> None:
        c = self.cfg
        target = P.target_sparsity(k, c.prune.prune_rate)
        before = P.effective_weights(self.layers)
        achieved = P.prune_step(self.layers, c.prune.prune_method, target, seed=c.train.seed * 1000 + k)
        after = P.effective_weights(self.layers)
        extra = {"norm_drop": P.norm_drop(before, after), "step_pruned": c.prune.prune_rate,
                 "achieved": achieved}
        if c.prune.rewind == "init":
            P.load_plain_state(self.model, self.init_state)
            extra["rewind_point"] = "init (step 0)"
        elif c.prune.rewind == "early":
            P.load_plain_state(self.model, self.early_state)
            extra["rewind_point"] = f"round 0 step {self.rewind_step}"
        else:
            extra["rewind_point"] = f"none (keep trained weights; {c.prune.rewind})"
        self.round_extra[k] = extra

    def round_info(self, k: int) -> dict:
        """What the schedule and the instruments know of round k before it trains."""
        from gradscope.schedules import RoundInfo
        c = self.cfg
        sp, per = P.sparsity(P.current_masks(self.layers))
        prev = self.results[-1]["sparsity"] if self.results else 0.0
        extra = self.round_extra.get(k, {})
        info = RoundInfo(round=k, sparsity=sp, prev_sparsity=prev, prune_rate=c.prune.prune_rate,
                         steps_per_epoch=self.steps_per_epoch, epochs=c.train.epochs,
                         norm_drop=extra.get("norm_drop"), step_pruned=extra.get("step_pruned"),
                         target_sparsity=P.target_sparsity(k, c.prune.prune_rate), layer_sparsity=per,
                         rewind_point=extra.get("rewind_point", "-"))
        return {"info": info, "round": k, "sparsity": sp, "layer_sparsity": per,
                "target_sparsity": P.target_sparsity(k, c.prune.prune_rate)}

    def factory_for_round(self, k: int):
        f = self.schedule_factory()
        if self.cfg.prune.rewind == "finetune" and k > 0 and self.cfg.schedule.schedule != "finetune":
            from gradscope.schedules import get_schedule
            f = get_schedule("finetune")  # fine-tuning: keep the weights, small constant LR
        return f

    def train_round(self, k: int, start_epoch: int, factory, callbacks: Sequence, opt_state=None,
                    sched_state=None, checkpoint: bool = True, desc: str = "") -> dict:
        """Train round ``k`` from ``start_epoch`` with ``factory``'s schedule; return its metrics."""
        c = self.cfg
        ri = self.round_info(k)
        info = ri.pop("info")
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=factory.peak_lr(info),
                                         momentum=c.train.momentum, weight_decay=c.train.weight_decay)
        self.scheduler = factory.build(self.optimizer, info)
        if opt_state is not None:
            self.optimizer.load_state_dict(opt_state)
        if sched_state is not None:
            self.scheduler.load_state_dict(sched_state)
        ri["schedule"] = factory.round_params(info)
        ri["max_lr"] = ri["schedule"]["max_lr"]
        state = TrainState(model=self.net, optimizer=self.optimizer, scheduler=self.scheduler,
                           device=self.device, round=k, epoch=start_epoch,
                           step=start_epoch * self.steps_per_epoch, steps_per_epoch=self.steps_per_epoch,
                           epochs=c.train.epochs, info=info, schedule=ri["schedule"], config=c.to_dict(),
                           resumed=start_epoch > 0 or opt_state is not None)
        self.state = state
        call_all(callbacks, "on_round_start", state)
        amp = c.train.amp
        metrics: dict = {}
        for e in range(start_epoch, c.train.epochs):
            state.epoch = e
            call_all(callbacks, "on_epoch_start", state)
            self.train_loader.set_epoch(epoch_key(k, e))
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            loss = train_epoch(state, self.train_loader, callbacks, amp=amp, progress=c.train.progress,
                               desc=f"{desc}round {k} epoch {e + 1}/{c.train.epochs}")
            if not math.isfinite(loss):
                raise GradscopeError(f"training diverged in round {k}, epoch {e}: loss is {loss} "
                                     f"(max_lr {ri['max_lr']:.4g} may be too high)")
            val = evaluate(self.net, self.val_loader, self.device, amp) if self.val_loader else float("nan")
            test = evaluate(self.net, self.test_loader, self.device, amp)
            metrics = {"round": k, "epoch": e, "train_loss": loss, "val_acc": val, "test_acc": test,
                       "lr": lr, "time_s": time.perf_counter() - t0}
            state.metrics = metrics
            call_all(callbacks, "on_epoch_end", state)
            if checkpoint:
                self.epochs_log.append(metrics)
                self._checkpoint(round=k, epoch=e + 1, pruned=True)
        state.metrics = metrics
        return {"ri": ri, "metrics": metrics}

    def _finish_round(self, k: int, out: dict) -> None:
        ri, m = out["ri"], out["metrics"]
        ep = [e for e in self.epochs_log if e["round"] == k]
        res = {"round": k, "sparsity": ri["sparsity"], "target_sparsity": ri["target_sparsity"],
               "max_lr": ri["max_lr"], "train_loss": m.get("train_loss"), "val_acc": m.get("val_acc"),
               "test_acc": m.get("test_acc"), "time_s": sum(e["time_s"] for e in ep),
               "rewind_point": self.round_extra.get(k, {}).get("rewind_point", "-"),
               "norm_drop": self.round_extra.get(k, {}).get("norm_drop")}
        save_torch({"result": res, "layer_sparsity": ri["layer_sparsity"], "epochs": ep,
                    "schedule": ri["schedule"], "masks": P.current_masks(self.layers)},
                   self.out / f"round_{k}.pt")
        self.results = [r for r in self.results if r["round"] != k] + [res]
        save_json(self.results, self.out / "rounds.json")
        self.log(format_row(res))

    def run(self):
        """Run (or resume) all rounds; return the per-round table as a DataFrame."""
        import pandas as pd
        c = self.cfg
        self._write_config(check_only=True)
        self._setup()
        self._write_config()
        self.optimizer = self.scheduler = None
        self._resume_opt = (None, None)
        ck_path = self.out / "checkpoint.pt"
        if ck_path.exists():
            self._restore(load_torch(ck_path, what="checkpoint", required=(
                "pos", "model", "optimizer", "scheduler", "init_state", "early_state", "results", "epochs_log",
                "round_extra")))
            self.log(f"resuming {self.out} at round {self.pos['round']}, epoch {self.pos['epoch']}")
        else:
            self.init_state = P.plain_state(self.model)
            self.early_state = self.init_state if self.rewind_step == 0 else None
            self.results, self.epochs_log, self.round_extra = [], [], {}
            self.pos = {"round": 0, "epoch": 0, "pruned": True}
            self._checkpoint()
        callbacks = list(self.callbacks)
        if c.prune.rewind == "early" and self.early_state is None:
            callbacks.append(_EarlyCapture(self))
        state = TrainState(model=self.net, device=self.device, config=c.to_dict(), resumed=ck_path.exists())
        call_all(callbacks, "on_run_start", state)
        self.log(format_header())
        for r in self.results:
            self.log(format_row(r))
        while self.pos["round"] < c.prune.rounds:
            k = self.pos["round"]
            if not self.pos["pruned"]:
                self._prune_and_rewind(k)
                self._checkpoint(round=k, epoch=0, pruned=True)
            opt_s, sch_s = self._resume_opt
            self._resume_opt = (None, None)
            out = self.train_round(k, self.pos["epoch"], self.factory_for_round(k), callbacks,
                                   opt_state=opt_s if self.pos["epoch"] > 0 else None,
                                   sched_state=sch_s if self.pos["epoch"] > 0 else None)
            self._finish_round(k, out)
            call_all(callbacks, "on_round_end", self.state)
            self._after_round(k)
            self._checkpoint(round=k + 1, epoch=0, pruned=False)
        call_all(callbacks, "on_run_end", self.state if hasattr(self, "state") else state)
        return pd.DataFrame(self.results)

    def _after_round(self, k: int) -> None:
        """Closed-loop schedules (silo-auto) learn from the rounds recorded so far."""
        f = self.schedule_factory()
        if hasattr(f, "observe") and (self.out / "run.h5").exists():
            from gradscope.store import open_run
            with open_run(self.out / "run.h5") as reader:
                f.observe(reader)


class _EarlyCapture:
    """Keeps the weights at round 0's ``rewind_step`` for late rewinding."""

    def __init__(self, run: PruningRun):
        self.run = run

    def on_step_end(self, state: TrainState) -> None:
        if state.round == 0 and state.step == self.run.rewind_step and self.run.early_state is None:
            self.run.early_state = P.plain_state(self.run.model)


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
            return f.format(float("nan")) if isinstance(v, float) else str(v)
    return " ".join(cell(n, f) for n, _, f in _COLS)
