"""Run by tests/test_distributed.py under `torchrun --nproc_per_node=W` (CPU, gloo); not a test module itself.

`python tests/_torchrun_worker.py SPEC.json OUT_DIR`: every rank runs the scenarios named in the spec and
writes what it drew to OUT_DIR/rank{r}.pt; the test compares those with single-process streams.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from fastmix import distributed
from fastmix.loader.options import WorkerOptions


def sampler_scenario(spec: dict[str, Any]) -> dict[str, Any]:
    """Draw batches with rank/world size taken from torch.distributed; resume a world-size-1 state."""
    from fastmix.core.sampler import MixtureSampler

    kw = dict(dataset_sizes=spec["sizes"], dataset_weights=spec["weights"], seed=spec["seed"])
    s = MixtureSampler(**kw)  # rank / world_size from the process group
    assert (s.rank, s.world_size) == (dist.get_rank(), dist.get_world_size()), (s.rank, s.world_size)
    draws = np.concatenate([s.next_indices(spec["batch"]) for _ in range(spec["batches"])])
    out = {"draws": draws, "state": s.state_dict(), "len": len(s)}
    resumed = MixtureSampler(**kw)
    resumed.load_state_dict(torch.load(spec["sampler_state_ws1"], weights_only=False))
    out["resumed"] = resumed.next_indices(spec["batch"] * spec["batches"])
    # the DataLoader path: a torch DataLoader iterating the sampler yields the same positions
    it = MixtureSampler(**kw)
    loader = torch.utils.data.DataLoader(range(sum(spec["sizes"])), batch_size=spec["batch"], sampler=it)
    batches = iter(loader)
    out["dataloader"] = np.concatenate([next(batches).numpy() for _ in range(spec["batches"])])
    return out


def make_loader(spec: dict[str, Any], **kw: Any) -> Any:
    """A MixtureLoader (num_workers=0) over in-memory fake sources (the loader's logic, no decoding cost)."""
    from fastmix.loader.loader import MixtureLoader
    from fastmix.testing.fakes import FakeReader, FakeSource

    sources = [FakeSource(f"ds{i}", num_episodes=n // 10, episode_length=10) for i, n in enumerate(spec["sizes"])]
    return MixtureLoader(sources, dataset_weights=spec["weights"], batch_size=spec["loader_batch"],
                         action_horizon=spec["horizon"], num_workers=0, seed=spec["seed"], **kw, workers=WorkerOptions(reader_factory=FakeReader))


def loader_ids(batch: dict[str, Any]) -> np.ndarray:
    """(B, 2) int64: each row's (dataset_index, local index)."""
    return np.stack([batch["dataset_index"].numpy(), batch["index"].numpy()], axis=1)


def take(loader: Any, n: int) -> np.ndarray:
    it = iter(loader)
    return np.concatenate([loader_ids(next(it)) for _ in range(n)])


def loader_scenario(spec: dict[str, Any]) -> dict[str, Any]:
    """MixtureLoader with the process group's rank; its state; a world-size-1 loader state resumed."""
    with make_loader(spec) as loader:
        assert (loader.sampler.rank, loader.sampler.world_size) == (dist.get_rank(), dist.get_world_size())
        out = {"ids": take(loader, spec["loader_batches"]), "state": loader.state_dict()}
    with make_loader(spec) as resumed:
        resumed.load_state_dict(torch.load(spec["loader_state_ws1"], weights_only=False))
        out["resumed"] = take(resumed, spec["loader_batches"])
    return out


class _Iterable:
    """Wraps a generator function so each `iter()` starts it afresh."""

    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def __iter__(self) -> Any:
        return self._fn()


def train_scenario(spec: dict[str, Any]) -> dict[str, Any]:
    """One step of the example training loop (`fastmix.demo.train.train`) with its policy wrapped in DDP."""
    from torch.nn.parallel import DistributedDataParallel

    from fastmix.demo import train

    policies: list[torch.nn.Module] = []
    plain = train.SmallPolicy

    def ddp_policy(*args: Any, **kwargs: Any) -> torch.nn.Module:
        torch.manual_seed(1000 + dist.get_rank())  # different initial weights per rank: DDP must broadcast
        policies.append(DistributedDataParallel(plain(*args, **kwargs)))
        return policies[-1]

    train.SmallPolicy = ddp_policy  # type: ignore[assignment, misc]
    try:
        with make_loader(spec, num_batches=1) as loader:
            seen: list[np.ndarray] = []

            def recorded() -> Any:  # the batches train() consumes, with their (dataset_index, index)
                for batch in loader:
                    seen.append(loader_ids(batch))
                    yield batch

            stats = train.train(_Iterable(recorded), 1, device="cpu", log_every=0)
    finally:
        train.SmallPolicy = plain  # type: ignore[misc]
    (model,) = policies
    params = torch.cat([p.detach().flatten() for p in model.module.parameters()])
    grads = torch.cat([p.grad.flatten() for p in model.module.parameters()])
    return {"loss": stats.last_loss, "steps": stats.steps, "params": params, "grads": grads, "ids": seen[0]}


SCENARIOS = {"sampler": sampler_scenario, "loader": loader_scenario, "train": train_scenario}


def main(spec_path: str, out_dir: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    with distributed.process_group(backend="gloo", timeout_s=60) as live:
        assert live, "expected to be launched by torchrun"
        result: dict[str, Any] = {"rank": dist.get_rank(), "world_size": dist.get_world_size()}
        for name in spec["scenarios"]:
            result[name] = SCENARIOS[name](spec)
            dist.barrier()
        torch.save(result, Path(out_dir) / f"rank{dist.get_rank()}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
