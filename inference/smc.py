"""Sequential Monte Carlo over reasoning traces (particle filtering)."""

from __future__ import annotations

from collections.abc import Callable

from inference.population import run_population
from inference.resampling import get_resampler
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
    **kwargs,
) -> Posterior:
    """Sequential Monte Carlo: one round per random choice, resampling when ESS drops.

    What it estimates: with target ``pi(trace) ∝ prod p(choices) * prod factors``
    (``ppl.step`` targets the temperature-1 model), the weighted particles
    estimate expectations under ``pi`` consistently as ``num_particles``
    grows, and ``exp(log_evidence)`` is an unbiased estimate of the
    normalizing constant ``Z`` for any number of particles. Twists
    (``ppl.twist``) change which particles survive resampling but not the
    target: the final potential is removed when a program returns.

    Round ``t`` draws every live particle's ``t``-th random choice (LM steps
    in one batched call), reweights by ``log p - log q`` plus the factors and
    twist changes up to the next choice, and resamples with ``resample``
    (``multinomial``, ``systematic``, ``stratified``, ``residual``) when
    ``ESS < ess_threshold * num_particles``. Finished particles keep their
    weight and take part in resampling; particles of weight zero stop. If
    every particle reaches weight zero the run returns an empty posterior
    (``is_empty``, ``log_evidence == -inf``) rather than raising.

    Example:
        >>> post = ppl.smc(lipogram, lm, "The", num_particles=16, seed=0)  # doctest: +SKIP
        >>> print(post.summary())                                       # doctest: +SKIP
    """
    if not 0.0 <= ess_threshold <= 1.0:
        raise InvalidArgumentError(f"ess_threshold must be in [0, 1], got {ess_threshold!r}")
    if rejuvenation_steps != 0:
        raise InvalidArgumentError(
            "rejuvenation_steps > 0 (resample-move SMC) needs MCMC moves, which this "
            "version does not provide; use rejuvenation_steps=0"
        )
    return run_population(
        program,
        args,
        kwargs,
        num_particles=num_particles,
        resampler=get_resampler(resample),
        ess_threshold=ess_threshold,
        seed=seed,
        method="smc",
    )
