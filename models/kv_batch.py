"""A batched KV cache whose rows are particles' token prefixes.

Every row's cached tokens are kept with the physical column each one occupies.
Rows never get shorter: a token that a row no longer wants (its particle
changed its context, or a finished row idles while others decode) is masked
out of the 2-D attention mask, and positions are passed explicitly, so the
cache can hold holes. ``compact`` squeezes the holes out when they waste too
much. A new batch is made from old rows by one ``index_select`` per layer:
resampled particles share and fork rows instead of recomputing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer whose buffers grow by doubling.

    ``DynamicLayer`` concatenates on every update, copying the whole cache for
    each decoded token; here appending writes into spare capacity, and
    ``keys``/``values`` are views of the filled part.
    """

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.key_buffer = self.keys
        self.value_buffer = self.values
        self.length = 0

    def hold(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Take ``keys``/``values`` (``[rows, heads, length, dim]``) as the layer's contents."""
        if not self.is_initialized:
            super().lazy_initialization(keys, values)
        self.key_buffer, self.value_buffer = keys, values
        self.keys, self.values = keys, values
        self.length = keys.shape[-2]

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.length
        end = start + key_states.shape[-2]
        if self.key_buffer.dim() != 4 or end > self.key_buffer.shape[-2]:
            capacity = max(end, 2 * start, 64)
            shape = (*key_states.shape[:2], capacity, key_states.shape[-1])
            key_buffer = key_states.new_empty(shape)
            value_buffer = value_states.new_empty(shape)
            if start:
                key_buffer[:, :, :start] = self.keys
                value_buffer[:, :, :start] = self.values
            self.key_buffer, self.value_buffer = key_buffer, value_buffer
        self.key_buffer[:, :, start:end] = key_states
        self.value_buffer[:, :, start:end] = value_states
        self.length = end
        self.keys = self.key_buffer[:, :, :end]
        self.values = self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0


def new_cache(layers: Sequence[tuple[torch.Tensor, torch.Tensor]] | int) -> Cache:
    """A cache of full-attention layers: empty, or holding the given keys and values.

    Example:
        >>> new_cache(2).get_seq_length()
        0
    """
    if isinstance(layers, int):
        return Cache(layers=[GrowingLayer() for _ in range(layers)])
    cache_layers = []
    for keys, values in layers:
        layer = GrowingLayer()
        layer.hold(keys, values)
        cache_layers.append(layer)
    return Cache(layers=cache_layers)


def _tensors(cache: Cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers if layer.is_initialized]


@dataclass
class KVBatch:
    """Rows of cached token prefixes: the model's cache plus each row's tokens and columns.

    Example:
        >>> batch = KVBatch.empty(num_layers=2, num_rows=3, device="cpu")
        >>> batch.num_columns, batch.tokens
        (0, [(), (), ()])
    """

    cache: Cache
    mask: torch.Tensor  # [rows, columns] 1 where the column holds a cached token
    tokens: list[tuple[int, ...]]  # per row: the cached tokens, in order
    columns: list[list[int]]  # per row: the physical column of each cached token

    @classmethod
    def empty(cls, num_layers: int, num_rows: int, device) -> KVBatch:
        mask = torch.zeros((num_rows, 0), dtype=torch.long, device=device)
        return cls(new_cache(num_layers), mask, [()] * num_rows, [[] for _ in range(num_rows)])

    @property
    def num_rows(self) -> int:
        return self.mask.shape[0]

    @property
    def num_columns(self) -> int:
        return self.mask.shape[1]

    @property
    def waste(self) -> float:
        """Fraction of cache columns that hold no token (holes and padding)."""
        return 1.0 - float(self.mask.float().mean()) if self.mask.numel() else 0.0

    def select(self, rows: Sequence[int]) -> KVBatch:
        """A new batch whose row ``i`` is a copy of row ``rows[i]`` of this one."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        layers = [
            (keys.index_select(0, index), values.index_select(0, index))
            for keys, values in _tensors(self.cache)
        ]
        cache = new_cache(layers) if layers else new_cache(len(self.cache.layers))
        return KVBatch(
            cache,
            self.mask.index_select(0, index),
            [self.tokens[r] for r in rows],
            [list(self.columns[r]) for r in rows],
        )

    def reindex(self, sources: Sequence[int]) -> KVBatch:
        """Make row ``r`` hold old row ``sources[r]`` (-1: any row, to be truncated by the caller).

        Rows that keep their place are not touched and only moved rows are
        copied, in place; a batch that grows is reallocated by ``select``.
        After this call the old batch must not be used.
        """
        num_rows = len(sources)
        if num_rows > self.num_rows:
            return self.select([max(source, 0) for source in sources])
        moved = [r for r, source in enumerate(sources) if source not in (r, -1)]
        if moved:
            device = self.mask.device
            destination = torch.tensor(moved, dtype=torch.long, device=device)
            origin = torch.tensor([sources[r] for r in moved], dtype=torch.long, device=device)
            for keys, values in _tensors(self.cache):
                keys.index_copy_(0, destination, keys.index_select(0, origin))
                values.index_copy_(0, destination, values.index_select(0, origin))
            self.mask.index_copy_(0, destination, self.mask.index_select(0, origin))
            tokens, columns = list(self.tokens), list(self.columns)
            for r in moved:
                self.tokens[r] = tokens[sources[r]]
                self.columns[r] = list(columns[sources[r]])
        if num_rows < self.num_rows:
            layers = [(k[:num_rows], v[:num_rows]) for k, v in _tensors(self.cache)]
            if layers:
                self.cache = new_cache(layers)
            self.mask = self.mask[:num_rows]
            self.tokens = self.tokens[:num_rows]
            self.columns = self.columns[:num_rows]
        return self

    def truncate(self, row: int, length: int) -> None:
        """Keep only the first ``length`` cached tokens of ``row`` (the rest are masked out)."""
        dropped = self.columns[row][length:]
        if dropped:
            self.mask[row, dropped] = 0
        self.tokens[row] = self.tokens[row][:length]
        self.columns[row] = self.columns[row][:length]

    def compact(self) -> None:
        """Remove holes: each row's tokens move to the right end, padding on the left."""
        width = max((len(c) for c in self.columns), default=0)
        index = torch.zeros((len(self.columns), width), dtype=torch.long)
        mask = torch.zeros((len(self.columns), width), dtype=self.mask.dtype)
        for row, columns in enumerate(self.columns):
            start = width - len(columns)
            index[row, start:] = torch.tensor(columns, dtype=torch.long)
            mask[row, start:] = 1
            self.columns[row] = list(range(start, width))
        index = index.to(self.mask.device)
        layers = []
        for keys, values in _tensors(self.cache):
            gather = index[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3])
            layers.append((keys.gather(2, gather), values.gather(2, gather)))
        if layers:
            self.cache = new_cache(layers)
        self.mask = mask.to(self.mask.device)

    def copy_prefix(self, row: int, source: KVBatch, source_row: int, length: int) -> None:
        """Make ``row`` hold the first ``length`` tokens of ``source``'s row ``source_row``.

        They go to this batch's last ``length`` columns (``length`` must not
        exceed ``num_columns``): positions are passed explicitly, so where a
        row's tokens sit does not matter, only their order.
        """
        start = self.num_columns - length
        index = torch.tensor(source.columns[source_row][:length], device=self.mask.device)
        for (keys, values), (source_keys, source_values) in zip(
            _tensors(self.cache), _tensors(source.cache), strict=True
        ):
            keys[row, :, start:] = source_keys[source_row].index_select(1, index)
            values[row, :, start:] = source_values[source_row].index_select(1, index)
        self.mask[row] = 0
        self.mask[row, start:] = 1
        self.tokens[row] = source.tokens[source_row][:length]
        self.columns[row] = list(range(start, self.num_columns))
