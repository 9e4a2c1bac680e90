"""Data-parallel training over processes: ``torchrun --nproc_per_node N -m slidemap train ...``.

Every process draws the same windows for an epoch (same seed and epoch number) and trains on its
share of each batch; DistributedDataParallel (gloo, CPU) averages the gradients. So N processes
step through exactly the batches one process would, each batch split N ways, with the same
schedule: runs with the same seed and the same N end with the same weights. Batch norm
statistics are per process. Only rank 0 scores validation data and writes files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from slidemap.data.dataset import RandomWindows
from slidemap.errors import SlidemapError, first_line

TIMEOUT = timedelta(minutes=30)  # rank 0 may score validation scenes while the others wait
GLOO_SOURCE = re.compile(r"\[[^\]]*gloo[^\]]*\]\s*")  # where gloo raised: "[.../pair.cc:553] "


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when run alone), before the group is joined."""
    return int(os.environ.get("RANK", "0"))


def setup() -> Ranks:
    """Join the process group torchrun describes (WORLD_SIZE > 1), or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if not dist.is_initialized():
        try:
            dist.init_process_group("gloo", timeout=TIMEOUT)
        except (RuntimeError, ValueError) as exc:
            raise SlidemapError(f"WORLD_SIZE={world} but the process group cannot start "
                                f"({first_line(exc)}): launch with torchrun "
                                "--nproc_per_node N, or unset WORLD_SIZE") from exc
    return Ranks(dist.get_rank(), dist.get_world_size())


def wrap(model: nn.Module, ranks: Ranks) -> nn.Module:
    """The model DDP trains (gradients averaged over ranks), or ``model`` itself alone."""
    return DistributedDataParallel(model) if ranks.world > 1 else model


def shard(windows: RandomWindows, ranks: Ranks) -> RandomWindows | ShardedWindows:
    return ShardedWindows(windows, ranks) if ranks.world > 1 else windows


class ShardedWindows:
    """This rank's share of every batch the single-process run would draw."""

    def __init__(self, windows: RandomWindows, ranks: Ranks) -> None:
        self.windows = windows
        self.ranks = ranks

    def epoch(self, epoch: int, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for batch in self.windows.epoch(epoch, batch_size):
            yield shard_batch(batch, self.ranks)


def shard_batch(batch: dict[str, np.ndarray], ranks: Ranks) -> dict[str, np.ndarray]:
    """Samples rank, rank + world, ...; a batch smaller than the world goes whole to every rank
    (their averaged gradient is then the batch's own), so no rank is ever left without one."""
    if len(next(iter(batch.values()))) < ranks.world:
        return batch
    return {key: value[ranks.rank::ranks.world] for key, value in batch.items()}


def mean(value: float, ranks: Ranks) -> float:
    """``value`` averaged over ranks (e.g. the epoch's training loss for the history)."""
    if ranks.world == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(total)
    return float(total) / ranks.world


def peer_stopped(exc: RuntimeError) -> SlidemapError | None:
    """The one-line error of a rank whose peer stopped (its own error, or a crash) while this
    one waited on it in a collective, or None for any other error: gloo's "Connection closed by
    peer" was a traceback as long as the failure it followed."""
    if not (dist.is_initialized() and dist.get_world_size() > 1
            and GLOO_SOURCE.match(first_line(exc))):
        return None
    said = GLOO_SOURCE.sub("", first_line(exc)).split(". ")[0]
    return SlidemapError(f"rank {dist.get_rank()} stopped: another of the "
                         f"{dist.get_world_size()} training processes stopped first (gloo: "
                         f"{said}); its own message, or torchrun's, says why")


def finish(ranks: Ranks) -> None:
    """Wait for every rank, then leave the process group."""
    if ranks.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
