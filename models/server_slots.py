"""Per-particle dispatch to a server: each step's request leaves as soon as it is submitted.

A server backend (``OpenAILM``) serves the runtime's running batch
(``ppl.slots.SlotLM``) by sending one completion request per step the moment
the runtime submits it, under the client's concurrency limit. The server
(vLLM, SGLang, llama.cpp's ``llama-server``) then batches the requests
continuously and serves shared prefixes from its cache: a particle whose step
ends goes on without waiting for the others. ``advance`` waits until at least
one request has come back and returns every step that has.

Each request carries the seed of its own stream, so a step's tokens depend on
that seed and the server only, not on which other requests are in flight.

A request that fails after its retries fails its particle only (``logp =
-inf``, recorded in ``failures``) while the server is evidently up. The error
is raised instead when the server is down: it refused or dropped the
connection (``ServerUnreachable``), or no request to it has succeeded yet and
none is left in flight. Within one run the backend may fall idle between two
steps (every request has come back before the next is submitted), so idleness
says nothing about the server.
"""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Sequence

from ppl.errors import CapabilityError, ServerUnreachable
from ppl.lm import StepRequest, StepResult
from ppl.slots import SlotLM

_SEED_RANGE = 2**31 - 1  # what every server accepts as a sampling seed
# Errors that concern every particle: an impossible request, or a server that is down.
_NEVER_PER_PARTICLE = (CapabilityError, ServerUnreachable)


class ServerSlots(SlotLM):
    """The running-batch interface of a server client; mixed into ``OpenAILM``.

    The host provides ``render``, ``_check_exact``, ``_sample_one`` (a
    coroutine), ``_submit_coroutine`` (schedules one on the client's event
    loop), ``stats`` and ``failures``, and calls ``_reset_slots`` on start-up.

    Example (``server_url`` serves a tiny model over ``a b c e`` whose tokenizer is saved
    in ``model_dir``):
        >>> client = models.OpenAILM(server_url, tokenizer=model_dir, server="vllm")
        >>> tickets = client.submit([ppl.StepRequest("ab", max_tokens=4)] * 2, [7, 8])
        >>> ended = []
        >>> while client.busy:
        ...     ended += client.advance()
        >>> sorted(ticket for ticket, _ in ended) == sorted(tickets)
        True
        >>> sorted(result.text for _, result in ended)
        ['aaa', 'ac']
        >>> client.close()
    """

    def _reset_slots(self) -> None:
        self._requests: dict[int, tuple[concurrent.futures.Future, str]] = {}
        self._next_ticket = 0
        self._answered = False  # a request to the server has succeeded

    def submit(self, requests: Sequence[StepRequest], seeds: Sequence[int]) -> list[int]:
        for request in requests:
            self._check_exact(request)
        self.stats.sample_calls += 1
        tickets = []
        for request, seed in zip(requests, seeds, strict=True):
            prompt = self.render(request.context)
            future = self._submit_coroutine(
                self._sample_one(request, prompt, int(seed) % _SEED_RANGE)
            )
            self._requests[self._next_ticket] = (future, prompt)
            tickets.append(self._next_ticket)
            self._next_ticket += 1
        return tickets

    def advance(self) -> list[tuple[int, StepResult]]:
        if not self._requests:
            return []
        ticket_of = {future: ticket for ticket, (future, _) in self._requests.items()}
        done, _ = concurrent.futures.wait(ticket_of, return_when=concurrent.futures.FIRST_COMPLETED)
        self._answered = self._answered or any(f.exception() is None for f in done)
        ended = []
        for ticket in sorted(ticket_of[future] for future in done):
            future, prompt = self._requests.pop(ticket)
            ended.append((ticket, self._outcome(future, prompt)))
        return ended

    def _outcome(self, future: concurrent.futures.Future, prompt: str) -> StepResult:
        error = future.exception()
        if error is None:
            return future.result()
        if isinstance(error, _NEVER_PER_PARTICLE) or not isinstance(error, Exception):
            raise error
        if not self._answered and not self._requests:
            error.add_note("no request to the server has succeeded yet")
            raise error
        self._fail(prompt, error)
        return StepResult("", (), -math.inf, 0.0, True)

    def cancel(self, tickets: Sequence[int]) -> None:
        for ticket in tickets:
            entry = self._requests.pop(ticket, None)
            if entry is not None:
                entry[0].cancel()

    @property
    def busy(self) -> bool:
        return bool(self._requests)
