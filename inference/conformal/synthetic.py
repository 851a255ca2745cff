"""Synthetic decision problems whose true risks are known, to check calibrated decisions.

A calibrated rule promises that its true risk is below a target with
probability ``1 - delta``; checking that needs problems where the true risk
of every candidate parameter is known. Two kinds:

- ``ConfidencePool``: each problem has a MAP confidence ``c ~ Beta(a, b)``
  (continuous, as posterior masses of weighted particles or verifier scores
  are) and its MAP answer is right with probability ``c ** power``
  (``power > 1``: overconfident). Error rates among problems answered at a
  threshold are exact (incomplete beta functions).
- ``VotePool``: the confidence is one of a few values (vote shares, where
  ties and unanimity are common) with given probabilities, and the MAP
  answer is right with a given probability at each value.
- ``SamplingPool``: each problem's samples are right with a per-problem
  probability ``p`` (0 for a fraction ``unsolvable`` of problems, else
  ``Beta(a, b)``) and otherwise one of ``num_wrong`` wrong answers drawn
  from per-problem ``Dirichlet(concentration)`` shares, so that a wrong
  answer can win the vote. The miss rate of a fixed number of samples is
  exact; other rules are measured on a large pool.

Example:
    >>> pool = ConfidencePool(3.689, 2.221, 1.055)   # MAP right on 61% of problems
    >>> round(pool.accuracy, 3), round(float(pool.answer_rate(0.7)), 3)
    (0.61, 0.38)
    >>> round(float(pool.risk(0.7)), 3)
    0.2
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import integrate, special, stats


@dataclass(frozen=True)
class ConfidencePool:
    """MAP confidence ``c ~ Beta(a, b)``; the MAP answer is right with chance ``c ** power``."""

    a: float
    b: float
    power: float = 1.0

    def draw(self, num_problems: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``num_problems`` confidences and whether each MAP answer is right."""
        confidence = rng.beta(self.a, self.b, size=num_problems)
        return confidence, rng.random(num_problems) < confidence**self.power

    @property
    def accuracy(self) -> float:
        """Chance that the MAP answer is right."""
        return float(special.beta(self.a + self.power, self.b) / special.beta(self.a, self.b))

    def answer_rate(self, thresholds) -> np.ndarray:
        """``P(confidence >= threshold)``."""
        thresholds = np.clip(np.asarray(thresholds, dtype=float), 0.0, 1.0)
        return special.betainc(self.b, self.a, 1.0 - thresholds)

    def risk(self, thresholds) -> np.ndarray:
        """Error rate among the problems answered at each threshold (0 where none is)."""
        thresholds = np.clip(np.asarray(thresholds, dtype=float), 0.0, 1.0)
        rate = self.answer_rate(thresholds)
        right = self.accuracy * special.betainc(self.b, self.a + self.power, 1.0 - thresholds)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(rate > 0, 1.0 - right / np.where(rate > 0, rate, 1.0), 0.0)

    def error_probability(self, confidence) -> np.ndarray:
        """Chance that the MAP answer is wrong at each confidence."""
        return 1.0 - np.asarray(confidence, dtype=float) ** self.power

    def tilted_risk(self, threshold: float, shift: float) -> float:
        """Error rate at ``threshold`` once every error's log-odds grows by ``shift``."""

        def tilted(c):
            return shift_log_odds(self.error_probability(c), shift) * stats.beta.pdf(
                c, self.a, self.b
            )

        mass = integrate.quad(tilted, threshold, 1.0, limit=200)[0]
        return mass / float(self.answer_rate(threshold))

    def oracle(self, risk: float, thresholds) -> float:
        """Answer rate of the best threshold in ``thresholds`` whose true risk is <= ``risk``."""
        thresholds = np.asarray(thresholds, dtype=float)
        valid = self.risk(thresholds) <= risk
        return float(self.answer_rate(thresholds[valid]).max()) if valid.any() else 0.0


@dataclass(frozen=True)
class VotePool:
    """Confidence ``values[k]`` with probability ``probability[k]``, right with ``correct[k]``."""

    values: tuple[float, ...]
    probability: tuple[float, ...]
    correct: tuple[float, ...]

    def draw(self, num_problems: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``num_problems`` confidences and whether each MAP answer is right."""
        k = rng.choice(len(self.values), size=num_problems, p=self.probability)
        return np.asarray(self.values)[k], rng.random(num_problems) < np.asarray(self.correct)[k]

    @property
    def accuracy(self) -> float:
        return float(np.dot(self.probability, self.correct))

    def _answered(self, thresholds) -> np.ndarray:
        thresholds = np.asarray(thresholds, dtype=float)[..., None]
        return np.asarray(self.values) >= thresholds - 1e-9

    def answer_rate(self, thresholds) -> np.ndarray:
        return (self._answered(thresholds) * np.asarray(self.probability)).sum(axis=-1)

    def risk(self, thresholds) -> np.ndarray:
        rate = self.answer_rate(thresholds)
        wrong = self._answered(thresholds) * np.asarray(self.probability)
        wrong = (wrong * (1 - np.asarray(self.correct))).sum(axis=-1)
        return np.where(rate > 0, wrong / np.where(rate > 0, rate, 1.0), 0.0)

    def error_probability(self, confidence) -> np.ndarray:
        distance = np.subtract.outer(np.asarray(confidence, dtype=float), self.values)
        return 1.0 - np.asarray(self.correct)[np.abs(distance).argmin(axis=-1)]

    def tilted_risk(self, threshold: float, shift: float) -> float:
        answered = self._answered(threshold) * np.asarray(self.probability)
        errors = shift_log_odds(1.0 - np.asarray(self.correct), shift)
        return float((answered * errors).sum() / answered.sum())

    oracle = ConfidencePool.oracle


def shift_log_odds(error, shift: float):
    """``error`` (probabilities) with their log-odds raised by ``shift``.

    Example:
        >>> round(float(shift_log_odds(0.5, np.log(3.0))), 3)  # odds 1 -> 3
        0.75
    """
    return special.expit(special.logit(np.clip(error, 1e-12, 1 - 1e-12)) + shift)


@dataclass(frozen=True)
class SamplingPool:
    """Problems whose samples are right with probability ``p``; wrong answers compete."""

    a: float
    b: float
    unsolvable: float = 0.0
    num_wrong: int = 3
    concentration: float = 0.5

    def draw(
        self, num_problems: int, num_samples: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Answer ids ``(problems, samples)`` (0 is right) and whether each sample is right."""
        solvable = rng.random(num_problems) >= self.unsolvable
        p = rng.beta(self.a, self.b, size=num_problems) * solvable
        right = rng.random((num_problems, num_samples)) < p[:, None]
        shares = rng.dirichlet(np.full(self.num_wrong, self.concentration), size=num_problems)
        wrong = (rng.random((num_problems, num_samples, 1)) > shares.cumsum(axis=1)[:, None]).sum(
            axis=2
        )
        wrong = np.minimum(wrong, self.num_wrong - 1) + 1
        return np.where(right, 0, wrong), right

    def fixed_miss_rate(self, num_samples) -> np.ndarray:
        """Exact chance that ``num_samples`` samples hold no right answer."""
        k = np.asarray(num_samples, dtype=float)
        solved_miss = special.beta(self.a, self.b + k) / special.beta(self.a, self.b)
        return self.unsolvable + (1 - self.unsolvable) * solved_miss
