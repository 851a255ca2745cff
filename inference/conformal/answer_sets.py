"""Split conformal prediction sets over the answers of a posterior."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.conformal.data import CalibrationData, from_posteriors
from inference.conformal.decision import Decision
from inference.conformal.ltt import check_level
from ppl.answers import answer_label
from ppl.errors import CalibrationError, InvalidArgumentError
from ppl.posterior import Posterior

SCORES = ("lac", "aps")
# Scores are rounded so that answers with equal vote shares tie exactly.
DECIMALS = 12


@dataclass(frozen=True)
class SetEvaluation:
    """How calibrated sets did on held-out problems."""

    num_problems: int
    coverage: float
    mean_set_size: float
    empty_rate: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class AnswerSets:
    """Split conformal answer sets: every answer the calibration cannot rule out at level alpha.

    Non-conformity of answer ``y`` under a posterior ``p`` is ``1 - p(y)``
    (``score="lac"``, least ambiguous sets: smallest on average) or, with
    ``score="aps"`` (adaptive sets), the posterior mass of the answers ranked
    above ``y`` plus ``u p(y)`` for a uniform ``u``, ties between answers
    ordered at random. A candidate enters the set when its smoothed conformal
    p-value ``(#{s_i > s} + u' (#{s_i = s} + 1)) / (n + 1)`` exceeds ``alpha``
    (``s_i`` the calibration scores of the right answers, ``u'`` uniform).
    The randomisation matters: vote shares are discrete, so calibration
    scores tie, and without it coverage overshoots ``1 - alpha``
    (``randomized=False`` gives that conservative rule).

    Guarantee: if the calibration problems and the new problem are
    exchangeable (drawn from the same distribution, run the same way), the
    set holds an acceptable answer with probability at least ``1 - alpha``
    (exactly ``1 - alpha`` when randomised), on average over the draw of the
    calibration problems and the new one. The sets are drawn from the answers
    the posterior sampled, so coverage can be no higher than the chance that
    a right answer was sampled at all: a calibration problem whose right
    answer was never sampled scores ``inf``, and when more than about
    ``alpha`` of them do, the threshold is ``inf``, every sampled answer
    enters the set, and coverage is the sampling hit rate
    (``attainable_coverage`` estimates it). Coverage is marginal, not per
    problem.

    Example:
        >>> sets = AnswerSets(alpha=0.1, score="aps").calibrate(cal)
        >>> sets.predict(ppl.importance(add, 4, 5, num_particles=8, seed=0)).answers
        ('8', '7', '11', '9')
        >>> sets.evaluate(heldout).coverage
        0.85
    """

    method = "answer-sets"

    def __init__(self, alpha: float, *, score: str = "lac", randomized: bool = True, seed: int = 0):
        self.alpha = check_level("alpha", alpha)
        if score not in SCORES:
            raise InvalidArgumentError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        self.score = score
        self.randomized = bool(randomized)
        self.seed = seed
        self.calibration_scores: np.ndarray | None = None
        self.attainable_coverage = math.nan

    # --- calibration ---------------------------------------------------------
    def calibrate(self, data) -> AnswerSets:
        """Calibrate on ``CalibrationData`` (or ``(posterior, expected)`` pairs)."""
        probabilities, candidates, acceptable = _padded(_as_data(data))
        return self._calibrate(probabilities, candidates, acceptable)

    def calibrate_arrays(self, probabilities, labels) -> AnswerSets:
        """Calibrate on raw scores: ``probabilities[i, k]`` of answer ``k`` for problem ``i``.

        Every column is a candidate; ``labels[i]`` is the right column, or -1
        when the right answer is none of them.

        Example:
            >>> sets = AnswerSets(0.2).calibrate_arrays([[0.7, 0.3], [0.4, 0.6]] * 10, [0, 1] * 10)
            >>> sets.num_calibration
            20
        """
        probabilities, labels = _check_arrays(probabilities, labels)
        candidates = np.ones(probabilities.shape, dtype=bool)
        return self._calibrate(probabilities, candidates, _one_hot(labels, probabilities.shape[1]))

    def _calibrate(self, probabilities, candidates, acceptable) -> AnswerSets:
        rng = np.random.default_rng([self.seed, 0])
        scores = self._scores(probabilities, candidates, rng)
        right = np.where(acceptable & candidates, scores, np.inf).min(axis=1)
        self.calibration_scores = np.sort(right)
        self.attainable_coverage = float(np.mean((acceptable & candidates).any(axis=1)))
        return self

    @property
    def num_calibration(self) -> int:
        return 0 if self.calibration_scores is None else len(self.calibration_scores)

    @property
    def threshold(self) -> float:
        """The conformal quantile of the calibration scores (``inf`` if too few problems).

        Answers scoring below it are always in the set, above it never;
        randomisation decides those equal to it.
        """
        scores = self._require()
        rank = math.ceil((len(scores) + 1) * (1 - self.alpha))
        return float(scores[rank - 1]) if rank <= len(scores) else math.inf

    # --- prediction ----------------------------------------------------------
    def predict_arrays(self, probabilities, *, seed: int | None = None) -> np.ndarray:
        """Boolean membership ``[i, k]`` of column ``k`` in problem ``i``'s set."""
        probabilities, _ = _check_arrays(probabilities, None)
        candidates = np.ones(probabilities.shape, dtype=bool)
        return self._members(probabilities, candidates, self._rng(seed))

    def predict(self, posterior: Posterior, *, seed: int | None = None) -> Decision:
        """The answer set of one posterior, most probable answer first.

        ``seed`` fixes the randomisation (default: the calibration's seed).
        """
        distribution = posterior.answer_distribution()
        answers = list(distribution)
        probabilities = np.array([list(distribution.values())], dtype=float).reshape(1, -1)
        candidates = np.ones(probabilities.shape, dtype=bool)
        members = self._members(probabilities, candidates, self._rng(seed))[0]
        chosen = [a for a, keep in zip(answers, members, strict=True) if keep]
        threshold = self.threshold
        level = f"{1 - self.alpha:.0%}"
        shown = ", ".join(answer_label(a) for a in chosen) if chosen else "empty"
        return Decision(
            method=self.method,
            headline=f"answer set ({level} coverage): {shown}",
            answers=tuple(chosen),
            probabilities=tuple(distribution[a] for a in chosen),
            details={
                "alpha": self.alpha,
                "score": self.score,
                "threshold": threshold,
                "set size": len(chosen),
                "calibration problems": self.num_calibration,
                "attainable coverage": self.attainable_coverage,
            },
            guarantee=self.guarantee(),
            notes=(
                (
                    "the threshold is infinite: too many calibration problems never sampled a "
                    "right answer, so the set is every sampled answer",
                )
                if math.isinf(threshold)
                else ()
            ),
        )

    def guarantee(self) -> str:
        """The promise of these sets, in words."""
        return (
            f"an acceptable answer is in the set with probability >= {1 - self.alpha:.2f}, on "
            f"average over calibration draws ({self.score.upper()} split conformal, "
            f"{self.num_calibration} exchangeable calibration problems); capped by the chance "
            f"that a right answer was sampled at all ({self.attainable_coverage:.2f} in "
            "calibration)"
        )

    # --- evaluation ----------------------------------------------------------
    def evaluate(self, data, *, seed: int | None = None) -> SetEvaluation:
        """Coverage, mean set size and empty-set rate on held-out problems."""
        probabilities, candidates, acceptable = _padded(_as_data(data))
        members = self._members(probabilities, candidates, self._rng(seed))
        return _evaluation(members, acceptable)

    def evaluate_arrays(self, probabilities, labels, *, seed: int | None = None) -> SetEvaluation:
        """``evaluate`` on raw scores (see ``calibrate_arrays``)."""
        probabilities, labels = _check_arrays(probabilities, labels)
        members = self.predict_arrays(probabilities, seed=seed)
        return _evaluation(members, _one_hot(labels, probabilities.shape[1]))

    # --- internals -----------------------------------------------------------
    def _rng(self, seed: int | None) -> np.random.Generator:
        return np.random.default_rng([self.seed, 1] if seed is None else [seed, 2])

    def _require(self) -> np.ndarray:
        if self.calibration_scores is None:
            raise CalibrationError("these answer sets are not calibrated: call calibrate first")
        return self.calibration_scores

    def _members(self, probabilities, candidates, rng) -> np.ndarray:
        calibration = self._require()
        scores = self._scores(probabilities, candidates, rng)
        above = len(calibration) - np.searchsorted(calibration, scores, side="right")
        ties = np.searchsorted(calibration, scores, side="right") - np.searchsorted(
            calibration, scores, side="left"
        )
        u = rng.random((len(scores), 1)) if self.randomized else 1.0
        pvalues = (above + u * (ties + 1)) / (len(calibration) + 1)
        return (pvalues > self.alpha) & candidates

    def _scores(self, probabilities, candidates, rng) -> np.ndarray:
        """Non-conformity of every candidate (``inf`` for padding)."""
        if self.score == "lac":
            scores = 1.0 - probabilities
        else:
            scores = _aps_scores(probabilities, candidates, rng, self.randomized)
        return np.where(candidates, np.round(scores, DECIMALS), np.inf)

    # --- persistence ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "alpha": self.alpha,
            "score": self.score,
            "randomized": self.randomized,
            "seed": self.seed,
            "calibration_scores": self._require().tolist(),
            "attainable_coverage": self.attainable_coverage,
            "guarantee": self.guarantee(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnswerSets:
        sets = cls(
            data["alpha"], score=data["score"], randomized=data["randomized"], seed=data["seed"]
        )
        sets.calibration_scores = np.sort(np.asarray(data["calibration_scores"], dtype=float))
        sets.attainable_coverage = float(data["attainable_coverage"])
        return sets

    def __repr__(self) -> str:
        return f"<AnswerSets alpha={self.alpha} score={self.score} n={self.num_calibration}>"


def _aps_scores(probabilities, candidates, rng, randomized: bool) -> np.ndarray:
    """Mass ranked above each answer plus ``u`` times its own; ties ranked at random."""
    tiebreak = rng.random(probabilities.shape)
    masked = np.where(candidates, probabilities, -1.0)
    order = np.lexsort((tiebreak, -masked), axis=-1)
    ranked = np.take_along_axis(np.where(candidates, probabilities, 0.0), order, axis=-1)
    before = np.cumsum(ranked, axis=-1) - ranked
    u = rng.random((len(probabilities), 1)) if randomized else 1.0
    scores = np.empty_like(ranked)
    np.put_along_axis(scores, order, before + u * ranked, axis=-1)
    return scores


def _evaluation(members: np.ndarray, acceptable: np.ndarray) -> SetEvaluation:
    sizes = members.sum(axis=1)
    return SetEvaluation(
        num_problems=len(members),
        coverage=float(np.mean((members & acceptable).any(axis=1))),
        mean_set_size=float(np.mean(sizes)),
        empty_rate=float(np.mean(sizes == 0)),
    )


def _as_data(data) -> CalibrationData:
    return data if isinstance(data, CalibrationData) else from_posteriors(data)


def _padded(data: CalibrationData):
    """Posteriors as ``(n, K)`` probability, candidate and acceptable arrays."""
    width = max(1, max(len(e.probabilities) for e in data))
    probabilities = np.zeros((len(data), width))
    candidates = np.zeros((len(data), width), dtype=bool)
    acceptable = np.zeros((len(data), width), dtype=bool)
    for i, example in enumerate(data):
        for k, (answer, p) in enumerate(example.probabilities.items()):
            probabilities[i, k] = p
            candidates[i, k] = True
            acceptable[i, k] = answer in example.acceptable
    return probabilities, candidates, acceptable


def _check_arrays(probabilities, labels):
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.ndim != 2 or probabilities.shape[1] == 0 or not len(probabilities):
        raise InvalidArgumentError(
            f"probabilities must be a non-empty (problems, answers) array, got shape "
            f"{probabilities.shape}"
        )
    if not np.isfinite(probabilities).all() or (probabilities < 0).any():
        raise InvalidArgumentError("probabilities must be finite and non-negative")
    if labels is None:
        return probabilities, None
    labels = np.asarray(labels)
    if labels.shape != (len(probabilities),) or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidArgumentError(
            f"labels must be {len(probabilities)} integers (a column, or -1 for none)"
        )
    if ((labels < -1) | (labels >= probabilities.shape[1])).any():
        raise InvalidArgumentError(
            f"labels must be -1 or a column index below {probabilities.shape[1]}"
        )
    return probabilities, labels


def _one_hot(labels: np.ndarray, width: int) -> np.ndarray:
    return (labels[:, None] == np.arange(width)) & (labels[:, None] >= 0)
