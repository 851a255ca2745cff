"""A batched KV cache whose rows are particles' token prefixes.

Every row's cached tokens are kept with the physical column each one occupies.
Rows never get shorter: a token that a row no longer wants (its particle
changed its context, or a finished row idles while others decode) is masked
out of the 2-D attention mask, and positions are passed explicitly, so the
cache can hold holes. ``compact`` squeezes the holes out when they waste too
much. A new batch is made from old rows by ``index_select`` along the batch
dimension: resampled particles share and fork rows instead of recomputing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache


@dataclass
class KVBatch:
    cache: DynamicCache
    mask: torch.Tensor  # [rows, columns] 1 where the column holds a cached token
    tokens: list[tuple[int, ...]]  # per row: the cached tokens, in order
    columns: list[list[int]]  # per row: the physical column of each cached token

    @property
    def num_columns(self) -> int:
        return self.mask.shape[1]

    @property
    def waste(self) -> float:
        """Fraction of cache columns that hold no token (holes and padding)."""
        return 1.0 - float(self.mask.float().mean()) if self.mask.numel() else 0.0

    def token_matrix(self) -> np.ndarray:
        """Rows' tokens padded with -1, for vectorized prefix matching."""
        width = max((len(t) for t in self.tokens), default=0)
        matrix = np.full((len(self.tokens), width), -1, dtype=np.int64)
        for row, tokens in enumerate(self.tokens):
            matrix[row, : len(tokens)] = tokens
        return matrix

    def select(self, rows: list[int]) -> KVBatch:
        """A new batch whose row ``i`` is a copy of row ``rows[i]`` of this one."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)
        return KVBatch(
            self.cache,
            self.mask.index_select(0, index),
            [self.tokens[r] for r in rows],
            [self.columns[r] for r in rows],
        )

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
        for layer in self.cache.layers:
            gather = index[:, None, :, None].expand(
                -1, layer.keys.shape[1], -1, layer.keys.shape[3]
            )
            layer.keys = layer.keys.gather(2, gather)
            layer.values = layer.values.gather(2, gather)
        self.mask = mask.to(self.mask.device)
