"""Importance sampling and SMC as one policy over the particle runtime.

Round ``t`` is every particle's ``t``-th random choice. Importance sampling
is SMC without a resampler: its particles never wait, and rounds are only
recorded (weights, ESS) once every particle has made its ``t``-th choice.
SMC holds a barrier at each round for the resampling decision.

Speculative SMC. A particle that has made choice ``t`` draws choice ``t + 1``
before the decision at ``t`` is taken (one round ahead at most). At the
decision, a particle resampled away has its speculative work discarded;
a particle chosen ``c >= 1`` times gives its continuation to its first copy
and the other ``c - 1`` copies restart from its state after choice ``t``,
drawing choice ``t + 1`` from fresh streams.

Why the estimator stays exact. Write ``x_t^i`` for particle ``i``'s trace
after round ``t`` and ``y^i`` for its speculative draw of choice ``t + 1``.
Given ``x_t = (x_t^1..x_t^N)``, the ``y^i`` are drawn independently, each
from ``q(. | x_t^i)`` with particle ``i``'s own stream, and the resampling
indices ``A`` are drawn from the weights ``w_t`` (functions of ``x_t``) with
the resampling stream. The streams are independent, so ``y`` and ``A`` are
conditionally independent given ``x_t``, and given ``(x_t, A)`` each ``y^i``
is still distributed as ``q(. | x_t^i)``. The first copy of ``i`` takes
``y^i``; every other copy draws a fresh value from ``q(. | x_t^i)``. So the
round-``t + 1`` draws of the ``N`` offspring are, given ``(x_t, A)``,
independent with offspring ``k`` drawing from ``q(. | x_t^{A_k})``: exactly
the law of standard SMC. Every estimate, and the unbiasedness of
``exp(log_evidence)``, carry over unchanged. (The speculative draw's weight
increment is computed from ``y^i`` and ``x_t^i`` alone, and the reset to the
mean weight is added to it, as for a draw made after resampling.)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp

from inference.cost_ledger import CostLedger
from inference.resampling import Resampler
from inference.runtime import Particle, Runtime, Scheduler
from ppl.errors import InvalidArgumentError
from ppl.handlers import PendingChoice
from ppl.posterior import Posterior, Round, effective_sample_size, normalized_weights
from ppl.trace import Trace

# (traces, pending choices, rounds so far, generator) -> moved traces and pending choices
Rejuvenate = Callable[
    [list[Trace], list[PendingChoice | None], int, np.random.Generator],
    tuple[list[Trace], list[PendingChoice | None]],
]


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Population:
    """The importance / SMC policy: ``init`` starts the particles, ``step`` decides a round.

    ``resampler=None`` never resamples (importance sampling). ``rejuvenate``,
    if given, is called after each resampling with the traces, their pending
    choices, the number of rounds so far and the round's generator, and returns
    moved traces and pending choices; it must leave the current intermediate
    target invariant, so the equal weights stay proper.

    Example:
        >>> from inference.resampling import systematic
        >>> runtime = Runtime(program, (lm, "a"), {}, seed=0, method="smc")
        >>> population = Population(runtime, 16, resampler=systematic, ess_threshold=0.5)
        >>> post = population.run()
        >>> post.num_particles, len(population.rounds), population.running_particles
        (16, 3, 0)
    """

    def __init__(
        self,
        runtime: Runtime,
        num_particles: int,
        *,
        resampler: Resampler | None,
        ess_threshold: float,
        rejuvenate: Rejuvenate | None = None,
    ):
        self.runtime = runtime
        self.num_particles = num_particles
        self.resampler = resampler
        self.ess_threshold = ess_threshold
        self.rejuvenate = rejuvenate
        # Moves change a particle's state at the barrier, so nothing may run ahead of it.
        self.lookahead = 1 if rejuvenate is None else 0
        self.particles: list[Particle] = []
        self.resolved = -1  # the last round whose decision was taken
        self.rounds: list[Round] = []
        self.ess_history: list[float] = []
        self.ancestors = tuple(range(num_particles))
        self.resampled = False
        self.speculative_choices = 0  # choices started before the previous round's decision
        self.discarded_choices = 0  # of those, dropped with a particle resampled away
        self._cursor = 0  # see _round_complete

    def run(self) -> Posterior:
        self.init()
        self.runtime.drive(self)
        return self.finish()

    def finish(self) -> Posterior:
        """The posterior, once every particle has stopped."""
        self._take_decisions()
        info = {}
        if self.resampler is not None:
            info = {
                "speculative_choices": self.speculative_choices,
                "discarded_choices": self.discarded_choices,
            }
        return self.runtime.posterior(
            self.particles, ess_history=self.ess_history, rounds=self.rounds, info=info
        )

    @property
    def running_particles(self) -> int:
        """Particles that may still draw: each needs a row of the running batch."""
        return sum(not particle.stopped for particle in self.particles)

    def init(self) -> None:
        self.particles = [self.runtime.start(i) for i in range(self.num_particles)]
        self._take_decisions()

    # --- the runtime's questions --------------------------------------------------
    def may_draw(self, particle: Particle) -> bool:
        if self.resampler is None:
            return True
        if particle.choices > self.resolved + self.lookahead:
            return False
        self.speculative_choices += particle.choices > self.resolved
        return True

    def on_choice(self, particle: Particle) -> None:
        if self.resampler is not None:
            particle.saved[particle.reported] = (particle.trace, particle.pending)
        self._take_decisions()

    # --- rounds -------------------------------------------------------------------
    def _take_decisions(self) -> None:
        while self._round_complete(self.resolved + 1):
            self.step(self.resolved + 1)

    def _round_complete(self, t: int) -> bool:
        # particles[:cursor] have reached round t (reaching is permanent within a
        # round), so each particle is checked about once per round, not once per report.
        while self._cursor < len(self.particles) and _reached(self.particles[self._cursor], t):
            self._cursor += 1
        if self._cursor < len(self.particles):
            return False
        # A round nobody made a choice in does not exist: the run is over.
        return t == 0 or any(p.reported >= t for p in self.particles)

    def step(self, t: int) -> None:
        """Record round ``t`` and resample if its ESS is below the threshold."""
        weights = np.array([p.weights[min(t, p.reported)] for p in self.particles])
        texts = tuple(p.texts[t - 1] if 0 < t <= p.reported else None for p in self.particles)
        self.rounds.append(Round(self.ancestors, texts, tuple(weights.tolist()), self.resampled))
        self.ancestors, self.resampled = tuple(range(self.num_particles)), False
        if t > 0:
            ess = effective_sample_size(weights)
            self.ess_history.append(ess)
            running = any(
                self._state(p, t)[1] is not None and w > -math.inf
                for p, w in zip(self.particles, weights, strict=True)
            )
            if (
                self.resampler is not None
                and ess < self.ess_threshold * self.num_particles
                and running
                and ess > 0
            ):
                self._resample(t, weights)
        self.resolved, self._cursor = t, 0
        for particle in self.particles:
            for done in [k for k in particle.saved if k < t]:
                del particle.saved[done]
        self.runtime.round_done(t, weights, self.resampled)

    def _state(self, particle: Particle, t: int) -> tuple[Trace, PendingChoice | None]:
        return particle.saved.get(t, (particle.trace, particle.pending))

    def _resample(self, t: int, weights: np.ndarray) -> None:
        rng = self.runtime.resampling_rng(t)
        indices = self.resampler(normalized_weights(weights), rng)
        log_mean = logsumexp(weights) - math.log(self.num_particles)
        continued: set[int] = set()
        offspring = []
        for k, j in enumerate(int(j) for j in indices):
            parent = self.particles[j]
            if j not in continued:  # the first copy keeps the continuation
                continued.add(j)
                _shift(parent, t, log_mean - weights[j])
                parent.index = k
                offspring.append(parent)
            else:
                child = self.runtime.fork(parent, t, k, (*parent.lineage, t, k))
                child.weights[-1] = child.log_weight = log_mean
                offspring.append(child)
        for j, particle in enumerate(self.particles):
            if j not in continued:
                self.discarded_choices += particle.choices > t or particle.ticket is not None
                self.runtime.retire(particle)
        self.particles = offspring
        self.ancestors, self.resampled = tuple(int(j) for j in indices), True
        if self.rejuvenate is not None:
            self._move(t, rng)

    def _move(self, t: int, rng: np.random.Generator) -> None:
        traces, pending = self.rejuvenate(
            [p.trace for p in self.particles],
            [p.pending for p in self.particles],
            len(self.ess_history),
            rng,
        )
        for particle, trace, choice in zip(self.particles, traces, pending, strict=True):
            particle.trace, particle.pending = trace, choice
            particle.saved.pop(t, None)


def _reached(particle: Particle, t: int) -> bool:
    return particle.reported >= t or (particle.stopped and particle.settled)


def _shift(particle: Particle, t: int, delta: float) -> None:
    """Add ``delta`` to a particle's weight from round ``t`` on (the reset to the mean)."""
    cut = min(t, particle.reported)
    particle.weights[cut:] = [w + delta for w in particle.weights[cut:]]
    particle.log_weight += delta


def run_population(
    program: Callable,
    args: tuple,
    kwargs: dict,
    *,
    num_particles: int,
    resampler: Resampler | None,
    ess_threshold: float,
    seed: int | None,
    method: str,
) -> Posterior:
    """Run ``num_particles`` particles to completion; resample when ESS < threshold * N.

    ``resampler=None`` never resamples (importance sampling).
    """
    num_particles = check_positive_int("num_particles", num_particles)
    runtime = Runtime(program, args, kwargs, seed=seed, method=method)
    population = Population(
        runtime,
        num_particles,
        resampler=resampler,
        ess_threshold=ess_threshold,
    )
    return population.run()


@dataclass(frozen=True)
class Problem:
    """One program call to run: ``program(*args, **kwargs)`` with its own seed."""

    program: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    seed: int | None = None


def run_problems(
    method: str,
    problems: Sequence[Problem],
    *,
    num_particles: int,
    max_rows: int = 64,
    resample: str = "systematic",
    ess_threshold: float = 0.5,
    on_result: Callable[[int, Posterior], None] | None = None,
) -> list[Posterior]:
    """Run importance sampling or SMC on many problems whose particles share one running batch.

    Problems are admitted while their running particles fit in ``max_rows``
    rows (at least one problem at a time, so ``max_rows=1`` runs them one
    after another). A particle whose program has ended frees its row for the
    next problem at once, so a problem's tail does not hold rows idle. SMC
    resampling can copy a running particle over an ended one, so at most one
    problem more than ``max_rows // num_particles`` runs at a time: the batch
    never holds more than ``max_rows + num_particles`` rows. Each problem
    keeps its own streams, barriers and weights, so its posterior is the one
    ``ppl.importance`` / ``ppl.smc`` give it alone with the same seed.
    ``on_result(index, posterior)`` is called as each problem finishes,
    before later ones.

    Each posterior's cost is its own (``inference.cost_ledger``): generated
    tokens and memo calls exactly, ``lm_calls`` the backend calls that carried
    its requests, and the prefill of passes shared with other problems split
    by the steps each brought into the pass; wall time runs from the
    problem's admission to its end.

    Example:
        >>> problems = [Problem(program, (lm, q), seed=k) for k, q in enumerate(["a", "b", "c"])]
        >>> posts = run_problems("smc", problems, num_particles=8, max_rows=16)
        >>> [posts[k].answers == ppl.smc(program, lm, q, num_particles=8, seed=k).answers
        ...  for k, q in enumerate(["a", "b", "c"])]
        [True, True, True]
    """
    from inference.resampling import get_resampler

    if method not in ("importance", "smc"):
        raise InvalidArgumentError(f"run_problems runs 'importance' or 'smc', got {method!r}")
    num_particles = check_positive_int("num_particles", num_particles)
    max_rows = check_positive_int("max_rows", max_rows)
    if not 0.0 <= ess_threshold <= 1.0:
        raise InvalidArgumentError(f"ess_threshold must be in [0, 1], got {ess_threshold!r}")
    resampler = get_resampler(resample) if method == "smc" else None
    scheduler = Scheduler(ledger=CostLedger())
    waiting = deque(enumerate(problems))
    results: list[Posterior | None] = [None] * len(problems)
    running: dict[int, tuple[int, Population]] = {}

    def rows_held() -> int:
        return sum(population.running_particles for _, population in running.values())

    def room() -> bool:
        # An empty batch takes a problem whatever its size.
        if not running:
            return True
        return len(running) <= max_rows // num_particles and rows_held() + num_particles <= max_rows

    def admit() -> list[tuple[Runtime, Population]]:
        runs = []
        while waiting and room():
            k, problem = waiting.popleft()
            runtime = Runtime(
                problem.program,
                problem.args,
                problem.kwargs,
                seed=problem.seed,
                method=method,
                scheduler=scheduler,
            )
            population = Population(
                runtime, num_particles, resampler=resampler, ess_threshold=ess_threshold
            )
            scheduler.charged(runtime, population.init)
            running[id(population)] = (k, population)
            runs.append((runtime, population))
        return runs

    def finished(runtime: Runtime, population: Population) -> None:
        k, _ = running.pop(id(population))
        results[k] = population.finish()
        if on_result is not None:
            on_result(k, results[k])

    scheduler.drive([], admit=admit, finished=finished)
    return results
