"""Oracle candidates and study configurations as Ray tasks (optional extra: ``pip install gradscope[ray]``).

``RayExecutor`` is an Oracle ``Executor``: every ``CandidateJob`` becomes one Ray task that
asks for ``num_cpus_per_job`` CPUs and ``num_gpus_per_job`` (fractional) GPUs. Tasks, not
actors or Tune trials: a candidate is a stateless, self-contained job that reads the round's
start state and writes its own result file atomically, so Ray's task retries (a killed
worker's task is run again) and a re-run of the same command (finished files are skipped)
give fault tolerance for free; Ray reuses its worker processes across tasks and rounds, so
torch is imported once per worker, not once per candidate. ``run_configs`` runs whole gradscope
commands (the predictor study's profile + Oracle per configuration) the same way.

Local by default (``ray.init()`` starts Ray on this machine); ``address`` (``--ray-address``)
joins a running cluster, whose nodes must have gradscope installed and see the run directory
on a shared file system.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from gradscope import GradscopeError
from gradscope.paths import fmt_lr

RAY_MISSING = ("Ray is not installed: `pip install 'gradscope[ray]'` (or `pip install ray`), "
               "or run the candidates without --ray")


def import_ray():
    """The ``ray`` module, or a GradscopeError saying how to install it."""
    try:
        import ray  # noqa: PLC0415
    except ImportError:
        raise GradscopeError(RAY_MISSING) from None
    return ray


def ensure_ray(address: Optional[str] = None, num_cpus: Optional[int] = None):
    """Connect to Ray once per process: a local instance (``address`` None) or a cluster."""
    ray = import_ray()
    if not ray.is_initialized():
        kw = {"include_dashboard": False, "log_to_driver": True}
        if address is None and num_cpus is not None:
            kw["num_cpus"] = num_cpus
        if address is None:
            # our own local instance: token authentication, Ray's default for a new local cluster,
            # chosen explicitly so Ray does not print its "enabled by default" notice; a user's
            # RAY_AUTH_MODE wins, and a cluster (address given) keeps its own setting
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        try:
            ray.init(address=address, **kw)
        except Exception as e:  # noqa: BLE001 - ray.init raises a bare Exception("node timed out during startup")
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise GradscopeError(f"could not start or reach {where}: {e}") from None
    return ray


def _check_fraction(name: str, v: float) -> float:
    v = float(v)
    if not v >= 0:
        raise GradscopeError(f"{name} must be >= 0, got {v}")
    if v > 1 and v != int(v):
        raise GradscopeError(f"{name} above 1 must be a whole number of GPUs, got {v}")
    return v


def _run_job(job, threads: int) -> dict:
    """Ray task body: train one candidate (skipped when its file exists) and return its result."""
    return job.run(threads)


class RayExecutor:
    """Runs an Oracle round's candidate jobs as Ray tasks (see module docstring).

    ``num_cpus_per_job``: CPUs Ray reserves per candidate, also its torch thread count.
    ``num_gpus_per_job``: GPUs per candidate; 0.25 packs four candidates on one GPU.
    ``max_retries``: how often Ray re-runs a candidate whose worker died (a Python error in
    the candidate is not retried: it is a bug or bad input and is raised).
    """

    def __init__(self, address: Optional[str] = None, num_cpus_per_job: int = 1,
                 num_gpus_per_job: float = 0.0, max_retries: int = 3):
        if int(num_cpus_per_job) != num_cpus_per_job or num_cpus_per_job < 1:
            raise GradscopeError(f"CPUs per candidate must be a positive integer, got {num_cpus_per_job}")
        import_ray()  # fail before any work when Ray is missing
        self.address = address
        self.num_cpus = int(num_cpus_per_job)
        self.num_gpus = _check_fraction("--gpus-per-candidate", num_gpus_per_job)
        self.max_retries = int(max_retries)

    def run(self, jobs, log: Callable[[str], None]) -> None:
        from gradscope.train.oracle import candidate_line, plural  # noqa: PLC0415 - oracle imports this module

        if not jobs:
            return
        jobs = [replace(j, out=os.path.abspath(j.out)) for j in jobs]  # workers may have another cwd
        ray = ensure_ray(self.address)
        task = ray.remote(_run_job).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                            max_retries=self.max_retries, retry_exceptions=False)
        gpus = f", {self.num_gpus:g} GPU" if self.num_gpus else ""
        log(f"  oracle round {jobs[0].round}: {plural(len(jobs), 'candidate')} as Ray tasks "
            f"({self.num_cpus} CPU{gpus} each; cluster: {_resources(ray)})")
        pending = {task.remote(j, self.num_cpus): j for j in jobs}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ready[0])
                r = _get(ray, ready[0], job)
                log(candidate_line(job, r))
                if not job.done:
                    raise GradscopeError(
                        f"candidate max_lr {fmt_lr(job.max_lr)} seed {job.seed} finished on a Ray worker but "
                        f"{job.path} is not visible here: --out must be on a file system shared by all Ray nodes")
        finally:
            for ref in pending:  # the driver stops (error, Ctrl-C): do not leave candidates running
                ray.cancel(ref, force=True)


def _get(ray, ref, job):
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, GradscopeError):
            raise GradscopeError(str(cause)) from None
        raise
    except ray.exceptions.WorkerCrashedError:
        raise GradscopeError(f"the Ray worker of candidate max_lr {fmt_lr(job.max_lr)} seed {job.seed} died "
                             "(and so did its retries); start the same command again to continue") from None


def _resources(ray) -> str:
    r = ray.cluster_resources()
    gpus = f", {r['GPU']:g} GPUs" if r.get("GPU") else ""
    return f"{r.get('CPU', 0):g} CPUs{gpus}"


# ----------------------------------------------------------------------------- configurations
@dataclass
class ConfigResult:
    """How one ``gradscope`` command of ``run_configs`` ended."""

    args: list
    returncode: int
    seconds: float
    log: str  # path of its combined stdout/stderr

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _run_command(args: list, log_path: str, env: dict) -> tuple[int, float]:
    """Ray task body: ``python -m gradscope ARGS`` in a child process, output to ``log_path``."""
    t0 = time.perf_counter()
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as f:
        f.write(f"$ gradscope {' '.join(args)}\n".encode())
        f.flush()
        rc = subprocess.run([sys.executable, "-m", "gradscope", *args], stdout=f, stderr=subprocess.STDOUT,
                            env={**os.environ, **env}).returncode
    return rc, time.perf_counter() - t0


def run_configs(commands: Sequence[Sequence[str]], log_dir, *, address: Optional[str] = None,
                num_cpus: int = 1, num_gpus: float = 0.0, max_retries: int = 3, check: bool = True,
                log: Callable[[str], None] = print) -> list[ConfigResult]:
    """Run each gradscope command (an argument list, e.g. ``["profile", "--out", "runs/a", ...]``)
    as a Ray task in its own process; its output goes to ``log_dir/NNN.log``.

    Every gradscope command resumes from its ``--out``, so running the same list again
    finishes what a killed worker or driver left (a finished run is not trained again).
    ``check``: raise a GradscopeError naming the failed commands after all have ended.
    """
    commands = [[str(a) for a in c] for c in commands]
    if not commands:
        return []
    ray = ensure_ray(address)
    task = ray.remote(_run_command).options(num_cpus=int(num_cpus), num_gpus=_check_fraction("num_gpus", num_gpus),
                                            max_retries=int(max_retries))
    env = {"OMP_NUM_THREADS": str(int(num_cpus))}
    logs = [str(Path(log_dir) / f"{i:03d}.log") for i in range(len(commands))]
    refs = [task.remote(c, p, env) for c, p in zip(commands, logs)]
    log(f"{len(commands)} gradscope commands as Ray tasks ({int(num_cpus)} CPU each; cluster: {_resources(ray)})")
    out: list[Optional[ConfigResult]] = [None] * len(refs)
    index = {r: i for i, r in enumerate(refs)}
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            i = index[ready[0]]
            rc, secs = ray.get(ready[0])
            out[i] = ConfigResult(commands[i], rc, secs, logs[i])
            log(f"  [{sum(o is not None for o in out)}/{len(refs)}] exit {rc} after {secs:.1f} s: "
                f"gradscope {' '.join(commands[i])}")
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    failed = [o for o in out if not o.ok]
    if check and failed:
        raise GradscopeError(f"{len(failed)} of {len(out)} commands failed; see "
                             + ", ".join(o.log for o in failed))
    return out
