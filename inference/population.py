"""The population driver shared by importance sampling and SMC.

Each round, every live particle makes its next random choice (one batched LM
call per backend for all pending ``step`` sites), is re-executed up to the
choice after it, and is reweighted. Between rounds the population may be
resampled. Finished particles keep their weight and stop consuming compute;
particles with weight zero are dropped from further work.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
from scipy.special import logsumexp

from inference.resampling import Resampler
from ppl.errors import InvalidArgumentError
from ppl.handlers import PendingChoice
from ppl.posterior import Cost, Posterior, Round, effective_sample_size, normalized_weights
from ppl.runtime import as_program, execute, resolve_calls, resolve_choices
from ppl.trace import Trace

# (traces, pending choices, rounds so far, generator) -> moved traces and pending choices
Rejuvenate = Callable[
    [list[Trace], list[PendingChoice | None], int, np.random.Generator],
    tuple[list[Trace], list[PendingChoice | None]],
]


class BackendUsage:
    """The work each LM did during one run, from counter snapshots taken at first use.

    Example:
        >>> usage = BackendUsage()
        >>> usage.track(pending_choice)  # doctest: +SKIP
        >>> usage.cost().tokens_generated  # doctest: +SKIP
    """

    def __init__(self):
        self._before: dict[int, tuple[object, dict[str, int]]] = {}

    def track(self, choice: PendingChoice | None) -> None:
        """Start counting the LM of a pending step, if it is new to this run."""
        if choice is not None and choice.kind == "step" and id(choice.fn.lm) not in self._before:
            self._before[id(choice.fn.lm)] = (choice.fn.lm, choice.fn.lm.stats.snapshot())

    def cost(self) -> Cost:
        total = Cost()
        for lm, before in self._before.values():
            after = lm.stats.snapshot()
            total += Cost(
                tokens_generated=after["tokens_generated"] - before["tokens_generated"],
                tokens_prefilled=after["tokens_prefilled"] - before["tokens_prefilled"],
                tokens_scored=after["tokens_scored"] - before["tokens_scored"],
                lm_calls=sum(after[k] - before[k] for k in ("sample_calls", "score_calls")),
            )
        return total


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


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
    rejuvenate: Rejuvenate | None = None,
) -> Posterior:
    """Run ``num_particles`` particles to completion; resample when ESS < threshold * N.

    ``resampler=None`` never resamples (importance sampling). ``rejuvenate``,
    if given, is called after each resampling with the traces, their pending
    choices, the number of rounds so far and the run's generator, and returns
    moved traces and pending choices; it must leave the current intermediate
    target invariant, so the equal weights stay proper.
    """
    num_particles = check_positive_int("num_particles", num_particles)
    prog = as_program(program)
    seed_sequence = np.random.SeedSequence(seed)
    rng = np.random.default_rng(seed_sequence)
    started = time.perf_counter()
    usage = BackendUsage()

    traces = [Trace()] * num_particles
    pending: list[PendingChoice | None] = [None] * num_particles
    log_weights = np.zeros(num_particles)
    verifier_calls = 0

    def advance(i: int, trace: Trace) -> None:
        nonlocal verifier_calls
        try:
            execution = execute(prog, args, kwargs, trace, batch_calls=True)
        except Exception as error:
            error.add_note(f"while running program {prog.name!r} for particle {i}")
            raise
        traces[i], pending[i] = execution.trace, execution.pending
        log_weights[i] += execution.log_weight
        verifier_calls += execution.memo_calls

    def settle_calls() -> None:
        """Compute batched memo calls for all particles at once until none is pending."""
        nonlocal verifier_calls
        while calling := [
            i
            for i, choice in enumerate(pending)
            if choice is not None and choice.kind == "call" and log_weights[i] > -np.inf
        ]:
            for i, site in zip(calling, resolve_calls([pending[i] for i in calling]), strict=True):
                verifier_calls += 1
                advance(i, traces[i].extend(site))

    for i in range(num_particles):
        advance(i, Trace())
    settle_calls()
    rounds = [
        Round(tuple(range(num_particles)), (None,) * num_particles, tuple(log_weights), False)
    ]
    ess_history: list[float] = []
    ancestors = tuple(range(num_particles))
    resampled = False

    while True:
        live = [
            i for i in range(num_particles) if pending[i] is not None and log_weights[i] > -np.inf
        ]
        if not live:
            break
        choices = [pending[i] for i in live]
        for choice in choices:
            usage.track(choice)
        sites = resolve_choices(choices, rng)
        texts: list[str | None] = [None] * num_particles
        for i, site in zip(live, sites, strict=True):
            log_weights[i] += site.log_weight
            texts[i] = str(site.value.tolist() if hasattr(site.value, "tolist") else site.value)
            if log_weights[i] > -np.inf:
                advance(i, traces[i].extend(site))
            else:
                traces[i], pending[i] = traces[i].extend(site), None
        settle_calls()
        ess = effective_sample_size(log_weights)
        ess_history.append(ess)
        rounds.append(Round(ancestors, tuple(texts), tuple(log_weights.tolist()), resampled))
        resampled = False
        ancestors = tuple(range(num_particles))
        needs_resampling = ess < ess_threshold * num_particles
        still_running = any(p is not None for p in pending)
        if resampler is not None and needs_resampling and still_running and ess > 0:
            indices = resampler(normalized_weights(log_weights), rng)
            log_mean_weight = logsumexp(log_weights) - math.log(num_particles)
            traces = [traces[j] for j in indices]
            pending = [pending[j] for j in indices]
            log_weights = np.full(num_particles, log_mean_weight)
            ancestors, resampled = tuple(int(j) for j in indices), True
            if rejuvenate is not None:
                traces, pending = rejuvenate(traces, pending, len(ess_history), rng)

    cost = usage.cost() + Cost(
        verifier_calls=verifier_calls, wall_seconds=time.perf_counter() - started
    )
    return Posterior(
        traces,
        log_weights,
        ess_history=[ess_history],
        rounds=[rounds],
        cost=cost,
        method=method,
        info={"seed": seed_sequence.entropy, "num_particles": num_particles},
    )
