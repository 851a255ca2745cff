"""Calibrated decisions from posteriors: answer sets, abstention, sample budgets.

Each method is calibrated on problems whose right answers are known and
states what it guarantees on new problems drawn the same way:

- ``AnswerSets(alpha)``: split conformal sets over answers; an acceptable
  answer is in the set with probability >= 1 - alpha (capped by whether a
  right answer was sampled at all).
- ``Abstention(risk, delta)``: answer the MAP answer only above a
  confidence threshold chosen by Learn-then-Test; with probability >= 1 -
  delta, the error rate among answered problems is <= risk.
- ``fit_score_calibration(scores, correct, families)``: a Bayesian
  (hierarchical logistic, NUTS) calibration of verifier scores; its
  ``confidence(site)`` is a calibrated confidence for ``Abstention``.
- ``SampleBudget(epsilon, delta)``: a number of samples or an agreement
  stopping rule; with probability >= 1 - delta, the samples drawn miss every
  acceptable answer with probability <= epsilon.
- ``StoppingRule(epsilon, delta)``: self-consistency that stops once the
  leading answer is sure enough; with probability >= 1 - delta, the early
  answer is wrong while the full budget's is right with probability <=
  epsilon.

Budgets and stopping rules see a posterior's draws in order: the particles
of importance sampling, or (``unit="run"``) the MAP answers of independent
runs of any engine, such as SMC runs pooled by ``ppl.run``. Answer sets and
abstention need no such care: they treat each problem's posterior, from any
engine, as one exchangeable observation.

To judge how much a rule answers, ``synthetic`` holds pools of problems
whose true risks are known and ``power_bound`` bounds what any valid
abstention rule can answer on them.

Calibration data comes from ``(posterior, expected)`` pairs
(``from_posteriors``), ``ppl run --dataset`` directories
(``ppl.cli.report.load_runs``) or raw arrays (``calibrate_arrays``). A
calibrated object saves to JSON (``save_calibration``) and
``load_calibration`` reads it back, which is what ``ppl calibrate`` and
``ppl run --calibration`` do.

Example (``cal`` and ``heldout`` hold 40 problems each, from ``from_posteriors``
or ``load_runs``):
    >>> from inference.conformal import AnswerSets
    >>> sets = AnswerSets(alpha=0.1).calibrate(cal)
    >>> sets.evaluate(heldout)
    SetEvaluation(num_problems=40, coverage=0.875, mean_set_size=2.525, empty_rate=0.0)
"""

from __future__ import annotations

import json
from pathlib import Path

from inference.conformal.abstention import Abstention, AbstentionEvaluation
from inference.conformal.answer_sets import AnswerSets, SetEvaluation
from inference.conformal.bayes import CalibratedScore, ScoreCalibration, fit_score_calibration
from inference.conformal.budget import BudgetEvaluation, SampleBudget
from inference.conformal.data import (
    CalibrationData,
    CalibrationExample,
    answers_match,
    calibration_example,
    confidence_of,
    from_posteriors,
)
from inference.conformal.decision import Decision
from inference.conformal.ltt import PROCEDURES, Certified, binomial_pvalues, learn_then_test, select
from inference.conformal.stopping import StoppingEvaluation, StoppingRule
from inference.conformal.units import draws
from ppl.errors import CalibrationError

FORMAT_VERSION = 1
KIND = "pplscale-calibration"
Calibration = AnswerSets | Abstention | SampleBudget | StoppingRule
METHODS = {cls.method: cls for cls in (AnswerSets, Abstention, SampleBudget, StoppingRule)}


def save_calibration(calibration: Calibration, path: str | Path, **provenance) -> None:
    """Write a calibrated object as JSON; ``provenance`` (source, created...) is kept with it.

    Example:
        >>> sets = AnswerSets(alpha=0.1).calibrate(cal)
        >>> save_calibration(sets, "calib.json", source="cal")
        >>> json.loads(Path("calib.json").read_text())["provenance"]
        {'source': 'cal'}
    """
    data = {
        "format": FORMAT_VERSION,
        "kind": KIND,
        **calibration.to_dict(),
        "provenance": provenance,
    }
    Path(path).write_text(json.dumps(data, indent=1))


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration written by ``save_calibration`` (or ``ppl calibrate``).

    Example:
        >>> sets = AnswerSets(alpha=0.1).calibrate(cal)
        >>> save_calibration(sets, "calib.json")
        >>> new = ppl.importance(add, 4, 5, num_particles=8, seed=0)
        >>> load_calibration("calib.json").predict(new).answers
        ('8', '7', '11', '9')
        >>> load_calibration("calib.json").predict(new) == sets.predict(new)
        True
    """
    try:
        data = json.loads(Path(path).read_text())
    except OSError as error:
        raise CalibrationError(f"cannot read calibration file {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise CalibrationError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise CalibrationError(f"{path} is not a calibration file (write one with ppl calibrate)")
    if data.get("format") != FORMAT_VERSION or data.get("method") not in METHODS:
        raise CalibrationError(
            f"{path} has an unsupported calibration format or method ({data.get('method')!r})"
        )
    try:
        return METHODS[data["method"]].from_dict(data)
    except (KeyError, TypeError, ValueError) as error:
        raise CalibrationError(f"calibration file {path} is corrupt: {error!r}") from None


__all__ = [
    "Abstention",
    "AbstentionEvaluation",
    "AnswerSets",
    "BudgetEvaluation",
    "Calibration",
    "Certified",
    "CalibrationData",
    "CalibrationError",
    "CalibrationExample",
    "CalibratedScore",
    "Decision",
    "PROCEDURES",
    "SampleBudget",
    "ScoreCalibration",
    "SetEvaluation",
    "StoppingEvaluation",
    "StoppingRule",
    "answers_match",
    "binomial_pvalues",
    "calibration_example",
    "confidence_of",
    "draws",
    "fit_score_calibration",
    "learn_then_test",
    "from_posteriors",
    "load_calibration",
    "save_calibration",
    "select",
]
