"""Who am I in the job: the distributed context, built from the launcher's environment.

speechbs runs as one process per device. Three ways to start it:

- ``speechbs ...``: a plain single process; no process group is created.
- ``torchrun ... -m speechbs ...``: torchrun sets RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR and MASTER_PORT for every process.
- ``srun python -m speechbs ...`` under SLURM, one task per GPU: the rank, world
  size and local rank come from SLURM_PROCID, SLURM_STEP_NUM_TASKS and
  SLURM_LOCALID; MASTER_ADDR (and optionally MASTER_PORT) must be exported by
  the batch script (recipes/launch/slurm.sbatch shows how).

The backend is NCCL on CUDA and gloo on CPU. Everything here is a no-op in a
single process, so callers never branch on the world size.

A collective waits at most ``timeout_s`` (``train.collective_timeout_s``) for the
other ranks. Under gloo the rank that gives up raises; :meth:`DistContext.collective`
turns that into a :class:`CollectiveError` naming this rank, what the training was
doing (step, operation) and the ranks that never arrived. Under NCCL the watchdog
aborts the process after the same timeout, with a message naming the collective's
sequence number.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import random
import re
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from speechbs import seeds
from speechbs.errors import ConfigError, SpeechbsError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_MASTER_PORT = 29500
"""The port torchrun uses when none is given; also the default for ``srun`` launches."""
ABSENT_GRACE_S = 5.0
"""After a failed collective, how long a rank waits for the others to report the same failure
before it names the ranks that did not (those that stalled or died), s."""


class CollectiveError(SpeechbsError):
    """A collective failed on this rank: a peer did not arrive within the timeout, or its connection dropped."""

    def __init__(self, rank: int, world_size: int, what: str, elapsed_s: float, timeout_s: float,
                 detail: str, absent: list[int] | None) -> None:
        super().__init__(what)
        self.rank, self.world_size, self.elapsed_s, self.timeout_s = rank, world_size, elapsed_s, timeout_s
        self.where = [what]
        """What the job was doing, innermost first (an operation, then its step)."""
        self.detail, self.absent = detail, absent

    def __str__(self) -> str:
        timed_out = "timed out" in self.detail.lower()
        head = (f"rank {self.rank} of {self.world_size} gave up after {self.elapsed_s:.1f} s waiting in "
                if timed_out else f"rank {self.rank} of {self.world_size} lost a peer after {self.elapsed_s:.1f} s in ")
        if self.absent:
            who = (f"rank{'s' if len(self.absent) > 1 else ''} {', '.join(map(str, self.absent))} never arrived "
                   f"(stalled or died: see {'their' if len(self.absent) > 1 else 'its'} log)")
        else:
            who = "another rank stalled or died (see the other ranks' logs)"
        limit = f"; train.collective_timeout_s = {self.timeout_s:g} s bounds the wait" if timed_out else ""
        return f"{head}{', in '.join(self.where)}: {who}{limit} [{self.detail}]"


@dataclass(frozen=True)
class LaunchEnv:
    """What the launcher told this process (before any process group exists)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    launcher: str = "single"
    """``single``, ``torchrun`` or ``slurm``."""


@dataclass(frozen=True)
class DistContext:
    """Rank, world size and device of this process, and the collectives the trainer needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    """``nccl``, ``gloo``, or None for a single process (no process group)."""
    collective_timeout_s: float = 1800.0
    """How long a collective waits for the other ranks, s (the process group's timeout)."""

    @property
    def is_main(self) -> bool:
        """True on the process that logs, writes checkpoints and prints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks, in place; returns it. A no-op in one process."""
        if self.is_distributed:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def all_reduce_sums(self, sums: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
        """Each named value summed over all ranks, in one float64 all-reduce: the reduction of every
        count and loss sum (the step engine's, and each task's validation).

        Every rank must pass the same names in the same order (the values are packed by position).
        The result is read on the host: one sync, so call it once per step or validation pass.
        """
        if not sums:
            return {}
        packed = torch.stack([torch.as_tensor(value, dtype=torch.float64, device=self.device)
                              for value in sums.values()])
        self.all_reduce_sum(packed)
        return dict(zip(sums, packed.tolist()))

    def barrier(self) -> None:
        if self.is_distributed:
            torch_dist.barrier()

    @contextlib.contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Name what the collectives inside the block are for (``step 5``, ``the all-reduce of ...``).

        A gloo timeout or a dropped connection inside becomes a :class:`CollectiveError` naming this
        rank and ``what``; an enclosing block adds its own name (the operation, then its step).
        """
        start = time.monotonic()
        try:
            yield
        except CollectiveError as exc:
            exc.where.append(what)
            raise
        except RuntimeError as exc:  # gloo raises RuntimeError (torch.distributed.DistError is one too)
            if not self.is_distributed or not _is_peer_failure(exc):
                raise
            elapsed = time.monotonic() - start
            detail = re.sub(r"^\[[^\]]*\] ", "", str(exc).strip().splitlines()[0])
            raise CollectiveError(self.rank, self.world_size, what, elapsed, self.collective_timeout_s, detail,
                                  self._absent_ranks()) from exc

    def _absent_ranks(self) -> list[int] | None:
        """The ranks that did not report a failed collective within ABSENT_GRACE_S: those that stalled or died.

        Best effort, through the process group's store (torchrun's agent holds it); None when it is gone.
        """
        try:
            store = torch_dist.distributed_c10d._get_default_store()
            store.set(f"speechbs/collective_failed/{self.rank}", "1")
            deadline = time.monotonic() + min(ABSENT_GRACE_S, self.collective_timeout_s)
            while True:
                absent = [r for r in range(self.world_size) if not store.check([f"speechbs/collective_failed/{r}"])]
                if not absent or time.monotonic() > deadline:
                    return absent
                time.sleep(0.2)
        except Exception:  # noqa: BLE001 - the store died with the rank that hosted it: no names then
            return None

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (pickled; for small things like a run name)."""
        if not self.is_distributed:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=src, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def wrap_model(self, model: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
        """Move ``model`` to this process's device; wrap it in DDP when there are several ranks.

        ``find_unused_parameters`` is only needed when a forward may skip parameters
        (e.g. LayerDrop); it costs a graph traversal per step. Empty micro-batches do
        NOT need it: the step engine runs the full forward on a placeholder.
        """
        model = model.to(self.device)
        if not self.is_distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module, enabled: bool = True) -> Iterator[None]:
        """Skip DDP's gradient all-reduce inside the block (accumulation); a no-op unwrapped.

        Both the forward and the backward of a micro-batch must run inside the block.
        """
        if enabled and isinstance(model, DistributedDataParallel):
            with model.no_sync():
                yield
        else:
            yield

    def seed_everything(self, seed: int, *, same_on_all_ranks: bool) -> None:
        """Seed python, numpy and torch.

        ``same_on_all_ranks=True`` for model initialization (DDP also broadcasts rank
        0's weights, but identical init keeps buffers and unwrapped code equal);
        ``False`` for per-rank randomness (dropout, masking), offset by the rank.
        """
        value = seed if same_on_all_ranks else seeds.rank_seed(seed, self.rank)
        random.seed(value)
        np.random.seed(value % 2**32)
        torch.manual_seed(value)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (for saving and for attribute access)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def read_launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read the launcher's variables, or raise :class:`SpeechbsError` when they are half set."""
    env = os.environ if environ is None else environ
    if any(name in env for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return _torchrun_env(env)
    if "SLURM_STEP_NUM_TASKS" in env and int(env["SLURM_STEP_NUM_TASKS"]) > 1:
        return _slurm_env(env)
    # SLURM_NTASKS alone is also set in the batch script itself, where only one
    # process runs; treating it as a world size would hang waiting for peers.
    return LaunchEnv()


def _torchrun_env(env: Mapping[str, str]) -> LaunchEnv:
    missing = [name for name in TORCHRUN_VARS if name not in env]
    if missing:
        present = [name for name in TORCHRUN_VARS if name in env]
        raise SpeechbsError(
            f"distributed launch: {', '.join(present)} set but {', '.join(missing)} missing. "
            f"Start speechbs with torchrun (which sets all of {', '.join(TORCHRUN_VARS)}), "
            f"or unset them for a single process")
    rank, world_size = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    local_rank = _int(env, "LOCAL_RANK")
    if not 0 <= rank < world_size or local_rank < 0:
        raise SpeechbsError(f"distributed launch: RANK={rank}, LOCAL_RANK={local_rank}, "
                            f"WORLD_SIZE={world_size} are inconsistent")
    return LaunchEnv(rank, world_size, local_rank, env["MASTER_ADDR"], _int(env, "MASTER_PORT"), "torchrun")


def _slurm_env(env: Mapping[str, str]) -> LaunchEnv:
    if "MASTER_ADDR" not in env:
        raise SpeechbsError(
            "SLURM launch (srun, one task per GPU): MASTER_ADDR is not set. In the batch script add\n"
            "  export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\n"
            f"  export MASTER_PORT={DEFAULT_MASTER_PORT}\n"
            "before srun (see recipes/launch/slurm.sbatch), or launch with torchrun")
    port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else DEFAULT_MASTER_PORT
    return LaunchEnv(_int(env, "SLURM_PROCID"), _int(env, "SLURM_STEP_NUM_TASKS"), _int(env, "SLURM_LOCALID"),
                     env["MASTER_ADDR"], port, "slurm")


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except KeyError:
        raise SpeechbsError(f"distributed launch: {name} is not set") from None
    except ValueError:
        raise SpeechbsError(f"distributed launch: {name}={env[name]!r} is not an integer") from None


def init_distributed(backend: str = "auto", *, timeout_s: float = 1800.0,
                     environ: Mapping[str, str] | None = None) -> DistContext:
    """Build the context for this process and join the process group when there are several.

    ``backend``: ``auto`` (NCCL when CUDA is available, else gloo), ``nccl`` or ``gloo``.
    ``timeout_s`` bounds how long a collective waits for a lost peer before failing.
    """
    launch = read_launch_env(environ)
    device, backend = _pick_device(backend, launch)
    if launch.world_size == 1:
        return DistContext(device=device)
    # env:// reads these; srun does not set them, so put what we derived in place.
    os.environ.update(RANK=str(launch.rank), WORLD_SIZE=str(launch.world_size), LOCAL_RANK=str(launch.local_rank),
                      MASTER_ADDR=str(launch.master_addr), MASTER_PORT=str(launch.master_port))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch_dist.init_process_group(backend=backend, init_method="env://", rank=launch.rank,
                                  world_size=launch.world_size, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(launch.rank, launch.world_size, launch.local_rank, device, backend, timeout_s)


def _is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says that a peer did not arrive or went away (not a bug in the computation)."""
    text = str(exc)
    return isinstance(exc, torch_dist.DistError) or "gloo" in text or any(
        marker in text for marker in ("Timed out", "Connection closed by peer", "Connection reset by peer"))


def stall_for_tests(rank: int, step: int) -> None:
    """Fault injection for the tests only: ``SPEECHBS_TEST_STALL=RANK:STEP:SECONDS`` makes that rank
    sleep before that optimizer step (1-based), as a hung rank would. A no-op when unset."""
    spec = os.environ.get("SPEECHBS_TEST_STALL")
    if not spec:
        return
    stall_rank, stall_step, seconds = spec.split(":")
    if int(stall_rank) == rank and int(stall_step) == step:
        print(f"rank {rank}: stalling {seconds} s before step {step} (SPEECHBS_TEST_STALL)", file=sys.stderr, flush=True)
        time.sleep(float(seconds))


def _pick_device(backend: str, launch: LaunchEnv) -> tuple[torch.device, str]:
    has_cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if has_cuda else "gloo"
    if backend not in ("nccl", "gloo"):
        raise SpeechbsError(f"distributed backend {backend!r}: use 'auto', 'nccl' or 'gloo'")
    if backend == "gloo":
        return torch.device("cpu"), backend
    if not has_cuda:
        raise SpeechbsError("distributed backend 'nccl' needs CUDA, and this process sees no GPU; "
                            "use backend 'gloo' (CPU) or 'auto', or check CUDA_VISIBLE_DEVICES")
    num_gpus = torch.cuda.device_count()
    if launch.launcher == "slurm" and num_gpus == 1:
        # srun --gpus-per-task=1 (or --gpu-bind) shows each task only its own GPU.
        return torch.device("cuda", 0), backend
    if launch.local_rank >= num_gpus:
        raise SpeechbsError(f"LOCAL_RANK={launch.local_rank} but this node has {num_gpus} visible GPU(s); "
                            f"start one process per GPU (torchrun --nproc-per-node {num_gpus})")
    return torch.device("cuda", launch.local_rank), backend


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (call at the end of a run, also after an error)."""
    if ctx.is_distributed and torch_dist.is_initialized():
        # DDP wrappers sit in reference cycles; free them while the group still exists,
        # or their destructors run at interpreter exit and can abort the process.
        gc.collect()
        torch_dist.destroy_process_group()


@contextlib.contextmanager
def distributed(backend: str = "auto", *, timeout_s: float = 1800.0) -> Iterator[DistContext]:
    """``with distributed() as ctx:`` joins the process group and always leaves it."""
    ctx = init_distributed(backend, timeout_s=timeout_s)
    try:
        yield ctx
    finally:
        shutdown(ctx)


def device_from_name(name: str, setting: str = "--device") -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``... checked before anything runs on it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{setting} {name!r} is not a device name (cpu, cuda, cuda:1, ... or auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ConfigError(f"{setting} {name}: no CUDA device is available ({why}); use {setting} cpu, "
                              f"or auto to take a GPU when there is one")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{setting} {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device
