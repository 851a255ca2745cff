"""How much any valid abstention rule can answer, on a pool whose truth is known.

Judging a rule's power against the oracle (the best threshold whose true
risk meets the target) mixes two things: what the rule wastes and what no
rule could certify from the calibration problems at hand. This module
bounds the second, for every rule that picks one of the candidate
thresholds and is valid at ``delta`` for every distribution of problems,
by the Neyman-Pearson lemma.

For a candidate threshold ``t`` answering a fraction ``r(t)``, let ``Q_t``
be the pool with the same confidences in which every threshold answering
at least ``r(t)`` errs more than the target: the error log-odds above
``t`` shifted up by one constant (the smallest change, in Kullback-Leibler
divergence, that lifts the error rate there to the target) and, below
``t``, errors raised to the target where they are lower. A valid rule answers
``r(t)`` or more under ``Q_t`` with chance at most ``delta``, so under the
true pool it does so with chance at most ``beta(t)``, the power of the most
powerful level-``delta`` test of ``Q_t`` against the pool on the same
number of problems (a likelihood-ratio test, estimated by Monte Carlo).
Summing over the thresholds up to the oracle's,

    E[answer rate, counted when the risk is met] <= sum_j (r_j - r_{j-1}) beta(t_j).

The bound may be loose (the most powerful test knows how the error rate
varies with confidence, which no valid rule does), but no rule can beat
it: where it is below half the oracle, half the oracle is out of reach.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

from inference.conformal.abstention import DEFAULT_THRESHOLDS, TOLERANCE
from inference.conformal.synthetic import shift_log_odds

# The null sits this far above the target, so every threshold it concerns truly fails it.
MARGIN = 1e-3
CHUNK = 1000


def abstention_power_bound(
    pool,
    risk: float,
    delta: float,
    num_problems: int,
    thresholds=DEFAULT_THRESHOLDS,
    *,
    draws: int = 10_000,
    seed: int = 0,
) -> float:
    """Bound on a valid rule's mean answer rate (where it meets ``risk``) over the oracle's.

    ``pool`` is a ``ConfidencePool`` or ``VotePool``. With one confidence
    value every problem is answered alike and the bound is the power of
    one randomized binomial test:

    Example:
        >>> from inference.conformal.synthetic import VotePool
        >>> pool = VotePool((1.0,), (1.0,), (0.95,))     # every answer 95% right
        >>> bound = abstention_power_bound(pool, 0.1, 0.1, 100, draws=20_000)
        >>> round(bound, 2)  # exactly: 0.737, a test at error rate 0.101 on 100 problems
        0.73
    """
    thresholds = np.asarray(thresholds, dtype=float)
    oracle = pool.oracle(risk, thresholds)
    rng = np.random.default_rng(seed)
    rates = pool.answer_rate(thresholds)
    total, below = 0.0, 0.0
    for index in np.argsort(rates, kind="stable"):
        rate = float(rates[index])
        if rate <= below or rate > oracle:
            continue
        power = _most_powerful_test(pool, thresholds[index], risk, delta, num_problems, draws, rng)
        total, below = total + (rate - below) * power, rate
    return total / oracle if oracle > 0 else 0.0


def _null_errors(pool, threshold: float, risk: float):
    """The error probability of ``Q_t``, as a function of confidence (see the module)."""
    target = risk + MARGIN
    shift = 0.0
    if pool.risk(threshold) < target:
        shift = optimize.brentq(lambda s: pool.tilted_risk(threshold, s) - target, 0.0, 50.0)

    def errors(confidence):
        error = pool.error_probability(confidence)
        return np.where(
            confidence + TOLERANCE >= threshold,
            shift_log_odds(error, shift),
            np.maximum(error, target),
        )

    return errors


def _most_powerful_test(pool, threshold, risk, delta, num_problems, draws, rng) -> float:
    """Power of the randomized likelihood-ratio test of ``Q_t`` against the pool."""
    null = _null_errors(pool, threshold, risk)
    true_ratio, null_ratio = [], []
    for _ in range(-(-draws // CHUNK)):
        confidence = pool.draw(CHUNK * num_problems, rng)[0].reshape(CHUNK, num_problems)
        p = np.clip(pool.error_probability(confidence), 1e-12, 1 - 1e-12)
        q = np.clip(null(confidence), 1e-12, 1 - 1e-12)
        if_wrong, if_right = np.log(p / q), np.log((1 - p) / (1 - q))
        uniform = rng.random(confidence.shape)
        true_ratio.append(np.where(uniform < p, if_wrong, if_right).sum(axis=1))
        null_ratio.append(np.where(uniform < q, if_wrong, if_right).sum(axis=1))
    true_ratio, null_ratio = np.concatenate(true_ratio), np.concatenate(null_ratio)
    critical = np.quantile(null_ratio, 1 - delta)
    above, tied = np.mean(null_ratio > critical), np.mean(null_ratio == critical)
    share = (delta - above) / tied if tied > 0 else 0.0
    return float(np.mean(true_ratio > critical) + share * np.mean(true_ratio == critical))
