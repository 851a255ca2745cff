"""Answer or abstain: a confidence threshold chosen by Learn-then-Test."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.conformal.answer_sets import _as_data
from inference.conformal.bayes import CalibratedScore
from inference.conformal.data import MAP_PROBABILITY, CalibrationData, Confidence, confidence_of
from inference.conformal.decision import Decision
from inference.conformal.ltt import (
    check_level,
    check_procedure,
    learn_then_test,
    procedure_text,
)
from ppl.answers import answer_label
from ppl.errors import CalibrationError, InvalidArgumentError
from ppl.posterior import Posterior

# Thresholds 1.00, 0.99, ..., 0.00: most conservative (answer least) first.
DEFAULT_THRESHOLDS = tuple(round(1 - j / 100, 2) for j in range(101))
DEFAULT_PROCEDURE = "split-start"
# A MAP answer every particle agrees on sums to 1 only up to rounding.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class AbstentionEvaluation:
    """How the abstention rule did on held-out problems (``risk`` is NaN if none answered)."""

    num_problems: int
    num_answered: int
    answer_rate: float
    risk: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Abstention:
    """Give the MAP answer only when its confidence reaches a calibrated threshold.

    Confidence is the MAP answer's posterior mass (``confidence=
    "map-probability"``), a verifier score recorded in a ``ppl.memo``
    site (its name; see ``confidence_of``), or a function of the posterior,
    such as ``ScoreCalibration.confidence(site)``, the verifier score mapped
    to a Bayes-calibrated probability (only that kind of function saves
    with the rule). A function must be fixed independently of the
    calibration problems: fit a score calibration on a disjoint split, or
    the guarantee below is void. For each candidate threshold
    ``lambda`` (``thresholds``, highest first), the null ``risk(lambda) >
    risk`` is tested with the binomial tail p-value of the errors among the
    calibration problems answered at ``lambda``; given which problems are
    answered, their errors are independent with probability
    ``risk(lambda)``, so the p-value is valid. A family-wise procedure
    (``procedure``, see ``inference.conformal.ltt``) keeps the chance of any
    false rejection below ``delta``, and the lowest rejected threshold is
    chosen.

    The default, ``"split-start"``, spends a random ``split`` (20%) of the
    calibration problems on choosing where to start (the threshold of
    smallest p-value there) and walks towards lower thresholds on the rest.
    A walk from the top stalls when the highest thresholds answer few
    problems, as continuous confidences do (no posterior mass reaches 1), and
    the error rate grows as the threshold falls, so a walk in that direction
    from a well-measured start loses least. On synthetic problems with 500
    calibration problems it answered the most of every procedure on
    continuous confidences (``bench/README.md``). ``"fixed-sequence"`` with
    ``starts=1`` is best when unanimity is common (vote shares of a few
    samples); ``"pareto"`` orders every threshold by its split p-value
    (better when the error rate is not monotone in the threshold);
    ``"fallback"`` and ``"bonferroni"`` use every problem for testing but
    pay for each threshold tried. ``seed`` draws the split and, with
    ``randomized`` (the default), the uniform draw of the randomized
    binomial p-values (``inference.conformal.ltt.binomial_pvalues``): as
    valid as the plain ones and more powerful, since a whole-number count
    of errors otherwise leaves part of ``delta`` unused (on the synthetic
    pools they answered up to 0.07 more of the oracle's answer rate). Set
    ``randomized=False`` for a threshold that depends on the data alone.

    Guarantee: if calibration and new problems are exchangeable, then with
    probability at least ``1 - delta`` over the calibration draw, the error
    rate among the problems the rule answers is at most ``risk``. This holds
    for posteriors of any engine (SMC included): each problem's posterior
    is one observation, and the particles need not be independent, as long
    as calibration and new problems are run the same way. When no
    threshold passes (too few calibration problems, or errors even at the
    highest confidence), the rule abstains on everything (``threshold =
    inf``), which satisfies the guarantee trivially. A threshold can only be
    rejected when it answers, with no errors, at least ``log(delta) /
    log(1 - risk)`` of the testing problems.

    Example:
        >>> rule = Abstention(risk=0.2, delta=0.1).calibrate(cal)
        >>> rule.threshold, rule.answer_rate
        (0.38, 0.65)
        >>> rule.predict(ppl.importance(add, 7, 5, num_particles=8, seed=0)).abstained
        True
        >>> round(rule.evaluate(heldout).risk, 3)
        0.077
    """

    method = "abstention"

    def __init__(
        self,
        risk: float,
        delta: float = 0.1,
        *,
        confidence: Confidence = MAP_PROBABILITY,
        thresholds=DEFAULT_THRESHOLDS,
        procedure: str = DEFAULT_PROCEDURE,
        starts: int | None = None,
        split: float = 0.2,
        seed: int = 0,
        randomized: bool = True,
    ):
        self.risk = check_level("risk", risk)
        self.delta = check_level("delta", delta)
        if not (isinstance(confidence, str) and confidence) and not callable(confidence):
            raise InvalidArgumentError(
                f"confidence must be {MAP_PROBABILITY!r}, a memo site name or a function of the "
                f"posterior, got {confidence!r}"
            )
        self.confidence = confidence
        self.thresholds = np.asarray(thresholds, dtype=float)
        if (
            self.thresholds.ndim != 1
            or not len(self.thresholds)
            or (np.diff(self.thresholds) >= 0).any()
        ):
            raise InvalidArgumentError("thresholds must be a non-empty, strictly decreasing list")
        check_procedure(procedure)
        if starts is not None and procedure != "fixed-sequence":
            raise InvalidArgumentError("starts applies to procedure='fixed-sequence' only")
        self.procedure = procedure
        self.starts = (4 if starts is None else starts) if procedure == "fixed-sequence" else 1
        self.split = split
        self.seed = seed
        self.randomized = randomized
        self.num_testing = 0
        self.threshold: float | None = None
        self.pvalues = np.array([])
        self.num_calibration = 0
        self.answer_rate = math.nan
        self.calibration_risk = math.nan

    # --- calibration ---------------------------------------------------------
    def calibrate(self, data) -> Abstention:
        """Calibrate on ``CalibrationData`` (or ``(posterior, expected)`` pairs)."""
        confidence, correct = self._outcomes(_as_data(data))
        return self.calibrate_arrays(confidence, correct)

    def calibrate_arrays(self, confidence, correct) -> Abstention:
        """Calibrate on raw arrays: each problem's confidence and whether its answer is right.

        Example:
            >>> rule = Abstention(0.2, 0.1).calibrate_arrays([0.9] * 40 + [0.3] * 40,
            ...                                              [True] * 40 + [False] * 40)
            >>> rule.threshold, rule.answer_rate
            (0.31, 0.5)
        """
        confidence, correct = _check_arrays(confidence, correct)
        answered = confidence[:, None] + TOLERANCE >= self.thresholds[None, :]
        wrong = np.broadcast_to(~correct[:, None], answered.shape)
        certified = learn_then_test(
            wrong, answered, self.risk, self.delta, self.procedure,
            starts=self.starts, split=self.split, seed=self.seed, randomized=self.randomized,
        )  # fmt: skip
        chosen = certified.index
        self.pvalues, self.num_testing = certified.pvalues, certified.num_testing
        self.num_calibration = len(confidence)
        trials = answered.sum(axis=0)
        errors = (answered & wrong).sum(axis=0)
        if chosen < 0:
            self.threshold = math.inf
            self.answer_rate, self.calibration_risk = 0.0, math.nan
        else:
            self.threshold = float(self.thresholds[chosen])
            self.answer_rate = float(trials[chosen] / len(confidence))
            self.calibration_risk = float(errors[chosen] / trials[chosen])
        return self

    # --- decisions -----------------------------------------------------------
    def answers(self, confidence) -> np.ndarray:
        """Whether the rule answers at each confidence value."""
        return np.asarray(confidence, dtype=float) + TOLERANCE >= self._require()

    def predict(self, posterior: Posterior, *, seed: int | None = None) -> Decision:
        """Answer (the MAP answer) or abstain on one posterior. ``seed`` is unused."""
        threshold = self._require()
        confidence = confidence_of(posterior, self.confidence)
        answer = not posterior.is_empty and bool(self.answers(confidence))
        best = posterior.map_answer() if not posterior.is_empty else None
        label = answer_label(best)
        if answer:
            headline = f"answer {label} (confidence {confidence:.3f} >= threshold {threshold:.3f})"
        elif posterior.is_empty:
            headline = "abstain (empty posterior)"
        else:
            headline = (
                f"abstain: MAP answer {label} has confidence {confidence:.3f} < threshold "
                f"{threshold:.3f}"
            )
        return Decision(
            method=self.method,
            headline=headline,
            answers=(best,) if answer else (),
            probabilities=(posterior.answer_distribution()[best],) if answer else (),
            abstained=not answer,
            details={
                "confidence": self.confidence_name,
                "value": confidence,
                "threshold": threshold,
                "target risk": self.risk,
                "delta": self.delta,
                "calibration problems": self.num_calibration,
                "calibration answer rate": self.answer_rate,
                "calibration risk": self.calibration_risk,
            },
            guarantee=self.guarantee(),
        )

    @property
    def confidence_name(self) -> str:
        """The confidence in words: its name, or the function's."""
        if isinstance(self.confidence, str):
            return self.confidence
        return getattr(self.confidence, "name", getattr(self.confidence, "__name__", "function"))

    def guarantee(self) -> str:
        """The promise of this rule, in words."""
        return (
            f"with probability >= {1 - self.delta:.2f} over the calibration draw, the error rate "
            f"among answered problems is <= {self.risk:.2f} (Learn-then-Test, "
            f"{self._procedure()}, {self.num_calibration} exchangeable calibration problems)"
        )

    def _procedure(self) -> str:
        return procedure_text(
            self.procedure, self.starts, self.num_calibration, self.num_testing, self.randomized
        )

    # --- evaluation ----------------------------------------------------------
    def evaluate(self, data) -> AbstentionEvaluation:
        """Answer rate and error rate among answered on held-out problems."""
        confidence, correct = self._outcomes(_as_data(data))
        return self.evaluate_arrays(confidence, correct)

    def evaluate_arrays(self, confidence, correct) -> AbstentionEvaluation:
        """``evaluate`` on raw arrays (see ``calibrate_arrays``)."""
        confidence, correct = _check_arrays(confidence, correct)
        answered = self.answers(confidence)
        count = int(answered.sum())
        return AbstentionEvaluation(
            num_problems=len(confidence),
            num_answered=count,
            answer_rate=count / len(confidence),
            risk=float(np.mean(~correct[answered])) if count else math.nan,
        )

    # --- internals -----------------------------------------------------------
    def _outcomes(self, data: CalibrationData) -> tuple[np.ndarray, np.ndarray]:
        confidence = [confidence_of(e.posterior, self.confidence) for e in data]
        correct = [
            not e.posterior.is_empty and e.posterior.map_answer() in e.acceptable for e in data
        ]
        return np.array(confidence, dtype=float), np.array(correct, dtype=bool)

    def _require(self) -> float:
        if self.threshold is None:
            raise CalibrationError("this abstention rule is not calibrated: call calibrate first")
        return self.threshold

    # --- persistence ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        self._require()
        if isinstance(self.confidence, CalibratedScore):
            confidence: str | dict[str, Any] = {"calibrated": self.confidence.to_dict()}
        elif isinstance(self.confidence, str):
            confidence = self.confidence
        else:
            raise CalibrationError(
                f"confidence function {self.confidence_name!r} cannot be saved: use a memo site "
                "name or ScoreCalibration.confidence(site)"
            )
        return {
            "method": self.method,
            "risk": self.risk,
            "delta": self.delta,
            "confidence": confidence,
            "thresholds": self.thresholds.tolist(),
            "procedure": self.procedure,
            "starts": self.starts,
            "split": self.split,
            "seed": self.seed,
            "randomized": self.randomized,
            "num_testing": self.num_testing,
            "threshold": self.threshold,
            "pvalues": self.pvalues.tolist(),
            "num_calibration": self.num_calibration,
            "answer_rate": self.answer_rate,
            "calibration_risk": self.calibration_risk,
            "guarantee": self.guarantee(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Abstention:
        confidence = data["confidence"]
        # Files written before the procedures were named hold "testing" instead.
        procedure = data.get("procedure", data.get("testing"))
        if isinstance(confidence, dict):
            confidence = CalibratedScore.from_dict(confidence["calibrated"])
        rule = cls(
            data["risk"],
            data["delta"],
            confidence=confidence,
            thresholds=data["thresholds"],
            procedure=procedure,
            starts=data["starts"] if procedure == "fixed-sequence" else None,
            split=data.get("split", 0.2),
            seed=data.get("seed", 0),
            # Files written before randomized p-values used the plain ones.
            randomized=data.get("randomized", False),
        )
        rule.num_testing = int(data.get("num_testing", data["num_calibration"]))
        rule.threshold = float(data["threshold"])
        rule.pvalues = np.asarray(data["pvalues"], dtype=float)
        rule.num_calibration = int(data["num_calibration"])
        rule.answer_rate = float(data["answer_rate"])
        rule.calibration_risk = float(data["calibration_risk"])
        return rule

    def __repr__(self) -> str:
        return f"<Abstention risk={self.risk} delta={self.delta} threshold={self.threshold}>"


def _check_arrays(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct)
    if confidence.ndim != 1 or not len(confidence) or np.isnan(confidence).any():
        raise InvalidArgumentError("confidence must be a non-empty 1-d array of numbers")
    if correct.shape != confidence.shape or correct.dtype != bool:
        raise InvalidArgumentError(
            f"correct must be {len(confidence)} booleans, one per confidence value"
        )
    return confidence, correct
