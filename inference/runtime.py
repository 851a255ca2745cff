"""The particle runtime every engine runs on, with continuous scheduling.

A ``Runtime`` advances particles of one program: it re-executes a particle
(with the particle error note), draws its pending choice, computes batched
``ppl.memo`` calls, counts the run's cost in one tracker, calls the round
hooks and builds the ``Posterior``. Algorithms are policies over it
(``inference.population``): ``drive`` asks the policy whether a particle may
draw its next choice, and tells it each time a particle's choice is complete
(drawn, re-executed up to the next random choice, memo calls settled).
A policy may also watch the tokens of its particles' live steps and stop a
particle mid-step (``Scheduler._watch``).

Scheduling is continuous. LM steps go to each backend's running batch
(``ppl.slots``): a particle whose step ends is re-executed at once and its
next step joins the decode batch in the next pass, so no particle waits for
another's step unless the policy holds it at a barrier.

Randomness: each choice draws from its own stream, keyed by the run seed,
the particle's lineage and the choice's index (``stream_seed``). A run's
draws therefore do not depend on scheduling or on which steps share a pass.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ppl.handlers import PendingChoice
from ppl.posterior import Cost, Posterior, Round
from ppl.runtime import (
    as_program,
    draw_sample_site,
    execute,
    resolve_calls,
    seed_after,
    step_site,
    stream_prefix,
)
from ppl.slots import BatchedSlots, SlotLM
from ppl.trace import Site, Trace

_DRAW_STREAMS = 1  # first element of a draw's stream key; resampling uses 0
_ROUND_HOOKS: contextvars.ContextVar[tuple[Callable, ...]] = contextvars.ContextVar(
    "round_hooks", default=()
)


@dataclass(frozen=True)
class RoundEvent:
    """What a round hook receives: the round's index, method and weights before resampling."""

    method: str
    index: int
    log_weights: np.ndarray
    resampled: bool


@contextlib.contextmanager
def round_hooks(*hooks: Callable[[RoundEvent], None]) -> Iterator[None]:
    """Call ``hooks`` at every round of the runs started inside the block (e.g. progress).

    Example:
        >>> events = []
        >>> with round_hooks(events.append):
        ...     post = ppl.smc(program, lm, "a", num_particles=4, seed=0)
        >>> [(event.method, event.index) for event in events]
        [('smc', 0), ('smc', 1), ('smc', 2)]
    """
    token = _ROUND_HOOKS.set(_ROUND_HOOKS.get() + hooks)
    try:
        yield
    finally:
        _ROUND_HOOKS.reset(token)


@dataclass(eq=False)
class Particle:
    """One particle: its trace, its pending choice and its history per choice.

    ``weights[c]`` is the log weight after choice ``c`` (``weights[0]``
    before the first), ``texts[c - 1]`` the text of choice ``c``; ``saved``
    keeps the trace and pending choice after a choice for a policy that may
    restart copies from it.
    """

    index: int
    lineage: tuple[int, ...]
    trace: Trace = field(default_factory=Trace)
    pending: PendingChoice | None = None
    log_weight: float = 0.0
    choices: int = 0
    texts: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    saved: dict[int, tuple[Trace, PendingChoice | None]] = field(default_factory=dict)
    ticket: tuple[int, int] | None = None  # (backend id, ticket) of an LM step in flight
    retired: bool = False  # dropped by the policy: never advanced again

    @property
    def stopped(self) -> bool:
        return self.pending is None or self.log_weight == -math.inf

    @property
    def settled(self) -> bool:
        """Whether the weight is final for the current choice (no memo call pending)."""
        return self.stopped or self.pending.kind != "call"

    @property
    def reported(self) -> int:
        """Choices whose weight is known (memo calls settled)."""
        return len(self.weights) - 1


class Policy(Protocol):
    """What an algorithm tells ``Runtime.drive``.

    A policy may also define ``on_draw(particle, site) -> bool``, asked when a
    particle's choice has been drawn and before the particle runs on: returning
    False takes the draw over (the particle is left as it was, and the policy
    later goes on with ``Runtime.choose`` or retires it), e.g. to merge
    siblings that drew the same value before any of them runs a verifier; and
    ``supplied(particle) -> Site | None``: a site to complete a particle's
    allowed choice with instead of drawing it (a pinned reference trajectory);
    None draws as usual.
    """

    particles: list[Particle]

    def may_draw(self, particle: Particle) -> bool: ...

    def on_choice(self, particle: Particle) -> None: ...


class CostTracker:
    """The work of one run: LM counters from their first use, memo calls, wall time.

    Example:
        >>> tracker = CostTracker()
        >>> tracker.cost().lm_calls
        0
    """

    def __init__(self):
        self.started = time.perf_counter()
        self.verifier_calls = 0
        self._before: dict[int, tuple[object, dict[str, int]]] = {}
        # LM work charged by a shared scheduler's ledger (inference.cost_ledger), used
        # instead of the counters' change when the run shares running batches.
        self.charged: Cost | None = None

    def track(self, lm) -> None:
        if id(lm) not in self._before:
            self._before[id(lm)] = (lm, lm.stats.snapshot())

    def cost(self) -> Cost:
        total = Cost(
            verifier_calls=self.verifier_calls, wall_seconds=time.perf_counter() - self.started
        )
        if self.charged is not None:
            return total + self.charged
        for lm, before in self._before.values():
            after = lm.stats.snapshot()
            total += Cost(
                tokens_generated=after["tokens_generated"] - before["tokens_generated"],
                tokens_prefilled=after["tokens_prefilled"] - before["tokens_prefilled"],
                tokens_scored=after["tokens_scored"] - before["tokens_scored"],
                lm_calls=sum(after[k] - before[k] for k in ("sample_calls", "score_calls")),
            )
        return total


class Runtime:
    """Runs the particles of ``program(*args, **kwargs)`` for one engine run.

    Example:
        >>> runtime = Runtime(program, (lm, "a"), {}, seed=0, method="importance")
        >>> particles = [runtime.start(i) for i in range(8)]
        >>> {p.pending.name for p in particles}
        {'letter_0'}
    """

    def __init__(
        self,
        program: Callable,
        args: tuple,
        kwargs: dict,
        *,
        seed,
        method: str,
        scheduler: Scheduler | None = None,
        tracker: CostTracker | None = None,
    ):
        self.program = as_program(program)
        self.args, self.kwargs, self.method = args, kwargs, method
        self.entropy = np.random.SeedSequence(seed).entropy
        # Engines that run many sweeps or moves share one tracker across their runtimes.
        self.tracker = tracker if tracker is not None else CostTracker()
        self.scheduler = scheduler if scheduler is not None else Scheduler()
        self.in_flight = 0  # this run's LM steps being decoded
        self._lineage_states: dict[tuple[int, ...], int] = {}
        if self.scheduler.ledger is not None:
            self.tracker.charged = Cost()

    # --- particles ----------------------------------------------------------------
    def start(self, index: int) -> Particle:
        """A particle run from the empty trace up to its first choice (memo calls pending)."""
        particle = Particle(index, (index,))
        self._execute(particle, Trace())
        if particle.settled:
            particle.weights.append(particle.log_weight)
        return particle

    def fork(self, parent: Particle, at: int, index: int, lineage: tuple[int, ...]) -> Particle:
        """A new particle in ``parent``'s state after choice ``at``, with its own stream."""
        trace, pending = parent.saved.get(at, (parent.trace, parent.pending))
        cut = min(at, parent.reported)
        return Particle(
            index,
            lineage,
            trace,
            pending,
            parent.weights[cut],
            cut,
            parent.texts[:cut],
            parent.weights[: cut + 1],
        )

    def retire(self, particle: Particle) -> None:
        """Stop advancing a particle the policy dropped; cancel its step in flight."""
        particle.retired = True
        self.scheduler.cancel(particle)

    def resampling_rng(self, round_index: int) -> np.random.Generator:
        """The generator of the resampling decision after round ``round_index``."""
        return np.random.default_rng(
            np.random.SeedSequence(self.entropy, spawn_key=(0, round_index))
        )

    # --- scheduling -----------------------------------------------------------------
    def drive(self, policy: Policy) -> None:
        """Advance ``policy.particles`` until each has stopped or is held by the policy.

        Particles the policy lets draw make their choices (``sample`` sites at
        once, LM steps submitted to their backend); memo calls are computed in
        one batch per function; then every backend with steps in flight runs one
        decode pass, and particles whose step ended go on at once.
        """
        self.scheduler.drive([(self, policy)])

    def _start_choices(self, policy: Policy) -> bool:
        """Start every choice the policy allows and settle memo calls; whether anything moved."""
        moved = False
        supplied = getattr(policy, "supplied", None)
        while True:
            submissions: dict[int, list[Particle]] = {}
            calls: list[Particle] = []
            progressed = False
            for particle in list(policy.particles):
                if particle.ticket is not None or particle.stopped or particle.retired:
                    continue
                if particle.pending.kind == "call":
                    calls.append(particle)
                elif policy.may_draw(particle):
                    site = supplied(particle) if supplied is not None else None
                    if site is not None:
                        self._complete(policy, particle, site)
                        progressed = True
                    elif particle.pending.kind == "step":
                        lm = particle.pending.fn.lm
                        self.tracker.track(lm)
                        submissions.setdefault(id(lm), []).append(particle)
                    else:
                        seed = self._seed(particle)
                        self._complete(policy, particle, draw_sample_site(particle.pending, seed))
                        progressed = True
            for particles in submissions.values():
                seeds = [self._seed(p) for p in particles]
                self.scheduler.submit(self, policy, particles, seeds)
            if calls:
                self._settle(policy, calls)
                progressed = True
            moved = moved or progressed or bool(submissions)
            if not progressed:
                return moved

    def _settle(self, policy: Policy, calls: list[Particle]) -> None:
        sites = resolve_calls([p.pending for p in calls])
        self.tracker.verifier_calls += len(calls)
        for particle, site in zip(calls, sites, strict=True):
            if particle.retired:
                continue
            self._execute(particle, particle.trace.extend(site))
            if particle.settled:
                self._report(policy, particle)

    def complete(self, policy: Policy, particle: Particle, result) -> None:
        """Go on with a particle whose LM step ended."""
        self._complete(
            policy, particle, step_site(particle.pending, result, particle.pending.fn.lm)
        )

    def _complete(self, policy: Policy, particle: Particle, site: Site) -> None:
        on_draw = getattr(policy, "on_draw", None)
        if on_draw is None or on_draw(particle, site):
            self.choose(policy, particle, site)

    def choose(self, policy: Policy, particle: Particle, site: Site) -> None:
        """Go on with ``particle`` as if its pending choice had drawn ``site``.

        For a value the policy picked itself (e.g. enumerating a small support)
        or a draw it took over with ``on_draw``.
        """
        particle.log_weight += site.log_weight
        particle.choices += 1
        particle.texts.append(_text(site.value))
        if particle.log_weight > -math.inf:
            self._execute(particle, particle.trace.extend(site))
        else:
            particle.trace, particle.pending = particle.trace.extend(site), None
        if particle.settled:
            self._report(policy, particle)

    def _report(self, policy: Policy, particle: Particle) -> None:
        particle.weights.append(particle.log_weight)
        policy.on_choice(particle)

    def _execute(self, particle: Particle, trace: Trace) -> None:
        try:
            execution = execute(self.program, self.args, self.kwargs, trace, batch_calls=True)
        except Exception as error:
            error.add_note(
                f"while running program {self.program.name!r} for particle {particle.index}"
            )
            raise
        particle.trace, particle.pending = execution.trace, execution.pending
        particle.log_weight += execution.log_weight
        self.tracker.verifier_calls += execution.memo_calls

    def _seed(self, particle: Particle) -> int:
        """``stream_seed(entropy, (_DRAW_STREAMS, *lineage, choices))``, the lineage folded once."""
        state = self._lineage_states.get(particle.lineage)
        if state is None:
            state = stream_prefix(self.entropy, (_DRAW_STREAMS, *particle.lineage))
            self._lineage_states[particle.lineage] = state
        return seed_after(state, particle.choices)

    # --- results ----------------------------------------------------------------------
    def round_done(self, index: int, log_weights: np.ndarray, resampled: bool) -> None:
        """Call the round hooks."""
        for hook in _ROUND_HOOKS.get():
            hook(RoundEvent(self.method, index, log_weights, resampled))

    def posterior(
        self,
        particles: Sequence[Particle],
        *,
        ess_history: list[float],
        rounds: list[Round],
        info: dict | None = None,
        log_weights: Sequence[float] | None = None,
        log_evidence: float | None = None,
    ) -> Posterior:
        """The run's ``Posterior``, with its cost; ``log_evidence`` defaults to the weights'."""
        if log_weights is None:
            log_weights = [p.log_weight for p in particles]
        return Posterior(
            [p.trace for p in particles],
            np.asarray(log_weights, dtype=float),
            log_evidences=None if log_evidence is None else [log_evidence],
            ess_history=[ess_history],
            rounds=[rounds],
            cost=self.tracker.cost(),
            method=self.method,
            info={"seed": self.entropy, "num_particles": len(particles), **(info or {})},
        )


class Scheduler:
    """The backends' running batches, shared by every run it drives.

    Runs driven together share decode passes; each keeps its own streams,
    barriers and weights, so its result is the one it gets alone.

    With a ``ledger`` (``inference.cost_ledger.CostLedger``) each run's cost
    is its own work, not the change of the shared backends' counters.

    Example:
        >>> scheduler = Scheduler()
        >>> scheduler.drive([])
    """

    def __init__(self, ledger=None):
        self.slots: dict[int, SlotLM] = {}
        self.in_flight: dict[tuple[int, int], tuple[Runtime, Policy, Particle]] = {}
        self.ledger = ledger

    def submit(self, runtime: Runtime, policy: Policy, particles, seeds) -> None:
        lm = particles[0].pending.fn.lm
        backend = self.slots.get(id(lm))
        if backend is None:
            backend = self.slots[id(lm)] = lm if isinstance(lm, SlotLM) else BatchedSlots(lm)
        if self.ledger is not None:
            self.ledger.watch(lm)
            self.ledger.joined(id(lm), runtime, len(particles))
        tickets = backend.submit([p.pending.fn.request for p in particles], seeds)
        for particle, ticket in zip(particles, tickets, strict=True):
            particle.ticket = (id(lm), ticket)
            self.in_flight[particle.ticket] = (runtime, policy, particle)
        runtime.in_flight += len(particles)

    def cancel(self, particle: Particle) -> None:
        if particle.ticket is not None:
            generated = self.slots[particle.ticket[0]].cancel([particle.ticket[1]])
            runtime, _, _ = self.in_flight.pop(particle.ticket)
            if self.ledger is not None and generated:
                self.ledger.generated(runtime, sum(generated))
            runtime.in_flight -= 1
            particle.ticket = None

    def drive(
        self,
        runs: list[tuple[Runtime, Policy]],
        *,
        admit: Callable[[], list[tuple[Runtime, Policy]]] | None = None,
        finished: Callable[[Runtime, Policy], None] | None = None,
    ) -> None:
        """Advance ``runs`` (and those ``admit`` adds) until none can move.

        ``admit`` is asked for new runs before every pass; ``finished`` is told
        of each run as soon as it has nothing in flight and cannot move.
        """
        active = list(runs)
        try:
            while True:
                active += admit() if admit is not None else []
                moved = [
                    self.charged(runtime, runtime._start_choices, policy)
                    for runtime, policy in active
                ]
                if finished is not None:
                    for run, run_moved in list(zip(active, moved, strict=True)):
                        if not run_moved and run[0].in_flight == 0:
                            active.remove(run)
                            finished(*run)
                busy = [(key, backend) for key, backend in self.slots.items() if backend.busy]
                if not busy and not any(moved):
                    more = admit() if admit is not None else []
                    if not more:
                        return
                    active += more
                for key, backend in busy:
                    self._dispatch(key, backend)
        except BaseException:
            for _, _, particle in list(self.in_flight.values()):
                self.cancel(particle)
            raise

    def charged(self, runtime: Runtime, fn: Callable, *args):
        """``fn(*args)``, its backend work charged to ``runtime`` when there is a ledger."""
        if self.ledger is None:
            return fn(*args)
        with self.ledger.section(runtime):
            return fn(*args)

    def _dispatch(self, key: int, backend: SlotLM) -> None:
        live = self.ledger is not None and Counter(
            entry[0] for (k, _), entry in self.in_flight.items() if k == key
        )
        ended = backend.advance()
        if live:
            owners = [self.in_flight.get((key, ticket)) for ticket, _ in ended]
            charged = [(o[0], r) for o, (_, r) in zip(owners, ended, strict=True) if o]
            self.ledger.shared_pass(key, live, charged)
        for ticket, result in ended:
            # Looked up one by one: going on with one particle may retire another.
            entry = self.in_flight.pop((key, ticket), None)
            if entry is None:
                continue  # a step submitted by someone else, or dropped
            runtime, policy, particle = entry
            runtime.in_flight -= 1
            particle.ticket = None
            self.charged(runtime, runtime.complete, policy, particle, result)
        self._watch(key, backend)

    def _watch(self, key: int, backend: SlotLM) -> None:
        """Show live steps' tokens to policies that watch them (``policy.watch``).

        A policy whose ``watch(particle, top_logprobs_so_far)`` returns True
        stops the particle: its step ends where it is, with weight zero.
        """
        for (k, ticket), (runtime, policy, particle) in list(self.in_flight.items()):
            watch = getattr(policy, "watch", None)
            if k != key or watch is None:
                continue
            rows = backend.peek_top_logprobs(ticket)
            if rows is None or not watch(particle, rows):
                continue
            del self.in_flight[(k, ticket)]
            runtime.in_flight -= 1
            particle.ticket = None
            stopped = dataclasses.replace(backend.interrupt(ticket), logp=-math.inf)
            if self.ledger is not None:
                self.ledger.generated(runtime, len(stopped.token_ids))
            self.charged(runtime, runtime.complete, policy, particle, stopped)


def _text(value) -> str:
    return str(value.tolist() if hasattr(value, "tolist") else value)
