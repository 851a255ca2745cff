"""``TransformersLM``: a local Hugging Face causal LM as a batched particle backend."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.kv_batch import KVBatch
from ppl.errors import BackendError, InvalidArgumentError
from ppl.lm import LM, Context, LMStats, ScoreRequest, StepRequest, StepResult

# Scoring materialises logits for every scored position; cap that memory.
_SCORE_LOGITS_BUDGET = 256 * 2**20
# Requests with identical contexts are computed once when more than this many
# of their tokens are uncached.
_SHARED_FEED_MIN_TOKENS = 4


class TransformersLM(LM):
    """A local ``transformers`` causal LM serving all particles in one batch.

    The backend keeps one batched KV cache across calls. Each request's
    context is tokenized, matched to the cached row sharing its longest token
    prefix, and only the remainder is fed to the model, so a particle's
    prefix is never recomputed; requests with identical contexts share one
    computation and are forked by ``index_select``. Contexts are tokenized
    canonically (a ``str`` with the tokenizer's default special tokens, a
    ``Chat`` through the chat template), so a step's probability depends only
    on the text of its context, never on how the text was produced.

    Example:
        >>> lm = TransformersLM.from_pretrained("path/to/local/model")  # doctest: +SKIP
        >>> lm.sample_steps([StepRequest("Once upon", max_tokens=8)], seed=0)  # doctest: +SKIP
    """

    def __init__(self, model, tokenizer, *, compact_threshold: float = 0.5):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.eos_token_ids = frozenset(_eos_ids(model, tokenizer))
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else min(self.eos_token_ids, default=0)
        self.compact_threshold = compact_threshold
        self.stats = LMStats()
        self._batch: KVBatch | None = None
        self._encoded: dict[Context, tuple[int, ...]] = {}

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

        Example:
            >>> lm = TransformersLM.from_pretrained("/models/smollm2")  # doctest: +SKIP
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

    # --- text <-> tokens ------------------------------------------------------
    def render(self, context: Context) -> str:
        """The text the model sees for ``context`` (chat template applied for ``Chat``)."""
        if isinstance(context, str):
            return context
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidArgumentError(
                "this tokenizer has no chat template; use a str context instead of ppl.Chat"
            )
        # Render the prompt with an open assistant turn and append the assistant
        # text verbatim: unlike continue_final_message this never depends on
        # whether the template strips or rewrites message content.
        header = self.tokenizer.apply_chat_template(
            context.messages(), tokenize=False, add_generation_prompt=True
        )
        return header + context.assistant

    def encode(self, context: Context) -> tuple[int, ...]:
        """Token ids of ``context``; a ``str`` gets the tokenizer's default special tokens."""
        ids = self._encoded.get(context)
        if ids is None:
            text = self.render(context)
            add_special = isinstance(context, str)
            ids = tuple(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])
            if not ids:
                raise InvalidArgumentError(
                    f"context {text[:40]!r} encodes to no tokens; the model needs at least one"
                )
            if len(self._encoded) > 4096:
                self._encoded.clear()
            self._encoded[context] = ids
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(
            list(token_ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    # --- the backend contract -------------------------------------------------
    @torch.inference_mode()
    def sample_steps(
        self, requests: Sequence[StepRequest], *, seed: int | None = None
    ) -> list[StepResult]:
        """Generate one step per request in lock-step batched decoding.

        Each step ends after the token completing one of its stop strings, at
        EOS, or at ``max_tokens``. ``logp`` is under the temperature-1 model,
        ``logq`` under the proposal actually used (temperature and logits
        processor). Rows whose step has ended leave the decoding batch once
        they are a quarter of it, so they stop costing compute; their cache
        rows are kept aside and put back when the call returns.
        """
        if not requests:
            return []
        self.stats.sample_calls += 1
        generator = torch.Generator(self.device)
        generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8)) >> 1)
        try:
            return self._sample(requests, generator)
        except Exception:
            self._batch = None  # a half-updated cache must not serve later calls
            raise

    def _sample(self, requests: Sequence[StepRequest], generator) -> list[StepResult]:
        size = len(requests)
        logits, rows = self._feed([self.encode(r.context) for r in requests], [1] * size)
        logits = logits[:, -1, :]
        generated: list[list[int]] = [[] for _ in range(size)]
        logp = [0.0] * size
        logq = [0.0] * size
        finished = [False] * size
        done = [False] * size
        # rows[r] is the request batch row r serves.
        parked: list[tuple[KVBatch, list[int]]] = []
        while True:
            live = [row for row, j in enumerate(rows) if not done[j]]
            if len(live) < len(rows):
                logits = logits[live]
            live_requests = [rows[row] for row in live]
            tokens, picked_p, picked_q = self._draw(
                logits, [requests[j] for j in live_requests], generated, live_requests, generator
            )
            self.stats.tokens_generated += len(live)
            for j, token, token_p, token_q in zip(
                live_requests, tokens, picked_p, picked_q, strict=True
            ):
                generated[j].append(token)
                logp[j] += token_p
                logq[j] += token_q
                if token in self.eos_token_ids:
                    done[j] = finished[j] = True
                elif len(generated[j]) >= requests[j].max_tokens or self._hit_stop(
                    generated[j], requests[j].stop
                ):
                    done[j] = True
            if all(done):
                break
            idle = [row for row, j in enumerate(rows) if done[j]]
            if 4 * len(idle) >= len(rows):
                keep = [row for row, j in enumerate(rows) if not done[j]]
                parked.append((self._batch.select(idle), [rows[row] for row in idle]))
                self._batch = self._batch.reindex(keep)
                rows = [rows[row] for row in keep]
            logits = self._decode_one([None if done[j] else generated[j][-1] for j in rows])
        if parked:
            self._batch = KVBatch.merge([(self._batch, rows), *parked], size)
        results = []
        for j in range(size):
            text_ids = generated[j][:-1] if finished[j] else generated[j]
            results.append(
                StepResult(
                    self.decode(text_ids), tuple(generated[j]), logp[j], logq[j], finished[j]
                )
            )
        self._maybe_compact()
        return results

    def _draw(
        self,
        logits: torch.Tensor,
        requests: Sequence[StepRequest],
        generated: list[list[int]],
        indices: list[int],
        generator: torch.Generator,
    ) -> tuple[list[int], list[float], list[float]]:
        """Sample one token per row from its proposal; return tokens, log p and log q."""
        logits = logits.float()
        log_p = torch.log_softmax(logits, dim=-1)
        shaped = any(r.temperature != 1.0 or r.logits_processor for r in requests)
        if shaped:
            proposal = logits.clone()
            groups: dict[object, list[int]] = {}
            for row, request in enumerate(requests):
                if request.logits_processor is not None:
                    groups.setdefault(request.logits_processor, []).append(row)
            for processor, group in groups.items():
                index = torch.tensor(group, device=self.device)
                processed = processor(
                    proposal.index_select(0, index), [generated[indices[r]] for r in group]
                )
                proposal.index_copy_(0, index, processed.to(proposal.dtype))
            temperatures = torch.tensor(
                [[r.temperature] for r in requests], dtype=torch.float32, device=self.device
            )
            log_q = torch.log_softmax(proposal / temperatures, dim=-1)
            if torch.isnan(log_q).any():
                raise BackendError(
                    "a logits processor left no token with positive probability (or produced "
                    "NaN); it must keep at least one token allowed"
                )
        else:
            log_q = log_p
        tokens = sample_categorical(log_q, generator)
        picked_p = log_p.gather(1, tokens[:, None]).squeeze(1).tolist()
        picked_q = (
            log_q.gather(1, tokens[:, None]).squeeze(1).tolist() if shaped else list(picked_p)
        )
        return tokens.tolist(), picked_p, picked_q

    @torch.inference_mode()
    def score_steps(self, requests: Sequence[ScoreRequest]) -> list[float]:
        """Log-probability of each continuation under the temperature-1 model."""
        self.stats.score_calls += 1
        scores = [0.0] * len(requests)
        todo = [j for j, r in enumerate(requests) if r.token_ids]
        vocab = self.model.config.vocab_size
        longest = max((len(requests[j].token_ids) for j in todo), default=1)
        per_call = max(1, _SCORE_LOGITS_BUDGET // (4 * vocab * longest))
        for start in range(0, len(todo), per_call):
            chunk = todo[start : start + per_call]
            sequences, continuations = [], []
            for j in chunk:
                continuation = tuple(requests[j].token_ids)
                sequences.append(self.encode(requests[j].context) + continuation[:-1])
                continuations.append(continuation)
            counts = [len(c) for c in continuations]
            logits, rows = self._feed(sequences, counts)
            log_p = torch.log_softmax(logits.float(), dim=-1)
            width = log_p.shape[1]
            for row, request in enumerate(rows):
                j, continuation = chunk[request], continuations[request]
                targets = torch.tensor(continuation, device=self.device)
                positions = torch.arange(width - len(continuation), width, device=self.device)
                scores[j] = float(log_p[row, positions, targets].sum())
            self.stats.tokens_scored += sum(counts)
        self._maybe_compact()
        return scores

    @torch.inference_mode()
    def next_token_logprobs(self, contexts: Sequence[Context]) -> torch.Tensor:
        """Log-probabilities of the next token after each context, ``[len(contexts), vocab]``.

        One batched pass that reuses cached prefixes, like the steps do: the
        building block of judges that read a yes/no answer off the model.

        Example:
            >>> lm.next_token_logprobs(["The sky is"]).shape  # doctest: +SKIP
            torch.Size([1, 49152])
        """
        if not contexts:
            return torch.empty((0, self.model.config.vocab_size))
        self.stats.score_calls += 1
        logits, rows = self._feed([self.encode(c) for c in contexts], [1] * len(contexts))
        log_p = torch.empty(
            (len(contexts), logits.shape[-1]), dtype=torch.float32, device=self.device
        )
        log_p[torch.tensor(rows, device=self.device)] = torch.log_softmax(
            logits[:, -1, :].float(), dim=-1
        )
        self._maybe_compact()
        return log_p

    # --- cache management -----------------------------------------------------
    def _hit_stop(self, generated: list[int], stop: tuple[str, ...]) -> bool:
        if not stop:
            return False
        text = self.decode(generated)
        tail = max(len(s) for s in stop) + 16  # a token decodes to a handful of characters
        return any(s in text[-tail:] for s in stop)

    def _feed(
        self, sequences: list[tuple[int, ...]], num_logits: list[int]
    ) -> tuple[torch.Tensor, list[int]]:
        """Make the batch cache hold every sequence; return logits and the row order.

        Returns ``(logits, rows)``: batch row ``r`` now holds ``sequences[rows[r]]``
        and ``logits[r]`` (``[max(num_logits), vocab]``) has, in its last
        ``num_logits[rows[r]]`` positions, the predictions after that many
        last tokens of the sequence. Rows stay where their cached prefix is
        wherever possible, so continuing particles are not copied.
        """
        try:
            return self._feed_batch(sequences, num_logits)
        except Exception:
            self._batch = None  # a half-updated cache must not serve later calls
            raise

    def _feed_batch(self, sequences, num_logits) -> tuple[torch.Tensor, list[int]]:
        sources, prefix_lengths = self._match(sequences, num_logits)
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
        return logits.index_select(0, index), list(range(len(sequences)))

    def _decode_one(self, tokens: list[int | None]) -> torch.Tensor:
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
            past_key_values=batch.cache,
            use_cache=True,
            logits_to_keep=num_logits,
        )
        logits = output.logits
        if not torch.isfinite(logits).all():
            raise BackendError("the model produced non-finite logits; check its weights and dtype")
        return logits

    def _match(self, sequences, num_logits) -> tuple[list[int], list[int]]:
        """For each sequence, the cached row sharing its longest prefix, and that length.

        The prefix is capped so the positions whose logits are needed are fed.
        """
        sources = [-1] * len(sequences)
        lengths = [0] * len(sequences)
        if self._batch is None or not self._batch.tokens:
            return sources, lengths
        matrix = self._batch.token_matrix()
        found: dict[tuple, tuple[int, int]] = {}
        for j, sequence in enumerate(sequences):
            cap = len(sequence) - num_logits[j]
            key = (sequence, cap)
            if key not in found:
                n = min(cap, matrix.shape[1])
                if n <= 0:
                    found[key] = (-1, 0)
                else:
                    equal = matrix[:, :n] == np.asarray(sequence[:n])
                    common = np.where(equal.all(axis=1), n, equal.argmin(axis=1))
                    row = int(common.argmax())
                    found[key] = (row, int(common[row])) if common[row] > 0 else (-1, 0)
            sources[j], lengths[j] = found[key]
        return sources, lengths

    def _rows_for(self, sources: list[tuple[int, int]]) -> tuple[KVBatch, list[int]]:
        """A batch holding, for each ``(source, length)``, that prefix of an old row.

        Returns the batch and the row given to each source. A source keeps its
        own row when it can, so surviving particles stay where they are and
        only forked or replaced rows are copied.
        """
        old = self._batch
        if old is None:
            empty = KVBatch.empty(self.model.config.num_hidden_layers, len(sources), self.device)
            return empty, list(range(len(sources)))
        num_rows = len(sources)
        assigned: list[int | None] = [None] * num_rows
        taken: set[int] = set()
        for k, (source, _) in enumerate(sources):
            if 0 <= source < num_rows and source not in taken:
                assigned[k] = source
                taken.add(source)
        free = (row for row in range(num_rows) if row not in taken)
        assigned = [row if row is not None else next(free) for row in assigned]
        origins = [-1] * num_rows
        for (source, _), row in zip(sources, assigned, strict=True):
            origins[row] = source
        batch = old.reindex(origins)
        for (source, length), row in zip(sources, assigned, strict=True):
            batch.truncate(row, length if source >= 0 else 0)
        return batch, assigned

    def _maybe_compact(self) -> None:
        batch = self._batch
        if batch is not None and batch.num_columns > 32 and batch.waste > self.compact_threshold:
            batch.compact()


def sample_categorical(log_probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row from normalized log-probabilities ``[rows, vocab]``.

    Inverse-CDF sampling: several times faster than ``torch.multinomial`` over
    a large vocabulary on CPU, and like it never returns a token of zero
    probability.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> sample_categorical(torch.tensor([[0.0, float("-inf")]]), g).tolist()
        [0]
    """
    cumulative = log_probs.exp().cumsum(dim=-1)
    total = cumulative[:, -1:]
    uniform = torch.rand(total.shape, generator=generator, device=total.device) * total
    # Keep u strictly below the total so rounding can never step past the last allowed token.
    uniform = torch.minimum(uniform, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cumulative, uniform, right=True).squeeze(1)


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source is not None:
            ids.update(int(i) for i in source)
    return ids
