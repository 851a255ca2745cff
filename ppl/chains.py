"""Convergence diagnostics of MCMC chains on answer indicators.

Chains are the runs of a posterior of equally weighted draws in order (the
MCMC engines' output); the uncertainty report (``ppl.diagnostics``) uses
each answer's ESS for its interval.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ppl.errors import InvalidArgumentError

if TYPE_CHECKING:
    from ppl.posterior import Posterior


def chain_diagnostics(posterior: Posterior) -> dict[Any, dict[str, float]]:
    """Per answer: its probability, Monte Carlo standard error, R-hat and bulk ESS.

    For posteriors of equally weighted chains (``mh``, ``particle_gibbs``,
    ``parallel_tempering``; chain = run, draws in order). The statistics are
    ArviZ's rank-normalized split R-hat, bulk ESS and the MCSE of the mean of
    the answer's indicator. An answer that every draw has has MCSE 0 and
    undefined (NaN) R-hat and ESS; R-hat is inf when every chain stays on one
    value but the chains disagree.

    Example:
        >>> post = ppl.mh(coin, num_steps=500, num_chains=4, seed=0)
        >>> {k: round(v, 3) for k, v in chain_diagnostics(post)[1].items()}
        {'probability': 0.296, 'mcse': 0.01, 'rhat': 1.0, 'ess': 1989.657}
    """
    import arviz as az

    sizes = np.bincount(posterior.run_index, minlength=posterior.num_runs)
    if posterior.num_particles == 0 or len(set(sizes.tolist())) != 1:
        raise InvalidArgumentError("chain_diagnostics needs chains of equal, non-zero length")
    for run in range(posterior.num_runs):
        weights = posterior.log_weights[posterior.run_index == run]
        if not np.all(weights == weights[0]):
            raise InvalidArgumentError(
                "chain_diagnostics needs equally weighted draws within each chain (MCMC output)"
            )
    order = np.argsort(posterior.run_index, kind="stable")
    all_answers = posterior.answers
    answers = [all_answers[i] for i in order]
    result = {}
    for answer in dict.fromkeys(answers):
        draws = np.array([a == answer for a in answers], dtype=float)
        draws = draws.reshape(posterior.num_runs, int(sizes[0]))
        probability = float(draws.mean())
        if probability in (0.0, 1.0):
            stats = {"mcse": 0.0, "rhat": math.nan, "ess": math.nan}
        else:
            # Chains each stuck on one value have no within-chain variance: R-hat is inf.
            with np.errstate(divide="ignore", invalid="ignore"):
                stats = {
                    "mcse": float(az.mcse(draws)),
                    "rhat": float(az.rhat(draws)),
                    "ess": float(az.ess(draws)),
                }
        result[answer] = {"probability": probability, **stats}
    return result
