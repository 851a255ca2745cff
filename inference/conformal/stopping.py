"""Stop sampling once the leading answer is sure enough: self-consistency with a risk bound."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from inference.conformal.answer_sets import _as_data
from inference.conformal.decision import Decision
from inference.conformal.ltt import check_level, check_procedure, learn_then_test, procedure_text
from inference.conformal.units import (
    answer_ids,
    check_draws,
    check_max_samples,
    check_unit,
    draws,
    running_counts,
)
from ppl.answers import answer_label
from ppl.errors import CalibrationError, InvalidArgumentError
from ppl.posterior import Posterior

LOSSES = ("accuracy", "disagreement")
# Most conservative first: inf never stops early (the full budget, whose loss is 0).
DEFAULT_THRESHOLDS = (math.inf, 0.999, 0.998, 0.995, 0.99, 0.98, 0.97, 0.96, 0.95, 0.93, 0.9)
DEFAULT_THRESHOLDS += (0.875, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)


@dataclass(frozen=True)
class StoppingEvaluation:
    """How the stopping rule did on held-out problems, against drawing every sample."""

    num_problems: int
    accuracy: float
    full_accuracy: float
    loss_rate: float
    mean_samples: float
    samples_saved: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class StoppingRule:
    """Draw samples until the leading answer's confidence reaches a calibrated threshold.

    After each draw (a particle of importance sampling, or an independent
    run: ``unit``), the leading answer (most votes; ties to the one seen
    first) gets a confidence: the probability that its share exceeds the
    runner-up's, ``P(p_1 > p_2)`` under a ``Beta(a + 1, b + 1)`` posterior
    for ``a`` leading and ``b`` runner-up votes (the adaptive-consistency
    criterion; unlike the raw vote share, it grows with the number of
    votes, so one lucky first draw does not stop sampling). Sampling stops
    at the first draw where the confidence reaches ``lambda``, or at
    ``max_samples``, and the leading answer is returned.

    A stop is a loss when the early answer is wrong while the answer of all
    ``max_samples`` draws (the self-consistency vote) is right
    (``loss="accuracy"``), or when the two differ at all
    (``loss="disagreement"``, which needs no right answers). ``lambda`` is
    chosen by Learn-then-Test over ``thresholds``, from ``inf`` (never stop
    early: no loss) down: the null "the loss rate at ``lambda`` exceeds
    ``epsilon``" is tested with the binomial tail of the losses of the
    whole stopping rule replayed on each calibration problem's draws, so the
    random stopping time is accounted for whenever it happens. The p-values
    are randomized (``randomized``, drawn with ``seed``) to spend all of
    ``delta``, as for ``Abstention``.

    Guarantee: if calibration and new problems are exchangeable and sampled
    the same way, then with probability at least ``1 - delta`` over the
    calibration draw, the chance that the early answer is wrong while the
    full budget's is right is at most ``epsilon``; so the rule's accuracy
    is at least that of the full budget minus ``epsilon``. With ``loss=
    "disagreement"``, the early and full-budget answers differ with
    probability at most ``epsilon``. ``samples_saved`` is the expected
    fraction of ``max_samples`` not drawn.

    Example:
        >>> answers = [[0, 0, 0, 0, 0, 0]] * 150 + [[1, 0, 0, 1, 0, 0]] * 50
        >>> right = np.array(answers) == 0
        >>> rule = StoppingRule(0.05, 0.1).calibrate_arrays(answers, right)
        >>> rule.threshold, round(rule.samples_saved, 3)
        (0.8, 0.5)
    """

    method = "stopping"

    def __init__(
        self,
        epsilon: float,
        delta: float = 0.1,
        *,
        loss: str = "accuracy",
        thresholds=DEFAULT_THRESHOLDS,
        max_samples: int | None = None,
        unit: str = "particle",
        procedure: str = "fixed-sequence",
        split: float = 0.2,
        seed: int = 0,
        randomized: bool = True,
    ):
        self.epsilon = check_level("epsilon", epsilon)
        self.delta = check_level("delta", delta)
        if loss not in LOSSES:
            raise InvalidArgumentError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.loss = loss
        self.thresholds = np.asarray(thresholds, dtype=float)
        if (
            self.thresholds.ndim != 1
            or not len(self.thresholds)
            or (np.diff(self.thresholds) >= 0).any()
        ):
            raise InvalidArgumentError("thresholds must be a non-empty, strictly decreasing list")
        self.max_samples = check_max_samples(max_samples)
        self.unit = check_unit(unit)
        check_procedure(procedure)
        self.procedure, self.split, self.seed = procedure, split, seed
        self.randomized = randomized
        self.threshold: float | None = None
        self.pvalues = np.array([])
        self.num_calibration = self.num_testing = 0
        self.loss_rate = self.mean_samples = self.samples_saved = math.nan

    # --- calibration ---------------------------------------------------------
    def calibrate(self, data) -> StoppingRule:
        """Calibrate on ``CalibrationData`` (or pairs); ``max_samples`` defaults to the fewest."""
        data = _as_data(data)
        outcomes = [e.sample_outcomes(self.unit) for e in data]
        if self.max_samples is None:
            self.max_samples = min(len(answers) for answers, _ in outcomes)
        short = [
            e.source for e, (a, _) in zip(data, outcomes, strict=True) if len(a) < self.max_samples
        ]
        if short:
            raise CalibrationError(
                f"{short[0] or 'a calibration run'} has fewer than max_samples={self.max_samples} "
                f"{self.unit}s"
            )
        answers = answer_ids([a[: self.max_samples] for a, _ in outcomes])
        right = np.array([r[: self.max_samples] for _, r in outcomes], dtype=bool)
        return self.calibrate_arrays(answers, right)

    def calibrate_arrays(self, answers, acceptable) -> StoppingRule:
        """Calibrate on ``(problems, samples)`` answer ids (-1: none) and their rightness."""
        answers, acceptable = check_draws(answers, acceptable, self.max_samples)
        self.max_samples = answers.shape[1]
        _, losses = self.play(answers, acceptable, self.thresholds)
        certified = learn_then_test(
            losses, None, self.epsilon, self.delta, self.procedure, split=self.split,
            seed=self.seed, randomized=self.randomized,
        )  # fmt: skip
        # With no certified threshold, the rule never stops early: it draws every sample.
        index = certified.index
        self.threshold = float(self.thresholds[index]) if index >= 0 else math.inf
        self.pvalues, self.num_testing = certified.pvalues, certified.num_testing
        self.num_calibration = len(answers)
        stop, lost = self.play(answers, acceptable, np.array([self.threshold]))
        self.loss_rate = float(lost.mean())
        self.mean_samples = float(stop.mean())
        self.samples_saved = 1.0 - self.mean_samples / self.max_samples
        return self

    # --- the rule ------------------------------------------------------------
    def play(self, answers, acceptable, thresholds) -> tuple[np.ndarray, np.ndarray]:
        """Draws used and losses, per problem and threshold, replaying the rule on ``answers``."""
        counts = running_counts(answers)
        ordered = np.sort(counts, axis=2)
        leading, runner_up = ordered[:, :, -1], ordered[:, :, -2] if counts.shape[2] > 1 else 0
        leader = counts.argmax(axis=2)  # ties: the answer seen first
        confidence = self._confidence(leading, runner_up)
        size = answers.shape[1]
        reached = confidence[:, :, None] >= np.asarray(thresholds)[None, None, :]
        used = np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, size)
        rows = np.arange(len(answers))[:, None]
        early = leader[rows, used - 1]
        right_early = acceptable[rows, early] & (leading[rows, used - 1] > 0)
        full = leader[:, -1:]
        right_full = acceptable[rows, full] & (leading[:, -1:] > 0)
        if self.loss == "accuracy":
            return used, right_full & ~right_early
        return used, (early != full) | ((leading[rows, used - 1] > 0) != (leading[:, -1:] > 0))

    @staticmethod
    def _confidence(leading: np.ndarray, runner_up) -> np.ndarray:
        """``P(p_1 > p_2)`` for ``p ~ Beta(leading + 1, runner_up + 1)``; -inf before any vote."""
        value = special.betainc(runner_up + 1.0, leading + 1.0, 0.5)
        return np.where(leading > 0, value, -np.inf)

    def stop(self, answers) -> tuple[int, int]:
        """Where the rule stops on one problem's answer ids (-1: none): ``(draws, leader)``."""
        answers = np.asarray(answers, dtype=int).reshape(1, -1)
        threshold = self._require()
        used, _ = self.play(answers, np.zeros(answers.shape, bool), np.array([threshold]))
        drawn = int(used[0, 0])
        counts = running_counts(answers)[0, drawn - 1]
        return drawn, int(counts.argmax()) if counts.max() > 0 else -1

    # --- decisions -----------------------------------------------------------
    def predict(self, posterior: Posterior, *, seed: int | None = None) -> Decision:
        """The answer at the stop, on a run's draws. ``seed`` is unused."""
        threshold = self._require()
        answers = draws(posterior, self.unit)[: self.max_samples]
        notes = []
        if len(answers) < self.max_samples:
            notes.append(
                f"the run has {len(answers)} {self.unit}s, fewer than the {self.max_samples} "
                "calibrated; the guarantee does not cover it"
            )
        drawn, leader = self.stop(answer_ids([answers])[0]) if answers else (0, -1)
        best = answers[leader] if leader >= 0 else None
        votes = Counter(answers[:drawn])[best] if leader >= 0 else 0
        label = answer_label(best) if leader >= 0 else "none"
        return Decision(
            method=self.method,
            headline=f"stop after {drawn} of {len(answers)} {self.unit}s; answer {label}",
            answers=(best,) if leader >= 0 else (),
            probabilities=(votes / drawn,) if leader >= 0 else (),
            details={
                "confidence": "P(leading share > runner-up share), Beta posterior",
                "threshold": threshold,
                "samples drawn": drawn,
                "max samples": self.max_samples,
                "unit": self.unit,
                "epsilon": self.epsilon,
                "delta": self.delta,
                "calibration problems": self.num_calibration,
                "calibration loss rate": self.loss_rate,
                "expected fraction saved": self.samples_saved,
            },
            guarantee=self.guarantee(),
            notes=tuple(notes),
        )

    def guarantee(self) -> str:
        """The promise of this rule, in words."""
        event = (
            "the early answer is wrong while the full budget's is right"
            if self.loss == "accuracy"
            else "the early answer differs from the full budget's"
        )
        procedure = procedure_text(
            self.procedure, 1, self.num_calibration, self.num_testing, self.randomized
        )
        return (
            f"with probability >= {1 - self.delta:.2f} over the calibration draw, {event} with "
            f"probability <= {self.epsilon:.2f} (Learn-then-Test over stopping thresholds, "
            f"{procedure}, {self.num_calibration} exchangeable calibration "
            f"problems of {self.max_samples} {self.unit}s)"
        )

    # --- evaluation ----------------------------------------------------------
    def evaluate(self, data) -> StoppingEvaluation:
        """Accuracy, loss rate and samples saved on held-out problems."""
        data = _as_data(data)
        outcomes = [e.sample_outcomes(self.unit) for e in data]
        answers = answer_ids([a[: self.max_samples] for a, _ in outcomes])
        right = np.array([r[: self.max_samples] for _, r in outcomes], dtype=bool)
        return self.evaluate_arrays(answers, right)

    def evaluate_arrays(self, answers, acceptable) -> StoppingEvaluation:
        """``evaluate`` on raw arrays (see ``calibrate_arrays``)."""
        threshold = self._require()
        answers, acceptable = check_draws(answers, acceptable, self.max_samples)
        used, lost = self.play(answers, acceptable, np.array([threshold, math.inf]))
        rows = np.arange(len(answers))
        correct = []
        for column in range(2):
            counts = running_counts(answers)[rows, used[:, column] - 1]
            correct.append(acceptable[rows, counts.argmax(axis=1)] & (counts.max(axis=1) > 0))
        return StoppingEvaluation(
            num_problems=len(answers),
            accuracy=float(correct[0].mean()),
            full_accuracy=float(correct[1].mean()),
            loss_rate=float(lost[:, 0].mean()),
            mean_samples=float(used[:, 0].mean()),
            samples_saved=float(1.0 - used[:, 0].mean() / self.max_samples),
        )

    def _require(self) -> float:
        if self.threshold is None:
            raise CalibrationError("this stopping rule is not calibrated: call calibrate first")
        return self.threshold

    # --- persistence ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        self._require()
        return {
            "method": self.method,
            **{k: getattr(self, k) for k in _SAVED},
            "thresholds": self.thresholds.tolist(),
            "threshold": self.threshold,
            "pvalues": self.pvalues.tolist(),
            "guarantee": self.guarantee(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoppingRule:
        options = ("loss", "max_samples", "unit", "procedure", "split", "seed")
        rule = cls(
            data["epsilon"],
            data["delta"],
            thresholds=data["thresholds"],
            **{k: data[k] for k in options},
            randomized=data.get("randomized", False),
        )
        rule.threshold = float(data["threshold"])
        rule.pvalues = np.asarray(data["pvalues"], dtype=float)
        for key in ("num_calibration", "num_testing"):
            setattr(rule, key, int(data[key]))
        for key in ("loss_rate", "mean_samples", "samples_saved"):
            setattr(rule, key, float(data[key]))
        return rule

    def __repr__(self) -> str:
        return (
            f"<StoppingRule epsilon={self.epsilon} delta={self.delta} threshold={self.threshold}>"
        )


_SAVED = (
    "epsilon", "delta", "loss", "max_samples", "unit", "procedure", "split", "seed", "randomized",
    "num_calibration", "num_testing", "loss_rate", "mean_samples", "samples_saved",
)  # fmt: skip
