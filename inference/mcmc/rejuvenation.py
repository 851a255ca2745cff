"""Resample-move: MH moves that rejuvenate SMC particles after resampling."""

from __future__ import annotations

import numpy as np

from inference.mcmc.kernel import mh_move
from inference.mcmc.runner import Runner
from inference.mcmc.state import State
from inference.runtime import Runtime
from ppl.handlers import PendingChoice
from ppl.trace import Trace


class Rejuvenation:
    """``num_steps`` regenerate moves per particle after each resampling.

    After round ``t`` a particle holds ``t`` random choices (fewer if its
    program returned) and targets the round's intermediate target: choices,
    factors and the current twist. Move ``m`` regenerates choice
    ``(t - 1 - m) mod t`` (the latest first, a fixed scan) and everything after
    it up to ``t`` choices, accepted by the ratio of suffix weights under that
    target, so the resampled particles' equal weights stay proper. The moves
    run ``runtime``'s program and count their work in its tracker.
    """

    def __init__(self, runtime: Runtime, num_steps: int):
        self.runner = Runner(runtime.program, runtime.args, runtime.kwargs, runtime.tracker)
        self.num_steps = num_steps
        self.moves = 0
        self.accepted = 0

    def __call__(
        self,
        traces: list[Trace],
        pending: list[PendingChoice | None],
        horizon: int,
        rng: np.random.Generator,
    ) -> tuple[list[Trace], list[PendingChoice | None]]:
        states = [State(trace, choice) for trace, choice in zip(traces, pending, strict=True)]
        for m in range(self.num_steps):
            states, accepted = mh_move(
                self.runner,
                states,
                (horizon - 1 - m) % horizon,
                proposal="regenerate",
                rng=rng,
                horizon=horizon,
            )
            moved = [ok for ok in accepted if ok is not None]
            self.moves += len(moved)
            self.accepted += sum(moved)
        return [s.trace for s in states], [s.pending for s in states]

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.moves if self.moves else float("nan")
