"""The running-batch interface of LM backends: submit steps at any time, advance one pass.

A backend that serves a running batch (``models.TokenLM``) lets the runtime
submit a particle's step the moment the particle is ready, while other steps
are being decoded: ``submit`` queues requests, ``advance`` runs one decode
pass over every live step (new ones join it) and returns the steps that
ended, and ``cancel`` drops steps whose result is no longer wanted. Each
request carries its own random stream (an integer seed), so a step's tokens
depend on its seed and its own logits, never on which other steps share a
pass or on the order they were submitted in.

Backends that only implement ``LM.sample_steps`` are served by
``BatchedSlots``, which sends every queued request in one call per pass.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

from ppl.errors import BackendError
from ppl.lm import LM, StepRequest, StepResult


class SlotLM(abc.ABC):
    """A backend that serves a running batch of steps.

    Example:
        >>> slots = BatchedSlots(lm)
        >>> (ticket,) = slots.submit([ppl.StepRequest("ab", max_tokens=2)], [7])
        >>> [(t, result.finished or len(result.token_ids) == 2) for t, result in slots.advance()]
        [(0, True)]
        >>> slots.busy
        False
    """

    @abc.abstractmethod
    def submit(self, requests: Sequence[StepRequest], seeds: Sequence[int]) -> list[int]:
        """Queue one step per request, drawn from the stream ``seeds[k]``; return tickets."""

    @abc.abstractmethod
    def advance(self) -> list[tuple[int, StepResult]]:
        """Run one pass over every live step; return ``(ticket, result)`` of those that ended."""

    @abc.abstractmethod
    def cancel(self, tickets: Sequence[int]) -> list[int] | None:
        """Stop the given steps; their results are never returned.

        May return the tokens each step had generated (None: not known).
        """

    @property
    @abc.abstractmethod
    def busy(self) -> bool:
        """Whether a step is queued or being decoded."""

    def peek_top_logprobs(self, ticket: int) -> Sequence[tuple[float, ...]] | None:
        """The top log-probabilities of a live step's tokens so far; None where unknown.

        Backends that decode token by token report them, so a policy can stop
        a step mid-way (``interrupt``); whole-step backends report nothing.
        """
        return None

    def interrupt(self, ticket: int) -> StepResult:
        """End a live step now and return what it generated (``finished=False``)."""
        raise BackendError(f"{type(self).__name__} cannot interrupt a step mid-way")


class BatchedSlots(SlotLM):
    """The running-batch interface over a backend that only has ``sample_steps``.

    Each ``advance`` sends all queued requests in one ``sample_steps`` call,
    seeded from their streams, so results depend on which requests were
    queued together (the scheduler's order is deterministic for a seed).

    Example:
        >>> class Echo(LM):
        ...     def sample_steps(self, requests, *, seed=None):
        ...         return [StepResult("x", (1,), -1.0, -1.0, True) for _ in requests]
        ...     def score_steps(self, requests):
        ...         return []
        >>> slots = BatchedSlots(Echo())
        >>> slots.submit([StepRequest("a"), StepRequest("b")], [1, 2])
        [0, 1]
        >>> [ticket for ticket, _ in slots.advance()], slots.busy
        ([0, 1], False)
    """

    def __init__(self, lm: LM):
        self.lm = lm
        self._queued: dict[int, tuple[StepRequest, int]] = {}
        self._next_ticket = 0

    def submit(self, requests: Sequence[StepRequest], seeds: Sequence[int]) -> list[int]:
        tickets = list(range(self._next_ticket, self._next_ticket + len(requests)))
        self._next_ticket += len(requests)
        self._queued.update(zip(tickets, zip(requests, seeds, strict=True), strict=True))
        return tickets

    def advance(self) -> list[tuple[int, StepResult]]:
        if not self._queued:
            return []
        tickets = list(self._queued)
        requests = [self._queued[t][0] for t in tickets]
        seed = combined_seed([self._queued[t][1] for t in tickets])
        self._queued = {}
        results = self.lm.sample_steps(requests, seed=seed)
        if len(results) != len(requests):
            raise BackendError(
                f"{type(self.lm).__name__}.sample_steps returned {len(results)} results "
                f"for {len(requests)} requests"
            )
        return list(zip(tickets, results, strict=True))

    def cancel(self, tickets: Sequence[int]) -> list[int]:
        for ticket in tickets:
            self._queued.pop(ticket, None)
        return [0] * len(tickets)  # queued steps have generated nothing

    @property
    def busy(self) -> bool:
        return bool(self._queued)


def combined_seed(seeds: Sequence[int]) -> int:
    """One 63-bit seed determined by a sequence of seeds.

    Example:
        >>> combined_seed([1, 2]) == combined_seed([1, 2]) != combined_seed([2, 1])
        True
    """
    return int(np.random.SeedSequence([int(s) for s in seeds]).generate_state(1, np.uint64)[0] >> 1)


def stream_uniform(seed: int, index: int) -> float:
    """Uniform number ``index`` in [0, 1) of the stream ``seed``: one per token of a step.

    Counter-based (SplitMix64 of the mixed seed plus ``index`` steps of its
    increment), so a token's uniform costs a few integer operations and no
    generator is built per step.

    Example:
        >>> stream_uniform(3, 0) == stream_uniform(3, 0) != stream_uniform(3, 1)
        True
    """
    return (mix64(mix64(seed & _MASK) + (index + 1) * _GAMMA) >> 11) * 2.0**-53


def mix64(x: int) -> int:
    """The SplitMix64 output function of a Python integer (taken modulo 2**64)."""
    x = (x + _GAMMA) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


_MASK = 2**64 - 1
_GAMMA = 0x9E3779B97F4A7C15
