"""torch.distributed: `torchrun --nproc_per_node=2` on CPU (gloo) runs the sampler, the loader and one DDP step
of the example training loop (tests/_torchrun_worker.py). Each rank's draws are disjoint positions of one global
stream, their union is the single-process stream, and resuming with another world size (2→1, 1→2) continues
the same global stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fastmix.core.sampler import MixtureSampler
from tests._torchrun_worker import make_loader, take

SCENARIOS = ["sampler", "loader", "train"]
WORKER = Path(__file__).with_name("_torchrun_worker.py")
WORLD = 2
TIMEOUT_S = 240
SPEC: dict[str, Any] = {"sizes": [1000, 300, 50], "weights": [1.0, 3.0, 10.0], "seed": 7, "batch": 64, "batches": 5,
                        "loader_batch": 4, "loader_batches": 3, "horizon": 4}
RESUME_AT = 6  # world-size-1 sampler state after this many batches of SPEC["batch"] (even: a multiple of WORLD)
LOADER_RESUME_AT = 5  # world-size-1 loader state after this many batches (5 * 4 rows: a multiple of WORLD)


def _have_gloo() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


pytestmark = pytest.mark.skipif(not _have_gloo(), reason="torch.distributed with gloo is not available")


def single_stream(n: int, start: int = 0) -> np.ndarray:
    """Positions start .. start+n-1 of the single-process stream."""
    s = MixtureSampler(SPEC["sizes"], SPEC["weights"], seed=SPEC["seed"], rank=0, world_size=1)
    s.next_indices(start)
    return s.next_indices(n)


def run_torchrun(spec: dict[str, Any], tmp: Path, nproc: int = WORLD) -> list[dict[str, Any]]:
    """Launch the worker under torchrun with a bounded timeout; returns each rank's results."""
    spec_path = tmp / "spec.json"
    spec_path.write_text(json.dumps(spec))
    out = tmp / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           f"--nproc_per_node={nproc}", str(WORKER), str(spec_path), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([str(WORKER.parent.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {TIMEOUT_S} s:\n{log[-4000:]}")
    assert proc.returncode == 0, f"torchrun exited with {proc.returncode}:\n{log[-6000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(nproc)]


def _world1_sampler_state(tmp: Path) -> Path:
    s = MixtureSampler(SPEC["sizes"], SPEC["weights"], seed=SPEC["seed"], rank=0, world_size=1)
    s.next_indices(RESUME_AT * SPEC["batch"])
    path = tmp / "sampler_ws1.pt"
    torch.save(s.state_dict(), path)
    return path


def single_loader_stream(num_batches: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(rows, 2) (dataset_index, index) of a world-size-1 loader's first batches, and its state after each."""
    ids, states = [], []
    with make_loader(SPEC, rank=0, world_size=1) as loader:
        it = iter(loader)
        for _ in range(num_batches):
            batch = next(it)
            ids.append(np.stack([batch["dataset_index"].numpy(), batch["index"].numpy()], axis=1))
            states.append(loader.state_dict())
    return np.concatenate(ids), states


@pytest.fixture(scope="module")
def torchrun_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """One torchrun launch (2 ranks) running every scenario."""
    tmp = tmp_path_factory.mktemp("torchrun")
    _, states = single_loader_stream(LOADER_RESUME_AT)
    loader_state = tmp / "loader_ws1.pt"
    torch.save(states[-1], loader_state)
    spec = dict(SPEC, scenarios=SCENARIOS, sampler_state_ws1=str(_world1_sampler_state(tmp)),
                loader_state_ws1=str(loader_state))
    return run_torchrun(spec, tmp)


@pytest.fixture(scope="module")
def sampler_run(torchrun_results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return torchrun_results


def test_ranks_take_disjoint_positions_of_one_stream(sampler_run: list[dict[str, Any]]) -> None:
    n = SPEC["batch"] * SPEC["batches"]
    stream = single_stream(WORLD * n)
    for r, res in enumerate(sampler_run):
        assert (res["rank"], res["world_size"]) == (r, WORLD)
        out = res["sampler"]
        assert len(out["draws"]) == n
        np.testing.assert_array_equal(out["draws"], stream[r::WORLD])  # positions r, r+W, ...
        assert out["len"] == -(-sum(SPEC["sizes"]) // WORLD)
    # the union (interleaved by position) is exactly the single-process stream
    union = np.empty(WORLD * n, dtype=np.int64)
    for r, res in enumerate(sampler_run):
        union[r::WORLD] = res["sampler"]["draws"]
    np.testing.assert_array_equal(union, stream)


def test_torch_dataloader_over_the_sampler_splits_the_same_way(sampler_run: list[dict[str, Any]]) -> None:
    stream = single_stream(WORLD * SPEC["batch"] * SPEC["batches"])
    for r, res in enumerate(sampler_run):
        np.testing.assert_array_equal(res["sampler"]["dataloader"], stream[r::WORLD])


def test_resume_world_2_to_1_continues_the_global_stream(sampler_run: list[dict[str, Any]]) -> None:
    n = SPEC["batch"] * SPEC["batches"]
    states = [res["sampler"]["state"] for res in sampler_run]
    key = MixtureSampler.GLOBAL_POSITION_KEY
    assert states[0][key] == states[1][key] == WORLD * n
    single = MixtureSampler(SPEC["sizes"], SPEC["weights"], seed=SPEC["seed"], rank=0, world_size=1)
    single.load_state_dict(states[0])
    np.testing.assert_array_equal(single.next_indices(500), single_stream(500, start=WORLD * n))


def test_resume_world_1_to_2_continues_the_global_stream(sampler_run: list[dict[str, Any]]) -> None:
    n = SPEC["batch"] * SPEC["batches"]
    start = RESUME_AT * SPEC["batch"]
    stream = single_stream(WORLD * n, start=start)
    for r, res in enumerate(sampler_run):
        np.testing.assert_array_equal(res["sampler"]["resumed"], stream[r::WORLD])


def test_loader_ranks_split_one_stream_and_resume_across_world_sizes(torchrun_results: list[dict[str, Any]]) -> None:
    b, nb = SPEC["loader_batch"], SPEC["loader_batches"]
    total_batches = WORLD * nb + max(nb, LOADER_RESUME_AT + WORLD * nb)
    stream, _ = single_loader_stream(total_batches)
    union = np.empty((WORLD * nb * b, 2), dtype=np.int64)
    for r, res in enumerate(torchrun_results):
        out = res["loader"]
        np.testing.assert_array_equal(out["ids"], stream[r : WORLD * nb * b : WORLD])  # disjoint positions
        union[r::WORLD] = out["ids"]
        # 1 -> 2: a world-size-1 state after LOADER_RESUME_AT batches continues on both ranks
        start = LOADER_RESUME_AT * b
        np.testing.assert_array_equal(out["resumed"], stream[start + r : start + WORLD * nb * b : WORLD])
    np.testing.assert_array_equal(union, stream[: WORLD * nb * b])  # union = single-process stream
    # 2 -> 1: rank 0's state after nb batches continues the global stream at position WORLD * nb * b
    with make_loader(SPEC, rank=0, world_size=1) as single:
        single.load_state_dict(torchrun_results[0]["loader"]["state"])
        np.testing.assert_array_equal(take(single, nb), stream[WORLD * nb * b : (WORLD + 1) * nb * b])


def test_one_ddp_step_of_the_training_example(torchrun_results: list[dict[str, Any]]) -> None:
    """Both ranks ran `fastmix.demo.train.train` for one step under DDP on different batches: the gradients were
    all-reduced (equal on both ranks) and so the parameters after the step are identical."""
    r0, r1 = (res["train"] for res in torchrun_results)
    assert r0["steps"] == r1["steps"] == 1
    assert np.isfinite(r0["loss"]) and np.isfinite(r1["loss"])
    assert not np.array_equal(r0["ids"], r1["ids"])  # each rank saw its own batch
    assert r0["loss"] != r1["loss"]
    torch.testing.assert_close(r0["grads"], r1["grads"])
    torch.testing.assert_close(r0["params"], r1["params"])
    assert r0["grads"].abs().sum() > 0


def test_rank_world_is_the_process_groups_or_alone(monkeypatch) -> None:
    """fastmix.distributed.rank_world: (0, 1) without a process group, whatever torchrun's variables say (no
    group: no split of the stream); rank() / world_size() still read them for scripts before the group exists."""
    import importlib.util

    from fastmix import distributed

    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert not distributed.is_initialized()
    assert distributed.rank_world() == (0, 1) and distributed.rank_world("pytorch") == (0, 1)
    assert (distributed.rank(), distributed.world_size()) == (3, 4)
    if importlib.util.find_spec("jax") is None:
        assert distributed.rank_world("jax") == (0, 1)
