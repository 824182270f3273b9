"""One resume check for everything with `state_dict` / `load_state_dict` (sampler, loader, create_data_loader),
in the manner of torchdata's `run_test_save_load_state`: an uninterrupted run is the reference; a run stopped
after k items, checkpointed (the state pickled and read back), and continued in a fresh object must yield
exactly the reference's items from k on. k covers mid-epoch, the epoch boundary and a later epoch.

    from tests.resume_harness import check_resume, forever
    check_resume(lambda: MixtureSampler([7, 5], seed=3), lambda s: forever(s), epoch_length=12)
    check_resume(make_loader, lambda l: forever(l), epoch_length=len(make_loader()), key=batch_key, close=close)
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any


def forever(obj: Iterable[Any]) -> Iterator[Any]:
    """Items of `obj` epoch after epoch (`iter(obj)` again whenever an epoch ends)."""
    while True:
        empty = True
        for item in obj:
            empty = False
            yield item
        if empty:
            raise AssertionError(f"{obj!r} yielded nothing in a whole epoch")


def stop_points(epoch_length: int) -> list[int]:
    """Items consumed before the checkpoint: one, mid-epoch, at the epoch boundary, the first item of the next
    epoch, and mid-way through the third epoch."""
    if epoch_length < 1:
        raise ValueError(f"epoch_length must be >= 1, got {epoch_length}")
    points = [1, max(1, epoch_length // 2), epoch_length, epoch_length + 1, 2 * epoch_length + epoch_length // 2]
    return sorted(set(points))


def check_resume(
    make: Callable[[], Any],
    items: Callable[[Any], Iterator[Any]],
    *,
    epoch_length: int,
    stops: Sequence[int] | None = None,
    epochs: int = 3,
    key: Callable[[Any], Any] = lambda item: item,
    close: Callable[[Any], None] = lambda obj: None,
) -> list[Any]:
    """Assert that resuming from `obj.state_dict()` after each of `stops` items (default `stop_points`)
    continues the uninterrupted stream exactly, through `epochs` epochs of `epoch_length` items.

    Args:
        make: a fresh object, each call configured alike (same seed).
        items: the object's stream of items across epochs (e.g. `forever`).
        key: the comparable part of an item (e.g. the batch's indices).
        close: releases an object (loaders: worker processes).
    Returns the reference stream (keys), for further checks.
    """
    total = epochs * epoch_length
    stops = stop_points(epoch_length) if stops is None else list(stops)
    if not stops or max(stops) >= total:
        raise ValueError(f"stops {stops} must lie inside the {total} items of {epochs} epochs")
    obj = make()
    try:
        reference = [key(x) for x in itertools.islice(items(obj), total)]
    finally:
        close(obj)
    assert len(reference) == total, f"the stream ended after {len(reference)} of {total} items"
    for k in stops:
        first = make()
        try:
            head = [key(x) for x in itertools.islice(items(first), k)]
            state = pickle.loads(pickle.dumps(first.state_dict()))  # a checkpoint round trip
        finally:
            close(first)
        assert head == reference[:k], f"a fresh run differs from the reference before item {k}"
        resumed = make()
        try:
            resumed.load_state_dict(state)
            tail = [key(x) for x in itertools.islice(items(resumed), total - k)]
        finally:
            close(resumed)
        assert tail == reference[k:], (
            f"resumed after {k} items (epoch {k // epoch_length}, item {k % epoch_length} of {epoch_length}): "
            f"first difference at item {next(i for i, (a, b) in enumerate(zip(tail, reference[k:], strict=True)) if a != b) + k}"
            if len(tail) == total - k else f"resumed after {k} items: {len(tail)} items instead of {total - k}")
    return reference
