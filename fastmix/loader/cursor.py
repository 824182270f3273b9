"""`Position` and `Cursor`: where the batch stream stands — the one place the consumer's position lives.

A `Position` is (epoch, batches of that epoch handed out, sampler state after them). Every batch a stream
produces travels with the position after it (`BatchStream`), so whoever hands a batch out records exactly that
position (`Cursor.set`), never the planning frontier: an error anywhere before the hand-out (a dead or stalled
worker, a failing transform, Ctrl-C) leaves the cursor on the batch that was not delivered, and iterating again
continues with exactly that batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Position:
    """A point of the batch stream: the next batch is batch `batch` of epoch `epoch`, drawn from the sampler
    state `sampler_state`."""

    epoch: int
    batch: int
    sampler_state: dict[str, Any] = field(compare=False)


class Cursor:
    """The position after the last batch handed out, and the arithmetic of positions.

    Args:
        num_batches: batches per epoch. epoch_start: epoch -> the sampler state at the epoch's first draw.
    """

    def __init__(self, num_batches: int, epoch_start: Callable[[int], dict[str, Any]]) -> None:
        self.num_batches = int(num_batches)
        self._epoch_start = epoch_start
        self.position = self.start(0)

    # positions (pure)
    def start(self, epoch: int) -> Position:
        """The first batch of `epoch`."""
        return Position(int(epoch), 0, self._epoch_start(int(epoch)))

    def after(self, position: Position, sampler_state: dict[str, Any]) -> Position:
        """The position after the batch at `position`, whose draws left the sampler at `sampler_state`; after
        an epoch's last batch, the first batch of the next epoch."""
        if position.batch + 1 >= self.num_batches:
            return self.start(position.epoch + 1)
        return Position(position.epoch, position.batch + 1, sampler_state)

    def at(self, epoch: int, batch: int, sampler_state: dict[str, Any]) -> Position:
        """Batch `batch` of `epoch` (a resume); past the epoch's last batch, the next epoch's first."""
        if int(batch) >= self.num_batches:
            return self.start(int(epoch) + 1)
        return Position(int(epoch), int(batch), dict(sampler_state))

    # the consumer's position
    def set(self, position: Position) -> None:
        """Record that the consumer stands at `position` (a batch was handed out, a resume, a new epoch)."""
        self.position = position

    @property
    def epoch(self) -> int:
        return self.position.epoch

    @property
    def batch(self) -> int:
        return self.position.batch

    @property
    def sampler_state(self) -> dict[str, Any]:
        return self.position.sampler_state

    @property
    def remaining(self) -> int:
        """Batches of the current epoch not yet handed out."""
        return self.num_batches - self.position.batch

    def __repr__(self) -> str:
        return f"Cursor(epoch={self.epoch}, batch={self.batch}/{self.num_batches})"


__all__ = ["Cursor", "Position"]
