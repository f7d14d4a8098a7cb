"""One run on several processes (``torchrun --nproc_per_node N -m gradscope prune ...``): DDP.

Everything here is a no-op in a single process, so the trainer calls it unconditionally.
Under torchrun (``WORLD_SIZE`` > 1 in the environment) ``setup`` joins the process group
(NCCL on CUDA, gloo on CPU) and gives each rank its device; ``wrap`` makes the model
DistributedDataParallel. Conventions:

- ``--batch-size`` is the global batch: each rank trains on a disjoint 1/N of every batch
  (``BatchLoader(rank=, world_size=)``), so 1 process or N train the same model with the
  same steps per epoch and the same learning-rate schedule.
- BatchNorm is synchronised (statistics of the global batch): torch's SyncBatchNorm on
  CUDA, ``GlobalBatchNorm`` (all-reduce of sums, differentiable) on CPU where torch's is
  GPU-only; so a DDP run matches a single-process run up to float rounding.
- Masks are buffers that DDP does not broadcast per step (``no_buffer_sync``): every
  rank prunes the same identical weights, and rank 0's model is broadcast after each
  pruning step, so masks are identical on every rank by construction.
- Only rank 0 writes files (checkpoints, round files, run.h5) and prints; every rank reads
  the checkpoint on resume. ``.grad`` after ``backward()`` is the all-reduced gradient, so
  the recorder (rank 0, ``on_after_backward``) reads what a single process would.
"""
from __future__ import annotations

import atexit
import os
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from gradscope import GradscopeError


@dataclass(frozen=True)
class DistEnv:
    """This process's place: ``rank`` of ``world_size`` (1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env() -> DistEnv:
    """The torchrun environment variables of this process (single process when absent)."""
    try:
        return DistEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                       int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise GradscopeError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun)") from None


def is_main() -> bool:
    """True on rank 0 and in a single process: the process that writes and prints."""
    return env().is_main


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def setup(device: torch.device) -> tuple[DistEnv, torch.device]:
    """Join torchrun's process group (once) and return this rank's device (``cuda:LOCAL_RANK``
    on CUDA); a single process gets ``device`` back unchanged."""
    e = env()
    if not e.active:
        return e, device
    if device.type == "cuda":
        if device.index is not None and device.index != e.local_rank:
            raise GradscopeError(f"--device {device} under torchrun: give --device cuda (each rank uses "
                                 "cuda:LOCAL_RANK)")
        device = torch.device("cuda", e.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
        atexit.register(teardown)
    return e, device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


# ----------------------------------------------------------------------------- model
class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all ranks for CPU (gloo) DDP, where torch's
    SyncBatchNorm is GPU-only: per channel, the sums of x and x² and the count are all-reduced
    (differentiably), so statistics, outputs and gradients equal a single process's."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # noqa: PLC0415

        dims = [0] + list(range(2, x.dim()))
        xd = x.double()  # float64 sums: E[x^2] - E[x]^2 without cancellation
        local = torch.cat([xd.sum(dims), (xd * xd).sum(dims),
                           torch.full((1,), x.numel() / x.shape[1], dtype=torch.float64, device=x.device)])
        with warnings.catch_warnings():
            # deprecated in favour of a private module (_functional_collectives) without this op's
            # autograd: we keep the public differentiable op and its FutureWarning out of every rank's log
            warnings.filterwarnings("ignore", message=r".*distributed\.nn\.functional\.all_reduce is deprecated",
                                    category=FutureWarning)
            tot = all_reduce(local)
        c = x.shape[1]
        n = tot[-1]
        mean64 = tot[:c] / n
        mean, var = mean64.float(), (tot[c:2 * c] / n - mean64 * mean64).clamp_min(0).float()
        xf = x.float()
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * float(n / (n - 1)), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers as synchronised ones (SyncBatchNorm on CUDA, GlobalBatchNorm on CPU)
    when running under torchrun; the model unchanged otherwise. State-dict keys are kept."""
    if not env().active:
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def convert(m: nn.Module) -> nn.Module:
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, GlobalBatchNorm):
            g = GlobalBatchNorm(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            g.load_state_dict(m.state_dict())
            g.train(m.training)
            return g
        for name, child in m.named_children():
            setattr(m, name, convert(child))
        return m

    return convert(model)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` as DistributedDataParallel under torchrun (parameters broadcast from rank 0);
    itself otherwise. Buffers (masks, BN statistics) are not broadcast per step: see module doc."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415

    # channels_last weights with a size-1 dim (a 1-channel input conv) have ambiguous strides: harmless
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, **no_buffer_sync(DDP))


def no_buffer_sync(ddp_cls) -> dict:
    """DDP's keyword for "do not broadcast buffers every forward": ``forward_sync_buffers=False``
    where torch has it (2.13+, where ``broadcast_buffers`` warns that it is deprecated; buffers are
    then synced once at init, which changes nothing here: rank 0's model was just broadcast),
    else ``broadcast_buffers=False``."""
    import inspect  # noqa: PLC0415

    params = inspect.signature(ddp_cls.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def broadcast_module(model: nn.Module) -> None:
    """Overwrite every rank's parameters and buffers (masks included) with rank 0's."""
    if not active():
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


# ----------------------------------------------------------------------------- values
def all_reduce_sum(*values: Any) -> list:
    """Sum numbers / tensors over ranks (one collective); returns them as floats (the inputs
    unchanged in a single process)."""
    if not active():
        return [float(v) for v in values]
    dev = next((v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu"))
    if dist.get_backend() == "nccl":
        dev = torch.device("cuda", torch.cuda.current_device())
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64).to(dev).reshape(()) for v in values])
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def average(value: float) -> float:
    """The mean of ``value`` over ranks (e.g. the train loss: every rank sees as many examples)."""
    if not active():
        return value
    return all_reduce_sum(value)[0] / dist.get_world_size()


def merge_accuracy(acc: float, n: int) -> float:
    """Accuracy over all ranks' parts of an evaluation set, from this rank's ``acc`` on ``n`` examples."""
    if not active():
        return acc
    correct, total = all_reduce_sum(round(acc * n), n)
    return correct / max(total, 1)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_states(stateful: Sequence) -> None:
    """Load rank 0's ``state_dict()`` of each object into the other ranks' copies (for
    callbacks that learn from files only rank 0 writes, e.g. silo-auto's calibration)."""
    if not active() or not stateful:
        return
    states = broadcast_object([s.state_dict() for s in stateful] if is_main() else None)
    if not is_main():
        for s, d in zip(stateful, states):
            s.load_state_dict(d)


def main_only(fn):
    """Decorator: run ``fn`` on rank 0 only (returns None elsewhere)."""
    def wrapper(*a, **kw):
        return fn(*a, **kw) if is_main() else None
    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


def check_batch(batch_size: int, n_train: int) -> Optional[str]:
    """Why a global batch does not split evenly over the ranks (None when it does)."""
    e = env()
    if not e.active:
        return None
    if batch_size % e.world_size:
        return (f"--batch-size {batch_size} (the global batch) must be divisible by the number of "
                f"processes ({e.world_size})")
    if n_train < batch_size:
        return f"under torchrun the training set ({n_train}) must hold at least one global batch ({batch_size})"
    return None
