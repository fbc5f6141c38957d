"""Data-parallel training across processes with PyTorch's own engine.

A run is distributed when the environment says so: ``torchrun`` (and the launcher of
``adtn-studio train --nproc-per-node``) sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
``srun`` sets ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` and ``SLURM_LOCALID`` (then
``MASTER_ADDR``/``MASTER_PORT`` come from the job script). Each process joins one process
group — NCCL on CUDA, gloo on the CPU — and the model is wrapped in
``DistributedDataParallel``, which averages the gradient of every parameter (ADTN local
tensors included) during the backward pass.

Sharding keeps a distributed run equal to a one-process run with the same global batch:
every rank walks the same global batches (same seed, same order, same augmentation) and
trains on its contiguous share of each. A share's loss is weighted by its size, so the
average DDP takes is exactly the gradient of the mean loss over the global batch, even for
a last batch that does not split evenly.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from engine.errors import DistributedSetupError

DEFAULT_MASTER_PORT = 29500
CONTROL_RUN, CONTROL_PAUSE, CONTROL_STOP = 0, 1, 2
PAUSE_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process sits in a distributed job, as its launcher described it."""

    rank: int
    world_size: int
    local_rank: int
    launcher: str  # "torchrun" or "slurm"
    master_addr: str
    master_port: int


def _int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise DistributedSetupError(f"{name}={environ[name]!r} is not a whole number") from None


def detect_environment(environ: Mapping[str, str] | None = None) -> DistributedEnv | None:
    """The distributed job this process belongs to, or None for a one-process run.

    ``torchrun``'s variables win over SLURM's (``srun`` may start one ``torchrun`` per node).
    SLURM counts only inside a job step of several tasks (``SLURM_STEP_NUM_TASKS``): a batch
    script itself, or an ``srun`` of one task, is a plain run.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env and "RANK" in env:
        world, rank = _int(env, "WORLD_SIZE"), _int(env, "RANK")
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
        launcher = "torchrun"
    elif "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        world, rank = _int(env, "SLURM_STEP_NUM_TASKS"), _int(env, "SLURM_PROCID")
        local = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        launcher = "slurm"
    else:
        return None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise DistributedSetupError(f"rank {rank} is outside a job of {world} processes")
    addr = env.get("MASTER_ADDR", "")
    if not addr:
        if launcher == "slurm":
            raise DistributedSetupError(
                "a SLURM job step of several tasks needs MASTER_ADDR (the first node's host "
                "name) in the environment; see docs/DISTRIBUTED.md"
            )
        addr = "127.0.0.1"
    port = _int(env, "MASTER_PORT") if env.get("MASTER_PORT") else DEFAULT_MASTER_PORT
    return DistributedEnv(rank, world, local, launcher, addr, port)


class DistributedContext:
    """The process group of this run and the collective operations the trainer needs."""

    def __init__(self, env: DistributedEnv, device: torch.device) -> None:
        self.env = env
        self.device = device
        self.rank = env.rank
        self.world_size = env.world_size
        self.backend = "nccl" if device.type == "cuda" else "gloo"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- set-up ---------------------------------------------------------------------------

    def start(self, timeout_seconds: float = 600.0) -> DistributedContext:
        if dist.is_initialized():  # started by the caller (a test, an outer framework)
            return self
        os.environ.setdefault("MASTER_ADDR", self.env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(self.env.master_port))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        timeout = datetime.timedelta(seconds=timeout_seconds)
        try:
            store = None
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
            if attempt is not None:
                # torchrun keeps one store across restarts of the workers: without a prefix
                # of its own, a restarted rank could read the address of the rank it replaces
                base, _, _ = next(
                    dist.rendezvous("env://", self.rank, self.world_size, timeout=timeout)
                )
                store = dist.PrefixStore(f"adtn/attempt_{attempt}", base)
            dist.init_process_group(
                self.backend,
                store=store,
                rank=self.rank,
                world_size=self.world_size,
                timeout=timeout,
                device_id=self.device if self.device.type == "cuda" else None,
            )
        except (RuntimeError, ValueError) as exc:
            raise DistributedSetupError(
                f"rank {self.rank} could not join the job at {self.env.master_addr}:"
                f"{self.env.master_port} ({exc})"
            ) from exc
        return self

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` (which first copies rank 0's parameters
        and buffers to every rank)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Batch norm statistics over the global batch on CUDA (SyncBatchNorm needs NCCL)."""
        if self.device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    # -- collectives ------------------------------------------------------------------------

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (float64 on the wire)."""
        tensor = torch.tensor(
            values, dtype=torch.float64, device=self.device if self.backend == "nccl" else "cpu"
        )
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over all ranks (a copy; it stays on the training device)."""
        total = tensor.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def describe(self, batch_size: int, lr: float) -> str:
        return describe(self, batch_size, lr)

    def max(self, values: list[int]) -> list[int]:
        tensor = torch.tensor(
            values, dtype=torch.int64, device=self.device if self.backend == "nccl" else "cpu"
        )
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return [int(v) for v in tensor.tolist()]

    def barrier(self) -> None:
        dist.barrier()


def shard_bounds(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of ``rank``'s contiguous share of ``count`` items (sizes differ by at
    most one)."""
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class ShardedBatches:
    """This rank's share of every global batch of a ``BatchIterator``.

    ``loss_weight`` is set for each batch yielded: (world size × share) / global batch, the
    factor that turns this share's mean loss into its part of the global mean once DDP has
    averaged over ranks; ``global_size`` is the global batch's size. For training
    (``drop_small``) a last global batch with fewer examples than ranks is dropped: every
    rank must take part in every step. For evaluation such a rank gets an empty share.
    """

    def __init__(self, batches: Any, rank: int, world_size: int, drop_small: bool = True) -> None:
        self.batches = batches
        self.rank = rank
        self.world_size = world_size
        self.drop_small = drop_small
        self.loss_weight = 1.0
        self.global_size = 0

    @property
    def num_examples(self) -> int:
        """Examples of the whole split, over all ranks."""
        return self.batches.num_examples

    def _global_sizes(self) -> list[int]:
        return [stop - start for start, stop in self.batches.batch_bounds()]

    def __len__(self) -> int:
        minimum = self.world_size if self.drop_small else 1
        return sum(1 for size in self._global_sizes() if size >= minimum)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.batches.epoch(epoch):
            size = int(labels.shape[0])
            if size < self.world_size and self.drop_small:
                continue
            start, stop = shard_bounds(size, self.rank, self.world_size)
            self.loss_weight = self.world_size * (stop - start) / size
            self.global_size = size
            yield images[start:stop], labels[start:stop]


class SynchronizedControl:
    """One decision for every rank between batches: run, pause or stop.

    Each rank reports its own request (rank 0 reads the window's control file; any rank may
    have caught Ctrl-C) and the maximum over ranks wins, so all ranks stop after the same
    batch and pause together. While paused, ranks meet every ``PAUSE_POLL_SECONDS``, so no
    collective waits long enough to time out. ``stop_requested`` reports the last agreed
    decision, never a local one, so every rank takes the same branch.
    """

    def __init__(self, local: Any, context: DistributedContext) -> None:
        self.local = local
        self.context = context
        self._stop = False

    def _local_state(self) -> int:
        if self.local.stop_requested:
            return CONTROL_STOP
        return CONTROL_PAUSE if self.local.paused else CONTROL_RUN

    def wait_while_paused(self) -> None:
        while True:
            state = self.context.max([self._local_state()])[0]
            if state == CONTROL_STOP:
                self._stop = True
                return
            if state == CONTROL_RUN:
                return
            time.sleep(PAUSE_POLL_SECONDS)

    @property
    def stop_requested(self) -> bool:
        return self._stop

    @property
    def paused(self) -> bool:
        return self.local.paused

    # requests made on this rank (signal handlers) go to the local control
    def request_stop(self) -> None:
        self.local.request_stop()

    def pause(self) -> None:
        self.local.pause()

    def resume(self) -> None:
        self.local.resume()


def describe(context: DistributedContext | None, batch_size: int, lr: float) -> str:
    """One line for the log: processes, backend, global batch and learning rate."""
    if context is None:
        return f"one process; batch size {batch_size}, learning rate {lr:g}"
    share = batch_size / context.world_size
    return (
        f"data-parallel on {context.world_size} processes ({context.backend}, "
        f"{context.env.launcher}); global batch size {batch_size} "
        f"(about {share:g} per process), learning rate {lr:g} (not scaled)"
    )
