"""Particle Gibbs: conditional SMC sweeps with a pinned reference trace."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from inference.mcmc.chains import chain_posterior
from inference.mcmc.conditional import conditional_smc
from inference.mcmc.runner import Runner
from inference.mcmc.start import given_states
from inference.mcmc.state import State, check_burn_in, choice_positions
from inference.population import check_positive_int
from inference.runtime import CostTracker
from ppl.errors import EmptyPosteriorError, InvalidArgumentError
from ppl.posterior import Posterior
from ppl.trace import Trace

_START_ATTEMPTS = 20


def particle_gibbs(
    program: Callable,
    *args,
    num_particles: int,
    num_iterations: int,
    num_chains: int = 4,
    burn_in: int = 0,
    ancestor_sampling: bool = False,
    initial: Sequence[Trace] | None = None,
    seed: int | None = None,
    **kwargs,
) -> Posterior:
    """Particle Gibbs: each iteration is an SMC sweep conditioned on the current trace.

    What it estimates: each chain is a Markov chain whose stationary
    distribution is the program's posterior over complete traces (the target
    of ``ppl.smc``; twists guide the sweeps and are not part of it). An
    iteration runs conditional SMC with ``num_particles`` particles: slot 0
    follows the chain's current (reference) trace choice by choice while the
    other slots draw from the program's proposal; every round reweights all
    slots and resamples the free slots by multinomial draws from all weights.
    The next trace is drawn from the final particles by weight. The first
    iteration is an unconditional SMC sweep, or with ``initial`` (one complete
    trace per chain, from runs of the same program) those traces.

    With ``ancestor_sampling=True`` the reference also picks a new ancestor
    each round, slot ``i`` with probability ``∝ w_i * gamma(x_i + rest of the
    reference) / gamma(x_i)``: the rest of the reference is re-scored after
    every particle's prefix (one batched ``score_steps`` call per round), which
    lets early choices change even when the sweep's particles coalesce. It
    needs ``ppl.step`` sites drawn from their own target (no
    ``proposal_temperature``, no logits processor).

    The chains' sweeps run together on the particle runtime (slot 0 pinned,
    see ``inference.mcmc.conditional``): the free slots' LM steps join each
    backend's running batch as soon as they are ready. Output: one trace per iteration after
    ``burn_in``, per chain, equally weighted (``run_index`` = chain), no
    evidence (``log_evidence`` is NaN). ``info["update_rate"][k]`` is the
    fraction of iterations in which the ``k``-th random choice changed; rates
    near 0 for early choices mean the sweeps degenerate and need more
    particles or ancestor sampling.

    Example:
        >>> post = ppl.particle_gibbs(program, lm, "a", num_particles=4,
        ...                           num_iterations=6, burn_in=2, seed=0)
        >>> post.method, all("e" not in answer for answer in post.answers)
        ('particle_gibbs', True)
    """
    num_particles = check_positive_int("num_particles", num_particles)
    if num_particles < 2:
        raise InvalidArgumentError(
            "particle Gibbs needs num_particles >= 2: with one particle the reference never moves"
        )
    num_iterations = check_positive_int("num_iterations", num_iterations)
    num_chains = check_positive_int("num_chains", num_chains)
    burn_in = check_burn_in(burn_in, num_iterations, "num_iterations")
    seed_sequence = np.random.SeedSequence(seed)
    entropy = seed_sequence.entropy
    runner = Runner(program, args, kwargs, CostTracker())

    references: list[State | None] = [None] * num_chains
    if initial is not None:
        references = given_states(runner, initial, num_chains)
    for attempt in range(_START_ATTEMPTS):
        missing = [c for c in range(num_chains) if references[c] is None]
        if not missing:
            break
        starts = conditional_smc(
            runner, [None] * len(missing), num_particles, False, entropy, (0, attempt)
        )
        for c, state in zip(missing, starts, strict=True):
            references[c] = state
    else:
        raise EmptyPosteriorError(
            f"every particle of {_START_ATTEMPTS} unconditional SMC sweeps of "
            f"{runner.prog.name!r} had weight zero; loosen the constraints or raise num_particles"
        )

    samples: list[list[Trace]] = [[] for _ in range(num_chains)]
    changes: list[float] = []
    for iteration in range(num_iterations):
        if iteration > 0:
            new = conditional_smc(
                runner, references, num_particles, ancestor_sampling, entropy, (1, iteration)
            )
            for old, state in zip(references, new, strict=True):
                _count_changes(changes, old.trace, state.trace)
            references = new
        if iteration >= burn_in:
            for c in range(num_chains):
                samples[c].append(references[c].trace)
    updates = max(num_iterations - 1, 1) * num_chains
    info = {
        "seed": seed_sequence.entropy,
        "num_chains": num_chains,
        "num_particles": num_particles,
        "num_iterations": num_iterations,
        "burn_in": burn_in,
        "ancestor_sampling": bool(ancestor_sampling),
        "update_rate": [count / updates for count in changes],
    }
    return chain_posterior(runner, samples, "particle_gibbs", info)


def _count_changes(changes: list[float], old: Trace, new: Trace) -> None:
    old_sites = [old.sites[p] for p in choice_positions(old)]
    new_sites = [new.sites[p] for p in choice_positions(new)]
    for k in range(max(len(old_sites), len(new_sites))):
        if k >= len(changes):
            changes.append(0.0)
        same = (
            k < len(old_sites)
            and k < len(new_sites)
            and old_sites[k].name == new_sites[k].name
            and _same_value(old_sites[k].value, new_sites[k].value)
        )
        changes[k] += not same


def _same_value(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and bool(torch.equal(a, b))
        )
    return a == b
