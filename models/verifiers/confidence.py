"""Confidence of a generated trace from its per-token top-k log-probabilities.

Each argument ``top`` is a sequence, one entry per generated token, of the k
largest log-probabilities at that position (``Step.top_logprobs``, requested
with ``ppl.step(..., top_logprobs=k)``). Formulas follow DeepConf (Fu et al.,
2025) and self-certainty (Kang et al., 2025); higher means more confident.

Example:
    >>> from models.verifiers.confidence import token_confidences, lowest_group_confidence
    >>> token_confidences([(-0.5, -1.5), (-1.0, -3.0)])
    [1.0, 2.0]
    >>> lowest_group_confidence([(-0.5, -1.5), (-1.0, -3.0), (-2.0, -2.0)], window=2)
    1.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ppl.errors import InvalidArgumentError

TopLogprobs = Sequence[Sequence[float]]


def token_confidences(top: TopLogprobs) -> list[float]:
    """Token confidence ``C_i = -(1/k) * sum_j log p_i(j)`` over the top-k at position i."""
    out = []
    for i, row in enumerate(top):
        if not row:
            raise InvalidArgumentError(
                f"position {i} has no top log-probabilities; request them with "
                "ppl.step(..., top_logprobs=k) with k >= 1"
            )
        out.append(-sum(row) / len(row))
    return out


def _check_window(window: int) -> None:
    if not (isinstance(window, int) and window >= 1):
        raise InvalidArgumentError(f"window must be a positive int, got {window!r}")


def group_confidences(top: TopLogprobs, window: int) -> list[float]:
    """Mean token confidence over each sliding window of ``window`` tokens.

    A trace shorter than the window forms a single group.
    """
    _check_window(window)
    conf = token_confidences(top)
    if not conf:
        raise InvalidArgumentError("a trace with no tokens has no confidence")
    if len(conf) <= window:
        return [sum(conf) / len(conf)]
    running = sum(conf[:window])
    groups = [running / window]
    for i in range(window, len(conf)):
        running += conf[i] - conf[i - window]
        groups.append(running / window)
    return groups


def lowest_group_confidence(top: TopLogprobs, window: int = 2048) -> float:
    """``min_g C_g``: the lowest sliding-window group confidence (DeepConf)."""
    return min(group_confidences(top, window))


def tail_confidence(top: TopLogprobs, tail: int = 2048) -> float:
    """Mean token confidence over the last ``tail`` tokens."""
    _check_window(tail)
    conf = token_confidences(top)
    if not conf:
        raise InvalidArgumentError("a trace with no tokens has no confidence")
    last = conf[-tail:]
    return sum(last) / len(last)


def self_certainty(top: TopLogprobs, vocab_size: int) -> float:
    """Mean over positions of ``KL(U || p_i)`` estimated from the top-k.

    ``KL(U || p) = -log V - (1/V) sum_v log p(v)``; the sum over the vocabulary
    is estimated by the top-k mean, ``-log V - (1/k) sum_j log p(j)``: with the
    tail left out this is a lower bound on the per-position KL.
    """
    if not (isinstance(vocab_size, int) and vocab_size >= 1):
        raise InvalidArgumentError(f"vocab_size must be a positive int, got {vocab_size!r}")
    conf = token_confidences(top)
    if not conf:
        raise InvalidArgumentError("a trace with no tokens has no confidence")
    return sum(c - math.log(vocab_size) for c in conf) / len(conf)
