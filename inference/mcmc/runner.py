"""The runner of trace moves: executes a program and scores kept steps.

Its work is counted in a ``CostTracker`` (``inference.runtime``), shared with the
runtimes of the same engine run, so a run reports its cost through one object.
"""

from __future__ import annotations

from collections.abc import Sequence

from inference.runtime import CostTracker
from ppl.errors import BackendError
from ppl.lm import ScoreRequest
from ppl.runtime import Execution, as_program, execute
from ppl.trace import Trace


class Runner:
    """Executes one program for an engine and counts its work in ``tracker``.

    Example (``program`` writes two letters with ``lm``; an empty trace runs it to its
    first choice):
        >>> runner = Runner(program, (lm, "a"), {}, CostTracker())
        >>> runner.execute(Trace()).pending
        PendingChoice(name='letter_0', kind='step', fn=LMStep(), proposal=None)
    """

    def __init__(self, program, args: tuple, kwargs: dict, tracker: CostTracker):
        self.prog = as_program(program)
        self.args = args
        self.kwargs = kwargs
        self.tracker = tracker

    def execute(self, trace: Trace) -> Execution:
        try:
            execution = execute(self.prog, self.args, self.kwargs, trace)
        except Exception as error:
            error.add_note(f"while running program {self.prog.name!r} for an MCMC move")
            raise
        self.tracker.verifier_calls += execution.memo_calls
        return execution

    def score(self, requests: Sequence[tuple[object, ScoreRequest]]) -> list[float]:
        """Score every ``(lm, request)``; one batched ``score_steps`` call per model."""
        scores = [0.0] * len(requests)
        by_lm: dict[int, tuple[object, list[int]]] = {}
        for i, (lm, _) in enumerate(requests):
            by_lm.setdefault(id(lm), (lm, []))[1].append(i)
        for lm, indices in by_lm.values():
            self.tracker.track(lm)
            results = lm.score_steps([requests[i][1] for i in indices])
            if len(results) != len(indices):
                raise BackendError(
                    f"{type(lm).__name__}.score_steps returned {len(results)} scores "
                    f"for {len(indices)} requests"
                )
            for i, score in zip(indices, results, strict=True):
                scores[i] = float(score)
        return scores
