"""Resampling schemes: each maps normalized weights to ancestor indices.

All four are unbiased (each particle's expected number of offspring is
``N * w_i``); systematic, stratified and residual have lower variance than
multinomial.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ppl.errors import InvalidArgumentError

Resampler = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def multinomial(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """N independent draws from the weights."""
    return _searchsorted(weights, np.sort(rng.random(len(weights))))


def stratified(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniform draw in each of N equal strata."""
    n = len(weights)
    return _searchsorted(weights, (np.arange(n) + rng.random(n)) / n)


def systematic(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniform offset shared by N evenly spaced points."""
    n = len(weights)
    return _searchsorted(weights, (np.arange(n) + rng.random()) / n)


def residual(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``floor(N w_i)`` copies of each particle, the rest by multinomial draws on the residue."""
    n = len(weights)
    copies = np.floor(n * weights).astype(int)
    indices = np.repeat(np.arange(n), copies)
    remaining = n - len(indices)
    if remaining:
        residue = n * weights - copies
        extra = _searchsorted(residue / residue.sum(), np.sort(rng.random(remaining)))
        indices = np.concatenate([indices, extra])
    return np.sort(indices)


def _searchsorted(weights: np.ndarray, points: np.ndarray) -> np.ndarray:
    cumulative = np.cumsum(weights)
    # Rounding can leave the total just below 1; pin it from the last positive
    # weight on, so a point near 1 never lands on a trailing zero-weight particle.
    last_positive = np.flatnonzero(weights > 0)[-1]
    cumulative[last_positive:] = 1.0
    return np.minimum(np.searchsorted(cumulative, points, side="right"), last_positive)


RESAMPLERS: dict[str, Resampler] = {
    "multinomial": multinomial,
    "systematic": systematic,
    "stratified": stratified,
    "residual": residual,
}


def get_resampler(name: str) -> Resampler:
    """The resampling function called ``name``."""
    try:
        return RESAMPLERS[name]
    except KeyError:
        raise InvalidArgumentError(
            f"unknown resampling scheme {name!r}; choose one of {sorted(RESAMPLERS)}"
        ) from None
