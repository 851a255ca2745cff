"""The runner of trace moves: executes a program, draws and scores its choices, counts cost."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ppl.errors import (
    BackendError,
)
from ppl.handlers import PendingChoice
from ppl.lm import ScoreRequest
from ppl.posterior import Cost
from ppl.runtime import Execution, as_program, execute, resolve_choices
from ppl.trace import Site, Trace


class Runner:
    """Executes one program for an engine and counts its work: LM calls, memo calls, time."""

    def __init__(self, program, args: tuple, kwargs: dict):
        self.prog = as_program(program)
        self.args = args
        self.kwargs = kwargs
        self.verifier_calls = 0
        self.started = time.perf_counter()
        self._lms: dict[int, tuple[object, dict[str, int]]] = {}

    def execute(self, trace: Trace) -> Execution:
        try:
            execution = execute(self.prog, self.args, self.kwargs, trace)
        except Exception as error:
            error.add_note(f"while running program {self.prog.name!r} for an MCMC move")
            raise
        self.verifier_calls += execution.memo_calls
        return execution

    def draw(self, choices: Sequence[PendingChoice], rng: np.random.Generator) -> list[Site]:
        """Draw every choice; ``step`` choices of one model share one batched call."""
        for choice in choices:
            if choice.kind == "step":
                self._see(choice.fn.lm)
        return resolve_choices(choices, rng)

    def score(self, requests: Sequence[tuple[object, ScoreRequest]]) -> list[float]:
        """Score every ``(lm, request)``; one batched ``score_steps`` call per model."""
        scores = [0.0] * len(requests)
        by_lm: dict[int, tuple[object, list[int]]] = {}
        for i, (lm, _) in enumerate(requests):
            by_lm.setdefault(id(lm), (lm, []))[1].append(i)
        for lm, indices in by_lm.values():
            self._see(lm)
            results = lm.score_steps([requests[i][1] for i in indices])
            if len(results) != len(indices):
                raise BackendError(
                    f"{type(lm).__name__}.score_steps returned {len(results)} scores "
                    f"for {len(indices)} requests"
                )
            for i, score in zip(indices, results, strict=True):
                scores[i] = float(score)
        return scores

    def _see(self, lm) -> None:
        if id(lm) not in self._lms:
            self._lms[id(lm)] = (lm, lm.stats.snapshot())

    def cost(self) -> Cost:
        cost = Cost(
            verifier_calls=self.verifier_calls, wall_seconds=time.perf_counter() - self.started
        )
        for lm, before in self._lms.values():
            after = lm.stats.snapshot()
            cost += Cost(
                tokens_generated=after["tokens_generated"] - before["tokens_generated"],
                tokens_prefilled=after["tokens_prefilled"] - before["tokens_prefilled"],
                tokens_scored=after["tokens_scored"] - before["tokens_scored"],
                lm_calls=after["sample_calls"]
                + after["score_calls"]
                - before["sample_calls"]
                - before["score_calls"],
            )
        return cost
