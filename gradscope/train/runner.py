"""``PruningRun``: train, then per round prune -> rewind -> train again; persist every step.

The run directory (``gradscope.paths``) holds config.json, versions.json, checkpoint.pt
(atomic; after every epoch and at every round boundary), round_K.pt, rounds.json and, when
recording, run.h5. Starting the same command again continues from the checkpoint; a finished
run is not trained again. Training a round is the ``RoundTrainer``'s job (or a round strategy's,
e.g. the Oracle's); this module only sequences rounds and persists them.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import stat
from typing import Callable, Optional, Protocol, Sequence

import torch

from gradscope import GradscopeError, faults
from gradscope import pruning as P
from gradscope.callbacks import TrainState, call_all
from gradscope.config import RunConfig
from gradscope.paths import RunPaths
from gradscope.rounds import EpochMetrics, RoundInfo, RoundResult
from gradscope.train import distributed as D
from gradscope.store.diskio import writer_lock
from gradscope.train.checkpoint import clean_stale_temps, load_torch, save_json, save_torch
from gradscope.train.context import TrainContext, build_context
from gradscope.train.rewind import REWINDS, PreviousWeights, rewind_mode, round_schedule
from gradscope.train.state import CHECKPOINT_FORMAT, RunState, migrate_v1
from gradscope.train.table import format_header, format_row
from gradscope.train.trainer import RoundTrainer

_VOLATILE = {("train", "progress"), ("train", "threads"), ("train", "device"), ("data", "cache_dir")}
# May change on resume without making a finished round wrong: more rounds extend a run (as
# OpenLTH adds levels); each round depends only on the rounds before it, never on the total.
_EXTENSIBLE = {("prune", "rounds")}
# Fields added after checkpoints carried a config hash: at these values (their defaults) they are
# left out of the hash, so a run checkpointed before the field existed still resumes.
_ADDED = {("schedule", "predictor"): None}
MAX_EPOCHS = 10_000  # per round; more is a typo (and would run on for ever), not a plan
LOCK = ".lock"  # RUN/.lock: the run directory's writer lock (holds the writer's PID)


def comparable_config(cfg: dict) -> dict:
    """A saved config normalised to this version's fields, without those that may change on resume."""
    d = RunConfig.from_dict(cfg).to_dict()
    return {s: {k: v for k, v in sec.items() if (s, k) not in _VOLATILE}
            for s, sec in d.items() if isinstance(sec, dict)}


def config_hash(cfg: dict) -> str:
    """SHA-256 of a config's comparable part (canonical JSON) without the keys a resume may
    change (``_EXTENSIBLE``: more rounds extend a finished run): stored in every checkpoint, so a
    checkpoint from another run is recognised before it is resumed."""
    comp = comparable_config(cfg)
    for s, k in _EXTENSIBLE:
        comp.get(s, {}).pop(k, None)
    for (s, k), default in _ADDED.items():
        if comp.get(s, {}).get(k, default) == default:
            comp.get(s, {}).pop(k, None)
    text = json.dumps(comp, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class RoundStrategy(Protocol):
    """How one round is trained (the plain trainer, or the Oracle's grid of candidates)."""

    def train_round(self, run: "PruningRun", info: RoundInfo, schedule, callbacks: Sequence, *,
                    done: Sequence[EpochMetrics], opt_state: Optional[dict],
                    sched_state: Optional[dict]) -> RoundResult: ...


class PlainRounds:
    """Each round trained once with the run's schedule."""

    def train_round(self, run, info, schedule, callbacks, *, done, opt_state, sched_state):
        return run.trainer.train(info, schedule, callbacks, done=done, opt_state=opt_state,
                                 sched_state=sched_state)


class PruningRun:
    """Iterative pruning with rewinding on one dataset and model (see module docstring)."""

    def __init__(self, config: RunConfig, callbacks: Sequence = (), schedule=None,
                 log: Callable[[str], None] = print, rounds: Optional[RoundStrategy] = None):
        self.cfg = config.validate()
        if config.train.epochs > MAX_EPOCHS:  # (the flag's own bound would live in gradscope/config.py)
            raise GradscopeError(f"--epochs {config.train.epochs} is more than {MAX_EPOCHS:,} epochs per round; "
                                 "give a realistic number")
        self.paths = RunPaths(config.out)
        self.log = log if D.is_main() else (lambda s: None)  # under torchrun rank 0 prints
        self.user_callbacks = list(callbacks)
        self.rounds = rounds or PlainRounds()
        self.rewind = rewind_mode(config)  # imports gradscope.calibrate for silo-auto
        from gradscope.schedules import schedule_from_config  # noqa: PLC0415

        self.factory = schedule if schedule is not None else schedule_from_config(config.schedule)
        if config.schedule.schedule == "silo-auto" and getattr(self.factory, "predictor", None) is None:
            config.record.record = True  # silo-auto calibrates from the recorded gradients (a predictor: from probes)
        P.STRATEGIES.key(config.prune.prune_method)
        self.probe_names = _probe_names(config, self.rounds)
        check = getattr(self.factory, "check_run", None)  # e.g. silo-auto --predictor needs its probe
        if check is not None:
            check(config, self.probe_names)
        self.ctx: Optional[TrainContext] = None
        self.trainer: Optional[RoundTrainer] = None
        self.state: Optional[RunState] = None
        self._saved_rounds: Optional[int] = None  # prune.rounds of the config already in --out
        self.rewind_step = 0

    # ------------------------------------------------------------------ set-up
    def _check_out(self) -> None:
        """Refuse an --out that is a file or holds another run's config (nothing written yet)."""
        root = self.paths.root
        try:
            st = os.stat(root)
        except FileNotFoundError:
            st = None
        except OSError as e:  # name too long, a symlink loop, a parent that is a file, ...
            raise GradscopeError(f"--out {_short(root)}: {_cause(e)}; give another directory for the run") from None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise GradscopeError(f"--out {root} is a file; give a directory for the run")
        if st is None:
            parent = _existing_parent(root)
            if parent is not None and not os.path.isdir(parent):
                raise GradscopeError(f"--out {_short(root)}: {parent} is a file, not a folder; give another "
                                     "directory for the run")
        if os.path.lexists(self.paths.config):
            try:
                if not os.path.isfile(self.paths.config):  # a FIFO would block the read below
                    raise OSError("not a regular file")
                theirs = json.loads(self.paths.config.read_text())
            except (OSError, ValueError):
                raise GradscopeError(f"{self.paths.config} is unreadable; use another --out or delete it") from None
            mine, theirs = comparable_config(self.cfg.to_dict()), comparable_config(theirs)
            diff = sorted(f"{s}.{k}" for s, sec in mine.items() for k in sec
                          if theirs.get(s, {}).get(k) != sec[k] and (s, k) not in _EXTENSIBLE)
            if diff:
                raise GradscopeError(f"{root} holds a run with a different config ({', '.join(diff)}); only "
                                     f"--rounds may change (to extend the run); use another --out to start a new run")
            self._saved_rounds = theirs.get("prune", {}).get("rounds")
            done = self._finished_rounds()
            if done > self.cfg.prune.rounds:
                raise GradscopeError(f"{root} already holds {done} finished rounds; --rounds {self.cfg.prune.rounds} "
                                     f"would drop some (give --rounds {done} or more)")

    def _finished_rounds(self) -> int:
        """How many rounds rounds.json lists as finished (0 if there is none yet)."""
        try:
            rows = json.loads(self.paths.rounds.read_text())
        except (OSError, ValueError):
            return 0
        return max((int(r.get("round", -1)) + 1 for r in rows if isinstance(r, dict)), default=0) \
            if isinstance(rows, list) else 0

    @D.main_only
    def _write_config(self) -> None:
        from gradscope.provenance import package_versions, source_commit  # noqa: PLC0415

        try:
            self.paths.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise GradscopeError(f"cannot create the run directory --out {_short(self.paths.root)}: {_cause(e)}; "
                                 "give another directory") from None
        # one writer per run directory, for the whole run (prune, profile, oracle); readers never lock
        self._unlock = writer_lock(str(self.paths.root / LOCK), f"run directory {self.paths.root}")
        clean_stale_temps(self.paths.root)  # leftovers of writes a kill interrupted (we are the only writer)
        # schedule_used: every parameter the schedule runs with, defaults included (the flags
        # above may leave them out: config.json says what was run)
        params = getattr(self.factory, "params", None)
        save_json({**self.cfg.to_dict(), "schedule_used": params() if callable(params) else None},
                  self.paths.config, what="run config")
        save_json({"versions": package_versions(), "git_commit": source_commit()}, self.paths.versions,
                  what="versions file")

    def schedule_note(self) -> Optional[str]:
        """A line saying which SILO constants a run uses when no flag, preset or file gave them."""
        sc = self.cfg.schedule
        if sc.schedule != "silo" or sc.schedule_file or sc.preset or not hasattr(self.factory, "params"):
            return None
        missing = [k for k in ("lo", "hi", "beta", "midpoint") if getattr(sc, k) is None]
        if not missing:
            return None
        p = self.factory.params()
        used = ", ".join(f"{k} {p[k]:g}" for k in missing)
        model = self.cfg.model.model
        tail = "" if model == "resnet20" else (
            f", not for {model}: calibrate them for it (gradscope profile, then gradscope calibrate RUN -o FILE, "
            f"then --schedule-file FILE) or give --lo/--hi")
        return (f"schedule silo: {used} are the released ResNet-20 constants (no --{'/--'.join(missing)}, "
                f"--preset or --schedule-file given), made for ResNet-20 on CIFAR-10{tail}")

    def _rewind_step(self) -> int:
        c = self.cfg
        if self.rewind != "early":
            return 0
        total = self.ctx.steps_per_epoch * c.train.epochs
        rs = c.prune.rewind_step if c.prune.rewind_step is not None else self.ctx.steps_per_epoch
        if not 0 <= rs <= total:
            raise GradscopeError(f"--rewind-step {rs} is outside round 0 (0..{total} steps)")
        return rs

    def _recorder(self):
        from dataclasses import asdict  # noqa: PLC0415

        from gradscope.record import GradientRecorder  # noqa: PLC0415

        c = self.cfg
        opts = {k: v for k, v in asdict(c.record).items() if k != "record"}
        opts["preset"] = opts.pop("record_preset")
        if opts["views"] is not None:
            opts["views"] = [v.strip() for v in opts["views"].split(",") if v.strip()]
        if "," in opts["layers"]:
            opts["layers"] = [v.strip() for v in opts["layers"].split(",") if v.strip()]
        example = next(iter(self.ctx.val_loader or self.ctx.test_loader))[0][:2]
        mode = "a" if self.paths.config.exists() else "x"  # _check_out vouched that it is this run
        return GradientRecorder(self.ctx.model, str(self.paths.run_h5), **opts, seed=c.train.seed,
                                config=c.to_dict(), example_input=example, mode=mode,
                                prune_rate=c.prune.prune_rate)

    def _callbacks(self, recorder) -> list:
        cbs = [recorder] if recorder is not None else []
        cbs += self.user_callbacks
        make = getattr(self.factory, "callbacks", None)
        self._learned = list(make(self.paths, self.log)) if make is not None else []
        if D.is_main():  # schedules that learn from the run (silo-auto); other ranks get their state per round
            cbs += self._learned
        if self.rewind == "early" and self.state.early is None:
            cbs.append(_EarlyCapture(self))
        if self.probe_names and D.is_main():  # first: the recorder's round clock starts after the start probes
            cbs.insert(0, self._probe_callback())
        self._previous = None
        if P.STRATEGIES.get(self.cfg.prune.prune_method).needs_previous:  # |Δw| pruning
            self._previous = PreviousWeights(self.ctx.layers)
            cbs.append(self._previous)
        if not self.trainer.progress:  # no bars (not a terminal): a line every so often instead
            cbs.append(_Heartbeat(self.log, heartbeat_interval()))
        cbs.append(_EpochCheckpoint(self))  # last: every instrument has flushed by then
        for cb in cbs + ([] if D.is_main() else self._learned):
            key = getattr(cb, "state_key", None)
            if key and key in self.state.callbacks:
                cb.load_state_dict(self.state.callbacks[key])
        self._stateful = [cb for cb in cbs if getattr(cb, "state_key", None)]
        return cbs

    def _probe_callback(self):
        from gradscope.probes.callback import ProbeCallback  # noqa: PLC0415

        c = self.cfg
        grid = getattr(self.rounds, "grid", None)
        return ProbeCallback(self.probe_names, self.ctx, self.paths.root, at=c.probe.probes_at, repeats=c.probe.probe_repeats,
                             seed=c.train.seed, log=self.log, epochs=c.train.epochs,
                             oracle=(len(grid), self.rounds.seeds) if grid is not None else None,
                             settings=probe_settings(c))

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, optimizer=None, scheduler=None) -> None:
        """Write the run's state (and, mid-round, the optimizer and scheduler) atomically."""
        if not D.is_main():
            return
        st = self.state
        st.callbacks = {cb.state_key: cb.state_dict() for cb in getattr(self, "_stateful", [])}
        save_torch({"format": CHECKPOINT_FORMAT, "state": st.to_dict(), "model": self.ctx.model.state_dict(),
                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "config": self.cfg.to_dict(), "config_sha256": self._config_hash},
                   self.paths.checkpoint, what="checkpoint")
        faults.point("checkpoint", st.round, st.stage, len(st.epochs))

    def _load_or_start(self) -> tuple[Optional[dict], Optional[dict]]:
        """Restore the checkpoint (returning the optimizer/scheduler states) or start round 0."""
        fresh = not self.paths.checkpoint.exists()
        D.barrier()  # every rank has looked before rank 0 writes one
        if fresh:
            init = P.plain_state(self.ctx.model)
            self.state = RunState(init=init, early=init if self.rewind_step == 0 else None)
            self.save_checkpoint()
            return None, None
        hint = "delete it to start the run again"
        ck = load_torch(self.paths.checkpoint, what="checkpoint", required=("model",), hint=hint)
        legacy = ck.get("format") is None and "pos" in ck
        saved_config = {k: ck[k] for k in ("config", "config_sha256") if k in ck}
        if legacy:  # written by gradscope 0.1
            ck = migrate_v1(ck, self.ctx.steps_per_epoch, self.cfg.train.epochs, self.cfg.prune.prune_rate)
        if "state" not in ck:
            raise GradscopeError(f"{self.paths.checkpoint} is not a gradscope checkpoint: it lacks 'state'; {hint}")
        self._check_checkpoint_config(saved_config, legacy)
        self.ctx.model.load_state_dict(ck["model"])
        P.refresh_weights(self.ctx.layers.values())
        self.state = RunState.from_dict(ck["state"])
        st = self.state
        self.log(f"resuming {self.paths.root} at round {st.round} ({st.stage}, {len(st.epochs)} epochs done)")
        return ck.get("optimizer"), ck.get("scheduler")

    def _check_checkpoint_config(self, ck: dict, legacy: bool) -> None:
        """Refuse a checkpoint written by another run (another config than config.json's).

        Checkpoints carry ``config_sha256`` (``config_hash``); older ones carry the config itself,
        which is compared the same way; gradscope 0.1 checkpoints (migrated, no config) are
        accepted, as before: config.json was already compared with the flags."""
        saved = ck.get("config_sha256")
        if saved is None and isinstance(ck.get("config"), dict):
            try:
                saved = config_hash(ck["config"])
            except (GradscopeError, TypeError, ValueError, KeyError):
                saved = "unreadable"
        if saved is None:
            if legacy:
                return
            saved = "missing"
        if saved != self._config_hash:
            why = "it carries no config" if saved == "missing" else f"its config differs from {self.paths.config}"
            raise GradscopeError(f"{self.paths.checkpoint} belongs to another run ({why}); refusing to resume "
                                 "from it: delete it to start this run again, or use another --out")

    @property
    def _config_hash(self) -> str:
        h = getattr(self, "_hash", None)
        if h is None:
            h = self._hash = config_hash(self.cfg.to_dict())
        return h

    # ------------------------------------------------------------------ rounds
    def _prune_and_rewind(self, k: int) -> None:
        c, layers, st = self.cfg, self.ctx.layers, self.state
        target = P.target_sparsity(k, c.prune.prune_rate)
        total_sq = P.parameter_norm_sq(self.ctx.model)
        before = P.effective_weights(layers)
        previous = getattr(getattr(self, "_previous", None), "prev", None)
        achieved = P.prune_step(layers, c.prune.prune_method, target, seed=c.train.seed * 1000 + k,
                                previous=previous)
        rec = {"norm_drop": P.norm_drop(before, P.effective_weights(layers), total_sq),
               "step_pruned": c.prune.prune_rate, "achieved": achieved}
        rec["rewind_point"] = REWINDS.get(self.rewind).apply(
            self.ctx.model, {"init": st.init, "early": st.early, "rewind_step": self.rewind_step,
                             "seed": c.train.seed * 1000 + k})
        st.prune[k] = rec

    def round_info(self, k: int) -> RoundInfo:
        """What the schedule and the instruments know of round k before it trains."""
        c, st = self.cfg, self.state
        sp, per = P.sparsity(P.current_masks(self.ctx.layers))
        rec = st.prune.get(k, {})
        return self.trainer.round_info(
            k, sparsity=sp, prev_sparsity=st.prev_sparsity, prune_rate=c.prune.prune_rate,
            norm_drop=rec.get("norm_drop"), step_pruned=rec.get("step_pruned"),
            target_sparsity=P.target_sparsity(k, c.prune.prune_rate), layer_sparsity=per,
            rewind_point=rec.get("rewind_point", "-"))

    def factory_for_round(self, k: int):
        """The schedule of round k: the run's, or fine-tuning after round 0 with --rewind finetune
        (at round 0's final LR: rewind.round_schedule)."""
        r0 = self.trainer.round_info(0, sparsity=0.0, prev_sparsity=0.0, prune_rate=self.cfg.prune.prune_rate)
        return round_schedule(self.factory, self.rewind, k, r0 if k > 0 else None)

    def _persist(self, res: RoundResult) -> None:
        """round_K.pt and rounds.json for a finished round (idempotent: rewritten in full)."""
        st = self.state
        st.results = [r for r in st.results if r.round != res.round] + [res]
        st.results.sort(key=lambda r: r.round)
        row = res.row()
        if not D.is_main():
            return
        save_torch({"result": row, "info": res.info.to_dict(), "layer_sparsity": res.info.layer_sparsity,
                    "epochs": [e.to_dict() for e in res.epochs], "schedule": res.schedule,
                    "masks": P.current_masks(self.ctx.layers), "extra": res.extra},
                   self.paths.round_file(res.round), what="round file")
        faults.point("round-file", res.round)
        sizes = self._eval_sizes()  # so each accuracy's binomial uncertainty can be drawn
        save_json([{**r.row(), **sizes} for r in st.results], self.paths.rounds, what="round table")
        faults.point("rounds-json", res.round)
        self.log(format_row(row))
        note = res.schedule.get("note")
        if note:
            self.log(f"      {note}")

    def _eval_sizes(self) -> dict:
        """How many images the validation and test accuracies are measured on (all ranks together)."""
        out = {}
        for key, loader in (("n_val", self.ctx.val_loader), ("n_test", self.ctx.test_loader)):
            x = getattr(loader, "x", None)
            if x is not None:
                out[key] = int(len(x))
        return out

    def run(self):
        """Run (or resume) all rounds; return the per-round table as a DataFrame."""
        c = self.cfg
        self._check_out()
        self.ctx = build_context(c)
        self.trainer = RoundTrainer(self.ctx, c.train, c.to_dict())
        self.rewind_step = self._rewind_step()
        # rank 0 records (the all-reduced gradients); bad recorder options fail here, before the
        # run directory is claimed by its config
        recorder = self._recorder() if c.record.record and D.is_main() else None
        self._unlock = None
        try:
            self._write_config()  # takes the run directory's writer lock, held until the run ends
            return self._run(recorder)
        finally:
            unlock = getattr(self, "_unlock", None)
            if unlock is not None:
                unlock()

    def _run(self, recorder):
        import pandas as pd  # noqa: PLC0415

        c = self.cfg
        opt_state, sched_state = self._load_or_start()
        st = self.state
        saved = self._saved_rounds
        if saved is not None and c.prune.rounds > saved:
            self.log(f"extending {self.paths.root} from {saved} to {c.prune.rounds} rounds (the {st.round} finished "
                     f"rounds are kept as they are)")
        resumed = st.round > 0 or bool(st.epochs)
        callbacks = self._callbacks(recorder)
        call_all(callbacks, "on_run_start", TrainState(model=self.ctx.net, device=self.ctx.device,
                                                       config=c.to_dict(), resumed=resumed))
        note = self.schedule_note()
        if note:
            self.log(note)
        self.log(format_header())
        for r in st.results:
            self.log(format_row(r.row()))
        trained = st.round < c.prune.rounds
        while st.round < c.prune.rounds:
            k = st.round
            if st.stage == "prune":
                self._prune_and_rewind(k)
                D.broadcast_module(self.ctx.model)  # rank 0's masks and weights on every rank
                st.stage, st.epochs = "train", []
                self.save_checkpoint()
            res = self.rounds.train_round(self, self.round_info(k), self.factory_for_round(k), callbacks,
                                          done=list(st.epochs), opt_state=opt_state, sched_state=sched_state)
            opt_state = sched_state = None
            if c.train.report_best_test:
                _best_test(res, self.log)
            self._persist(res)
            D.sync_states(self._learned)
            st.round, st.stage, st.epochs = k + 1, "prune", []
            self.save_checkpoint()
        if not trained:
            self.log(f"all {c.prune.rounds} rounds of {self.paths.root} are already complete; nothing to do "
                     f"(--rounds {c.prune.rounds + 1} or more extends the run)")
        call_all(callbacks, "on_run_end", TrainState(model=self.ctx.net, device=self.ctx.device, config=c.to_dict()))
        return pd.DataFrame([r.row() for r in st.results])


def _probe_names(config: RunConfig, rounds) -> list:
    """--probes as registered names; refused where a probe could not run as asked (checked before
    anything is written)."""
    if not config.probe.probes:
        return []
    from gradscope.probes import parse_probes  # noqa: PLC0415

    names = parse_probes(config.probe.probes)
    if config.probe.probes_at != "start" and not isinstance(rounds, PlainRounds):
        raise GradscopeError(f"--probes-at {config.probe.probes_at}: the Oracle's candidates train as separate jobs, "
                             "so only --probes-at start is measured in `gradscope oracle`")
    if D.env().active:
        raise GradscopeError("--probes does not run under torchrun (synchronised BatchNorm would need every rank); "
                             "measure the probes in a single-process run")
    if config.probe.lr_range_min >= config.probe.lr_range_max:
        raise GradscopeError(f"--lr-range-min ({config.probe.lr_range_min:g}) must be below --lr-range-max "
                             f"({config.probe.lr_range_max:g})")
    return names


def probe_settings(c: RunConfig) -> dict:
    """The probes' settings from a run config (the run's momentum and weight decay for the range test)."""
    return {"lr_min": c.probe.lr_range_min, "lr_max": c.probe.lr_range_max, "steps": c.probe.lr_range_steps,
            "batches": c.probe.probe_batches, "momentum": c.train.momentum, "weight_decay": c.train.weight_decay,
            "optimizer": c.train.optimizer}


BEST_TEST_NOTE = ("--report-best-test: best_test_acc is the best test accuracy over the round's epochs, "
                  "as the released SILO code reports (resnet_20_cifar_10.py l.210-214); it selects on test "
                  "data and is biased upward: compare rounds by test_acc (last epoch; selection on validation)")


def _best_test(res: RoundResult, log) -> None:
    """The released scripts' reported number, labelled as what it is (selection on test data)."""
    tests = [(e.test_acc, e.epoch) for e in res.epochs if e.test_acc is not None]
    if tests:
        acc, ep = max(tests)
        res.extra["best_test_acc"], res.extra["best_test_epoch"] = float(acc), int(ep)
    if res.round == 0 or not tests:
        log(BEST_TEST_NOTE)


HEARTBEAT_ENV = "GRADSCOPE_HEARTBEAT_S"
HEARTBEAT_S = 30.0


def heartbeat_interval() -> float:
    """Seconds between sign-of-life lines off a terminal ($GRADSCOPE_HEARTBEAT_S, default 30)."""
    raw = os.environ.get(HEARTBEAT_ENV, "").strip()
    if not raw:
        return HEARTBEAT_S
    try:
        v = float(raw)
    except ValueError:
        raise GradscopeError(f"{HEARTBEAT_ENV} must be a number of seconds, got {raw!r}") from None
    if not v >= 0:
        raise GradscopeError(f"{HEARTBEAT_ENV} must be >= 0 seconds, got {raw!r}")
    return v


class _Heartbeat:
    """Off a terminal (no progress bars): after an epoch, or during a long one, a line when
    ``interval`` seconds have passed since the last line, so a log shows the run is alive. Short
    runs (epochs under the interval) print nothing more than the round table."""

    def __init__(self, log: Callable[[str], None], interval: float):
        self.log, self.interval = log, float(interval)
        self.last = self.t0 = time.monotonic()

    def on_round_start(self, state: TrainState) -> None:
        self.t0 = time.monotonic()

    def _due(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.interval:
            return False
        self.last = now
        return True

    def on_step_end(self, state: TrainState) -> None:
        if self._due():
            spe = max(int(state.steps_per_epoch), 1)
            self.log(f"  round {state.round} epoch {state.epoch + 1}/{state.epochs}: step "
                     f"{state.step - state.epoch * spe}/{spe} ({time.monotonic() - self.t0:.0f} s into the round)")

    def on_epoch_end(self, state: TrainState) -> None:
        if self._due():
            m = state.metrics or {}
            val = m.get("val_acc")
            acc = f", val_acc {100 * val:.2f} %" if isinstance(val, float) and val == val else ""
            self.log(f"  round {state.round} epoch {state.epoch + 1}/{state.epochs} done: train_loss "
                     f"{m.get('train_loss', float('nan')):.4f}{acc} ({time.monotonic() - self.t0:.0f} s into the round)")


def _short(p) -> str:
    s = os.fspath(p)
    return s if len(s) <= 120 else f"{s[:60]}...{s[-40:]} ({len(s)} characters)"


def _cause(e: OSError) -> str:
    from gradscope.atomic import WRITE_CAUSES  # noqa: PLC0415

    return WRITE_CAUSES.get(e.errno) or e.strerror or str(e)


def _existing_parent(p) -> Optional[str]:
    """The nearest ancestor of ``p`` that exists (None if none can be checked)."""
    q = os.path.abspath(os.fspath(p))
    while True:
        q2 = os.path.dirname(q)
        if q2 == q:
            return None
        q = q2
        try:
            if os.path.lexists(q):
                return q
        except (OSError, ValueError):
            return None


class _EarlyCapture:
    """Keeps the weights at round 0's ``rewind_step`` for late rewinding."""

    def __init__(self, run: PruningRun):
        self.run = run

    def on_step_end(self, state: TrainState) -> None:
        if state.round == 0 and state.step == self.run.rewind_step and self.run.state.early is None:
            self.run.state.early = P.plain_state(self.run.ctx.model)


class _EpochCheckpoint:
    """After every epoch: the epoch's metrics into the run state, then an atomic checkpoint."""

    def __init__(self, run: PruningRun):
        self.run = run

    def on_epoch_end(self, state: TrainState) -> None:
        self.run.state.epochs.append(EpochMetrics(**state.metrics))
        self.run.save_checkpoint(state.optimizer, state.scheduler)
