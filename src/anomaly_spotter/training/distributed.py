"""Data-parallel training over several processes (PyTorch DistributedDataParallel).

How a run is split, and why the result does not depend on how:

* ``train.batch_size`` is the *global* batch. Every epoch all processes draw the same
  permutation (seeded by ``(train.seed, epoch)``, exactly as a single process does), cut it into
  global batches, and process ``r`` of ``W`` takes every ``W``-th image of each from the
  ``r``-th on (:func:`rank_batches`). Each rank's loss is weighted by its share of the global
  batch (the Dice term, a ratio of batch sums, is computed from the global sums) and DDP
  averages the gradients, so each optimizer step follows the gradient of the same
  global batch as a single process would, uneven last batches included.
* BatchNorm statistics are synchronised over the global batch too: ``nn.SyncBatchNorm`` on
  GPUs; on CPU (which ``SyncBatchNorm`` refuses) :class:`CpuSyncBatchNorm` all-reduces the
  per-channel sums with gloo. So a W-process run follows the single-process loss trajectory up
  to float summation order (``tests/test_distributed.py`` checks two gloo processes against one).
* Only rank 0 writes: checkpoints, DVCLive logs, the model file and progress output.

Start it either way:

* ``dvc exp run -S train.processes=2`` (or ``params.yaml``): the train stage relaunches itself
  with ``python -m torch.distributed.run --standalone --nproc_per_node 2`` (:func:`relaunch`);
* ``torchrun --nproc_per_node 8 stages/train.py ...`` (or any launcher that sets ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``, e.g. on several nodes):
  the stage finds the environment and joins (:func:`from_environment`).

The backend is NCCL when training on CUDA (one GPU per process, ``cuda:<LOCAL_RANK>``) and gloo
on CPU.

Example:
    >>> rank_batches(8, batch_size=4, seed=0, epoch=0)  # one process: the global batches
    [[4, 0, 7, 3], [2, 5, 1, 6]]
    >>> rank_batches(8, batch_size=4, seed=0, epoch=0, rank=0, world_size=2)
    [[4, 7], [2, 1]]
    >>> rank_batches(8, batch_size=4, seed=0, epoch=0, rank=1, world_size=2)
    [[0, 3], [5, 6]]
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from anomaly_spotter.errors import UserError


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the run; a single process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and logs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True inside a process started by ``torchrun`` / ``torch.distributed.run`` with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def from_environment(device: torch.device) -> DistributedContext:
    """Join the process group described by torchrun's environment; rank 0 of 1 when there is none."""
    if not launched_by_torchrun():
        return DistributedContext()
    context = DistributedContext(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    )
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=context.rank, world_size=context.world_size)
    return context


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def relaunch(processes: int, argv: Sequence[str]) -> int:
    """Run this stage again as ``processes`` local ranks under ``torch.distributed.run``; their exit code.

    ``--standalone`` picks a free rendezvous port on this machine, so parallel experiments do not
    collide. The ``--`` keeps the launcher from reading the stage's own options (its argument
    parser would take ``--logs`` for an abbreviation of its ``--logs-specs``).
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "--",
        *argv,
    ]
    return subprocess.run(command, check=False).returncode


def rank_batches(
    count: int, *, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """This rank's share of every global batch of one epoch (indices into the dataset).

    The permutation is ``torch.randperm(count)`` seeded by ``(seed, epoch)``, the same for every
    world size; rank ``r`` takes every ``world_size``-th image of each global batch from the
    ``r``-th on. A last global batch with fewer images than ranks is dropped (by all ranks alike,
    so DDP's collectives stay matched); with one process nothing is ever dropped.
    """
    if batch_size % world_size:
        raise UserError(
            f"train.batch_size {batch_size} is not divisible by {world_size} processes; it is the global batch"
        )
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(count, generator=generator).tolist()
    global_batches = [order[start : start + batch_size] for start in range(0, count, batch_size)]
    return [batch[rank::world_size] for batch in global_batches if len(batch) >= world_size]


class RankBatchSampler(Sampler[list[int]]):
    """:func:`rank_batches` as a ``DataLoader`` batch sampler (call :meth:`set_epoch` each epoch)."""

    def __init__(self, count: int, *, batch_size: int, seed: int, context: DistributedContext) -> None:
        self.count, self.batch_size, self.seed, self.context = count, batch_size, seed, context
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        return rank_batches(
            self.count,
            batch_size=self.batch_size,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.context.rank,
            world_size=self.context.world_size,
        )

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients over ranks too (each rank's loss uses the total)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over all ranks, differentiably (gradients are summed back over ranks)."""
    return _AllReduceSum.apply(tensor)


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch, over gloo (CPU).

    ``nn.SyncBatchNorm`` only runs on GPUs. This all-reduces per-channel sums, sums of squares
    and the pixel count (one collective per layer, differentiable), then normalises as
    ``nn.BatchNorm2d`` would with the whole batch; running statistics get the same update on
    every rank. In eval mode it is plain ``BatchNorm2d``, so the saved weights load anywhere.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        channels = x.shape[1]
        # Statistics in float32 whatever autocast hands in: sums of squares in bfloat16 would
        # cancel catastrophically in E[x^2] - E[x]^2. The output keeps the input's dtype, as
        # BatchNorm2d's does under autocast.
        values = x.float()
        count = torch.full((1,), x.shape[0] * x.shape[2] * x.shape[3], dtype=values.dtype)
        local = torch.cat([values.sum(dim=(0, 2, 3)), values.square().sum(dim=(0, 2, 3)), count])  # (2C + 1,)
        totals = all_reduce_sum(local)
        n = totals[2 * channels]
        mean = totals[:channels] / n  # (C,)
        var = (totals[channels : 2 * channels] / n - mean.square()).clamp_min(0.0)  # biased, as BN normalises
        # Built with affine weights and running statistics (the BatchNorm2d defaults it replaces).
        assert self.num_batches_tracked is not None and self.running_mean is not None and self.running_var is not None
        assert self.momentum is not None
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1), self.momentum)  # unbiased, as BN tracks
        scale = self.weight / torch.sqrt(var + self.eps)  # (C,)
        return (values * scale[None, :, None, None] + (self.bias - mean * scale)[None, :, None, None]).to(x.dtype)


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every ``BatchNorm2d`` of ``module`` synchronised across ranks (SyncBatchNorm on CUDA)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = CpuSyncBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            synced.load_state_dict(child.state_dict())
            setattr(module, name, synced)
        else:
            convert_batchnorm(child, device)
    return module


def all_reduce_sums(values: dict[str, float], count: int, context: DistributedContext) -> tuple[dict[str, float], int]:
    """Per-rank sums of epoch statistics (and image counts) added up over all ranks."""
    if not context.enabled:
        return values, count
    keys = sorted(values)
    packed = torch.tensor([values[k] for k in keys] + [float(count)], dtype=torch.float64)
    dist.all_reduce(packed)
    return dict(zip(keys, packed[:-1].tolist(), strict=False)), int(packed[-1])


__all__ = [
    "CpuSyncBatchNorm",
    "all_reduce_sum",
    "DistributedContext",
    "RankBatchSampler",
    "all_reduce_sums",
    "convert_batchnorm",
    "from_environment",
    "launched_by_torchrun",
    "rank_batches",
    "relaunch",
    "shutdown",
]
