"""torch.distributed helpers: rank / world size, process-group setup from torchrun's environment, the device.

fastmix itself needs no process group: `MixtureSampler` / `MixtureLoader` read rank and world size from
torch.distributed when it is initialized (rank r takes positions r, r+W, ... of one global stream). These
helpers are for scripts and the training example launched with `torchrun --nproc_per_node=N`.

Example:
    with fastmix.distributed.process_group():          # no-op when not launched by torchrun
        loader = MixtureLoader(sources, batch_size=32)  # picks up this rank's share of the stream
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    """Whether a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def rank_world(framework: str = "pytorch") -> tuple[int, int]:
    """(rank, world size) that splits fastmix's stream: torch.distributed's when a process group is initialized
    (framework "pytorch"), jax's (process_index, process_count) (framework "jax", when jax is importable), else
    (0, 1). The one place fastmix reads them; torchrun's RANK / WORLD_SIZE alone do not count (no group yet)."""
    if framework == "jax":
        try:
            import jax
        except ImportError:
            return 0, 1
        return int(jax.process_index()), int(jax.process_count())
    if is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank() -> int:
    """This process's rank: the process group's, else torchrun's RANK before the group exists (0 when neither)."""
    return rank_world()[0] if is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    """Number of processes: the process group's, else torchrun's WORLD_SIZE (1 when neither)."""
    return rank_world()[1] if is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    """Rank on this node (torchrun's LOCAL_RANK; 0 when not set)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """Rank 0 (or not distributed): the process that prints, plots and writes files."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """Whether torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR) is present."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def device() -> torch.device:
    """`cuda:LOCAL_RANK` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def init_from_env(backend: str | None = None, timeout_s: float = 120.0) -> bool:
    """Initialize the default process group from torchrun's environment.

    Args:
        backend: "nccl" or "gloo"; default nccl when CUDA is available, else gloo.
        timeout_s: collective timeout (seconds), so a lost peer raises instead of hanging.

    Returns:
        True when this call created the group (the caller then destroys it); False when a group already
        existed or the process was not launched by torchrun.
    """
    if is_initialized() or not launched_by_torchrun():
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(device())
    dist.init_process_group(backend=backend, timeout=_dt.timedelta(seconds=timeout_s))
    return True


def state_for_world(state: Any, local_batch_size: int, world_size: int) -> Any:
    """A loader state dict (`MixtureLoader.state_dict()`) saved by another number of processes, for a loader of
    `local_batch_size` rows on each of `world_size` processes, when both split the same global batch (openpi's
    `batch_size`: local batch x processes; e.g. saved by 1 process with 32 rows, resumed by 2 with 16 each): its
    batch size is this loader's; the sampler's global position then resumes the one stream
    (`MixtureSampler.load_state_dict`). Any other state is returned unchanged (the loader names what differs)."""
    if not isinstance(state, Mapping) or not isinstance(state.get("sampler"), Mapping):
        return state
    saved_world, saved_batch = state["sampler"].get("world_size"), state.get("batch_size")
    if not (isinstance(saved_world, int) and isinstance(saved_batch, int)) or saved_world == world_size \
            or saved_batch * saved_world != local_batch_size * world_size:
        return state
    out = {**state, "batch_size": local_batch_size}
    mixture = state.get("mixture")
    if isinstance(mixture, Mapping) and mixture.get("batch_size") == saved_batch:
        out["mixture"] = {**mixture, "batch_size": local_batch_size}
    return out


@contextlib.contextmanager
def process_group(backend: str | None = None, timeout_s: float = 120.0) -> Iterator[bool]:
    """Context manager around `init_from_env`: yields whether running distributed; destroys what it created."""
    created = init_from_env(backend, timeout_s)
    try:
        yield is_initialized()
    finally:
        if created and is_initialized():
            dist.destroy_process_group()


__all__ = [
    "device",
    "init_from_env",
    "is_initialized",
    "is_main_process",
    "launched_by_torchrun",
    "local_rank",
    "process_group",
    "rank",
    "rank_world",
    "state_for_world",
    "world_size",
]
