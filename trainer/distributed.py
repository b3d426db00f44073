"""Data parallelism across processes and nodes (torchrun: gloo on CPU, nccl on CUDA).

The GAN step runs each discriminator on the real and the fake batch separately (separate BatchNorm
statistics, as the original), i.e. several forwards per backward, which `DistributedDataParallel`'s
reducer does not allow. So gradients are averaged explicitly: after each backward, one flattened
all-reduce per network. The result is the same synchronous data parallelism as DDP.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def writes_files(self) -> bool:
        """One process per node writes the run's files (checkpoint, snapshots, vocabulary), so every node's disk holds
        the whole run: a multi-node job resumes on every node, and each node's next stage finds what this one made
        (a SageMaker job's hosts each have their own checkpoint folder). Logs and samples are the main process's."""
        return self.local_rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        kwargs = {"device_id": torch.device("cuda", local_rank)} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30), **kwargs)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_module(module: torch.nn.Module, info: DistInfo) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if not info.enabled:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """All-reduce the mean of the gradients of these parameters in one flattened buffer."""
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset: offset + n].view_as(g))
        offset += n


def any_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when any rank's flag is set (e.g. one received SIGTERM): all stop together."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_value(value: float, info: DistInfo, device: torch.device) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item() / info.world_size)


class ResumableSampler(DistributedSampler):
    """DistributedSampler (works with one process too) that can start mid-epoch.

    Each epoch's order depends only on (seed, epoch), so skipping the first `start` batches of a
    resumed epoch yields exactly the batches the interrupted run had not seen yet. It yields
    (index, sample_seed) pairs: the seed of each sample's random choices (caption, crop, flip) depends only on
    (seed, epoch, rank, position), not on which process or data worker draws it, so a resumed run, with or
    without workers, sees the very samples the uninterrupted one would have.
    """

    def __init__(self, dataset, info: DistInfo, seed: int, shuffle: bool = True, drop_last: bool = True):
        super().__init__(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start = 0

    def set_start(self, samples: int) -> None:
        """Skip this many of this rank's samples in the current epoch (reset by the next set_epoch)."""
        self.start = samples

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        import numpy as np

        indices = list(super().__iter__())
        seeds = np.random.SeedSequence([self.seed, self.epoch, self.rank]).generate_state(len(indices), np.uint64)
        return iter([(i, int(seeds[k])) for k, i in enumerate(indices)][self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start
