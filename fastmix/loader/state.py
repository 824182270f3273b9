"""A `MixtureLoader`'s saved position: `state_dict()` = {epoch, batch, sampler, batch_size, num_batches,
mixture}, where `mixture` is the fingerprint of what the stream depends on. Loading refuses another mixture or a
malformed state with a `ConfigError` naming what differs or the key at fault; num_workers and world size may
differ (a changed world size converts the rank-local position)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fastmix._args import check_int
from fastmix.errors import ConfigError
from fastmix.loader.cursor import Position

if TYPE_CHECKING:
    from fastmix.loader.loader import MixtureLoader

EPOCH_KEY = "epoch"
BATCH_KEY = "batch"
SAMPLER_KEY = "sampler"
MIXTURE_KEY = "mixture"


def fingerprint(loader: MixtureLoader) -> dict[str, Any]:
    """What a saved position depends on: datasets and their sizes, normalized weights, weighting, shuffle,
    batching, batch size and seed (not num_workers, world size or rank: a resume may change those)."""
    m = loader.sampler.mixture
    return {"datasets": [s.name for s in loader.sources], "sizes": [int(v) for v in m.sizes],
            "weights": (m.weights / m.weights.sum()).tolist(), "weighting": m.weighting,
            "shuffle": loader.sampler.shuffle, "batching": loader.sampler.batching, "batch_size": loader.batch_size,
            "seed": loader.sampler.seed}


def state_of(loader: MixtureLoader, position: Position) -> dict[str, Any]:
    """The state dict of `position` in `loader`'s stream."""
    return {EPOCH_KEY: position.epoch, BATCH_KEY: position.batch, SAMPLER_KEY: dict(position.sampler_state),
            "batch_size": loader.batch_size, "num_batches": len(loader), MIXTURE_KEY: fingerprint(loader)}


def position_of(loader: MixtureLoader, state: Mapping[str, Any]) -> Position:
    """The position a state dict names, checked against `loader` (ConfigError naming the fault; nothing changes)."""
    if not isinstance(state, Mapping):
        raise ConfigError(f"MixtureLoader state must be a dict from MixtureLoader.state_dict(), got "
                          f"{type(state).__name__}")
    for k in (EPOCH_KEY, BATCH_KEY, SAMPLER_KEY):
        if k not in state:
            raise ConfigError(f"MixtureLoader state is missing key {k!r}; got keys {sorted(state)}")
    epoch = check_int(state[EPOCH_KEY], f"MixtureLoader state[{EPOCH_KEY!r}]", minimum=0)
    batch = check_int(state[BATCH_KEY], f"MixtureLoader state[{BATCH_KEY!r}]", minimum=0)
    sampler_state = state[SAMPLER_KEY]
    if not isinstance(sampler_state, Mapping):
        raise ConfigError(f"MixtureLoader state['sampler'] must be a dict (the sampler's state), got "
                          f"{type(sampler_state).__name__}")
    check_fingerprint(loader, state)
    where = "MixtureLoader state['sampler']"
    if sampler_state.get("epoch") != epoch:
        raise ConfigError(f"{where}['epoch']={sampler_state.get('epoch')!r} disagrees with "
                          f"state['epoch']={epoch}: the state is inconsistent")
    if sampler_state.get("seed") != loader.sampler.seed:
        raise ConfigError(f"{where}['seed']={sampler_state.get('seed')!r} differs from this loader's "
                          f"seed={loader.sampler.seed}; construct the loader with the seed the state was saved with")
    probe = copy.copy(loader.sampler)  # validate (and convert world size) without touching the planning sampler
    probe.load_state_dict(dict(sampler_state), where=where)
    if sampler_state.get("world_size") != loader.sampler.world_size:  # the rank-local position changed
        batch = min(len(loader), probe.position // loader.batch_size)
    if not 0 <= batch <= len(loader):
        raise ConfigError(f"MixtureLoader state['batch']={batch} is outside [0, {len(loader)}] batches "
                          "per epoch of this loader")
    return loader._cursor.at(epoch, batch, probe.state_dict())


def check_fingerprint(loader: MixtureLoader, state: Mapping[str, Any]) -> None:
    """ConfigError listing every field in which `state`'s mixture differs from `loader`'s."""
    saved = state.get(MIXTURE_KEY)
    mine = fingerprint(loader)
    if saved is None:
        if "batch_size" in state and state["batch_size"] != loader.batch_size:
            raise ConfigError(f"state was saved with batch_size={state['batch_size']}, this loader has "
                              f"batch_size={loader.batch_size}; the sample stream would not continue exactly")
        warnings.warn("MixtureLoader state has no 'mixture' fingerprint (saved by an older fastmix): cannot "
                      "check that it belongs to this mixture", RuntimeWarning, stacklevel=4)
        return
    if not isinstance(saved, Mapping):
        raise ConfigError(f"MixtureLoader state['mixture'] must be a dict (the mixture fingerprint), got "
                          f"{type(saved).__name__}")
    rows = [row for k, mine_v in mine.items() if (row := _differs(k, saved, mine_v))]
    if rows:
        raise ConfigError("MixtureLoader state was saved by another mixture (resuming would continue another "
                          "sample stream):\n" + "\n".join(rows) + "\nConstruct the loader with the "
                          "configuration the state was saved with, or start without the state.")


def _differs(key: str, saved: Mapping[str, Any], mine: Any) -> str | None:
    if key not in saved:
        return f"  {key}: missing from the state; this loader has {key}={mine!r}"
    v = saved[key]
    if key == "weights":
        try:
            same = np.shape(v) == np.shape(mine) and np.allclose(v, mine, rtol=1e-9, atol=1e-12)
        except (TypeError, ValueError):
            same = False
    else:
        same = v == mine
    return None if same else f"  {key}: the state has {key}={v!r}; this loader has {key}={mine!r}"


__all__ = ["BATCH_KEY", "EPOCH_KEY", "MIXTURE_KEY", "SAMPLER_KEY", "check_fingerprint", "fingerprint",
           "position_of", "state_of"]
