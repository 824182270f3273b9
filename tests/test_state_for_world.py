"""`fastmix.distributed.state_for_world`: a loader state saved by one number of processes resumes on another with
the same global batch (openpi's `batch_size` = local batch x processes), continuing the one stream exactly: the
reference is the uninterrupted single-process stream (rank r of W takes its positions r, r+W, ...)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fastmix.distributed import state_for_world
from fastmix.errors import ConfigError
from tests._torchrun_worker import loader_ids, make_loader

SPEC: dict[str, Any] = {"sizes": [200, 60], "weights": [1.0, 4.0], "seed": 3, "loader_batch": 4, "horizon": 2}
GLOBAL, WORLD, SAVED_AT, MORE = 4, 2, 5, 4


def spec(local_batch: int) -> dict[str, Any]:
    return {**SPEC, "loader_batch": local_batch}


def batches(loader: Any, n: int) -> list[np.ndarray]:
    it = iter(loader)
    return [loader_ids(next(it)) for _ in range(n)]


def single_stream(n: int) -> list[np.ndarray]:
    with make_loader(spec(GLOBAL), rank=0, world_size=1) as loader:
        return batches(loader, n)


def test_one_process_state_resumes_on_two():
    stream = single_stream(SAVED_AT + MORE)
    with make_loader(spec(GLOBAL), rank=0, world_size=1) as single:
        batches(single, SAVED_AT)
        state = single.state_dict()
    converted = state_for_world(state, GLOBAL // WORLD, WORLD)
    assert converted["batch_size"] == converted["mixture"]["batch_size"] == GLOBAL // WORLD
    assert state["batch_size"] == GLOBAL  # the saved state itself is left as it is
    ranks = []
    for r in range(WORLD):
        with make_loader(spec(GLOBAL // WORLD), rank=r, world_size=WORLD) as loader:
            loader.load_state_dict(converted)
            ranks.append(batches(loader, MORE))
    for b in range(MORE):
        union = np.empty((GLOBAL, 2), dtype=np.int64)
        for r in range(WORLD):
            union[r::WORLD] = ranks[r][b]
        np.testing.assert_array_equal(union, stream[SAVED_AT + b], err_msg=f"resumed batch {b}")


def test_two_process_state_resumes_on_one():
    stream = single_stream(SAVED_AT + MORE)
    with make_loader(spec(GLOBAL // WORLD), rank=0, world_size=WORLD) as rank0:
        first = batches(rank0, SAVED_AT)
        state = rank0.state_dict()
    for b in range(SAVED_AT):
        np.testing.assert_array_equal(first[b], stream[b][0::WORLD])
    with make_loader(spec(GLOBAL), rank=0, world_size=1) as single:
        single.load_state_dict(state_for_world(state, GLOBAL, 1))
        resumed = batches(single, MORE)
    for b in range(MORE):
        np.testing.assert_array_equal(resumed[b], stream[SAVED_AT + b], err_msg=f"resumed batch {b}")


def test_other_states_are_left_to_the_loader():
    with make_loader(spec(GLOBAL), rank=0, world_size=1) as single:
        batches(single, 1)
        state = single.state_dict()
    assert state_for_world(state, GLOBAL, 1) is state  # same number of processes
    assert state_for_world(state, 3, WORLD) is state  # another global batch (6 rows, not 4)
    assert state_for_world({"batch": 1}, 2, 2) == {"batch": 1}  # malformed: the loader names the fault
    with make_loader(spec(3), rank=0, world_size=WORLD) as loader, pytest.raises(ConfigError, match="batch_size"):
        loader.load_state_dict(state_for_world(state, 3, WORLD))
