"""Arithmetic of importance weights, kept in log space."""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


def normalized_weights(log_weights: np.ndarray) -> np.ndarray:
    """Self-normalized weights; all zeros when every weight is ``-inf``.

    Example:
        >>> normalized_weights(np.log([1.0, 3.0])).round(2).tolist()
        [0.25, 0.75]
    """
    log_weights = np.asarray(log_weights, dtype=float)
    if log_weights.size == 0 or not np.isfinite(log_weights).any():
        return np.zeros_like(log_weights)
    return np.exp(log_weights - logsumexp(log_weights))


def effective_sample_size(log_weights: np.ndarray) -> float:
    """Kish's ESS ``(sum w)^2 / sum w^2``; 0 when every weight is ``-inf``.

    Example:
        >>> effective_sample_size(np.zeros(4)), effective_sample_size(np.array([0.0, -np.inf]))
        (4.0, 1.0)
    """
    weights = normalized_weights(log_weights)
    total = float(np.sum(weights**2))
    return 1.0 / total if total > 0 else 0.0
