"""Importance sampling: best-of-N, self-consistency and weighted voting."""

from __future__ import annotations

from collections.abc import Callable

from inference.confidence import ConfidenceStop
from inference.early_stopping import run_with_early_stop
from inference.population import run_population
from ppl.posterior import Posterior


def importance(
    program: Callable,
    *args,
    num_particles: int,
    seed: int | None = None,
    early_stop: ConfidenceStop | None = None,
    **kwargs,
) -> Posterior:
    """Importance sampling with the program's own choices as the proposal.

    What it estimates: ``num_particles`` independent executions, each weighted
    by ``prod p/q`` over its random choices times its factors. The
    self-normalized weights estimate posterior expectations consistently;
    ``exp(log_evidence)`` is an unbiased estimate of ``Z``. The posterior's
    views are the usual inference-time scaling recipes:
    ``answer_distribution()`` is the weighted vote, ``map_answer()`` its mode
    (best-of-N when the weight is a verifier score), and
    ``majority_answer()`` the unweighted self-consistency vote.

    ``early_stop=ConfidenceStop(num_warmup, keep, window)`` stops particles
    whose lowest group confidence falls below a threshold set by the first
    ``num_warmup`` particles (DeepConf); the result then estimates the
    posterior restricted to confident traces (``inference.early_stopping``).

    Example:
        >>> post = ppl.importance(program, lm, "a", num_particles=32, seed=0)
        >>> post.majority_answer() in post.answers
        True
    """
    if early_stop is not None:
        return run_with_early_stop(
            program,
            args,
            kwargs,
            rule=early_stop,
            num_particles=num_particles,
            resampler=None,
            ess_threshold=0.0,
            seed=seed,
            method="importance",
        )
    return run_population(
        program,
        args,
        kwargs,
        num_particles=num_particles,
        resampler=None,
        ess_threshold=0.0,
        seed=seed,
        method="importance",
    )
