"""DeepConf's stopping rule and confidence-weighted votes (Fu et al. 2025).

The rule: ``num_warmup`` particles run to completion; the threshold ``s`` is
the ``1 - keep`` quantile of their lowest group confidence
(``models.verifiers.lowest_group_confidence`` over ``window`` tokens), so
``keep=0.1`` keeps traces as confident as the best 10% of the warm-up and
``keep=0.9`` the best 90%. A trace is kept when its lowest group confidence
is ``>= s``. Engines apply it online (``inference.early_stopping``).

Example:
    >>> rule = ConfidenceStop(num_warmup=5, keep=0.5, window=16)
    >>> rule.threshold([1.0, 2.0, 3.0, 4.0, 5.0])
    3.0
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from models.verifiers.confidence import Confidence, check_window
from ppl.errors import EmptyPosteriorError, InvalidArgumentError
from ppl.posterior import Posterior
from ppl.weights import normalized_weights


@dataclass(frozen=True)
class ConfidenceStop:
    """Stop particles whose lowest group confidence falls below a warm-up quantile.

    Example:
        >>> ConfidenceStop(num_warmup=0)
        Traceback (most recent call last):
        ...
        ppl.errors.InvalidArgumentError: num_warmup must be a positive int, got 0
    """

    num_warmup: int
    keep: float = 0.9
    window: int = 2048

    def __post_init__(self):
        n = self.num_warmup
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidArgumentError(f"num_warmup must be a positive int, got {n!r}")
        if not (isinstance(self.keep, int | float) and 0 < self.keep <= 1):
            raise InvalidArgumentError(
                f"keep must be in (0, 1] (the share of warm-up traces kept), got {self.keep!r}"
            )
        check_window(self.window)

    def threshold(self, warmup_confidences: Sequence[float]) -> float:
        """The ``1 - keep`` quantile (linear interpolation) of warm-up confidences."""
        values = [float(c) for c in warmup_confidences]
        if not values or not all(math.isfinite(c) for c in values):
            raise InvalidArgumentError(
                f"warm-up confidences must be finite and non-empty, got {values!r}: no warm-up "
                "particle of positive weight generated tokens with top log-probabilities; "
                "raise num_warmup or request ppl.step(..., top_logprobs=k)"
            )
        return float(np.quantile(values, 1.0 - self.keep))


def confidence_vote(
    posterior: Posterior, confidence: Confidence | None = None
) -> dict[Hashable, float]:
    """Answer shares weighted by importance weight times confidence (DeepConf's vote).

    ``confidence`` defaults to the lowest group confidence over 2048 tokens.
    Particles of weight zero (stopped ones among them) do not vote.

    Example (``letters`` answers the first of the letters it writes, with their top
    log-probabilities):
        >>> posterior = ppl.importance(letters, lm, "ae", num_particles=16, seed=0)
        >>> shares = confidence_vote(posterior, Confidence("tail", window=4))
        >>> {answer: round(share, 2) for answer, share in sorted(shares.items())}
        {'b': 0.14, 'c': 0.25, 'e': 0.61}
    """
    confidence = confidence or Confidence("lowest_group")
    if posterior.is_empty:
        raise EmptyPosteriorError("no particle of positive weight to vote: all were stopped")
    weights = normalized_weights(posterior.log_weights)
    totals: dict[Hashable, float] = {}
    for trace, weight in zip(posterior.particles, weights, strict=True):
        if weight > 0 and trace.has_answer:
            c = confidence.score([site.value for site in trace.steps])
            totals[trace.answer] = totals.get(trace.answer, 0.0) + float(weight) * c
    mass = math.fsum(totals.values())
    if not mass > 0:
        raise EmptyPosteriorError("every voting trace has confidence zero; no vote to take")
    return {answer: value / mass for answer, value in totals.items()}
