"""Online early stopping by confidence for importance sampling and SMC (DeepConf).

With ``rule = ConfidenceStop(num_warmup, keep, window)`` the warm-up particles
run to completion first and set the threshold ``s`` (``inference.confidence``).
Every later particle is stopped as soon as its lowest group confidence is
known to be below ``s``: once the trace has ``window`` tokens the lowest
group can only fall as tokens are added, so a full window below ``s``
decides it, even in the middle of a step; a trace shorter than the window
is judged when it ends. A stopped particle gets weight zero and uses no more
compute: its step in flight ends at once on backends that decode token by
token (``TokenLM``), at the end of the step on the others (HTTP servers).

What the result estimates. The rule is a hard condition on the trace,
``C_min(trace) >= s``, so the engines estimate the program's posterior
restricted to confident traces, ``pi(x | C_min(x) >= s)``, not the
program's posterior; ``exp(log_evidence)`` estimates ``Z * P(C_min >= s)``.
``s`` is fixed by the warm-up before any later particle is judged.

- importance: the first ``num_warmup`` of the ``num_particles`` particles are
  the warm-up; the rule filters them too, so every particle of the posterior
  obeys it (DeepConf-online with ``N_init = num_warmup``).
- smc: the warm-up is a separate importance run of ``num_warmup`` particles
  (SMC's own particles are not independent) that only sets ``s``; its
  tokens count in the cost. Resample-move is not combined with stopping:
  moves do not know the rule.

Example (``letters`` writes up to four letters with their top log-probabilities):
    >>> from inference.confidence import ConfidenceStop, confidence_vote
    >>> from models.verifiers import Confidence
    >>> rule = ConfidenceStop(num_warmup=4, keep=0.5, window=2)
    >>> post = ppl.importance(letters, lm, "ae", num_particles=16, early_stop=rule, seed=0)
    >>> post
    <Posterior importance runs=1 particles=16 ess=9.0 log_evidence=-0.575>
    >>> shares = confidence_vote(post, Confidence("lowest_group", window=2))
    >>> {answer: round(share, 2) for answer, share in sorted(shares.items())}
    {'b': 0.24, 'c': 0.44, 'e': 0.32}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from inference.confidence import ConfidenceStop
from inference.population import Population, check_positive_int
from inference.resampling import Resampler
from inference.runtime import Particle, Runtime
from models.verifiers.confidence import lowest_group_confidence, trace_top_logprobs
from ppl.errors import InvalidArgumentError
from ppl.posterior import Posterior


class ConfidenceStopping(Population):
    """The importance / SMC policy with DeepConf's stopping rule.

    ``threshold=None`` makes the first ``rule.num_warmup`` particles the
    warm-up: the others wait until the warm-up has ended and set it.
    """

    def __init__(
        self,
        runtime: Runtime,
        num_particles: int,
        *,
        rule: ConfidenceStop,
        resampler: Resampler | None,
        ess_threshold: float,
        threshold: float | None = None,
        first_index: int = 0,
    ):
        super().__init__(runtime, num_particles, resampler=resampler, ess_threshold=ess_threshold)
        self.rule = rule
        self.threshold = threshold
        self.first_index = first_index
        self.warmup: list[Particle] = []
        self.stopped_early = 0
        self._live: dict[Particle, _Window] = {}  # the windows of each particle's live step

    def init(self) -> None:
        self.particles = [
            self.runtime.start(self.first_index + i) for i in range(self.num_particles)
        ]
        if self.threshold is None:
            self.warmup = self.particles[: self.rule.num_warmup]
            self._end_warmup()
        self._take_decisions()

    def finish(self) -> Posterior:
        posterior = super().finish()
        posterior.info.update(
            confidence_threshold=self.threshold,
            stopped_early=self.stopped_early,
            num_warmup=self.rule.num_warmup,
        )
        return posterior

    # --- the runtime's questions ---------------------------------------------------
    def may_draw(self, particle: Particle) -> bool:
        if self.threshold is None and not any(p is particle for p in self.warmup):
            return False
        return super().may_draw(particle)

    def on_choice(self, particle: Particle) -> None:
        self._live.pop(particle, None)
        if self._judged(particle) and self._below(particle):
            self._stop(particle)
        super().on_choice(particle)
        if self.threshold is None:
            self._end_warmup()

    def watch(self, particle: Particle, rows: Sequence[tuple[float, ...]]) -> bool:
        """Whether a full window ending in the live step's tokens ``rows`` is below ``s``."""
        if not self._judged(particle) or not rows:
            return False
        window = self._live.get(particle)
        if window is None:
            earlier = _rows(particle)
            window = self._live[particle] = _Window(self.rule.window, earlier)
        if window.push(rows[window.seen :], self.threshold):
            self._live.pop(particle)
            self.stopped_early += 1
            return True
        return False

    # --- the rule ------------------------------------------------------------------
    def _judged(self, particle: Particle) -> bool:
        return self.threshold is not None and not any(p is particle for p in self.warmup)

    def _below(self, particle: Particle) -> bool:
        if particle.log_weight == -math.inf:
            return False
        rows = _rows(particle)
        if particle.pending is not None and len(rows) < self.rule.window:
            return False  # a short partial trace's one group may still rise
        if not rows:
            raise InvalidArgumentError(
                f"particle {particle.index} ended without tokens with top log-probabilities; "
                "early stopping needs ppl.step(..., top_logprobs=k) on the program's steps"
            )
        return lowest_group_confidence(rows, self.rule.window) < self.threshold

    def _stop(self, particle: Particle) -> None:
        particle.log_weight = particle.weights[-1] = -math.inf
        if particle.pending is not None:
            self.stopped_early += 1

    def _end_warmup(self) -> None:
        """Set ``s`` once every warm-up particle has ended, and filter the warm-up by it."""
        if not all(p.stopped and p.settled for p in self.warmup):
            return
        kept = [p for p in self.warmup if p.log_weight > -math.inf]
        confidences = [
            lowest_group_confidence(rows, self.rule.window) for p in kept if (rows := _rows(p))
        ]
        self.threshold = self.rule.threshold(confidences)
        self.warmup = []
        for particle in kept:
            if self._below(particle):
                particle.log_weight = particle.weights[-1] = -math.inf


def _rows(particle: Particle) -> list[tuple[float, ...]]:
    return trace_top_logprobs([site.value for site in particle.trace.steps])


class _Window:
    """Token confidences of a trace so far, with the sum of the last ``size``."""

    def __init__(self, size: int, earlier: Sequence[Sequence[float]]):
        self.size = size
        self.values = [-math.fsum(row) / len(row) for row in earlier]
        self.running = math.fsum(self.values[-size:])
        self.seen = 0  # rows of the live step pushed so far

    def push(self, rows: Sequence[Sequence[float]], threshold: float) -> bool:
        """Add the live step's new rows; whether a full window ending in them is below."""
        below = False
        for row in rows:
            self.values.append(-math.fsum(row) / len(row))
            self.running += self.values[-1]
            if len(self.values) > self.size:
                self.running -= self.values[-self.size - 1]
            below = below or (
                len(self.values) >= self.size and self.running / self.size < threshold
            )
        self.seen += len(rows)
        return below


def run_with_early_stop(
    program: Callable,
    args: tuple,
    kwargs: dict,
    *,
    rule: ConfidenceStop,
    num_particles: int,
    resampler: Resampler | None,
    ess_threshold: float,
    seed: int | None,
    method: str,
) -> Posterior:
    """Importance sampling (``resampler=None``) or SMC with DeepConf's early stopping."""
    if not isinstance(rule, ConfidenceStop):
        raise InvalidArgumentError(
            f"early_stop must be an inference.ConfidenceStop, got {type(rule).__name__}"
        )
    num_particles = check_positive_int("num_particles", num_particles)
    runtime = Runtime(program, args, kwargs, seed=seed, method=method)
    threshold = None
    if resampler is not None:
        warmup = ConfidenceStopping(
            runtime,
            rule.num_warmup,
            rule=rule,
            resampler=None,
            ess_threshold=0.0,
            first_index=num_particles,
        )
        warmup.init()
        runtime.drive(warmup)
        threshold = warmup.threshold
    elif rule.num_warmup > num_particles:
        raise InvalidArgumentError(
            f"num_warmup={rule.num_warmup} exceeds num_particles={num_particles}: importance "
            "sampling's warm-up particles are among its particles"
        )
    population = ConfidenceStopping(
        runtime,
        num_particles,
        rule=rule,
        resampler=resampler,
        ess_threshold=ess_threshold,
        threshold=threshold,
    )
    return population.run()
