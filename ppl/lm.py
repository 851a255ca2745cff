"""What the runtime needs from a language-model backend.

Backends (``models.TransformersLM``, ``models.OpenAILM``) implement ``LM``. The
runtime only ever calls the two batched methods, so one call serves every live
particle.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import torch

from ppl.sampler import Sampler
from ppl.values import Chat

Context = str | Chat


class LogitsProcessor(Protocol):
    """Reshapes the proposal of a step token by token (e.g. masks banned tokens).

    Called with the next-token logits of the rows that use it (``[rows, vocab]``,
    float32; it may modify them in place) and, per row, the tokens generated so
    far in this step; returns the logits to sample from. It changes only the
    proposal: backends report ``logq`` under the processed distribution (at the
    proposal temperature, restricted to the target's support) and ``logp`` under
    the step's target, so weights ``log p - log q`` stay exact wherever the
    processed proposal covers the program's target. A mask is exact when
    every token it removes makes the program's constraint fail anyway.
    Processors must be hashable (functions and plain objects are): replay
    identifies a step by its request. A processor with a true
    ``uses_hidden_states`` attribute is called with a third argument, the
    last-layer hidden states of its rows (``[rows, hidden]``, the states that
    produced ``logits``), on backends that expose them (``models.TokenLM``).
    """

    def __call__(
        self, logits: torch.Tensor, generated: Sequence[Sequence[int]]
    ) -> torch.Tensor: ...


@dataclass(frozen=True, slots=True)
class StepRequest:
    """Generate one step after ``context`` until a stop string, EOS or ``max_tokens``.

    The target of each token is the sampler (``temperature``, ``top_k``,
    ``top_p``; see ``ppl.sampler``). The proposal is the target unless
    ``proposal_temperature`` or ``logits_processor`` reshape it: then it is
    ``softmax(processor(logits) / T_q)`` on the target's support, with ``T_q``
    the proposal temperature (the target's temperature when unset).

    Example:
        >>> r = StepRequest("2+2=", temperature=0.7, top_k=50)
        >>> r.sampler, r.proposal_is_target
        (Sampler(temperature=0.7, top_k=50, top_p=None), True)
    """

    context: Context
    stop: tuple[str, ...] = ("\n",)
    max_tokens: int = 64
    temperature: float = 1.0
    logits_processor: LogitsProcessor | None = None
    top_k: int | None = None
    top_p: float | None = None
    proposal_temperature: float | None = None
    top_logprobs: int = 0

    @property
    def sampler(self) -> Sampler:
        """The per-token target distribution of this step."""
        return Sampler(self.temperature, self.top_k, self.top_p)

    @property
    def proposal_is_target(self) -> bool:
        return self.logits_processor is None and self.proposal_temperature in (
            None,
            self.temperature,
        )

    @property
    def proposal_scale(self) -> float:
        """The temperature the proposal divides (processed) logits by."""
        return self.temperature if self.proposal_temperature is None else self.proposal_temperature

    def score_request(self, token_ids) -> ScoreRequest:
        """Scoring ``token_ids`` under this step's target."""
        return ScoreRequest(
            self.context, tuple(token_ids), self.temperature, self.top_k, self.top_p
        )


@dataclass(frozen=True, slots=True)
class StepResult:
    """One generated step.

    ``logp`` is the log-probability of ``token_ids`` under the step's target
    (its sampler); ``logq`` under the proposal actually used (proposal
    temperature, logits processors). Importance weights use ``logp - logq``.
    ``top_logprobs`` holds, per generated token, the ``request.top_logprobs``
    largest log-probabilities of the target (tokens outside its support omitted).
    """

    text: str
    token_ids: tuple[int, ...]
    logp: float
    logq: float
    finished: bool
    top_logprobs: tuple[tuple[float, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """Score continuation tokens after ``context`` under a sampler (default: the model itself)."""

    context: Context
    token_ids: tuple[int, ...]
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    @property
    def sampler(self) -> Sampler:
        return Sampler(self.temperature, self.top_k, self.top_p)


@dataclass(slots=True)
class LMStats:
    """Running counters of the work a backend did."""

    sample_calls: int = 0
    score_calls: int = 0
    forward_calls: int = 0
    prefill_calls: int = 0
    tokens_generated: int = 0
    tokens_scored: int = 0
    tokens_prefilled: int = 0
    decode_rows: int = 0  # rows in decode forward passes, idle ones included
    idle_rows: int = 0  # of those, rows whose step had ended (fed a masked pad)

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class LM(abc.ABC):
    """A batched language-model backend; ``stats`` counts the work it did."""

    stats: LMStats

    @abc.abstractmethod
    def sample_steps(
        self, requests: Sequence[StepRequest], *, seed: int | None = None
    ) -> list[StepResult]:
        """Generate one step per request, in one batched call; reproducible for a given seed."""

    @abc.abstractmethod
    def score_steps(self, requests: Sequence[ScoreRequest]) -> list[float]:
        """Log-probability of each request's tokens after its context, under its sampler."""


class ForwardingLM(LM):
    """An LM that passes every call and attribute through to ``lm``: subclass it to watch calls.

    Attribute reads and writes reach the wrapped backend (so settings such as
    ``keep_hidden_states`` apply to it), except names starting with ``_``,
    which hold the wrapper's own state.

    Example:
        >>> class Counting(ForwardingLM):
        ...     def sample_steps(self, requests, *, seed=None):
        ...         self._calls = getattr(self, "_calls", 0) + 1
        ...         return super().sample_steps(requests, seed=seed)
    """

    def __init__(self, lm: LM):
        self._lm = lm

    @property
    def stats(self) -> LMStats:
        return self._lm.stats

    def sample_steps(
        self, requests: Sequence[StepRequest], *, seed: int | None = None
    ) -> list[StepResult]:
        return self._lm.sample_steps(requests, seed=seed)

    def score_steps(self, requests: Sequence[ScoreRequest]) -> list[float]:
        return self._lm.score_steps(requests)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._lm, name)

    def __setattr__(self, name: str, value) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._lm, name, value)
