"""Calibration data: posteriors paired with the answers that are right.

A calibration problem is a ``Posterior`` from any engine and the expected
answer. ``from_posteriors`` builds the data from ``(posterior, expected)``
pairs (``ppl.cli.report.load_runs`` reads them from the problem directories
that ``ppl run --dataset`` writes). Answers are judged with
``ppl.answers.answers_match``: equal after ``ppl.answers.normalize_answer``
(so ``"31"``, ``"31.0"`` and ``"$31"`` match).

The calibration methods also take raw arrays (``calibrate_arrays``), for
scores computed elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.conformal.units import draws
from ppl.answers import answers_match
from ppl.errors import CalibrationError, InvalidArgumentError
from ppl.posterior import Posterior, normalized_weights

Judge = Callable[[Any, Any], bool]

MAP_PROBABILITY = "map-probability"

# A confidence: "map-probability", a memo site name, or a function of the posterior.
Confidence = str | Callable[[Posterior], float]


def confidence_of(posterior: Posterior, confidence: Confidence = MAP_PROBABILITY) -> float:
    """How sure ``posterior`` is of its MAP answer: its probability, or a verifier score.

    ``confidence`` is ``"map-probability"`` (the MAP answer's posterior mass),
    the name of a numeric ``ppl.memo`` site (a verifier score: its
    posterior-weighted mean over the particles that give the MAP answer), or
    a function ``posterior -> float``, such as a ``CalibratedScore`` (a
    verifier score mapped to a calibrated probability).
    An empty posterior has confidence 0.

    Example:
        >>> new = ppl.importance(add, 4, 5, num_particles=8, seed=0)  # MAP answer '8' (4 of 8)
        >>> print(round(confidence_of(new), 3), round(confidence_of(new, "check.score"), 3))
        0.5 0.1
    """
    if posterior.is_empty:
        return 0.0
    if callable(confidence):
        value = confidence(posterior)
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise CalibrationError(f"a confidence function must return a number, got {value!r}")
        return float(value)
    distribution = posterior.answer_distribution()
    best = next(iter(distribution))
    if confidence == MAP_PROBABILITY:
        return float(distribution[best])
    weights = normalized_weights(posterior.log_weights)
    total = value = 0.0
    for trace, weight in zip(posterior.particles, weights, strict=True):
        if weight > 0 and trace.answer == best:
            if confidence not in trace:
                raise CalibrationError(
                    f"confidence site {confidence!r} is missing from a particle; give "
                    f"'{MAP_PROBABILITY}' or the name of a numeric ppl.memo site"
                )
            score = trace[confidence].value
            if isinstance(score, bool) or not isinstance(score, int | float):
                score = float(score)
            total += weight
            value += weight * float(score)
    return value / total


@dataclass(frozen=True)
class CalibrationExample:
    """One calibration problem: a posterior, its expected answer, and which answers match it.

    ``acceptable`` holds the answers of the posterior's particles (alive or
    not) that the judge accepted; it is empty when no particle found a right
    answer, which caps what any calibrated set can cover.
    """

    posterior: Posterior
    expected: Any
    acceptable: frozenset
    source: str = ""

    @property
    def probabilities(self) -> dict[Any, float]:
        """The candidate answers (positive posterior mass) and their probabilities."""
        return self.posterior.answer_distribution()

    @property
    def sampled(self) -> bool:
        """Whether an acceptable answer has positive posterior mass."""
        return any(a in self.acceptable for a in self.probabilities)

    def sample_outcomes(self, unit: str = "particle") -> tuple[list[Any], list[bool]]:
        """The ordered draws (see ``draws``: particles or runs) and whether each is right."""
        answers = draws(self.posterior, unit)
        return answers, [a is not None and a in self.acceptable for a in answers]


@dataclass(frozen=True)
class CalibrationData:
    """Calibration problems, in order; ``split`` makes a random calibration/held-out split.

    Example (``cal`` as ``from_posteriors`` or ``load_runs`` returns it):
        >>> calibration, held_out = cal.split(30, seed=0)
        >>> len(calibration), len(held_out), cal.accuracy, cal.sampled_rate
        (30, 10, 0.7, 0.975)
    """

    examples: tuple[CalibrationExample, ...]

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[CalibrationExample]:
        return iter(self.examples)

    def __getitem__(self, index: int) -> CalibrationExample:
        return self.examples[index]

    def split(
        self, num_calibration: int, *, seed: int = 0
    ) -> tuple[CalibrationData, CalibrationData]:
        """A random split into ``num_calibration`` problems and the rest."""
        if not 0 < num_calibration < len(self):
            raise InvalidArgumentError(
                f"num_calibration must be between 1 and {len(self) - 1}, got {num_calibration}"
            )
        order = np.random.default_rng(seed).permutation(len(self))
        pick = [self.examples[i] for i in order]
        return (
            CalibrationData(tuple(pick[:num_calibration])),
            CalibrationData(tuple(pick[num_calibration:])),
        )

    @property
    def sampled_rate(self) -> float:
        """Fraction of problems where an acceptable answer has positive posterior mass."""
        return float(np.mean([e.sampled for e in self.examples])) if self.examples else math.nan

    @property
    def accuracy(self) -> float:
        """Fraction of problems whose MAP answer is acceptable."""
        if not self.examples:
            return math.nan
        return float(
            np.mean(
                [
                    not e.posterior.is_empty and e.posterior.map_answer() in e.acceptable
                    for e in self
                ]
            )
        )


def from_posteriors(
    pairs: Iterable[tuple[Posterior, Any]], *, judge: Judge = answers_match
) -> CalibrationData:
    """Calibration data from ``(posterior, expected_answer)`` pairs.

    ``judge(answer, expected)`` says whether a particle's answer is right
    (default ``answers_match``).

    Example:
        >>> data = from_posteriors([(ppl.importance(add, a, b, num_particles=8, seed=i), answer)
        ...                         for i, ((a, b), answer) in enumerate(problems[:20])])
        >>> len(data), data.accuracy, data.sampled_rate
        (20, 0.7, 1.0)
    """
    examples = []
    for index, pair in enumerate(pairs):
        if not (isinstance(pair, Sequence) and len(pair) == 2 and isinstance(pair[0], Posterior)):
            raise CalibrationError(
                f"calibration item {index} must be a (Posterior, expected answer) pair"
            )
        posterior, expected = pair
        examples.append(calibration_example(posterior, expected, judge, f"item {index}"))
    return _nonempty(CalibrationData(tuple(examples)), "the calibration pairs")


def calibration_example(
    posterior: Posterior, expected: Any, judge: Judge = answers_match, source: str = ""
) -> CalibrationExample:
    """A calibration problem: the particles' answers that ``judge`` accepts as ``expected``.

    Example:
        >>> from ppl import Posterior, Site, Trace
        >>> post = Posterior([Trace((Site("answer", "answer", "31.0"),))], [0.0])
        >>> sorted(calibration_example(post, "31").acceptable)
        ['31.0']
    """
    acceptable = frozenset(a for a in set(posterior.answers) if judge(a, expected))
    return CalibrationExample(posterior, expected, acceptable, source)


def _nonempty(data: CalibrationData, where: str) -> CalibrationData:
    if not len(data):
        raise CalibrationError(f"{where} hold no finished problems to calibrate on")
    return data
