"""Learn-then-Test: choose a parameter so that a risk is controlled with high probability.

Each candidate parameter ``lambda_j`` gives a null hypothesis ``H_j: risk(lambda_j) >
target``. A binomial-tail p-value tests it from the number of losses seen in
calibration; a family-wise error controlling procedure rejects a set of nulls
so that, with probability at least ``1 - delta`` over the calibration draw,
no true null is rejected. Every rejected parameter then has risk at most
``target``, so the least conservative rejected one is returned.

Candidates are ordered from most to least conservative. Fixed-sequence
testing walks that order at level ``delta`` and stops at the first null it
cannot reject; with several start points, each walk runs at ``delta /
starts`` (a union bound); Bonferroni tests each at ``delta / m`` and needs
no order.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from ppl.errors import InvalidArgumentError

TESTING = ("fixed-sequence", "bonferroni")


def binomial_pvalues(losses, trials, target: float) -> np.ndarray:
    """``P(Binomial(trials, target) <= losses)``: a valid p-value for ``risk > target``.

    When each of ``trials`` calibration outcomes is a loss independently with
    probability ``risk > target``, the count of losses is stochastically
    larger than ``Binomial(trials, target)``, so this p-value is
    super-uniform. With no trials it is 1 (nothing can be rejected).

    Example:
        >>> round(float(binomial_pvalues(0, 30, 0.1)), 6)  # 0.9 ** 30
        0.042391
    """
    losses = np.asarray(losses)
    trials = np.asarray(trials)
    with np.errstate(invalid="ignore"):
        p = stats.binom.cdf(losses, np.maximum(trials, 1), target)
    return np.where(trials > 0, p, 1.0)


def select(
    pvalues, delta: float, testing: str = "fixed-sequence", *, starts: int = 1
) -> np.ndarray:
    """Index of the least conservative rejected candidate along the last axis, -1 if none.

    ``pvalues[..., j]`` belongs to candidate ``j``, candidates ordered from
    most to least conservative. ``starts > 1`` runs fixed-sequence testing
    from that many evenly spaced start points, each at level ``delta /
    starts``, and pools what they reject (a sequence that stalls where few
    calibration problems are affected then does not block the others).

    Example:
        >>> select([0.01, 0.02, 0.5, 0.01], delta=0.05).item()
        1
        >>> select([0.01, 0.02, 0.5, 0.01], delta=0.05, testing="bonferroni").item()
        3
        >>> select([0.5, 0.01, 0.01, 0.5], delta=0.05, starts=2).item()
        2
    """
    pvalues = np.asarray(pvalues, dtype=float)
    check_testing(testing)
    size = pvalues.shape[-1]
    if isinstance(starts, bool) or not isinstance(starts, int) or not 1 <= starts <= size:
        raise InvalidArgumentError(f"starts must be an int from 1 to {size}, got {starts!r}")
    if testing == "bonferroni":
        rejected = pvalues <= delta / size
    else:
        rejected = np.zeros(pvalues.shape, dtype=bool)
        for start in np.linspace(0, size, starts, endpoint=False).astype(int):
            walk = np.cumprod(pvalues[..., start:] <= delta / starts, axis=-1).astype(bool)
            rejected[..., start:] |= walk
    last = size - 1 - np.argmax(rejected[..., ::-1], axis=-1)
    return np.where(rejected.any(axis=-1), last, -1)


def check_testing(testing: str) -> None:
    if testing not in TESTING:
        raise InvalidArgumentError(f"testing must be one of {', '.join(TESTING)}, got {testing!r}")


def check_level(name: str, value: float) -> float:
    """``value`` as a float in (0, 1), else ``InvalidArgumentError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise InvalidArgumentError(
            f"{name} must be a number strictly between 0 and 1, got {value!r}"
        )
    return float(value)
