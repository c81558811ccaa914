"""Where a process runs and which share of the work is its own: devices, torchrun's environment, the process group.

``torchrun --nproc_per_node N`` starts N processes and describes them in the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...). This module is the one place that reads it:

- :func:`resolve_device` -- ``auto`` and, under torchrun, plain ``cuda`` made concrete;
- :func:`torchrun_process_group` -- join torchrun's process group for a run (a no-op outside torchrun);
- :func:`distributed_context` -- (rank, world size) of the joined group, (0, 1) without one;
- :func:`parse_shard` -- ``RANK/WORLD`` work sharding (the index build), from a flag or from the environment.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from dcd_itr.errors import ConfigError

PROCESS_GROUP_TIMEOUT = timedelta(hours=1)  # ranks wait at most this long for each other (a slow shard, I/O)


def resolve_device(device: str | torch.device) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; under torchrun plain ``cuda`` -> this rank's GPU
    (``cuda:LOCAL_RANK``); anything else unchanged (as a string, e.g. ``cpu``, ``cuda:1``)."""
    device = str(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    return device


@contextlib.contextmanager
def torchrun_process_group(backend: str = "gloo") -> Iterator[int]:
    """Join torchrun's process group for the run (a no-op outside torchrun); yields this process's rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield dist.get_rank() if dist.is_initialized() else 0
        return
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=PROCESS_GROUP_TIMEOUT)
    try:
        yield dist.get_rank()
    finally:
        dist.destroy_process_group()


def distributed_context() -> tuple[int, int]:
    """(rank, world_size) of the joined process group; (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4); None -> torchrun's ``RANK``/``WORLD_SIZE`` when set, else (0, 1)."""
    if text is None:
        text = f"{os.environ['RANK']}/{os.environ['WORLD_SIZE']}" if "WORLD_SIZE" in os.environ else "0/1"
    rank, sep, world = text.partition("/")
    if not sep or not rank.isdigit() or not world.isdigit() or not 0 <= int(rank) < int(world):
        raise ConfigError(f"--shard {text!r}: expected RANK/WORLD with 0 <= RANK < WORLD, e.g. 0/4")
    return int(rank), int(world)
