"""How many samples to draw: a sample budget or stopping rule chosen by Learn-then-Test."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.conformal.answer_sets import _as_data
from inference.conformal.data import CalibrationData
from inference.conformal.decision import Decision
from inference.conformal.ltt import (
    check_level,
    check_procedure,
    learn_then_test,
    procedure_text,
)
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

RULES = ("fixed", "agreement")
_UNIT_TEXT = {
    "particle": "the particles must be independent draws in order, as in importance sampling",
    "run": "each draw is an independent run's MAP answer",
}


@dataclass(frozen=True)
class BudgetEvaluation:
    """How the budget did on held-out problems."""

    num_problems: int
    miss_rate: float
    mean_samples: float
    samples_saved: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class SampleBudget:
    """Draw samples until a calibrated rule says enough, missing a right answer rarely.

    Samples are drawn one after another (the particles of a run, in order)
    up to ``max_samples``. ``rule="fixed"`` draws a fixed number ``k``;
    ``rule="agreement"`` stops as soon as ``m`` samples agree on one answer
    (the set of answers found so far is then confident enough), or at
    ``max_samples``. The parameter (``k`` or ``m``) is chosen by
    Learn-then-Test: from the most conservative value (``max_samples``)
    down, the null "the chance that no sample drawn before stopping is
    acceptable exceeds ``epsilon``" is tested with the binomial tail p-value
    of the misses among calibration problems, by fixed-sequence testing at
    level ``delta`` (or another ``procedure`` of ``inference.conformal.ltt``;
    every problem counts towards every value and the miss rate falls as the
    budget grows, so the walk from ``max_samples`` down is already in the
    best order, and splitting off problems to choose one only costs data:
    ``bench/README.md``); the smallest rejected value is kept. The
    p-values are randomized (``randomized``, drawn with ``seed``) to spend
    all of ``delta``, as for ``Abstention``.

    Guarantee: if calibration and new problems are exchangeable and sampled
    the same way, then with probability at least ``1 - delta`` over the
    calibration draw, the chance that the samples drawn before stopping
    contain no acceptable answer is at most ``epsilon``. That counts the
    answers found, not a single final answer (combine with ``AnswerSets`` or
    ``Abstention`` to pick). Samples must be exchangeable draws in the
    order given: the particles of importance sampling (``unit="particle"``)
    or the MAP answers of independent runs of any engine (``unit="run"``,
    posteriors pooled by ``ppl.run``); SMC particles are refused, since
    resampling couples them, but independent SMC runs are draws. If even
    ``max_samples`` misses too often, no budget is certified (``feasible``
    is False) and the rule draws ``max_samples``.
    ``samples_saved`` is the expected fraction of ``max_samples`` not drawn.

    Example:
        >>> budget = SampleBudget(epsilon=0.2, delta=0.1, rule="agreement").calibrate(cal)
        >>> budget.parameter, round(budget.samples_saved, 2)
        (3, 0.4)
        >>> budget.evaluate(heldout).miss_rate
        0.125
    """

    method = "budget"

    def __init__(
        self,
        epsilon: float,
        delta: float = 0.1,
        *,
        rule: str = "fixed",
        max_samples: int | None = None,
        unit: str = "particle",
        procedure: str = "fixed-sequence",
        split: float = 0.2,
        seed: int = 0,
        randomized: bool = True,
    ):
        self.epsilon = check_level("epsilon", epsilon)
        self.delta = check_level("delta", delta)
        if rule not in RULES:
            raise InvalidArgumentError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
        self.rule = rule
        self.max_samples = check_max_samples(max_samples)
        self.unit = check_unit(unit)
        check_procedure(procedure)
        self.procedure, self.split, self.seed = procedure, split, seed
        self.randomized = randomized
        self.num_testing = 0
        self.parameter: int | None = None
        self.feasible = False
        self.pvalues = np.array([])
        self.num_calibration = 0
        self.calibration_miss_rate = math.nan
        self.samples_saved = math.nan
        self.mean_samples = math.nan

    # --- calibration ---------------------------------------------------------
    def calibrate(self, data) -> SampleBudget:
        """Calibrate on ``CalibrationData`` (or pairs); every run needs ``max_samples`` particles.

        ``max_samples`` defaults to the fewest particles of any calibration run.
        """
        data = _as_data(data)
        if self.max_samples is None:
            self.max_samples = min(len(e.sample_outcomes(self.unit)[0]) for e in data)
        answers, acceptable = self._outcomes(data)
        return self.calibrate_arrays(answers, acceptable)

    def calibrate_arrays(self, answers, acceptable) -> SampleBudget:
        """Calibrate on raw arrays ``(problems, samples)``: answer ids (-1: none) and rightness.

        Example:
            >>> answers = [[0, 0, 1, 0]] * 200
            >>> acceptable = [[True, True, False, True]] * 190 + [[False] * 4] * 10
            >>> budget = SampleBudget(0.1, 0.1).calibrate_arrays(answers, acceptable)
            >>> budget.parameter, budget.samples_saved
            (1, 0.75)
        """
        answers, acceptable = self._check_arrays(answers, acceptable)
        used, missed = self.play(answers, acceptable, self._candidates())
        certified = learn_then_test(
            missed, None, self.epsilon, self.delta, self.procedure, split=self.split,
            seed=self.seed, randomized=self.randomized,
        )  # fmt: skip
        chosen = certified.index
        self.pvalues, self.num_testing = certified.pvalues, certified.num_testing
        self.feasible = chosen >= 0
        index = chosen if self.feasible else 0
        self.parameter = int(self._candidates()[index])
        self.num_calibration = len(answers)
        self.calibration_miss_rate = float(missed[:, index].mean())
        self.mean_samples = float(used[:, index].mean())
        self.samples_saved = 1.0 - self.mean_samples / self.max_samples
        return self

    # --- decisions -----------------------------------------------------------
    def stop(self, answers) -> int:
        """How many of these samples (answer ids, -1 for none) the rule draws."""
        answers = np.asarray(answers).reshape(1, -1)
        self._require()
        used, _ = self.play(answers, np.zeros(answers.shape, bool), np.array([self.parameter]))
        return int(used[0, 0])

    def predict(self, posterior: Posterior, *, seed: int | None = None) -> Decision:
        """Where the rule stops on a run's particles, and the answers found. ``seed`` is unused."""
        self._require()
        answers = draws(posterior, self.unit)
        notes = []
        if len(answers) < self.max_samples:
            notes.append(
                f"the run has {len(answers)} {self.unit}s, fewer than the {self.max_samples} "
                "calibrated; the guarantee does not cover it"
            )
        ids = answer_ids([answers[: self.max_samples]])
        drawn = self.stop(ids[0]) if len(answers) else 0
        counts = Counter(a for a in answers[:drawn] if a is not None)
        found = [a for a, _ in counts.most_common()]
        shown = ", ".join(answer_label(a) for a in found) if found else "none"
        if not self.feasible:
            notes.append(
                f"no budget up to {self.max_samples} samples was certified to miss at most "
                f"{self.epsilon:.2f} of the time"
            )
        return Decision(
            method=self.method,
            headline=f"stop after {drawn} of {len(answers)} samples; answers found: {shown}",
            answers=tuple(found),
            probabilities=tuple(counts[a] / drawn for a in found),
            details={
                "rule": self.rule,
                "unit": self.unit,
                self._parameter_name(): self.parameter,
                "max samples": self.max_samples,
                "samples drawn": drawn,
                "samples saved": len(answers) - drawn,
                "epsilon": self.epsilon,
                "delta": self.delta,
                "calibration problems": self.num_calibration,
                "calibration miss rate": self.calibration_miss_rate,
                "expected fraction saved": self.samples_saved,
            },
            guarantee=self.guarantee(),
            notes=tuple(notes),
        )

    def guarantee(self) -> str:
        """The promise of this budget, in words."""
        if not self.feasible:
            return (
                f"none: even {self.max_samples} samples missed a right answer too often to certify "
                f"a miss rate <= {self.epsilon:.2f}"
            )
        procedure = procedure_text(
            self.procedure, 1, self.num_calibration, self.num_testing, self.randomized
        )
        return (
            f"with probability >= {1 - self.delta:.2f} over the calibration draw, the samples "
            f"drawn before stopping miss every acceptable answer with probability <= "
            f"{self.epsilon:.2f} (Learn-then-Test, {procedure} over "
            f"{self._parameter_name()}, {self.num_calibration} exchangeable calibration problems; "
            f"{_UNIT_TEXT[self.unit]})"
        )

    # --- evaluation ----------------------------------------------------------
    def evaluate(self, data) -> BudgetEvaluation:
        """Miss rate, mean samples drawn and fraction saved on held-out problems."""
        answers, acceptable = self._outcomes(_as_data(data))
        return self.evaluate_arrays(answers, acceptable)

    def evaluate_arrays(self, answers, acceptable) -> BudgetEvaluation:
        """``evaluate`` on raw arrays (see ``calibrate_arrays``)."""
        self._require()
        answers, acceptable = self._check_arrays(answers, acceptable)
        used, missed = self.play(answers, acceptable, np.array([self.parameter]))
        return BudgetEvaluation(
            num_problems=len(answers),
            miss_rate=float(missed.mean()),
            mean_samples=float(used.mean()),
            samples_saved=float(1.0 - used.mean() / self.max_samples),
        )

    # --- internals -----------------------------------------------------------
    def _candidates(self) -> np.ndarray:
        return np.arange(self.max_samples, 0, -1)

    def _parameter_name(self) -> str:
        return "samples" if self.rule == "fixed" else "agreeing samples"

    def play(self, answers, acceptable, parameters) -> tuple[np.ndarray, np.ndarray]:
        """Samples drawn and whether all of them missed, per problem and parameter."""
        size = answers.shape[1]
        if self.rule == "fixed":
            used = np.broadcast_to(np.minimum(parameters, size), (len(answers), len(parameters)))
        else:
            leading = running_counts(answers).max(axis=2)
            reached = leading[:, :, None] >= parameters[None, None, :]
            used = np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, size)
        first_right = np.where(acceptable.any(axis=1), acceptable.argmax(axis=1), size)
        return used, first_right[:, None] >= used

    def _outcomes(self, data: CalibrationData) -> tuple[np.ndarray, np.ndarray]:
        answers, acceptable = [], []
        for example in data:
            values, right = example.sample_outcomes(self.unit)
            if len(values) < self.max_samples:
                raise CalibrationError(
                    f"{example.source or 'a calibration run'} has {len(values)} {self.unit}s; the "
                    f"budget needs at least max_samples={self.max_samples} per problem"
                )
            answers.append(values[: self.max_samples])
            acceptable.append(right[: self.max_samples])
        return answer_ids(answers), np.array(acceptable, dtype=bool)

    def _check_arrays(self, answers, acceptable) -> tuple[np.ndarray, np.ndarray]:
        answers, acceptable = check_draws(answers, acceptable, self.max_samples)
        self.max_samples = answers.shape[1]
        return answers, acceptable

    def _require(self) -> None:
        if self.parameter is None:
            raise CalibrationError("this sample budget is not calibrated: call calibrate first")

    # --- persistence ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        self._require()
        return {
            "method": self.method,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "rule": self.rule,
            "unit": self.unit,
            "max_samples": self.max_samples,
            "parameter": self.parameter,
            "feasible": self.feasible,
            "procedure": self.procedure,
            "split": self.split,
            "seed": self.seed,
            "randomized": self.randomized,
            "num_testing": self.num_testing,
            "pvalues": self.pvalues.tolist(),
            "num_calibration": self.num_calibration,
            "calibration_miss_rate": self.calibration_miss_rate,
            "mean_samples": self.mean_samples,
            "samples_saved": self.samples_saved,
            "guarantee": self.guarantee(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampleBudget:
        budget = cls(
            data["epsilon"],
            data["delta"],
            rule=data["rule"],
            max_samples=data["max_samples"],
            # Files written before units and procedures existed used their defaults.
            unit=data.get("unit", "particle"),
            procedure=data.get("procedure", "fixed-sequence"),
            split=data.get("split", 0.2),
            seed=data.get("seed", 0),
            randomized=data.get("randomized", False),
        )
        budget.num_testing = int(data.get("num_testing", data["num_calibration"]))
        budget.parameter = int(data["parameter"])
        budget.feasible = bool(data["feasible"])
        budget.pvalues = np.asarray(data["pvalues"], dtype=float)
        budget.num_calibration = int(data["num_calibration"])
        budget.calibration_miss_rate = float(data["calibration_miss_rate"])
        budget.mean_samples = float(data["mean_samples"])
        budget.samples_saved = float(data["samples_saved"])
        return budget

    def __repr__(self) -> str:
        return (
            f"<SampleBudget epsilon={self.epsilon} delta={self.delta} rule={self.rule} "
            f"parameter={self.parameter}>"
        )
