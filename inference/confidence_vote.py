"""Warm-up thresholds and confidence-weighted votes over finished traces (DeepConf).

Example:
    >>> confidence_threshold([1.0, 2.0, 3.0, 4.0, 5.0], eta=50)
    3.0
    >>> weighted_vote(["7", "7", "8"], [1.0, 1.0, 3.0])
    '8'
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

from ppl.errors import EmptyPosteriorError, InvalidArgumentError


def confidence_threshold(warmup_confidences: Sequence[float], eta: float) -> float:
    """The stopping threshold that keeps the top ``eta`` percent of warm-up traces.

    It is the ``100 - eta`` percentile (linear interpolation) of the warm-up
    lowest-group confidences: ``eta=10`` keeps traces as confident as the best
    10% of the warm-up (the 90th percentile), ``eta=90`` the 10th percentile.
    """
    if not 0 < eta <= 100:
        raise InvalidArgumentError(f"eta must be in (0, 100] (percent kept), got {eta!r}")
    values = [float(c) for c in warmup_confidences]
    if not values or not all(math.isfinite(c) for c in values):
        raise InvalidArgumentError(
            "warm-up confidences must be a non-empty list of finite numbers; run num_warmup >= 1 "
            "particles to completion with top_logprobs requested"
        )
    return float(np.percentile(values, 100 - eta))


def weighted_vote(answers: Sequence[Hashable], confidences: Sequence[float]) -> Hashable:
    """The answer with the largest total confidence (ties: first seen)."""
    if len(answers) != len(confidences):
        raise InvalidArgumentError(
            f"got {len(answers)} answers but {len(confidences)} confidences; pass one per answer"
        )
    if not answers:
        raise EmptyPosteriorError("no answers to vote on: every trace was stopped or failed")
    totals: dict[Hashable, float] = {}
    for answer, confidence in zip(answers, confidences, strict=True):
        if not (math.isfinite(confidence) and confidence >= 0):
            raise InvalidArgumentError(
                f"vote weights must be finite and >= 0, got {confidence!r} for answer {answer!r}"
            )
        totals[answer] = totals.get(answer, 0.0) + float(confidence)
    return max(totals, key=totals.__getitem__)
