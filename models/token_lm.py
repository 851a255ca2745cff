"""``TokenLM``: what every local, token-level backend shares.

Tokenization (canonical, so a step's probability depends only on the text of
its context), chat rendering, the running batch (``models.running_batch``) with stop strings,
samplers (temperature, top-k, top-p) and logits processors, scoring and next-token
log-probabilities.
A backend supplies only its cache: feeding sequences (reusing cached
prefixes) and decoding one token per row.
"""

from __future__ import annotations

import abc
import os
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from models.running_batch import RunningBatch
from ppl.errors import BackendError, CapabilityError, InvalidArgumentError
from ppl.lm import LM, Context, LMStats, ScoreRequest, StepRequest, StepResult
from ppl.sampler import proposal_log_probs, target_log_probs
from ppl.slots import SlotLM

# Scoring materialises logits for every scored position; cap that memory.
_SCORE_LOGITS_BUDGET = 256 * 2**20
# Hidden states kept for step features (learned twists), oldest dropped first.
_MAX_KEPT_HIDDEN_STATES = 16384


class TokenLM(LM, SlotLM):
    """A backend that runs a tokenizer and a causal model locally, all particles in one batch.

    Subclasses set ``tokenizer``, ``eos_token_ids``, ``vocab_size``, ``device``
    and ``stats`` and implement ``_feed``, ``_decode`` and ``_forget``; they
    may override ``_shed``.

    Example (``TransformersLM`` is one; ``lm`` a tiny one over the letters ``a b c e``,
    whose end-of-sequence token has id 0; one call samples every request together):
        >>> isinstance(lm, TokenLM), lm.vocab_size, sorted(lm.eos_token_ids)
        (True, 5, [0])
        >>> [r.text for r in lm.sample_steps([ppl.StepRequest("ab", max_tokens=4)] * 3, seed=0)]
        ['abaa', '', 'b']
    """

    tokenizer: object
    eos_token_ids: frozenset[int]
    vocab_size: int
    device: torch.device
    stats: LMStats
    _encoded: dict[Context, tuple[int, ...]]
    # Opt-in: keep each sampled step's final hidden state for ``step_features``.
    keep_hidden_states: bool = False
    hidden_state_misses: int = 0  # steps whose features needed a forward pass of their own
    _kept_hidden: OrderedDict | None = None

    # --- what a backend implements --------------------------------------------
    @abc.abstractmethod
    def _feed(
        self, sequences: list[tuple[int, ...]], num_logits: list[int]
    ) -> tuple[torch.Tensor, list[int]]:
        """Make the cache hold every sequence; return logits and the row order.

        Returns ``(logits, rows)``: row ``r`` holds ``sequences[rows[r]]`` and
        ``logits[r]`` (``[max(num_logits), vocab]``) has, in its last
        ``num_logits[rows[r]]`` positions, the predictions after that many
        last tokens of the sequence.
        """

    @abc.abstractmethod
    def _decode(self, tokens: list[int | None]) -> torch.Tensor:
        """Append one token per row (None: the row idles); return next-token logits."""

    @abc.abstractmethod
    def _forget(self) -> None:
        """Drop the cache after a failed call: a half-updated cache must not serve later ones."""

    def _shed(self, rows: list[int], done: list[bool]) -> list[int]:
        """Rows to keep decoding; rows whose request is done may stay and idle."""
        return rows

    def _capture_hidden(self, on: bool) -> None:
        """Make later ``_feed`` / ``_decode`` calls keep their last positions' hidden states."""
        raise CapabilityError(f"{type(self).__name__} does not expose hidden states")

    def _last_hidden(self) -> torch.Tensor:
        """Last-layer hidden state at the last position of each row of the latest forward.

        Rows are aligned with the logits that ``_feed`` / ``_decode`` returned.
        """
        raise CapabilityError(f"{type(self).__name__} does not expose hidden states")

    def _token_embeddings(self, token_ids: list[int]) -> torch.Tensor:
        """Input embeddings of ``token_ids``, ``[len(token_ids), hidden]``."""
        raise CapabilityError(f"{type(self).__name__} does not expose token embeddings")

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
        """Generate one step per request in batched decoding.

        Each step ends after the token completing one of its stop strings, at
        EOS, or at ``max_tokens``. ``logp`` is under the request's sampler
        (temperature, top-k, top-p), ``logq`` under the proposal actually used
        (proposal temperature and logits processor). Request ``k`` draws from
        its own stream, derived from ``seed`` and ``k``. Steps already in the
        running batch keep decoding alongside; their results are returned by
        the next ``advance``.
        """
        if not requests:
            return []
        if seed is None:
            seed = int.from_bytes(os.urandom(8)) >> 1
        seeds = np.random.SeedSequence(seed).generate_state(len(requests), np.uint64)
        tickets = self.submit(requests, [int(s) for s in seeds])
        running = self._running_batch()
        results: dict[int, StepResult] = {}
        others: list[tuple[int, StepResult]] = []
        while len(results) < len(tickets):
            for ticket, result in running.advance():
                if tickets[0] <= ticket <= tickets[-1]:
                    results[ticket] = result
                else:
                    others.append((ticket, result))
        running.ended = others + running.ended
        return [results[t] for t in tickets]

    # --- the running batch (ppl.slots.SlotLM) ---------------------------------
    def _running_batch(self) -> RunningBatch:
        running = self.__dict__.get("_running")
        if running is None:
            running = self.__dict__["_running"] = RunningBatch(self)
        return running

    @torch.inference_mode()
    def submit(self, requests: Sequence[StepRequest], seeds: Sequence[int]) -> list[int]:
        """Queue steps; they join the running batch at the next ``advance``.

        Example:
            >>> tickets = lm.submit([ppl.StepRequest("ab", max_tokens=4)], [7])
            >>> lm.busy
            True
        """
        return self._running_batch().submit(requests, seeds)

    @torch.inference_mode()
    def advance(self) -> list[tuple[int, StepResult]]:
        """One decode pass over the running batch; the ``(ticket, result)`` of ended steps.

        Example:
            >>> (ticket,) = lm.submit([ppl.StepRequest("ab", max_tokens=4)], [7])
            >>> ended = []
            >>> while lm.busy:
            ...     ended += lm.advance()
            >>> [t for t, _ in ended] == [ticket]
            True
        """
        return self._running_batch().advance()

    def cancel(self, tickets: Sequence[int]) -> list[int]:
        """Stop decoding the given steps; their rows are reused. Returns their tokens so far."""
        return self._running_batch().cancel(tickets)

    def peek_top_logprobs(self, ticket: int) -> list[tuple[float, ...]]:
        """The top log-probabilities of a live step's tokens so far (empty unless requested)."""
        return self._running_batch().peek_top_logprobs(ticket)

    def interrupt(self, ticket: int) -> StepResult:
        """End a live step now; what it generated, ``finished=False``. Its row is reused."""
        return self._running_batch().interrupt(ticket)

    @property
    def busy(self) -> bool:
        return self._running_batch().busy

    def _draw(
        self,
        logits: torch.Tensor,
        requests: Sequence[StepRequest],
        generated: list[list[int]],
        indices: list[int],
        uniforms: torch.Tensor,
        hidden: torch.Tensor | None = None,
    ) -> tuple[list[int], list[float], list[float], list[tuple[float, ...]]]:
        """Sample one token per row from its proposal; return tokens, log p, log q, top log p.

        ``hidden`` (rows aligned with ``logits``) is passed to processors that
        declare ``uses_hidden_states``.
        """
        log_p = target_log_probs(logits, [r.sampler for r in requests])
        shaped = not all(r.proposal_is_target for r in requests)
        if shaped:
            log_q = self._proposal(logits, log_p, requests, generated, indices, hidden)
        else:
            log_q = log_p
        tokens = sample_categorical(log_q, uniforms[torch.tensor(indices, device=self.device)])
        picked_p = log_p.gather(1, tokens[:, None]).squeeze(1).tolist()
        picked_q = (
            log_q.gather(1, tokens[:, None]).squeeze(1).tolist() if shaped else list(picked_p)
        )
        return tokens.tolist(), picked_p, picked_q, _top_log_probs(log_p, requests)

    def _proposal(self, logits, log_p, requests, generated, indices, hidden) -> torch.Tensor:
        """Proposal log-probabilities: processed logits at the proposal temperature."""
        proposal = logits.float().clone()
        groups: dict[object, list[int]] = {}
        for row, request in enumerate(requests):
            if request.logits_processor is not None:
                groups.setdefault(request.logits_processor, []).append(row)
        for processor, group in groups.items():
            index = torch.tensor(group, device=self.device)
            extra = ()
            if getattr(processor, "uses_hidden_states", False):
                extra = (hidden.index_select(0, index),)
            processed = processor(
                proposal.index_select(0, index), [generated[indices[r]] for r in group], *extra
            )
            proposal.index_copy_(0, index, processed.to(proposal.dtype))
        log_q = proposal_log_probs(proposal, [r.proposal_scale for r in requests], log_p)
        if torch.isnan(log_q).any():
            raise BackendError(
                "a logits processor left no token of the step's target support (top-k/top-p) "
                "with positive probability (or produced NaN); it must keep at least one allowed"
            )
        return log_q

    def _keep_hidden(self, context: Context, token_ids: tuple[int, ...], hidden) -> None:
        if self._kept_hidden is None:
            self._kept_hidden = OrderedDict()
        self._kept_hidden[(context, token_ids)] = hidden.detach().float().cpu()
        if len(self._kept_hidden) > _MAX_KEPT_HIDDEN_STATES:
            self._kept_hidden.popitem(last=False)

    def step_features(self, steps: Sequence[tuple[Context, Sequence[int]]]) -> torch.Tensor:
        """Features of each ``(context, step token ids)``: ``[len(steps), 2 * hidden]``.

        A step's features are the last-layer hidden state at its second-to-last
        position (the state whose prediction drew its last token: context plus
        all of the step but that token) followed by the input embedding of its
        last token, so they depend on the whole step. With
        ``keep_hidden_states = True`` the sampling loop keeps these hidden
        states as it decodes, and features of steps it drew cost no forward
        pass; other steps are computed in one batched pass reusing cached
        prefixes.

        Example:
            >>> lm.keep_hidden_states = True
            >>> (result,) = lm.sample_steps([ppl.StepRequest("ab", max_tokens=4)], seed=0)
            >>> lm.step_features([("ab", result.token_ids)]).shape  # one feature row per step
            torch.Size([1, 64])
        """
        if not steps:
            raise InvalidArgumentError("step_features needs at least one step")
        # A plain tensor (not an inference-mode one), so heads can train on it.
        return self._step_features(steps).clone()

    @torch.inference_mode()
    def _step_features(self, steps: Sequence[tuple[Context, Sequence[int]]]) -> torch.Tensor:
        kept = self._kept_hidden if self._kept_hidden is not None else {}
        hidden: list[torch.Tensor | None] = []
        for context, token_ids in steps:
            if not token_ids:
                raise InvalidArgumentError("a step has at least one token; got an empty one")
            hidden.append(kept.get((context, tuple(int(t) for t in token_ids))))
        missing = [j for j, h in enumerate(hidden) if h is None]
        if missing:
            sequences = [
                self.encode(steps[j][0]) + tuple(int(t) for t in steps[j][1][:-1]) for j in missing
            ]
            self._capture_hidden(True)
            try:
                _, rows, kept_rows = self._running_batch().feed_beside(
                    sequences, [1] * len(sequences)
                )
                computed = self._last_hidden()[kept_rows].float().cpu()
            except Exception:
                self._running_batch().reset()
                raise
            finally:
                self._capture_hidden(self._running_batch().capturing)
            for row, request in enumerate(rows):
                hidden[missing[request]] = computed[row]
            self.hidden_state_misses += len(missing)
        last_tokens = [int(token_ids[-1]) for _, token_ids in steps]
        embeddings = self._token_embeddings(last_tokens).float().cpu()
        return torch.cat([torch.stack(hidden), embeddings], dim=1)

    @torch.inference_mode()
    def score_steps(self, requests: Sequence[ScoreRequest]) -> list[float]:
        """Log-probability of each continuation under its request's sampler."""
        self.stats.score_calls += 1
        scores = [0.0] * len(requests)
        for j, log_p in self._continuation_logprobs(requests):
            targets = torch.tensor(requests[j].token_ids, device=self.device)
            scores[j] = float(log_p.gather(1, targets[:, None]).sum())
        return scores

    @torch.inference_mode()
    def position_logprobs(self, requests: Sequence[ScoreRequest]) -> list[torch.Tensor]:
        """The model's next-token log-probabilities before each token of each continuation.

        One ``[len(request.token_ids), vocab]`` float32 CPU tensor per request
        (under its sampler), from batched passes that reuse cached prefixes: what
        ``score_steps`` sums, for training proposals on whole distributions.

        Example:
            >>> (log_p,) = lm.position_logprobs([ppl.ScoreRequest("ab", (3, 1))])
            >>> log_p.shape  # a row over the vocabulary per scored token
            torch.Size([2, 5])
        """
        self.stats.score_calls += 1
        out = [torch.empty((0, self.vocab_size)) for _ in requests]
        for j, log_p in self._continuation_logprobs(requests):
            out[j] = log_p.cpu()
        return out

    def _continuation_logprobs(self, requests: Sequence[ScoreRequest]):
        """Yield ``(j, log-probs before each token of request j)`` for non-empty requests."""
        todo = [j for j, r in enumerate(requests) if r.token_ids]
        longest = max((len(requests[j].token_ids) for j in todo), default=1)
        per_call = max(1, _SCORE_LOGITS_BUDGET // (4 * self.vocab_size * longest))
        for start in range(0, len(todo), per_call):
            chunk = todo[start : start + per_call]
            sequences = [
                self.encode(requests[j].context) + tuple(requests[j].token_ids)[:-1] for j in chunk
            ]
            counts = [len(requests[j].token_ids) for j in chunk]
            logits, rows, _ = self._running_batch().feed_beside(sequences, counts)
            width = logits.shape[1]
            for row, request in enumerate(rows):
                sampler = requests[chunk[request]].sampler
                positions = logits[row, width - counts[request] :]
                yield chunk[request], target_log_probs(positions, [sampler] * len(positions))
            self.stats.tokens_scored += sum(counts)

    @torch.inference_mode()
    def next_token_logprobs(self, contexts: Sequence[Context]) -> torch.Tensor:
        """Log-probabilities of the next token after each context, ``[len(contexts), vocab]``.

        One batched pass that reuses cached prefixes, like the steps do: the
        building block of judges that read a yes/no answer off the model.

        Example:
            >>> log_p = lm.next_token_logprobs(["ab", "ca"])
            >>> log_p.shape, bool(torch.allclose(log_p.exp().sum(-1), torch.ones(2)))
            (torch.Size([2, 5]), True)
        """
        if not contexts:
            return torch.empty((0, self.vocab_size))
        self.stats.score_calls += 1
        logits, rows, _ = self._running_batch().feed_beside(
            [self.encode(c) for c in contexts], [1] * len(contexts)
        )
        log_p = torch.empty(
            (len(contexts), logits.shape[-1]), dtype=torch.float32, device=self.device
        )
        log_p[torch.tensor(rows, device=self.device)] = torch.log_softmax(
            logits[:, -1, :].float(), dim=-1
        )
        return log_p

    def _hit_stop(self, generated: list[int], stop: tuple[str, ...]) -> bool:
        if not stop:
            return False
        text = self.decode(generated)
        tail = max(len(s) for s in stop) + 16  # a token decodes to a handful of characters
        return any(s in text[-tail:] for s in stop)


def assign_slots(sources: Sequence[int], num_slots: int, *, keep_sources_free: bool) -> list[int]:
    """A cache slot (batch row, sequence id) for each computation continuing ``sources[k]``.

    The first computation continuing a slot keeps it, so surviving particles
    stay where they are and only forks and new prefixes move; the others
    take free slots in order (``-1`` or an out-of-range source is a fresh
    prefix). With ``keep_sources_free`` no slot that any computation reads
    from is handed out, for caches that copy slot by slot (a fork must not
    overwrite a sequence a later copy still needs); a cache that gathers all
    rows at once can reuse them.

    Example:
        >>> assign_slots([0, 0, 2, -1], 4, keep_sources_free=False)
        [0, 1, 2, 3]
    """
    targets: list[int | None] = [None] * len(sources)
    claimed: set[int] = set()
    for k, source in enumerate(sources):
        if 0 <= source < num_slots and source not in claimed:
            targets[k] = source
            claimed.add(source)
    blocked = {s for s in sources if s >= 0} if keep_sources_free else claimed
    free = (slot for slot in range(num_slots) if slot not in blocked)
    return [slot if slot is not None else next(free) for slot in targets]


def sample_categorical(log_probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One draw per row from normalized log-probabilities ``[rows, vocab]``.

    Inverse-CDF sampling with the given uniforms in [0, 1), one per row:
    several times faster than ``torch.multinomial`` over a large vocabulary on
    CPU, and like it never returns a token of zero probability.

    Example:
        >>> sample_categorical(torch.tensor([[0.0, float("-inf")]]), torch.tensor([0.7])).tolist()
        [0]
    """
    cumulative = log_probs.exp().cumsum(dim=-1)
    total = cumulative[:, -1:]
    uniform = uniforms.reshape(-1, 1).to(total.dtype) * total
    # Keep u strictly below the total so rounding can never step past the last allowed token.
    uniform = torch.minimum(uniform, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cumulative, uniform, right=True).squeeze(1)


def match_prefixes(
    cached: Sequence[tuple[int, ...]],
    sequences: Sequence[tuple[int, ...]],
    num_logits: Sequence[int],
) -> tuple[list[int], list[int]]:
    """For each sequence, the cached row sharing its longest prefix, and that length.

    ``cached`` holds the tokens of each cache row. The prefix is capped so the
    positions whose logits are needed are fed; a sequence with no common
    prefix gets row -1. Vectorized over rows: one comparison per distinct sequence.

    Example:
        >>> match_prefixes([(1, 2, 3), (1, 4)], [(1, 4, 5), (7, 8)], [1, 1])
        ([1, -1], [2, 0])
    """
    sources = [-1] * len(sequences)
    lengths = [0] * len(sequences)
    width = max((len(tokens) for tokens in cached), default=0)
    if width == 0:
        return sources, lengths
    matrix = np.full((len(cached), width), -1, dtype=np.int64)
    for row, tokens in enumerate(cached):
        matrix[row, : len(tokens)] = tokens
    found: dict[tuple, tuple[int, int]] = {}
    for j, sequence in enumerate(sequences):
        cap = len(sequence) - num_logits[j]
        key = (sequence, cap)
        if key not in found:
            n = min(cap, width)
            if n <= 0:
                found[key] = (-1, 0)
            else:
                equal = matrix[:, :n] == np.asarray(sequence[:n])
                common = np.where(equal.all(axis=1), n, equal.argmin(axis=1))
                row = int(common.argmax())
                found[key] = (row, int(common[row])) if common[row] > 0 else (-1, 0)
        sources[j], lengths[j] = found[key]
    return sources, lengths


def _top_log_probs(log_p: torch.Tensor, requests) -> list[tuple[float, ...]]:
    """Per row, the request's ``top_logprobs`` largest finite target log-probabilities."""
    k = max(r.top_logprobs for r in requests)
    if k == 0:
        return [()] * len(requests)
    values = log_p.float().topk(min(k, log_p.shape[-1]), dim=-1).values.tolist()
    return [
        tuple(v for v in row[: r.top_logprobs] if v != float("-inf"))
        for row, r in zip(values, requests, strict=True)
    ]
