"""Typed configuration: one dataclass per concern, composed into ``RunConfig``.

The dataclasses are the single source of truth: the CLI flags are generated from their
fields (name, type, default, help and checks from ``metadata``), and every run saves
``asdict(config)`` next to its results (checkpoint and HDF5), as OpenLTH does with its
hparams. ``RunConfig.validate()`` applies the same checks to a config built in Python.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Sequence

from gradscope import GradscopeError


# Sane ranges (issue 22): beyond them a value is a typo that would overflow (float32 learning rates,
# 64-bit seeds), crash (torch.set_num_threads) or silently do nothing (a prune rate that prunes nothing).
SEED_MAX = 2 ** 32 - 1  # numpy's and most seeders' range
THREADS_MAX = 1024
LR_MIN, LR_MAX = 1e-12, 1e3  # a peak LR outside: a typo (float32 underflows / every step diverges)
LAG_MAX = 10_000  # SILO lag in rounds
NAME_MAX = 255  # bytes in one path component (ext4, xfs, btrfs, APFS, NTFS)


def _f(default, help: str, **meta):
    """A config field. meta: ge/gt/le/lt (numeric bounds), choices, flag (CLI name), aliases."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class DataConfig:
    dataset: str = _f("digits", "dataset name (see `gradscope list`)")
    data_root: Optional[str] = _f(None, "folder or archive with the dataset's files")
    val_fraction: float = _f(0.1, "fraction held out for validation: of the train split, or of "
                                  "--train-subset when given (seeded, stratified)", ge=0.0, lt=1.0)
    val_size: Optional[int] = _f(None, "validation images (overrides --val-fraction; size it for the "
                                       "effect you want to see: the standard error is about sqrt(p(1-p)/N))", gt=0)
    train_subset: Optional[int] = _f(None, "use a seeded subset of N training images", gt=0)
    test_subset: Optional[int] = _f(None, "use a seeded subset of N test images", gt=0)
    batch_size: int = _f(128, "minibatch size", gt=0)
    augment: bool = _f(True, "standard augmentation (crop+flip) where the dataset has one")
    cache_dir: Optional[str] = _f(None, "where decoded datasets are cached (default: $GRADSCOPE_CACHE, else "
                                        "$XDG_CACHE_HOME/gradscope or ~/.cache/gradscope)")
    download: bool = _f(False, "allow torchvision to download the dataset")
    released_split: bool = _f(False, "merge the train and test sets and re-split them 36000/12000/12000 as the "
                                     "released SILO code (prints a note: the original test images are trained on)")


@dataclass
class ModelConfig:
    model: str = _f("small_cnn", "model name (see `gradscope list`) or module:callable, "
                                 "called with (input_shape, num_classes)")


@dataclass
class PruneConfig:
    rounds: int = _f(5, "pruning rounds; round 0 trains the dense net", gt=0)
    prune_rate: float = _f(0.2, "fraction of the remaining weights pruned per round", ge=1e-6, lt=1.0)
    prune_method: str = _f("global", "pruning strategy (see `gradscope list`)")
    prune_first: bool = _f(True, "prune the first conv/linear layer")
    prune_last: bool = _f(True, "prune the last (classifier) layer")
    prune_bn: bool = _f(False, "prune BatchNorm weights (gamma) too, in the same threshold (the released SILO code)")
    recipe: Optional[str] = _f(None, "a named recipe that sets other flags' defaults (flags given still win): "
                                     "silo-code | silo-code-vgg19 (docs/recipe-silo-code.md)")
    rewind: Optional[str] = _f(None, "weight rewinding: init | early | lr | finetune | reinit "
                                     "(default: what the schedule's recipe implies: lr for lrr and allr, "
                                     "finetune for finetune, else init)")
    rewind_step: Optional[int] = _f(None, "for --rewind early: optimizer step of round 0 to rewind to "
                                          "(default: one epoch)", ge=0)


@dataclass
class TrainConfig:
    epochs: int = _f(2, "epochs per round", gt=0)
    optimizer: str = _f("sgd", "sgd | adamw (max_lr is AdamW's peak lr then; see docs/method.md)",
                        choices=("sgd", "adamw"))
    momentum: float = _f(0.9, "SGD momentum (AdamW: beta1)", ge=0.0, lt=1.0)
    weight_decay: float = _f(5e-4, "weight decay (SGD: L2; AdamW: decoupled)", ge=0.0, le=1.0)
    seed: int = _f(0, "seed for init, data order, augmentation and pruning", ge=0, le=SEED_MAX)
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    amp: bool = _f(True, "bf16 autocast on CUDA (ignored on CPU)")
    channels_last: bool = _f(True, "channels_last memory format for conv nets")
    compile: bool = _f(False, "torch.compile the model")
    threads: Optional[int] = _f(None, "torch CPU threads (default: torch's choice)", gt=0, le=THREADS_MAX)
    progress: Optional[bool] = _f(None, "tqdm progress bars (default: on when stderr is a terminal)")
    test_every: str = _f("round", "evaluate the test set every 'epoch' or only at the end of each "
                                  "'round' (validation is evaluated every epoch)", choices=("round", "epoch"))
    report_best_test: bool = _f(False, "also report each round's best test accuracy over its epochs, as the "
                                       "released SILO code does (selection on test data: biased upward; prints so)")


@dataclass
class ScheduleConfig:
    schedule: str = _f("silo", "LR schedule (see `gradscope list`): silo | silo-auto | lth | lrr | slr | clr | "
                               "cosine | finetune | allr | constant")
    schedule_file: Optional[str] = _f(None, "JSON/YAML file of schedule parameters (flags below override it)")
    max_lr: Optional[float] = _f(None, "peak LR of the fixed-peak schedules", ge=LR_MIN, le=LR_MAX)
    lo: Optional[float] = _f(None, "SILO: lower bound of max_lr", ge=LR_MIN, le=LR_MAX)
    hi: Optional[float] = _f(None, "SILO: upper bound of max_lr", ge=LR_MIN, le=LR_MAX)
    beta: Optional[float] = _f(None, "SILO: steepness of the S-curve", gt=0.0)
    midpoint: Optional[float] = _f(None, "SILO: pruned fraction at the S-curve's midpoint", gt=0.0, lt=1.0)
    lag: Optional[int] = _f(None, "SILO: rounds of lag in the pruned fraction", ge=0, le=LAG_MAX)
    shape: Optional[str] = _f(None, "within-round shape: warmup-step | one-cycle | triangular | cosine | linear | constant | "
                                    "bimp-linear | silo-released")
    preset: Optional[str] = _f(None, "SILO preset: resnet20 | vgg19 | released-resnet20 | released-vgg19")
    p: Optional[float] = _f(None, "SILO: prune rate p of the S-curve's planned x = 1-(1-p)^(k-lag) "
                                  "(default: the run's prune rate; presets: 0.2)", gt=0.0, lt=1.0,
                            flag="--silo-p")
    x: Optional[str] = _f(None, "SILO: the S-curve's x: 'planned' 1-(1-p)^(k-lag) or 'measured' sparsity "
                                "(default: planned)", choices=("planned", "measured"))
    orig_epochs: Optional[int] = _f(None, "ALLR and LRR: epochs of the original training T_orig (default: "
                                          "the round's epochs: ALLR's peak is then max_lr, LRR re-runs the whole schedule)", gt=0)
    predictor: Optional[str] = _f(None, "silo-auto: calibrate from this probe's per-round values (one of --probes: "
                                        "lr-range[:RULE], sharpness[:bn-blocks], bn-norm, noise-scale, norm-drop, eps-opt, lr-free) instead of the "
                                        "recorded gradients; no recorder needed; keeps the fixed peak --lo until the "
                                        "gate says supported (default: none, the gradients)")


@dataclass
class RecordConfig:
    record: bool = _f(False, "attach the GradientRecorder (on for `gradscope profile`)")
    record_preset: Optional[str] = _f(None, "recorder cost tier: economy (every 10th step, survivors) | default (every "
                                     "step, survivors) | full (+ relative view, fixed population, 256 samples)",
                                      choices=("economy", "default", "full"))
    views: Optional[str] = _f(None, "comma-separated views to record: survivors, relative, fixed-population "
                                    "(all is always derived) (default: the preset's)")
    every: Optional[int] = _f(None, "record every k-th step (default: the preset's)", gt=0)
    window: Optional[int] = _f(None, "record window in steps (default: one epoch)", gt=0)
    bins: int = _f(201, "histogram bins (odd for the default log-spaced edges)", gt=0)
    hist_range: Optional[float] = _f(None, "linear histogram edges over [-R, R] (default: fixed symmetric "
                                           "log-spaced magnitude edges hist_min..hist_max)", gt=0.0)
    hist_min: float = _f(1e-10, "smallest |gradient| edge of the log-spaced histogram edges", gt=0.0)
    hist_max: float = _f(10.0, "largest |gradient| edge of the log-spaced histogram edges", gt=0.0)
    layers: str = _f("relu", "which conv/linear layers to record: relu | gelu | silu | ... (the layers "
                             "feeding that activation; comma-separated for several) | all")
    include: Optional[str] = _f(None, "regex of layer names to include")
    exclude: Optional[str] = _f(None, "regex of layer names to exclude")
    sample_k: Optional[int] = _f(None, "raw gradient values sampled per layer and window (0 = none; "
                                       "default: the preset's)", ge=0)


@dataclass
class ProbeConfig:
    probes: Optional[str] = _f(None, "probes measured on each round's network (RUN/probes.json): comma-separated "
                                     "lr-range, sharpness, bn-norm, noise-scale, norm-drop, eps-opt, lr-free, or a preset: cheap "
                                     "(bn-norm, norm-drop, noise-scale) | all")
    probes_at: str = _f("start", "when the probes run: at each round's 'start' (pruned, rewound), after its first "
                                 "epoch ('epoch1'; not with oracle), or 'both'", choices=("start", "epoch1", "both"))
    probe_repeats: int = _f(3, "repeats of each random probe with different probe seeds (batches): their CV is "
                               "recorded as the probe's measurement noise", gt=0)
    probe_batches: Optional[int] = _f(None, "training batches per sharpness / noise-scale measurement "
                                            "(default: 4 / 8)", gt=0)
    lr_range_min: float = _f(1e-5, "lr-range: first LR of the range test", gt=0.0)
    lr_range_max: float = _f(10.0, "lr-range: last LR of the range test", gt=0.0)
    lr_range_steps: int = _f(100, "lr-range: steps of the range test (exponentially growing LR)", ge=10)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    out: str = "runs/default"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """Rebuild a config; unknown keys (from other versions) are dropped, missing ones default."""
        kw = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            sub = SECTIONS.get(f.name)
            kw[f.name] = sub(**_known(sub, d[f.name])) if sub else d[f.name]
        return cls(**kw)

    def validate(self) -> "RunConfig":
        """Apply every field's checks (the ones the CLI applies to its flags); return self."""
        for sec, cls in SECTIONS.items():
            obj = getattr(self, sec)
            for f in fields(cls):
                check_value(f, getattr(obj, f.name))
        if not isinstance(self.out, str) or not self.out.strip():
            raise GradscopeError("--out must name a run directory, got an empty string")
        long = [part for part in self.out.split("/") if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX]
        if long:
            raise GradscopeError(f"--out has a name too long: {len(long[0])} characters ({long[0][:20]}...); file systems "
                                 f"allow at most {NAME_MAX} bytes per name")
        if self.schedule.predictor is not None and self.schedule.schedule != "silo-auto":
            raise GradscopeError(f"--predictor {self.schedule.predictor} sets how silo-auto calibrates itself; it needs "
                                 f"--schedule silo-auto (the schedule is {self.schedule.schedule!r}); to calibrate a "
                                 "finished run from a probe use `gradscope calibrate RUN --predictor NAME`")
        if not self.record.record:
            given = [flag_name(f) for f in fields(RecordConfig)
                     if f.name != "record" and getattr(self.record, f.name) != f.default]
            if given:
                raise GradscopeError(f"{', '.join(given)} {'is a recording option' if len(given) == 1 else 'are recording options'}"
                                     " but the run records nothing (--no-record); pass --record (or use "
                                     "`gradscope profile`), or drop them")
        return self


SECTIONS = {"data": DataConfig, "model": ModelConfig, "prune": PruneConfig,
            "train": TrainConfig, "schedule": ScheduleConfig, "record": RecordConfig, "probe": ProbeConfig}
_SECTIONS = SECTIONS  # older name


def _known(cls, d: dict) -> dict:
    names = {f.name for f in fields(cls)}
    legacy = {"silo_p": "p"}  # renamed fields
    out = {legacy.get(k, k): v for k, v in d.items() if legacy.get(k, k) in names}
    if d.get("measured_sparsity") and "x" in names and out.get("x") is None:
        out["x"] = "measured"
    return out


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


# ----------------------------------------------------------------------------- checks
def check_value(f: dataclasses.Field, v: Any) -> Any:
    """``v`` against field ``f``'s metadata (bounds, choices); a GradscopeError naming the flag."""
    if v is None:
        return v
    m, name = f.metadata, flag_name(f)
    if "choices" in m and v not in m["choices"]:
        raise GradscopeError(f"{name} must be one of {', '.join(map(str, m['choices']))}, got {v!r}")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if isinstance(v, float) and not math.isfinite(v):
            raise GradscopeError(f"{name} must be a finite number, got {v!r}")
        for key, ok, word in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                              ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
            if key in m and not ok(v, m[key]):
                raise GradscopeError(f"{name} must be {word} {m[key]:g}, got {v!r}")
    return v


def _base_type(tp) -> type:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _str2bool(s: str) -> bool:
    v = s.lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _arg_type(f: dataclasses.Field, tp: type):
    """argparse ``type``: parse, then apply the field's checks (errors become argparse errors)."""
    def parse(s: str):
        try:
            v = tp(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if tp is int else 'a number' if tp is float else tp.__name__}, got {s!r}") from None
        try:
            return check_value(f, v)
        except GradscopeError as e:  # argparse prefixes "argument --flag: " itself
            msg, prefix = str(e), flag_name(f) + " "
            raise argparse.ArgumentTypeError(msg[len(prefix):] if msg.startswith(prefix) else msg) from None
    parse.__name__ = tp.__name__
    return parse


def _help(f: dataclasses.Field, default: Any) -> str:
    h = f.metadata.get("help", "")
    if "(default:" in h:
        return h
    shown = {True: "on", False: "off", None: "none"}.get(default, default) if not isinstance(default, (int, float)) \
        or isinstance(default, bool) else default
    return f"{h} (default: {shown})"


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, defaults: Optional[dict] = None,
                            hide: Sequence[str] = ()) -> None:
    """Add one ``--flag`` per field of dataclass ``cls`` (underscores become dashes).

    Booleans take ``--flag`` / ``--no-flag``. ``defaults`` overrides field defaults; fields in
    ``hide`` get no flag (their value comes from ``defaults`` or the field's default).
    """
    group = parser.add_argument_group(cls.__name__.replace("Config", "").lower())
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        default = (defaults or {}).get(f.name, f.default)
        if f.name in hide:
            parser.set_defaults(**{f.name: default})
            continue
        tp = _base_type(hints[f.name])
        names = [flag_name(f), *f.metadata.get("aliases", ())]
        if tp is bool:
            group.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=default, help=_help(f, default))
        else:
            kw: dict[str, Any] = {"metavar": "|".join(f.metadata["choices"]) if "choices" in f.metadata
                                  else tp.__name__.upper()}
            group.add_argument(*names, dest=f.name, type=_arg_type(f, tp), default=default,
                               help=_help(f, default), **kw)


def dataclass_from_args(cls, ns: argparse.Namespace):
    return cls(**{f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)})


def add_run_arguments(parser: argparse.ArgumentParser, defaults: Optional[dict] = None,
                      hide: Sequence[str] = ()) -> None:
    """All RunConfig flags, flat (field names are unique across sections)."""
    for cls in SECTIONS.values():
        add_dataclass_arguments(parser, cls, defaults, hide)
    parser.add_argument("--out", default=(defaults or {}).get("out", "runs/default"),
                        help="run directory (created; an existing run there is resumed) "
                             f"(default: {(defaults or {}).get('out', 'runs/default')})")


def run_config_from_args(ns: argparse.Namespace) -> RunConfig:
    kw = {name: dataclass_from_args(cls, ns) for name, cls in SECTIONS.items()}
    return RunConfig(**kw, out=ns.out)


def _check_unique() -> None:
    seen: dict[str, str] = {}
    for sec, cls in SECTIONS.items():
        for f in fields(cls):
            if f.name in seen:
                raise AssertionError(f"config field {f.name!r} in both {seen[f.name]} and {sec}")
            seen[f.name] = sec


_check_unique()
