"""The running batch of a ``TokenLM``: steps join and leave between decode passes.

Each ``advance`` is one forward pass plus one token per live step. When new
steps were submitted since the last pass, the pass is a feed of every live
step's full sequence (context plus tokens so far): the backend matches each
one to its cached prefix, so a decoding step costs one token and a new step
its uncached context, all in one forward. Otherwise it is a plain decode of
one token per row. Steps that ended leave the batch (``TokenLM._shed``) and
their rows are reused at the next feed.

Each step draws its tokens with the uniforms of its own stream (one per
token), so its tokens depend on its seed and logits only: not on the other
steps in the batch, the row layout, or when it joined.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ppl.lm import StepRequest, StepResult
from ppl.slots import stream_uniform


@dataclass(slots=True)
class _Step:
    request: StepRequest
    context_ids: tuple[int, ...]
    seed: int
    generated: list[int] = field(default_factory=list)
    logp: float = 0.0
    logq: float = 0.0
    top_logprobs: list[tuple[float, ...]] = field(default_factory=list)

    @property
    def sequence(self) -> tuple[int, ...]:
        return self.context_ids + tuple(self.generated)


class RunningBatch:
    """The live steps of one ``TokenLM`` and the cache rows that serve them.

    A ``TokenLM`` serves its running batch through ``submit``/``advance``
    (which run it in inference mode):

    Example:
        >>> tickets = lm.submit([ppl.StepRequest("ab", max_tokens=3)] * 2, [7, 8])
        >>> ended = []
        >>> while lm.busy:
        ...     ended += lm.advance()
        >>> sorted(ticket for ticket, _ in ended) == tickets
        True
    """

    def __init__(self, lm):
        self.lm = lm
        self.steps: dict[int, _Step] = {}  # live steps by ticket, in submission order
        self.positions: list[int | None] = []  # the last feed's sequences: ticket or None
        self.rows: list[int] = []  # batch row -> position in the last feed
        self.logits: torch.Tensor | None = None  # next-token logits per batch row, not yet drawn
        self.hidden: torch.Tensor | None = None
        self.needs_feed = False  # steps joined (or rows moved) since the last pass
        self.capturing = False
        self.ended: list[tuple[int, StepResult]] = []  # ended but not yet returned
        self._next_ticket = 0

    @property
    def busy(self) -> bool:
        return bool(self.steps or self.ended)

    def submit(self, requests: Sequence[StepRequest], seeds: Sequence[int]) -> list[int]:
        steps = [
            _Step(r, self.lm.encode(r.context), int(s))
            for r, s in zip(requests, seeds, strict=True)
        ]
        tickets = list(range(self._next_ticket, self._next_ticket + len(steps)))
        self._next_ticket += len(steps)
        self.steps.update(zip(tickets, steps, strict=True))
        self.needs_feed = self.needs_feed or bool(steps)
        self.lm.stats.sample_calls += 1
        return tickets

    def cancel(self, tickets: Sequence[int]) -> list[int]:
        """Drop the steps; return the tokens each had generated (0 for unknown tickets)."""
        dropped = set(tickets)
        generated = {t: len(r.token_ids) for t, r in self.ended if t in dropped}
        for ticket in tickets:
            step = self.steps.pop(ticket, None)
            if step is not None:
                generated[ticket] = len(step.generated)
        self.ended = [(t, r) for t, r in self.ended if t not in dropped]
        return [generated.get(t, 0) for t in tickets]

    def peek_top_logprobs(self, ticket: int) -> list[tuple[float, ...]]:
        return self.steps[ticket].top_logprobs

    def interrupt(self, ticket: int) -> StepResult:
        step = self.steps.pop(ticket)
        return StepResult(
            self.lm.decode(step.generated),
            tuple(step.generated),
            step.logp,
            step.logq,
            False,
            tuple(step.top_logprobs),
        )

    def advance(self) -> list[tuple[int, StepResult]]:
        """One forward pass and one token for every live step; the steps that ended."""
        ended, self.ended = self.ended, []
        if not self.steps:
            return ended
        try:
            self._set_capture()
            if self.needs_feed:
                self._feed()
            elif self.logits is None:
                self._decode()
            ended += self._draw()
            if not self.steps:
                self.positions, self.rows = [], []
            return ended
        except Exception:
            self.reset()
            raise

    def reset(self) -> None:
        """Drop every step and the cache (after a failure the cache cannot be trusted)."""
        self.steps, self.positions, self.rows, self.ended = {}, [], [], []
        self.logits = self.hidden = None
        self.needs_feed = False
        self.lm._forget()

    def feed_beside(self, sequences: list[tuple[int, ...]], num_logits: list[int]):
        """``TokenLM._feed`` for scoring while steps are live, keeping their cache rows.

        Returns the logits and row order of ``sequences`` (as ``_feed`` does) and
        the batch rows that hold them, to select hidden states with.
        """
        if not self.steps:
            logits, rows = self.lm._feed(sequences, num_logits)
            return logits, rows, list(range(len(rows)))
        tickets = list(self.steps)
        running = [self.steps[t].sequence for t in tickets]
        try:
            logits, rows = self.lm._feed(running + sequences, [1] * len(running) + num_logits)
        except Exception:
            self.reset()
            raise
        # The live steps' pending tokens were fed with logits nobody reads: feed them again.
        self.positions = tickets + [None] * len(sequences)
        self.rows, self.logits, self.needs_feed = rows, None, True
        keep = [row for row, position in enumerate(rows) if position >= len(running)]
        return logits[keep], [rows[row] - len(running) for row in keep], keep

    # --- one pass ---------------------------------------------------------------
    def _set_capture(self) -> None:
        want = self.lm.keep_hidden_states or any(
            getattr(s.request.logits_processor, "uses_hidden_states", False)
            for s in self.steps.values()
        )
        if want != self.capturing:
            self.lm._capture_hidden(want)
            self.capturing = want
            if want and not self.needs_feed:
                self.needs_feed = True  # rows decoded so far have no hidden state yet

    def _feed(self) -> None:
        tickets = list(self.steps)
        sequences = [self.steps[t].sequence for t in tickets]
        logits, rows = self.lm._feed(sequences, [1] * len(sequences))
        self.logits = logits[:, -1, :]
        self.hidden = self.lm._last_hidden() if self.capturing else None
        self.positions, self.rows, self.needs_feed = tickets, rows, False

    def _decode(self) -> None:
        done = [ticket not in self.steps for ticket in self.positions]
        self.rows = self.lm._shed(self.rows, done)
        tokens = [
            None if done[p] else self.steps[self.positions[p]].generated[-1] for p in self.rows
        ]
        self.logits = self.lm._decode(tokens)
        self.hidden = self.lm._last_hidden() if self.capturing else None

    def _draw(self) -> list[tuple[int, StepResult]]:
        live = [row for row, p in enumerate(self.rows) if self.positions[p] in self.steps]
        logits, hidden = self.logits, self.hidden
        if len(live) < len(self.rows):
            logits = logits[live]
            hidden = hidden[live] if hidden is not None else None
        self.logits = None
        if not live:
            return []
        tickets = [self.positions[self.rows[row]] for row in live]
        steps = [self.steps[t] for t in tickets]
        uniforms = torch.tensor(
            [stream_uniform(s.seed, len(s.generated)) for s in steps],
            dtype=torch.float32,
            device=logits.device,
        )
        tokens, picked_p, picked_q, picked_top = self.lm._draw(
            logits,
            [s.request for s in steps],
            [s.generated for s in steps],
            list(range(len(steps))),
            uniforms,
            hidden,
        )
        self.lm.stats.tokens_generated += len(steps)
        ended = []
        for k, (ticket, step, token) in enumerate(zip(tickets, steps, tokens, strict=True)):
            step.generated.append(token)
            step.logp += picked_p[k]
            step.logq += picked_q[k]
            if step.request.top_logprobs:
                step.top_logprobs.append(picked_top[k])
            finished = token in self.lm.eos_token_ids
            if finished or self._stops(step):
                ended.append((ticket, self._result(step, finished, hidden, k)))
                del self.steps[ticket]
        return ended

    def _stops(self, step: _Step) -> bool:
        return len(step.generated) >= step.request.max_tokens or self.lm._hit_stop(
            step.generated, step.request.stop
        )

    def _result(self, step: _Step, finished: bool, hidden, k: int) -> StepResult:
        if self.lm.keep_hidden_states:
            self.lm._keep_hidden(step.request.context, tuple(step.generated), hidden[k])
        text_ids = step.generated[:-1] if finished else step.generated
        return StepResult(
            self.lm.decode(text_ids),
            tuple(step.generated),
            step.logp,
            step.logq,
            finished,
            tuple(step.top_logprobs),
        )
