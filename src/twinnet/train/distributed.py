"""Data-parallel training under ``torchrun``: the process group, NCCL on GPUs and gloo on CPUs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["Dist", "init_distributed"]


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


def init_distributed() -> Dist:
    """Join the process group that torchrun describes in the environment, if any.

    fastai's ``setup_distrib`` assumes NCCL; on a machine without CUDA the group uses gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ.get("RANK", "0"))
    owns = False
    if not torch.distributed.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            torch.distributed.init_process_group("nccl", init_method="env://")
        else:
            torch.distributed.init_process_group("gloo", init_method="env://")
        owns = True
    return Dist(rank, world, owns)
