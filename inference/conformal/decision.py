"""``Decision``: what a calibration says about one posterior, with the guarantee behind it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ppl.answers import answer_label
from ppl.errors import SerializationError
from ppl.serialization import encode


@dataclass(frozen=True)
class Decision:
    """A calibrated decision about one run.

    ``method`` is ``"answer-sets"`` (``answers`` is the prediction set),
    ``"abstention"`` (``answers`` is the MAP answer, or empty when
    ``abstained``) or ``"budget"`` (``answers`` are the answers found before
    the stopping rule fired, most frequent first). ``probabilities`` are
    their posterior probabilities; ``details`` the numbers behind the
    decision (threshold, calibration size...); ``guarantee`` says what the
    calibration promises and under which assumptions; ``notes`` say where it
    does not apply to this run.

    Example:
        >>> from inference.conformal import AnswerSets
        >>> sets = AnswerSets(alpha=0.1).calibrate(cal)
        >>> decision = sets.predict(ppl.importance(add, 4, 5, num_particles=8, seed=0), seed=0)
        >>> print(decision.text())  # doctest: +ELLIPSIS
        answer set (90% coverage): '8', '7'
          alpha: 0.1
          score: lac
          threshold: 0.875
          set size: 2
          calibration problems: 40
          ...
    """

    method: str
    headline: str
    answers: tuple[Any, ...]
    probabilities: tuple[float, ...]
    details: dict[str, Any]
    guarantee: str
    abstained: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def labels(self) -> list[str]:
        return [answer_label(a) for a in self.answers]

    def text(self) -> str:
        """Plain text for the terminal: the decision, its numbers and the guarantee."""
        lines = [self.headline]
        lines += [f"  {k}: {_format(v)}" for k, v in self.details.items()]
        lines.append(f"  guarantee: {self.guarantee}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (answers that JSON cannot hold are given by label only)."""
        try:
            answers = [encode(a, "a calibrated answer") for a in self.answers]
        except SerializationError:
            answers = None
        return {
            "method": self.method,
            "headline": self.headline,
            "answers": answers,
            "labels": self.labels,
            "probabilities": list(self.probabilities),
            "abstained": self.abstained,
            "details": dict(self.details),
            "guarantee": self.guarantee,
            "notes": list(self.notes),
        }


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
