"""A `MixtureLoader`'s saved position: `state_dict()` = {epoch, batch, sampler, batch_size, num_batches,
mixture}, where `mixture` is the fingerprint of what the stream depends on. Loading refuses another mixture or a
malformed state with a `ConfigError` naming what differs or the key at fault; num_workers and world size may
differ (a changed world size converts the rank-local position).

With `allow_mixture_change=True` the weights, weighting and frame filters (`CHANGEABLE`) may differ: the stream
continues from the saved (epoch, batch) with the loader's mixture (draw p is a pure function of seed, epoch, p
and the mixture's tables, so the same state and configuration give the same stream), the stratified carry
restarts there, a batch index past the new epoch length ends that epoch, and a RuntimeWarning names the old and
new weights and shares. Datasets, sizes, seed, batch size, shuffle and batching must still match."""

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
CHANGEABLE = ("weights", "weighting", "frame_filters")  # what allow_mixture_change=True lets differ
_INFORMATIONAL = ("shares",)  # recorded for messages, never compared


def fingerprint(loader: MixtureLoader) -> dict[str, Any]:
    """What a saved position depends on: datasets and their sizes, normalized weights, weighting, frame filters
    (per dataset None when it keeps every frame, else its kept-frame count and a digest of the kept rows),
    shuffle, batching, batch size and seed (not num_workers, world size or rank: a resume may change those);
    plus the shares, for messages."""
    m = loader.sampler.mixture
    filters = [None if c is None or c.everything else {"kept_frames": c.num_kept, "digest": c.digest()}
               for c in m.kept]
    return {"datasets": [s.name for s in loader.sources], "sizes": [int(v) for v in m.sizes],
            "weights": (m.weights / m.weights.sum()).tolist(), "weighting": m.weighting, "frame_filters": filters,
            "shuffle": loader.sampler.shuffle, "batching": loader.sampler.batching, "batch_size": loader.batch_size,
            "seed": loader.sampler.seed, "shares": m.shares.tolist()}


def state_of(loader: MixtureLoader, position: Position) -> dict[str, Any]:
    """The state dict of `position` in `loader`'s stream."""
    return {EPOCH_KEY: position.epoch, BATCH_KEY: position.batch, SAMPLER_KEY: dict(position.sampler_state),
            "batch_size": loader.batch_size, "num_batches": len(loader), MIXTURE_KEY: fingerprint(loader)}


def position_of(loader: MixtureLoader, state: Mapping[str, Any], *, allow_mixture_change: bool = False) -> Position:
    """The position a state dict names, checked against `loader` (ConfigError naming the fault; nothing changes).
    `allow_mixture_change`: fields of `CHANGEABLE` may differ (module docstring); a RuntimeWarning says so."""
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
    changed = check_fingerprint(loader, state, allow_mixture_change=allow_mixture_change)
    where = "MixtureLoader state['sampler']"
    if sampler_state.get("epoch") != epoch:
        raise ConfigError(f"{where}['epoch']={sampler_state.get('epoch')!r} disagrees with "
                          f"state['epoch']={epoch}: the state is inconsistent")
    if sampler_state.get("seed") != loader.sampler.seed:
        raise ConfigError(f"{where}['seed']={sampler_state.get('seed')!r} differs from this loader's "
                          f"seed={loader.sampler.seed}; construct the loader with the seed the state was saved with")
    probe = copy.copy(loader.sampler)  # validate (and convert world size) without touching the planning sampler
    probe.load_state_dict(dict(sampler_state), where=where, mixture_changed=bool(changed))
    if sampler_state.get("world_size") != loader.sampler.world_size:  # the rank-local position changed
        batch = min(len(loader), probe.position // loader.batch_size)
    if changed:  # the epoch may have another length now: a batch past its end ends the epoch
        batch = min(batch, len(loader))
    if not 0 <= batch <= len(loader):
        raise ConfigError(f"MixtureLoader state['batch']={batch} is outside [0, {len(loader)}] batches "
                          "per epoch of this loader")
    position = loader._cursor.at(epoch, batch, probe.state_dict())
    if changed:
        _warn_changed(loader, state, changed, position.epoch, position.batch)
    return position


def check_fingerprint(loader: MixtureLoader, state: Mapping[str, Any], *,
                      allow_mixture_change: bool = False) -> list[str]:
    """ConfigError listing every field in which `state`'s mixture differs from `loader`'s; with
    `allow_mixture_change`, fields of `CHANGEABLE` may differ and their names are returned."""
    saved = state.get(MIXTURE_KEY)
    mine = fingerprint(loader)
    if saved is None:
        if "batch_size" in state and state["batch_size"] != loader.batch_size:
            raise ConfigError(f"state was saved with batch_size={state['batch_size']}, this loader has "
                              f"batch_size={loader.batch_size}; the sample stream would not continue exactly")
        warnings.warn("MixtureLoader state has no 'mixture' fingerprint (saved by an older fastmix): cannot "
                      "check that it belongs to this mixture", RuntimeWarning, stacklevel=4)
        return []
    if not isinstance(saved, Mapping):
        raise ConfigError(f"MixtureLoader state['mixture'] must be a dict (the mixture fingerprint), got "
                          f"{type(saved).__name__}")
    saved = {"frame_filters": [None] * len(mine["frame_filters"]), **saved}  # states from before frame filters
    rows = {k: row for k, mine_v in mine.items() if k not in _INFORMATIONAL and (row := _differs(k, saved, mine_v))}
    fixed = [row for k, row in rows.items() if k not in CHANGEABLE]
    if rows and (not allow_mixture_change or fixed):
        hint = ("\nWith allow_mixture_change=True only the weights, weighting and frame filters may differ."
                if allow_mixture_change else
                "\nConstruct the loader with the configuration the state was saved with, start without the state"
                + (", or pass allow_mixture_change=True to continue from this position with the new weights, "
                   "weighting or frame filters" if not fixed else "") + ".")
        raise ConfigError("MixtureLoader state was saved by another mixture (resuming would continue another "
                          "sample stream):\n" + "\n".join(fixed if allow_mixture_change else list(rows.values()))
                          + hint)
    return list(rows)


def _warn_changed(loader: MixtureLoader, state: Mapping[str, Any], changed: list[str], epoch: int,
                  batch: int) -> None:
    """RuntimeWarning: the resume continues under another mixture; old and new weights, weighting and shares."""
    saved, mine = state[MIXTURE_KEY], fingerprint(loader)
    names = mine["datasets"]
    old_shares = saved.get("shares")
    rows = []
    for i, name in enumerate(names):
        old = f"{100 * old_shares[i]:.3f}%" if isinstance(old_shares, list) and len(old_shares) == len(names) \
            else "unknown"
        rows.append(f"{name} {old} -> {100 * mine['shares'][i]:.3f}%")
    what = "; ".join(f"{k} {saved.get(k)!r} -> {mine[k]!r}" for k in changed if k != "frame_filters")
    if "frame_filters" in changed:
        kept = ", ".join(f"{n} {_kept(s, mine['sizes'][i])} -> {_kept(m, mine['sizes'][i])}" for i, (n, s, m) in
                         enumerate(zip(names, saved["frame_filters"], mine["frame_filters"], strict=True)) if s != m)
        what = f"{what}; " * bool(what) + f"kept frames {kept}"
    warnings.warn(f"MixtureLoader resumes epoch {epoch} at batch {batch} under a changed mixture "
                  f"(allow_mixture_change=True): {what}; shares {', '.join(rows)}. Draws from this position on "
                  "follow the new mixture (the batches before it were drawn under the old one).",
                  RuntimeWarning, stacklevel=4)


def _kept(entry: Any, size: int) -> str:
    return f"all {size}" if entry is None else f"{entry.get('kept_frames', '?')} of {size}"


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


__all__ = ["BATCH_KEY", "CHANGEABLE", "EPOCH_KEY", "MIXTURE_KEY", "SAMPLER_KEY", "check_fingerprint", "fingerprint",
           "position_of", "state_of"]
