"""Verifier-free confidence of a trace, from its per-token top-k log-probabilities.

A step records, per generated token, the ``k`` largest log-probabilities of
its target distribution when asked (``ppl.step(..., top_logprobs=k)``, kept
in ``Step.top_logprobs``). A trace's tokens are its steps' tokens in order.
With ``l_1 >= ... >= l_k`` the top log-probabilities at one position:

- token confidence ``C = -(1/k) sum_j l_j`` (DeepConf, Fu et al. 2025):
  large when the top-k share little mass beyond the first;
- group confidence: the mean ``C`` over a window of ``window`` consecutive
  tokens; a trace's *lowest group confidence* is the least over its sliding
  windows (a trace shorter than the window is one group). Adding tokens can
  only lower it once a full window exists, which is what lets early stopping
  decide before a trace ends;
- tail confidence: the mean ``C`` over the last ``window`` tokens;
- self-certainty (Kang et al. 2025): the mean over positions of
  ``KL(U || p)``, uniform against the next-token distribution. From the top-k
  it is computed for ``p`` restricted to them and renormalised,
  ``logsumexp(l) - log k - mean(l)``, which is Kang et al.'s exactly when the
  top-k cover the target's support (a ``top_k`` sampler with
  ``top_logprobs >= top_k``).

Every measure is >= 0 and higher means more confident. ``Confidence`` turns
one into a factor, a twist or a beam / best-of-N score.

Example:
    >>> token_confidences([(-0.5, -1.5), (-1.0, -3.0)])
    [1.0, 2.0]
    >>> lowest_group_confidence([(-0.5, -1.5), (-1.0, -3.0), (-2.0, -2.0)], window=2)
    1.5
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ppl.errors import InvalidArgumentError
from ppl.primitives import factor, twist
from ppl.trace import Trace
from ppl.values import Step

TopLogprobs = Sequence[Sequence[float]]
MEASURES = ("token", "lowest_group", "tail", "self_certainty")


def trace_top_logprobs(steps: Sequence[Step]) -> list[tuple[float, ...]]:
    """The top log-probabilities of every token of ``steps``, in order.

    Example:
        >>> trace_top_logprobs([Step("a", token_ids=(1,), top_logprobs=[(-0.1, -2.5)])])
        [(-0.1, -2.5)]
    """
    rows: list[tuple[float, ...]] = []
    for i, step in enumerate(steps):
        if not isinstance(step, Step):
            raise InvalidArgumentError(
                f"step {i} is a {type(step).__name__}, not a ppl.Step; confidence needs the "
                "Step values ppl.step returns (plain text has no log-probabilities)"
            )
        if step.token_ids and not step.top_logprobs:
            raise InvalidArgumentError(
                f"step {i} ({str(step)[:30]!r}) has no top log-probabilities; request them "
                "with ppl.step(..., top_logprobs=k), k >= 1"
            )
        rows.extend(step.top_logprobs)
    return rows


def token_confidences(top: TopLogprobs) -> list[float]:
    """Token confidence ``C_i = -(1/k) sum_j l_ij`` at each position."""
    out = []
    for i, row in enumerate(top):
        if not row:
            raise InvalidArgumentError(
                f"position {i} has no top log-probabilities; request them with "
                "ppl.step(..., top_logprobs=k) with k >= 1"
            )
        out.append(-math.fsum(row) / len(row))
    return out


def check_window(window) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise InvalidArgumentError(f"window must be a positive int (tokens), got {window!r}")
    return window


def _nonempty(top: TopLogprobs) -> list[float]:
    confidences = token_confidences(top)
    if not confidences:
        raise InvalidArgumentError(
            "a trace with no tokens has no confidence; it made no ppl.step with top_logprobs"
        )
    return confidences


def group_confidences(top: TopLogprobs, window: int) -> list[float]:
    """Mean token confidence over each sliding window of ``window`` tokens.

    Example:
        >>> group_confidences([(-1.0,), (-3.0,), (-2.0,)], window=2)
        [2.0, 2.5]
    """
    check_window(window)
    confidences = _nonempty(top)
    if len(confidences) <= window:
        return [math.fsum(confidences) / len(confidences)]
    running = math.fsum(confidences[:window])
    groups = [running / window]
    for i in range(window, len(confidences)):
        running += confidences[i] - confidences[i - window]
        groups.append(running / window)
    return groups


def lowest_group_confidence(top: TopLogprobs, window: int = 2048) -> float:
    """``min_g C_g``: the lowest sliding-window group confidence (DeepConf)."""
    return min(group_confidences(top, window))


def tail_confidence(top: TopLogprobs, window: int = 2048) -> float:
    """Mean token confidence over the last ``window`` tokens."""
    check_window(window)
    last = _nonempty(top)[-window:]
    return math.fsum(last) / len(last)


def mean_confidence(top: TopLogprobs) -> float:
    """Mean token confidence over the whole trace."""
    confidences = _nonempty(top)
    return math.fsum(confidences) / len(confidences)


def self_certainty(top: TopLogprobs) -> float:
    """Mean over positions of ``KL(U || p)``, ``p`` restricted to the top-k and renormalised.

    Example:
        >>> round(self_certainty([(math.log(0.5), math.log(0.5))]), 12)  # uniform: KL 0
        0.0
    """
    _nonempty(top)
    total = 0.0
    for row in top:
        peak = max(row)
        log_mass = peak + math.log(math.fsum(math.exp(v - peak) for v in row))
        total += log_mass - math.log(len(row)) - math.fsum(row) / len(row)
    return total / len(top)


class Confidence:
    """A confidence measure of a trace as a factor, a twist or a trace score.

    ``measure`` is ``token`` (mean token confidence), ``lowest_group``,
    ``tail`` (both over ``window`` tokens) or ``self_certainty``. As a factor,
    the target becomes ``p(trace) * exp(c / temperature)`` with ``c`` the
    measure of the steps passed; as a twist it guides SMC and beam search
    without changing the target; ``trace_scorer`` scores finished traces
    (every ``ppl.step`` of the trace) for beam search and best-of-N.

    Example:
        >>> steps = [Step("a", token_ids=(1,), top_logprobs=[(-0.2, -1.8)])]
        >>> Confidence("token").score(steps)
        1.0
        >>> Confidence("lowest_group", window=0)
        Traceback (most recent call last):
        ...
        ppl.errors.InvalidArgumentError: window must be a positive int (tokens), got 0
    """

    def __init__(self, measure: str = "lowest_group", *, window: int = 2048, temperature=1.0):
        if measure not in MEASURES:
            raise InvalidArgumentError(
                f"unknown confidence measure {measure!r}; choose one of {MEASURES}"
            )
        if not (isinstance(temperature, int | float) and temperature > 0):
            raise InvalidArgumentError(f"temperature must be > 0, got {temperature!r}")
        self.measure = measure
        self.window = check_window(window)
        self.temperature = float(temperature)

    def __repr__(self) -> str:
        return f"Confidence({self.measure!r}, window={self.window})"

    def of_rows(self, top: TopLogprobs) -> float:
        """The measure of a trace given its tokens' top log-probabilities."""
        if self.measure == "token":
            return mean_confidence(top)
        if self.measure == "lowest_group":
            return lowest_group_confidence(top, self.window)
        if self.measure == "tail":
            return tail_confidence(top, self.window)
        return self_certainty(top)

    def score(self, steps: Sequence[Step]) -> float:
        """The measure of ``steps`` (the ``Step`` values of ``ppl.step``)."""
        return self.of_rows(trace_top_logprobs(steps))

    def factor(self, name: str, steps: Sequence[Step]) -> float:
        """Weight the trace by ``exp(score / temperature)`` (factor ``name``); returns the score.

        Example (inside a program, over ``lm``, a tiny model over ``a b c e``):
            >>> @ppl.program
            ... def confident_letters(lm, prompt):
            ...     step = ppl.step("letters", lm, prompt, stop=(), max_tokens=4, top_logprobs=2)
            ...     Confidence("token").factor("confident", [step])
            ...     ppl.answer(step[:1])
            >>> ppl.importance(confident_letters, lm, "ae", num_particles=8, seed=0)
            <Posterior importance runs=1 particles=8 ess=7.9 log_evidence=1.048>
        """
        c = self.score(steps)
        factor(name, c / self.temperature)
        return c

    def twist(self, steps: Sequence[Step]) -> float:
        """Make ``score / temperature`` the current ``ppl.twist``; returns the score."""
        c = self.score(steps)
        twist(c / self.temperature)
        return c

    def trace_scorer(self) -> Callable[[Sequence[Trace]], list[float]]:
        """A batched log-score of traces, ``score / temperature`` over their steps, for beam.

        Example (``letters`` records the top log-probabilities of its step):
            >>> beam = ppl.beam(letters, lm, "ae", beam_width=2, num_expansions=2, seed=0,
            ...                 score=Confidence("tail", window=4).trace_scorer())
            >>> beam.answers
            ['e', 'e']
        """

        def score_traces(traces: Sequence[Trace]) -> list[float]:
            return [
                self.score([site.value for site in trace.steps]) / self.temperature
                for trace in traces
            ]

        return score_traces
