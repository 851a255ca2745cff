"""Trace MCMC moves: regenerate one random choice, re-run the program, accept or reject.

A state is a trace of the program: complete, or (inside SMC) stopped at its
next random choice after ``horizon`` choices. Its target is

    log gamma(trace) = sum of log p over random choices (``step``: its sampler,
                       ``ppl.sampler``) + sum of factors, conditions and
                       observations [+ the current twist, for a stopped trace]

Factors and observations may be tempered by ``beta`` (parallel tempering);
conditions stay hard at every temperature, and a ``-inf`` factor or twist
rejects a trace at every temperature, as it does in SMC. A twist is not part of
the target of a complete trace (the runtime removes the last potential when a
program returns).

A move picks the ``index``-th random choice of the trace (the index comes from
a fixed scan, never from the state), draws a new value from the program's
proposal for it and re-runs the program from there:

- ``regenerate``: every later choice is drawn afresh. The acceptance ratio is
  the ratio of the suffix importance weights, ``w(new suffix) / w(old suffix)``.
- ``rescore``: a later choice the program makes again (same name and kind,
  and for ``step`` the same model, stop strings and token limit, proposed by
  the model itself) keeps its value, re-scored under the new prefix; the
  others are drawn afresh. The acceptance ratio is
  ``gamma(new) q(discarded old values) / (gamma(old) q(fresh new values))``,
  where the site drawn at ``index`` counts on both sides. Whether a choice is
  kept is a symmetric test of the two visits, so the reverse move keeps the
  same choices and the ratio is the Metropolis-Hastings ratio of this proposal.

Moves of many states run together on the particle runtime: each fresh LM
step joins its backend's running batch as soon as its walk is ready, and all
kept steps are re-scored together in one batched ``score_steps`` call per model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from inference.mcmc.runner import Runner
from inference.mcmc.state import State, choice_positions, log_proposal, log_target
from inference.mcmc.walk import Walk, run_walks
from ppl.errors import (
    InvalidArgumentError,
)
from ppl.trace import Trace


def mh_move(
    runner: Runner,
    states: Sequence[State],
    index: int,
    *,
    proposal: str,
    rng: np.random.Generator,
    betas: Sequence[float] | None = None,
    horizon: int | None = None,
) -> tuple[list[State], list[bool | None]]:
    """One Metropolis-Hastings move of every state at its ``index``-th random choice.

    Returns the new states and, per state, whether its move was accepted (None
    when the state has no ``index``-th choice and stays as it is). ``betas``
    temper each state's factors; ``horizon`` is the number of choices of the
    partial traces of an SMC round (None: complete traces).
    """
    new_states = list(states)
    accepted: list[bool | None] = [None] * len(states)
    walks, moved = [], []
    for i, state in enumerate(states):
        positions = choice_positions(state.trace)
        if index >= len(positions):
            continue
        position = positions[index]
        prefix = Trace(state.trace.sites[:position], min(state.trace.verified, position))
        if state.choices is not None:
            pending, choices = state.choices[index], list(state.choices[:index])
        else:
            pending, choices = runner.execute(prefix).pending, None
        keep = None
        if proposal == "rescore":
            if state.choices is None:
                raise InvalidArgumentError("rescore moves need states that record their choices")
            keep = {
                state.trace.sites[p].name: (state.trace.sites[p], state.choices[k])
                for k, p in enumerate(positions)
                if k > index
            }
        walks.append(Walk(prefix, pending, choices, index, horizon=horizon, keep=keep))
        moved.append((i, positions[index:]))
    run_walks(runner, walks, rng)
    for walk, (i, old_positions) in zip(walks, moved, strict=True):
        beta = 1.0 if betas is None else betas[i]
        new = walk.state
        log_new = -math.inf if walk.dead else log_target(new, beta)
        u = rng.random()
        if log_new == -math.inf:
            accepted[i] = False
            continue
        old = states[i]
        sites = old.trace.sites
        log_q_reverse = sum(
            log_proposal(sites[p]) for p in old_positions if sites[p].name not in walk.kept
        )
        log_ratio = (log_new - walk.log_q) - (log_target(old, beta) - log_q_reverse)
        accepted[i] = bool(math.log(u) < log_ratio)
        if accepted[i]:
            new_states[i] = new
    return new_states, accepted
