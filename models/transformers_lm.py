"""``TransformersLM``: a local Hugging Face causal LM as a batched particle backend."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.kv_batch import KVBatch
from models.prefix_pool import PrefixPool
from models.token_lm import TokenLM, assign_slots, match_prefixes
from ppl.errors import BackendError, InvalidArgumentError
from ppl.lm import Context, LMStats

# Requests with identical contexts are computed once when more than this many
# of their tokens are uncached.
_SHARED_FEED_MIN_TOKENS = 4


class TransformersLM(TokenLM):
    """A local ``transformers`` causal LM serving all particles in one batch.

    The backend keeps one batched KV cache across calls. Each request's
    context is tokenized, matched to the cached row sharing its longest token
    prefix, and only the remainder is fed to the model, so a particle's
    prefix is never recomputed: continuing particles keep their rows and
    resampled copies get copies of their ancestors' rows. A shared prompt is
    prefilled once. Rows whose step has ended leave the decoding batch once
    they are a quarter of it, so they stop costing compute. Rows that leave
    the batch go to a pool of ``pool_rows`` rows (``models.prefix_pool``),
    where later contexts still find their prefixes.

    Example (``lm`` is a tiny random llama over the letters ``a b c e``; load a real
    model with ``from_pretrained``):
        >>> (step,) = lm.sample_steps([ppl.StepRequest("ab", max_tokens=4)], seed=0)
        >>> step.text, step.token_ids, step.logp == step.logq
        ('abaa', (1, 2, 1, 1), True)
    """

    def __init__(self, model, tokenizer, *, compact_threshold: float = 0.5, pool_rows: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.vocab_size = model.config.vocab_size
        self.eos_token_ids = frozenset(_eos_ids(model, tokenizer))
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else min(self.eos_token_ids, default=0)
        self.compact_threshold = compact_threshold
        self.stats = LMStats()
        self._batch: KVBatch | None = None
        self._pool = PrefixPool(pool_rows)
        self._encoded: dict[Context, tuple[int, ...]] = {}
        self._capturing_hidden = False
        self._hidden: torch.Tensor | None = None
        self._cache_keyword = cache_keyword(model)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        gguf_file: str | None = None,
    ) -> TransformersLM:
        """Load a model and tokenizer from a local directory (never from a hub).

        Example (``model_dir`` holds ``lm``'s model and tokenizer, written by their
        ``save_pretrained``):
            >>> TransformersLM.from_pretrained(model_dir).vocab_size
            5
        """
        path = Path(path)
        if not path.is_dir():
            raise InvalidArgumentError(
                f"{path} is not a local model directory; pplscale loads models from disk only"
            )
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        transformers.utils.logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, **extra)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, local_files_only=True, **extra
        ).to(device)
        return cls(model, tokenizer)

    # --- cache management -----------------------------------------------------
    def _forget(self) -> None:
        self._batch = None
        self._pool.clear()

    def _capture_hidden(self, on: bool) -> None:
        self._capturing_hidden = on
        if not on:
            self._hidden = None

    def _last_hidden(self) -> torch.Tensor:
        return self._hidden

    def _token_embeddings(self, token_ids: list[int]) -> torch.Tensor:
        embedding = self.model.get_input_embeddings()
        return embedding(torch.tensor(token_ids, device=self.device))

    def _shed(self, rows: list[int], done: list[bool]) -> list[int]:
        """Pool the rows of ended steps once they are a quarter of the batch."""
        idle = [row for row, j in enumerate(rows) if done[j]]
        if 4 * len(idle) < len(rows):
            return rows
        keep = [row for row, j in enumerate(rows) if not done[j]]
        self._pool.add(self._batch.select(idle))
        self._batch = self._batch.reindex(keep)
        return [rows[row] for row in keep]

    def _feed(
        self, sequences: list[tuple[int, ...]], num_logits: list[int]
    ) -> tuple[torch.Tensor, list[int]]:
        """See ``TokenLM._feed``; rows stay where their cached prefix is wherever possible."""
        self._maybe_compact()
        try:
            matched = self._prefill_aside(sequences, num_logits)
            return self._feed_batch(sequences, num_logits, matched)
        except Exception:
            self._forget()
            raise

    def _prefill_aside(self, sequences, num_logits) -> tuple[list[int], list[int]] | None:
        """Prefill the long uncached parts of a few contexts on their own rows, into the pool.

        A feed pads every row to the longest uncached remainder, so a single
        context with many uncached tokens (a new problem's prompt, or a
        sampled tokenization that re-encoding changes) would cost every
        decoding row that many positions. When that padding outweighs the
        tokens themselves, those contexts are computed on a side batch of
        their own rows, and the feed then copies them from the pool.

        Returns the sequences' matches (``_match``) when nothing was
        prefilled, for the feed to reuse; ``None`` when the pool changed.
        """
        if self._batch is None:
            return None
        sources, lengths = self._match(sequences, num_logits)
        width, targets, short, longest = self._batch.num_columns, {}, 0, 1
        for sequence, needed, source, length in zip(
            sequences, num_logits, sources, lengths, strict=True
        ):
            end = len(sequence) - needed
            if end - length > 1 and end <= width:
                targets.setdefault(sequence[:end], (source, length))
                longest = max(longest, end - length + needed)
            else:
                short += 1
        aside = sum(len(target) - length for target, (_, length) in targets.items())
        if not targets or short * (longest - 1) <= aside:
            return sources, lengths
        live = self._batch.num_rows
        rows = sorted({source for source, _ in targets.values() if 0 <= source < live})
        main = self._batch
        self._batch = main.select(rows) if rows else None
        try:
            self._feed_batch(list(targets), [1] * len(targets))
            self._pool.add(self._batch)
        finally:
            self._batch = main
        return None

    def _feed_batch(self, sequences, num_logits, matched=None) -> tuple[torch.Tensor, list[int]]:
        sources, prefix_lengths = matched or self._match(sequences, num_logits)
        longest_remainder = max(len(q) - n for q, n in zip(sequences, prefix_lengths, strict=True))
        # Identical requests share one computation when they start from scratch
        # (a prompt's prefill) or their remainder is long; for the token or two
        # that resampled particles lack, computing duplicates is cheaper than
        # expanding the cache afterwards.
        if longest_remainder > _SHARED_FEED_MIN_TOKENS or min(sources) < 0:
            unique: dict[tuple, int] = {}
            group = [
                unique.setdefault((sources[j], prefix_lengths[j], sequence), len(unique))
                for j, sequence in enumerate(sequences)
            ]
            keys = list(unique)
        else:
            group = list(range(len(sequences)))
            keys = list(zip(sources, prefix_lengths, sequences, strict=True))
        batch, key_rows = self._rows_for([(source, length) for source, length, _ in keys])
        num_rows = len(keys)
        row_keys = [0] * num_rows
        for key, row in enumerate(key_rows):
            row_keys[row] = key
        remainders = [keys[k][2][keys[k][1] :] for k in row_keys]
        width = max(len(r) for r in remainders)
        input_ids = torch.full((num_rows, width), self.pad_token_id, dtype=torch.long)
        chunk_mask = torch.zeros((num_rows, width), dtype=batch.mask.dtype)
        positions = torch.zeros((num_rows, width), dtype=torch.long)
        base = batch.num_columns
        for row, (key, remainder) in enumerate(zip(row_keys, remainders, strict=True)):
            length = keys[key][1]
            start = width - len(remainder)
            input_ids[row, start:] = torch.tensor(remainder, dtype=torch.long)
            chunk_mask[row, start:] = 1
            positions[row, :] = length
            positions[row, start:] = torch.arange(length, length + len(remainder))
            batch.tokens[row] = batch.tokens[row] + tuple(remainder)
            batch.columns[row] = batch.columns[row] + list(range(base + start, base + width))
        batch.mask = torch.cat([batch.mask, chunk_mask.to(self.device)], dim=1)
        self.stats.forward_calls += 1
        self.stats.tokens_prefilled += sum(len(r) for r in remainders)
        if base == 0 or any(source < 0 for source, _, _ in keys):
            self.stats.prefill_calls += 1
        self._batch = batch
        logits = self._forward(batch, input_ids, positions, max(num_logits))
        if len(keys) == len(sequences):
            return logits, row_keys
        # Expand shared rows to one row per request (request order).
        rows_of_requests = [key_rows[k] for k in group]
        self._batch = batch.select(rows_of_requests)
        index = torch.tensor(rows_of_requests, device=self.device)
        if self._capturing_hidden:
            self._hidden = self._hidden.index_select(0, index)
        return logits.index_select(0, index), list(range(len(sequences)))

    def _decode(self, tokens: list[int | None]) -> torch.Tensor:
        """Feed one token per row (None: the row idles); return next-token logits."""
        batch = self._batch
        column = batch.num_columns
        input_ids = torch.tensor(
            [[self.pad_token_id if t is None else t] for t in tokens], dtype=torch.long
        )
        positions = torch.tensor([[len(batch.tokens[j])] for j in range(len(tokens))])
        step_mask = torch.tensor([[0 if t is None else 1] for t in tokens], dtype=batch.mask.dtype)
        for j, token in enumerate(tokens):
            if token is not None:
                batch.tokens[j] = batch.tokens[j] + (token,)
                batch.columns[j].append(column)
        batch.mask = torch.cat([batch.mask, step_mask.to(self.device)], dim=1)
        self.stats.forward_calls += 1
        self.stats.decode_rows += len(tokens)
        self.stats.idle_rows += tokens.count(None)
        return self._forward(batch, input_ids, positions, 1)[:, -1, :]

    def _forward(self, batch: KVBatch, input_ids, positions, num_logits: int) -> torch.Tensor:
        output = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=batch.mask,
            position_ids=positions.to(self.device),
            **{self._cache_keyword: batch.cache},
            use_cache=True,
            logits_to_keep=num_logits,
            output_hidden_states=self._capturing_hidden,
        )
        if self._capturing_hidden:
            # The last hidden state is the final norm's output, what the LM head reads.
            self._hidden = output.hidden_states[-1][:, -1, :]
        logits = output.logits
        # A finite sum means finite logits (NaN and infinities carry through it), and
        # costs far less than the element-wise check, which runs only when it is not.
        if not torch.isfinite(logits.sum()) and not torch.isfinite(logits).all():
            raise BackendError("the model produced non-finite logits; check its weights and dtype")
        return logits

    def _match(self, sequences, num_logits) -> tuple[list[int], list[int]]:
        """``match_prefixes`` over the batch's rows, then the pool's (numbered after them).

        A pooled prefix is copied into the batch's existing columns, so it
        counts only up to their number.
        """
        if self._batch is None:
            return match_prefixes([], sequences, num_logits)
        width = self._batch.num_columns
        pooled = [tokens[:width] for tokens in self._pool.tokens]
        return match_prefixes(self._batch.tokens + pooled, sequences, num_logits)

    def _rows_for(self, sources: list[tuple[int, int]]) -> tuple[KVBatch, list[int]]:
        """A batch holding, for each ``(source, length)``, that prefix of a batch or pool row.

        Returns the batch and the row given to each source. A source keeps its
        own row when it can, so surviving particles stay where they are and
        only forked, replaced or pooled rows are copied. Rows the new batch
        does not keep go to the pool.
        """
        old = self._batch
        if old is None:
            empty = KVBatch.empty(self.model.config.num_hidden_layers, len(sources), self.device)
            return empty, list(range(len(sources)))
        live = old.num_rows
        in_batch = [source if source < live else -1 for source, _ in sources]
        assigned = assign_slots(in_batch, len(sources), keep_sources_free=False)
        origins = [-1] * len(sources)
        for source, row in zip(in_batch, assigned, strict=True):
            origins[row] = source
        pooled = {
            row: (self._pool.locate(source - live), length)
            for (source, length), row in zip(sources, assigned, strict=True)
            if source >= live
        }
        kept = set(origins)
        dropped = [row for row in range(live) if row not in kept and old.tokens[row]]
        leaving = old.select(dropped) if dropped else None
        batch = old.reindex(origins)
        for (source, length), row in zip(sources, assigned, strict=True):
            batch.truncate(row, length if 0 <= source < live else 0)
        for row, ((part, part_row), length) in pooled.items():
            batch.copy_prefix(row, part, part_row, length)
        if leaving is not None:
            self._pool.add(leaving)
        return batch, assigned

    def _maybe_compact(self) -> None:
        batch = self._batch
        if batch is not None and batch.num_columns > 32 and batch.waste > self.compact_threshold:
            batch.compact()


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source is not None:
            ids.update(int(i) for i in source)
    return ids


def cache_keyword(model) -> str:
    """The forward argument that takes the KV cache: ``cache`` in recent transformers.

    Older releases call it ``past_key_values``, which recent ones deprecate.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> config = LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8,
        ...                      num_hidden_layers=1, num_attention_heads=1)
        >>> cache_keyword(LlamaForCausalLM(config)) in ("cache", "past_key_values")
        True
    """
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
