"""Conditional SMC: SMC on the particle runtime with slot 0 pinned to a reference trace.

A sweep is the SMC policy (``inference.population.Population``) with two
changes. Every round resamples, multinomially: the free slots ``1..N-1`` pick
ancestors from all ``N`` weights, slot 0 keeps ancestor 0 (the particle that
follows the reference). And slot 0 never draws: the runtime completes each of
its choices with the reference's site (``supplied``), so it replays the
reference choice by choice while its weight is computed like any other's.
With no reference the sweep is plain SMC that resamples every round.

With ancestor sampling, slot 0 instead draws its ancestor ``i`` with
probability ``∝ w_i * gamma(x_i + rest of the reference) / gamma(x_i)`` before
the free slots resample (from the same generator, so the draws are
independent), and the reference becomes its rest spliced onto ``x_i``. Nothing
runs ahead of a decision (no speculation): slot 0's next choice depends on it.
"""

from __future__ import annotations

import math

import numpy as np

from inference.mcmc.runner import Runner
from inference.mcmc.state import State, choice_positions, log_target
from inference.mcmc.walk import Walk, run_walks
from inference.population import Population
from inference.runtime import Particle, Runtime, Scheduler
from ppl.errors import InvalidArgumentError
from ppl.handlers import PendingChoice
from ppl.runtime import stream_seed
from ppl.trace import Site

_SELECTION_STREAM = 2  # spawn key of a sweep's final pick; the runtime uses 0 and 1


class ConditionalSweep(Population):
    """One conditional SMC sweep of ``num_particles`` particles on ``runtime``.

    Example (``conditional_smc`` runs sweeps of it: one unconditional, then one that
    keeps the first sweep's pick in slot 0; ``program`` writes two letters with ``lm``):
        >>> from inference.runtime import CostTracker
        >>> runner = Runner(program, (lm, "a"), {}, CostTracker())
        >>> (state,) = conditional_smc(runner, [None], 4, False, 0, (0,))
        >>> (moved,) = conditional_smc(runner, [state], 4, True, 0, (1,))
        >>> state.trace.answer, moved.trace.answer
        ('', '')
    """

    def __init__(
        self,
        runtime: Runtime,
        runner: Runner,
        num_particles: int,
        reference: State | None,
        ancestor_sampling: bool,
    ):
        # An infinite threshold resamples every round that has a live, weighted particle.
        super().__init__(runtime, num_particles, resampler=self._offspring, ess_threshold=math.inf)
        self.lookahead = 0
        self.runner = runner
        self.ancestor_sampling = ancestor_sampling and reference is not None
        self.requests: dict[Particle, tuple[PendingChoice, ...]] = {}
        self._pin(reference)

    def _pin(self, reference: State | None) -> None:
        self.reference = reference
        self._positions = None if reference is None else choice_positions(reference.trace)

    # --- the runtime's questions --------------------------------------------------
    def may_draw(self, particle: Particle) -> bool:
        if not super().may_draw(particle):
            return False
        # The request of each choice: ancestor sampling re-checks it against the reference's.
        self.requests[particle] = (*self.requests.get(particle, ()), particle.pending)
        return True

    def supplied(self, particle: Particle) -> Site | None:
        """The reference's site for slot 0's next choice; None for the free slots."""
        if self.reference is None or particle is not self.particles[0]:
            return None
        return self.reference.trace.sites[self._positions[particle.choices]]

    # --- the decision -------------------------------------------------------------
    def _resample(self, t: int, weights: np.ndarray) -> None:
        parents, self._round = self.particles, (t, weights)
        super()._resample(t, weights)
        self.requests = {
            child: self.requests.get(parents[j], ())[:t]
            for child, j in zip(self.particles, self.ancestors, strict=True)
        }

    def _offspring(self, probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = self.num_particles
        if self.reference is None:
            return rng.choice(n, size=n, p=probabilities)
        first = self._sample_ancestor(rng) if self.ancestor_sampling else 0
        return np.concatenate([[first], rng.choice(n, size=n - 1, p=probabilities)])

    def _sample_ancestor(self, rng: np.random.Generator) -> int:
        """Draw slot 0's ancestor and pin the reference's rest spliced onto it."""
        t, log_weights = self._round
        sites = self.reference.trace.sites
        rest = [
            (sites[p], self.reference.choices[k]) for k, p in enumerate(self._positions) if k >= t
        ]
        candidates = [i for i, w in enumerate(log_weights) if w > -math.inf]
        states = [self._state_at(self.particles[i]) for i in candidates]
        walks = [
            Walk(s.trace, s.pending, list(s.choices), len(s.choices), supply=rest) for s in states
        ]
        run_walks(self.runner, walks, rng)
        log_as = np.full(self.num_particles, -math.inf)
        for i, state, walk in zip(candidates, states, walks, strict=True):
            complete = not walk.invalid and walk.pending is None and len(walk.sites) == len(rest)
            if complete and not walk.dead:
                log_as[i] = log_weights[i] + log_target(walk.state) - log_target(state)
        if not np.isfinite(log_as).any():
            raise InvalidArgumentError(
                "ancestor sampling found no particle that can continue the reference trace, "
                "not even the reference itself; the program is not deterministic given its choices"
            )
        ancestor = int(rng.choice(self.num_particles, p=probabilities(log_as)))
        self._pin(walks[candidates.index(ancestor)].state)
        return ancestor

    def _state_at(self, particle: Particle) -> State:
        return State(particle.trace, particle.pending, self.requests.get(particle, ()))

    # --- the result -----------------------------------------------------------------
    def select(self) -> State | None:
        """A final particle picked by weight (None when every weight is zero)."""
        log_weights = np.array([p.log_weight for p in self.particles])
        if not np.isfinite(log_weights).any():
            return None
        rng = np.random.default_rng(
            np.random.SeedSequence(self.runtime.entropy, spawn_key=(_SELECTION_STREAM,))
        )
        pick = int(rng.choice(len(log_weights), p=probabilities(log_weights)))
        return self._state_at(self.particles[pick])


def conditional_smc(
    runner: Runner,
    references: list[State | None],
    num_particles: int,
    ancestor_sampling: bool,
    entropy: int,
    key: tuple[int, ...],
) -> list[State | None]:
    """One sweep per reference (None: unconditional), all in one running batch.

    Sweep ``c`` draws from the streams of ``stream_seed(entropy, (*key, c))``;
    returns each sweep's pick by weight (None when every weight is zero).
    """
    scheduler = Scheduler()
    sweeps = []
    for c, reference in enumerate(references):
        runtime = Runtime(
            runner.prog,
            runner.args,
            runner.kwargs,
            seed=stream_seed(entropy, (*key, c)),
            method="particle_gibbs",
            scheduler=scheduler,
            tracker=runner.tracker,
        )
        sweep = ConditionalSweep(runtime, runner, num_particles, reference, ancestor_sampling)
        sweep.init()
        sweeps.append((runtime, sweep))
    scheduler.drive(sweeps)
    return [sweep.select() for _, sweep in sweeps]


def probabilities(log_weights: np.ndarray) -> np.ndarray:
    """Normalized weights of a block with at least one finite log weight."""
    weights = np.exp(log_weights - np.max(log_weights))
    return weights / weights.sum()
