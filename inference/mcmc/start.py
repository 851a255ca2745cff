"""Starting chains: complete initial states picked by weight, or given traces replayed."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from inference.mcmc.runner import Runner
from inference.mcmc.state import State, choice_positions, log_target
from inference.mcmc.walk import Walk, run_walks
from ppl.errors import (
    EmptyPosteriorError,
    InvalidArgumentError,
    ReplayDivergenceError,
)
from ppl.posterior import normalized_weights
from ppl.trace import Trace


def initial_states(
    runner: Runner, count: int, init_particles: int, rng: np.random.Generator
) -> list[State]:
    """``count`` complete states, each picked by weight among ``init_particles`` forward runs.

    A chain whose runs all have weight zero tries again, up to a limit.
    """
    start = runner.execute(Trace())
    states: list[State | None] = [None] * count
    todo = list(range(count))
    for _ in range(_INIT_ATTEMPTS):
        walks = [
            Walk(start.trace, start.pending, [], 0) for _ in todo for _ in range(init_particles)
        ]
        run_walks(runner, walks, rng)
        log_weights = np.array(
            [-math.inf if w.dead else log_target(w.state) - w.log_q for w in walks]
        )
        failed = []
        for b, chain in enumerate(todo):
            block = log_weights[b * init_particles : (b + 1) * init_particles]
            if not np.isfinite(block).any():
                failed.append(chain)
                continue
            pick = rng.choice(init_particles, p=normalized_weights(block))
            states[chain] = walks[b * init_particles + pick].state
        todo = failed
        if not todo:
            return states
    raise EmptyPosteriorError(
        f"no initial trace of positive probability in {_INIT_ATTEMPTS * init_particles} runs "
        f"of {runner.prog.name!r} for {len(todo)} chain(s); loosen the constraints, raise "
        "init_particles, or pass initial traces"
    )


_INIT_ATTEMPTS = 20


def given_states(runner: Runner, initial: Sequence[Trace], count: int) -> list[State]:
    """States for ``initial``, one complete trace per chain."""
    initial = list(initial)
    if len(initial) != count:
        raise InvalidArgumentError(
            f"initial has {len(initial)} traces; pass one per chain ({count})"
        )
    return states_from_traces(runner, initial)


def states_from_traces(runner: Runner, traces: Sequence[Trace]) -> list[State]:
    """States for given complete traces, recovering the request of each random choice."""
    states = []
    for i, trace in enumerate(traces):
        if not isinstance(trace, Trace):
            raise InvalidArgumentError(
                f"initial state {i} must be a ppl.Trace, got {type(trace).__name__}"
            )
        choices = []
        for position in choice_positions(trace):
            pending = runner.execute(Trace(trace.sites[:position])).pending
            name = trace.sites[position].name
            if pending is None or pending.name != name:
                raise ReplayDivergenceError(
                    f"initial trace {i} does not replay: the program does not reach {name!r}"
                )
            choices.append(pending)
        execution = runner.execute(trace)
        if execution.pending is not None:
            raise InvalidArgumentError(
                f"initial trace {i} is partial: the program next asks for "
                f"{execution.pending.name!r}; pass complete traces"
            )
        state = State(execution.trace, None, tuple(choices))
        if log_target(state) == -math.inf:
            raise InvalidArgumentError(f"initial trace {i} has probability zero under the target")
        states.append(state)
    return states
