"""`Cursor`: the consumer's position in the batch stream — the one place it lives.

The position is (epoch, batches of that epoch handed out, sampler state after them). It advances only when
a batch is handed to the consumer (`advance`), never when a batch is planned or decoded, so an error
anywhere before the hand-out (a dead or stalled worker, a failing `transform`, Ctrl-C) leaves it on the
batch that was not delivered, and iterating again continues with exactly that batch. Planning runs ahead on
its own copy of the sampler state (the iterator's frontier), never on this one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Cursor:
    """Position after the last batch handed out.

    Args:
        num_batches: batches per epoch. epoch_start: epoch -> the sampler state at the epoch's first draw.
    """

    def __init__(self, num_batches: int, epoch_start: Callable[[int], dict[str, Any]]) -> None:
        self.num_batches = int(num_batches)
        self._epoch_start = epoch_start
        self.epoch = 0
        self.batch = 0
        self.sampler_state = epoch_start(0)

    @property
    def remaining(self) -> int:
        """Batches of the current epoch not yet handed out."""
        return self.num_batches - self.batch

    def advance(self, sampler_state: dict[str, Any]) -> None:
        """One batch was handed out; `sampler_state` is the sampler's state after its draws. Moves to the next
        epoch after the epoch's last batch."""
        self.batch += 1
        self.sampler_state = sampler_state
        if self.batch >= self.num_batches:
            self.start_epoch(self.epoch + 1)

    def start_epoch(self, epoch: int) -> None:
        """Move to the first batch of `epoch`."""
        self.epoch, self.batch, self.sampler_state = int(epoch), 0, self._epoch_start(int(epoch))

    def seek(self, epoch: int, batch: int, sampler_state: dict[str, Any]) -> None:
        """Move to batch `batch` of `epoch` (a resume); `sampler_state` is the sampler's state there."""
        self.epoch, self.batch, self.sampler_state = int(epoch), int(batch), dict(sampler_state)
        if self.batch >= self.num_batches:
            self.start_epoch(self.epoch + 1)

    def __repr__(self) -> str:
        return f"Cursor(epoch={self.epoch}, batch={self.batch}/{self.num_batches})"


__all__ = ["Cursor"]
