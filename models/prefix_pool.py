"""Cache rows kept out of the forward pass for their prefixes, the oldest dropped first.

A row leaves the decoding batch when its step ends, or when a feed needs
fewer rows than the batch has. Its tokens may still be wanted: an SMC
particle waiting at a resampling barrier comes back with the same context
plus one step, and a packed batch hands its row to another problem in the
meantime. The pool keeps such rows, so a returning context copies its
prefix back into one batch row instead of recomputing it.
"""

from __future__ import annotations

from models.kv_batch import KVBatch


class PrefixPool:
    """Parked cache rows, searchable by their tokens, at most ``max_rows`` of them.

    Example:
        >>> pool = PrefixPool(max_rows=2)
        >>> pool.add(KVBatch.empty(num_layers=1, num_rows=3, device="cpu"))
        >>> len(pool.tokens)
        2
    """

    def __init__(self, max_rows: int):
        self.max_rows = max_rows
        self.parts: list[KVBatch] = []

    def add(self, part: KVBatch) -> None:
        """Keep ``part``'s rows; the oldest rows go once there are more than ``max_rows``."""
        if part.num_rows:
            self.parts.append(part)
        excess = sum(p.num_rows for p in self.parts) - self.max_rows
        while excess > 0:
            oldest = self.parts[0]
            if oldest.num_rows <= excess:
                self.parts.pop(0)
                excess -= oldest.num_rows
            else:
                self.parts[0] = oldest.select(range(excess, oldest.num_rows))
                excess = 0

    @property
    def tokens(self) -> list[tuple[int, ...]]:
        """Every pooled row's tokens, oldest part first: the index ``locate`` takes."""
        return [tokens for part in self.parts for tokens in part.tokens]

    def locate(self, index: int) -> tuple[KVBatch, int]:
        """The part and row of pooled row ``index``."""
        for part in self.parts:
            if index < part.num_rows:
                return part, index
            index -= part.num_rows
        raise IndexError(index)

    def clear(self) -> None:
        self.parts = []
