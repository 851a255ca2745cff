"""Parallel tempering: MH chains on tempered factors, with swaps between temperatures."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from inference.mcmc.chains import chain_posterior, run_chains
from inference.mcmc.mh import start_states
from inference.mcmc.runner import Runner
from inference.mcmc.state import check_burn_in, check_proposal
from inference.population import check_positive_int
from inference.runtime import CostTracker
from ppl.errors import InvalidArgumentError
from ppl.posterior import Posterior
from ppl.trace import Trace


def parallel_tempering(
    program: Callable,
    *args,
    num_steps: int,
    num_chains: int = 4,
    betas: Sequence[float] = (1.0, 0.5, 0.25, 0.125),
    burn_in: int = 0,
    proposal: str = "regenerate",
    init_particles: int = 4,
    initial: Sequence[Trace] | None = None,
    scan_length: int | None = None,
    seed: int | None = None,
    **kwargs,
) -> Posterior:
    """Parallel tempering over the verifier and factor terms; returns the ``beta = 1`` chains.

    What it estimates: each of ``num_chains`` independent ensembles runs one
    MH chain (as in ``ppl.mh``) per inverse temperature ``beta`` in
    ``betas``, targeting ``pi_beta(trace) ∝ prod p(choices) * prod
    factors^beta`` (observations are tempered like factors; conditions and
    ``-inf`` factors stay hard at every ``beta``). After every MH step,
    neighbouring temperatures propose to swap their states (even pairs on even
    steps, odd pairs on odd steps), accepted with probability
    ``min(1, exp((beta_k - beta_k+1) * (F(hot) - F(cold))))``, ``F`` the sum
    of the trace's factors. Hot chains move between modes the factors
    separate, and swaps carry those moves down to ``beta = 1``, whose chain
    has the program's posterior as its stationary distribution.

    Output: the ``beta = 1`` chain of each ensemble, ``num_steps - burn_in``
    equally weighted samples each (``run_index`` = ensemble), no evidence
    (``log_evidence`` is NaN). ``info`` holds the MH ``acceptance_rate`` per
    ensemble and temperature and the ``swap_acceptance_rate`` per pair.

    Example:
        >>> post = ppl.parallel_tempering(program, lm, "a", num_steps=10,
        ...                               betas=(1.0, 0.3), seed=0)
        >>> post.method, all("e" not in answer for answer in post.answers)
        ('parallel_tempering', True)
    """
    num_steps = check_positive_int("num_steps", num_steps)
    num_chains = check_positive_int("num_chains", num_chains)
    burn_in = check_burn_in(burn_in, num_steps, "num_steps")
    proposal = check_proposal(proposal)
    init_particles = check_positive_int("init_particles", init_particles)
    betas = _check_betas(betas)
    seed_sequence = np.random.SeedSequence(seed)
    rng = np.random.default_rng(seed_sequence)
    runner = Runner(program, args, kwargs, CostTracker())
    count = num_chains * len(betas)
    if initial is not None:
        initial = [trace for trace in initial for _ in betas]
        if len(initial) != count:
            raise InvalidArgumentError(f"initial needs one trace per chain ({num_chains})")
    states = start_states(runner, count, init_particles, initial, rng)
    samples, stats = run_chains(
        runner,
        states,
        betas,
        num_steps=num_steps,
        burn_in=burn_in,
        proposal=proposal,
        scan_length=scan_length,
        rng=rng,
    )
    info = {
        "seed": seed_sequence.entropy,
        "num_chains": num_chains,
        "betas": list(betas),
        **stats,
    }
    return chain_posterior(runner, samples, "parallel_tempering", info)


def _check_betas(betas) -> tuple[float, ...]:
    try:
        betas = tuple(float(b) for b in betas)
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(f"betas must be a sequence of numbers, got {betas!r}") from error
    if len(betas) < 2 or betas[0] != 1.0:
        raise InvalidArgumentError(
            f"betas must start at 1.0 and have at least two temperatures, got {betas!r}"
        )
    if any(not 0.0 <= b <= 1.0 for b in betas) or any(
        a <= b for a, b in zip(betas, betas[1:], strict=False)
    ):
        raise InvalidArgumentError(f"betas must decrease strictly within [0, 1], got {betas!r}")
    return betas
