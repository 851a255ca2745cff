"""Sequential Monte Carlo over reasoning traces (particle filtering)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from inference.confidence import ConfidenceStop
from inference.early_stopping import run_with_early_stop
from inference.mcmc.rejuvenation import Rejuvenation
from inference.population import Population, check_positive_int
from inference.resampling import get_resampler
from inference.runtime import Runtime
from ppl.errors import InvalidArgumentError
from ppl.posterior import Posterior


def smc(
    program: Callable,
    *args,
    num_particles: int,
    resample: str = "systematic",
    ess_threshold: float = 0.5,
    rejuvenation_steps: int = 0,
    seed: int | None = None,
    early_stop: ConfidenceStop | None = None,
    **kwargs,
) -> Posterior:
    """Sequential Monte Carlo: one round per random choice, resampling when ESS drops.

    What it estimates: with target ``pi(trace) ∝ prod p(choices) * prod factors``
    (``ppl.step`` targets its sampler), the weighted particles
    estimate expectations under ``pi`` consistently as ``num_particles``
    grows, and ``exp(log_evidence)`` is an unbiased estimate of the
    normalizing constant ``Z`` for any number of particles. Twists
    (``ppl.twist``) change which particles survive resampling but not the
    target: the final potential is removed when a program returns.

    Round ``t`` is every live particle's ``t``-th random choice, reweighted by
    ``log p - log q`` plus the factors and twist changes up to the next
    choice. Particles run continuously on the shared runtime: LM steps join
    the backend's running batch as soon as a particle is ready, and a
    particle that has made choice ``t`` draws choice ``t + 1`` speculatively
    while others finish round ``t`` (see ``inference.population`` for why
    this leaves every estimate exact; ``info`` counts ``speculative_choices``
    and ``discarded_choices``). After round ``t`` the population resamples with ``resample``
    (``multinomial``, ``systematic``, ``stratified``, ``residual``) when
    ``ESS < ess_threshold * num_particles``. Finished particles keep their
    weight and take part in resampling; particles of weight zero stop. If
    every particle reaches weight zero the run returns an empty posterior
    (``is_empty``, ``log_evidence == -inf``) rather than raising.

    Resample-move: with ``rejuvenation_steps=k``, every resampling is followed
    by ``k`` Metropolis-Hastings moves per particle that leave the round's
    intermediate target invariant (see ``inference.mcmc.Rejuvenation``: the
    latest random choice first, then earlier ones, each re-drawn with what
    follows it); moves change the state at the decision, so no particle
    draws ahead of it. Weights are unchanged, so the estimates and the unbiasedness
    of ``exp(log_evidence)`` hold as without moves, while copies of one
    ancestor spread out again. ``info["rejuvenation_acceptance_rate"]``
    reports how many moves were accepted; the genealogy records the draws of
    each round, not the moves.

    Early stopping: ``early_stop=ConfidenceStop(num_warmup, keep, window)``
    first runs ``num_warmup`` importance particles to set a confidence
    threshold, then gives weight zero to SMC particles whose lowest group
    confidence falls below it, ending their step at once; the result
    estimates the posterior restricted to confident traces
    (``inference.early_stopping``).

    Example:
        >>> post = ppl.smc(program, lm, "a", num_particles=16, seed=0)
        >>> post.method, post.num_particles, "e" in "".join(a for a in post.answers if a)
        ('smc', 16, False)
    """
    if not 0.0 <= ess_threshold <= 1.0:
        raise InvalidArgumentError(f"ess_threshold must be in [0, 1], got {ess_threshold!r}")
    if (
        isinstance(rejuvenation_steps, bool)
        or not isinstance(rejuvenation_steps, int | np.integer)
        or rejuvenation_steps < 0
    ):
        raise InvalidArgumentError(
            f"rejuvenation_steps must be a non-negative integer, got {rejuvenation_steps!r}"
        )
    if early_stop is not None:
        if rejuvenation_steps:
            raise InvalidArgumentError(
                "early_stop and rejuvenation_steps cannot be combined: moves do not know the "
                "stopping rule; drop one of them"
            )
        return run_with_early_stop(
            program,
            args,
            kwargs,
            rule=early_stop,
            num_particles=num_particles,
            resampler=get_resampler(resample),
            ess_threshold=ess_threshold,
            seed=seed,
            method="smc",
        )
    resampler = get_resampler(resample)
    num_particles = check_positive_int("num_particles", num_particles)
    runtime = Runtime(program, args, kwargs, seed=seed, method="smc")
    rejuvenation = Rejuvenation(runtime, int(rejuvenation_steps)) if rejuvenation_steps else None
    population = Population(
        runtime,
        num_particles,
        resampler=resampler,
        ess_threshold=ess_threshold,
        rejuvenate=rejuvenation,
    )
    posterior = population.run()
    if rejuvenation is not None:
        posterior.info["rejuvenation_steps"] = int(rejuvenation_steps)
        posterior.info["rejuvenation_acceptance_rate"] = rejuvenation.acceptance_rate
    return posterior
