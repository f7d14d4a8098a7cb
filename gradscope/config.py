"""Typed configuration: one dataclass per concern, composed into ``RunConfig``.

The dataclasses are the single source of truth: the CLI flags are generated from their
fields (name, type, default, help from ``metadata``), and every run saves ``asdict(config)``
next to its results (checkpoint and HDF5), as OpenLTH does with its hparams.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields
from typing import Optional

from gradscope import GradscopeError


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class DataConfig:
    dataset: str = _f("digits", "dataset name (see `gradscope list`)")
    data_root: Optional[str] = _f(None, "folder or archive with the dataset's files")
    val_fraction: float = _f(0.1, "seeded fraction of train held out for validation")
    train_subset: Optional[int] = _f(None, "use a seeded subset of N training images")
    test_subset: Optional[int] = _f(None, "use a seeded subset of N test images")
    batch_size: int = _f(128, "minibatch size")
    augment: bool = _f(True, "standard augmentation (crop+flip) where the dataset has one")
    cache_dir: str = _f("data/cache", "where decoded uint8 tensor caches are kept")
    download: bool = _f(False, "allow torchvision to download the dataset")


@dataclass
class ModelConfig:
    model: str = _f("small_cnn", "model name (see `gradscope list`)")


@dataclass
class PruneConfig:
    rounds: int = _f(5, "pruning rounds; round 0 trains the dense net")
    prune_rate: float = _f(0.2, "fraction of the remaining weights pruned per round")
    prune_method: str = _f("global", "global | layerwise | random")
    prune_first: bool = _f(True, "prune the first conv/linear layer")
    prune_last: bool = _f(True, "prune the last (classifier) layer")
    rewind: str = _f("init", "init | early | lr | finetune")
    rewind_step: Optional[int] = _f(None, "for --rewind early: optimizer step of round 0 to rewind to (default: one epoch)")


@dataclass
class TrainConfig:
    epochs: int = _f(2, "epochs per round")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(5e-4, "SGD weight decay")
    seed: int = _f(0, "seed for init, data order, augmentation and pruning")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    amp: bool = _f(True, "bf16 autocast on CUDA (ignored on CPU)")
    channels_last: bool = _f(True, "channels_last memory format for conv nets")
    compile: bool = _f(False, "torch.compile the model")
    threads: Optional[int] = _f(None, "torch CPU threads (default: torch's choice)")
    progress: bool = _f(True, "show tqdm progress bars")


@dataclass
class ScheduleConfig:
    schedule: str = _f("silo", "silo | silo-auto | lth | lrr | clr | cosine | finetune | allr | constant")
    schedule_file: Optional[str] = _f(None, "JSON/YAML file of schedule parameters (flags below override it)")
    max_lr: Optional[float] = _f(None, "peak LR of the fixed-peak schedules")
    lo: Optional[float] = _f(None, "SILO: lower bound of max_lr")
    hi: Optional[float] = _f(None, "SILO: upper bound of max_lr")
    beta: Optional[float] = _f(None, "SILO: steepness of the S-curve")
    midpoint: Optional[float] = _f(None, "SILO: pruned fraction at the S-curve's midpoint")
    lag: Optional[int] = _f(None, "SILO: rounds of lag in the pruned fraction")
    shape: Optional[str] = _f(None, "within-round shape: warmup-step | one-cycle | triangular | cosine | linear | constant")
    preset: Optional[str] = _f(None, "SILO preset: resnet20 | vgg19")
    silo_p: Optional[float] = _f(None, "SILO: planned prune rate p of the S-curve's x (default: the run's prune rate; presets: 0.2)")
    measured_sparsity: Optional[bool] = _f(None, "SILO: use the measured sparsity instead of the planned 1-(1-p)^(k-lag)")


@dataclass
class RecordConfig:
    record: bool = _f(False, "attach the GradientRecorder (on for `gradscope profile`)")
    window: Optional[int] = _f(None, "record window in steps (default: one epoch)")
    bins: int = _f(201, "histogram bins (odd for the default log-spaced edges)")
    hist_range: Optional[float] = _f(None, "linear histogram edges over [-R, R] (default: fixed symmetric log-spaced magnitude edges hist_min..hist_max)")
    hist_min: float = _f(1e-10, "smallest |gradient| edge of the log-spaced histogram edges")
    hist_max: float = _f(10.0, "largest |gradient| edge of the log-spaced histogram edges")
    layers: str = _f("relu", "relu | all: which conv/linear layers to record")
    include: Optional[str] = _f(None, "regex of layer names to include")
    exclude: Optional[str] = _f(None, "regex of layer names to exclude")
    sample_k: int = _f(0, "raw gradient values sampled per layer and window (0 = none)")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    out: str = "runs/default"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        kw = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            sub = _SECTIONS.get(f.name)
            kw[f.name] = sub(**_known(sub, d[f.name])) if sub else d[f.name]
        return cls(**kw)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "prune": PruneConfig,
             "train": TrainConfig, "schedule": ScheduleConfig, "record": RecordConfig}


def _known(cls, d: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


# ----------------------------------------------------------------------------- CLI flags
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


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, defaults: Optional[dict] = None) -> None:
    """Add one ``--flag`` per field of dataclass ``cls`` (underscores become dashes).

    Booleans take ``--flag`` / ``--no-flag``. ``defaults`` overrides field defaults.
    """
    group = parser.add_argument_group(cls.__name__.replace("Config", "").lower())
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        name = "--" + f.name.replace("_", "-")
        default = (defaults or {}).get(f.name, f.default)
        help_ = f.metadata.get("help", "")
        tp = _base_type(hints[f.name])
        if tp is bool:
            group.add_argument(name, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=default, help=help_)
        else:
            group.add_argument(name, dest=f.name, type=tp, default=default,
                               help=f"{help_} (default: {default})", metavar=tp.__name__.upper())


def dataclass_from_args(cls, ns: argparse.Namespace):
    return cls(**{f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)})


def add_run_arguments(parser: argparse.ArgumentParser, defaults: Optional[dict] = None) -> None:
    """All RunConfig flags, flat (field names are unique across sections)."""
    for cls in _SECTIONS.values():
        add_dataclass_arguments(parser, cls, defaults)
    parser.add_argument("--out", default=(defaults or {}).get("out", "runs/default"),
                        help="run directory (created; an existing run there is resumed)")


def run_config_from_args(ns: argparse.Namespace) -> RunConfig:
    kw = {name: dataclass_from_args(cls, ns) for name, cls in _SECTIONS.items()}
    return RunConfig(**kw, out=ns.out)


def _check_unique() -> None:
    seen: dict[str, str] = {}
    for sec, cls in _SECTIONS.items():
        for f in fields(cls):
            if f.name in seen:
                raise GradscopeError(f"config field {f.name!r} in both {seen[f.name]} and {sec}")
            seen[f.name] = sec


_check_unique()
