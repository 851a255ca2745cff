"""Intervals for probabilities: of answers (Dirichlet, bootstrap over runs) and proportions.

``dirichlet_intervals`` and ``bootstrap_intervals`` bound the posterior
probabilities of answers (see ``ppl.diagnostics``); ``wilson_interval``
bounds a proportion observed over independent trials (accuracy over problems).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from ppl.errors import InvalidArgumentError

Z_95 = 1.959963984540054


def check_level(level: float) -> None:
    """Raise ``InvalidArgumentError`` unless ``0 < level < 1``."""
    if not 0.0 < level < 1.0:
        raise InvalidArgumentError(f"interval level must be in (0, 1), got {level!r}")


def wilson_interval(p: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``p`` observed over ``n`` trials.

    Example:
        >>> [round(x, 4) for x in wilson_interval(0.5, 10)]
        [0.2366, 0.7634]
    """
    if n < 1:
        return (math.nan, math.nan)
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, center - half), min(1.0, center + half))


def dirichlet_intervals(
    probabilities: dict[Any, float], effective_count: float, level: float = 0.95
) -> dict[Any, tuple[float, float]]:
    """Equal-tailed intervals from a Dirichlet posterior on effective counts.

    The weighted vote ``p_a`` over ``n = ESS`` effective particles is treated
    as ``n p_a`` observations of answer ``a``; with a Jeffreys prior (1/2 per
    answer) the marginal of answer ``a`` is
    ``Beta(n p_a + 1/2, n (1 - p_a) + (K - 1)/2)``, ``K`` the number of
    answers seen (at least 2: an unseen answer is always possible). This
    ignores variance that resampling adds; prefer ``bootstrap_intervals``
    over independent runs when there are several.

    Example:
        >>> [round(x, 3) for x in dirichlet_intervals({"a": 0.5, "b": 0.5}, 100)["a"]]
        [0.403, 0.597]
    """
    check_level(level)
    categories = max(len(probabilities), 2)
    tail = (1.0 - level) / 2.0
    intervals = {}
    for answer, p in probabilities.items():
        a = effective_count * p + 0.5
        b = effective_count * (1.0 - p) + 0.5 * (categories - 1)
        lower, upper = stats.beta.ppf([tail, 1.0 - tail], a, b)
        intervals[answer] = (float(lower), float(upper))
    return intervals


def bootstrap_intervals(
    run_probabilities: np.ndarray,
    log_evidences: np.ndarray,
    level: float = 0.95,
    *,
    num_resamples: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """Percentile intervals of the pooled answer probabilities, resampling whole runs.

    ``run_probabilities[k, a]`` is run ``k``'s probability of answer ``a``.
    Each resample draws runs with replacement and pools them as
    ``Posterior.combine`` does (by evidence). Returns shape ``(2, answers)``:
    lower and upper bounds.

    Example:
        >>> bootstrap_intervals(np.array([[0.2, 0.8], [0.3, 0.7]]), np.zeros(2)).round(2)
        array([[0.2, 0.7],
               [0.3, 0.8]])
    """
    check_level(level)
    run_probabilities = np.asarray(run_probabilities, dtype=float)
    log_evidences = np.asarray(log_evidences, dtype=float)
    num_runs = len(log_evidences)
    z = np.zeros(num_runs)
    if np.isfinite(log_evidences).any():
        z = np.exp(log_evidences - np.max(log_evidences))
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(num_runs, np.full(num_runs, 1.0 / num_runs), size=num_resamples)
    weights = counts * z
    totals = weights.sum(axis=1)
    keep = totals > 0
    pooled = (weights[keep] @ run_probabilities) / totals[keep, None]
    tail = (1.0 - level) / 2.0
    return np.quantile(pooled, [tail, 1.0 - tail], axis=0)
