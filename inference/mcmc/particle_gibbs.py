"""Particle Gibbs: conditional SMC sweeps with a pinned reference trace."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from inference.mcmc.chains import chain_posterior
from inference.mcmc.mh import start_states
from inference.mcmc.runner import Runner
from inference.mcmc.state import State, check_burn_in, choice_positions, log_target
from inference.mcmc.walk import Walk, run_walks
from inference.population import check_positive_int
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

    Chains run in lock-step: every round of every chain's sweep shares one
    batched call per model. Output: one trace per iteration after
    ``burn_in``, per chain, equally weighted (``run_index`` = chain), no
    evidence (``log_evidence`` is NaN). ``info["update_rate"][k]`` is the
    fraction of iterations in which the ``k``-th random choice changed; rates
    near 0 for early choices mean the sweeps degenerate and need more
    particles or ancestor sampling.

    Example:
        >>> post = ppl.particle_gibbs(solve, lm, question, num_particles=8,  # doctest: +SKIP
        ...                           num_iterations=50, burn_in=10, seed=0)
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
    rng = np.random.default_rng(seed_sequence)
    runner = Runner(program, args, kwargs)

    references: list[State | None] = [None] * num_chains
    if initial is not None:
        references = start_states(runner, num_chains, 1, initial, rng)
    for _ in range(_START_ATTEMPTS):
        missing = [c for c in range(num_chains) if references[c] is None]
        if not missing:
            break
        sweeps = conditional_smc(runner, [None] * len(missing), num_particles, False, rng)
        for c, sweep in zip(missing, sweeps, strict=True):
            references[c] = _select(sweep, rng)
    else:
        raise EmptyPosteriorError(
            f"every particle of {_START_ATTEMPTS} unconditional SMC sweeps of "
            f"{runner.prog.name!r} had weight zero; loosen the constraints or raise num_particles"
        )

    samples: list[list[Trace]] = [[] for _ in range(num_chains)]
    changes: list[float] = []
    for iteration in range(num_iterations):
        if iteration > 0:
            sweeps = conditional_smc(runner, references, num_particles, ancestor_sampling, rng)
            new = [_select(sweep, rng) for sweep in sweeps]
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


def conditional_smc(
    runner: Runner,
    references: list[State | None],
    num_particles: int,
    ancestor_sampling: bool,
    rng: np.random.Generator,
) -> list[tuple[list[State], np.ndarray]]:
    """One SMC sweep per reference (None: unconditional), all in lock-step.

    Returns each sweep's final states and log weights.
    """
    n = num_particles
    start = runner.execute(Trace())
    total = len(references) * n
    traces = [start.trace] * total
    pending = [start.pending] * total
    choices: list[tuple] = [()] * total
    log_weights = np.full(total, start.log_weight)
    references = list(references)
    positions = [None if r is None else choice_positions(r.trace) for r in references]

    def pinned(i: int) -> bool:
        return i % n == 0 and references[i // n] is not None

    while True:
        live = [i for i in range(total) if pending[i] is not None and log_weights[i] > -math.inf]
        if not live:
            break
        free = [i for i in live if not pinned(i)]
        sites = dict(zip(free, runner.draw([pending[i] for i in free], rng), strict=True))
        for i in live:
            if pinned(i):
                reference = references[i // n]
                sites[i] = reference.trace.sites[positions[i // n][len(choices[i])]]
            site = sites[i]
            log_weights[i] += site.log_weight
            choices[i] = (*choices[i], pending[i])
            if log_weights[i] > -math.inf:
                execution = runner.execute(traces[i].extend(site))
                traces[i], pending[i] = execution.trace, execution.pending
                log_weights[i] += execution.log_weight
            else:
                traces[i], pending[i] = traces[i].extend(site), None
        for b, reference in enumerate(references):
            block = range(b * n, (b + 1) * n)
            block_weights = log_weights[b * n : (b + 1) * n]
            running = any(pending[i] is not None and log_weights[i] > -math.inf for i in block)
            if not running or not np.isfinite(block_weights).any():
                continue
            probabilities = _probabilities(block_weights)
            if reference is None:
                ancestors = rng.choice(n, size=n, p=probabilities)
            else:
                ancestors = np.concatenate([[0], rng.choice(n, size=n - 1, p=probabilities)])
                if ancestor_sampling:
                    ancestor, spliced = _sample_ancestor(
                        runner, reference, b * n, n, traces, pending, choices, log_weights, rng
                    )
                    ancestors[0] = ancestor
                    references[b] = spliced
                    positions[b] = choice_positions(spliced.trace)
            sources = [b * n + int(a) for a in ancestors]
            for i, source in zip(block, [traces[s] for s in sources], strict=True):
                traces[i] = source
            for i, source in zip(block, [pending[s] for s in sources], strict=True):
                pending[i] = source
            for i, source in zip(block, [choices[s] for s in sources], strict=True):
                choices[i] = source
            log_weights[b * n : (b + 1) * n] = _log_mean_exp(block_weights)
    return [
        (
            [State(traces[i], pending[i], choices[i]) for i in range(b * n, (b + 1) * n)],
            log_weights[b * n : (b + 1) * n].copy(),
        )
        for b in range(len(references))
    ]


def _sample_ancestor(runner, reference, base, n, traces, pending, choices, log_weights, rng):
    """Draw the reference's ancestor; return it and the reference spliced onto it."""
    made = len(choices[base])
    sites = reference.trace.sites
    rest = [
        (sites[p], reference.choices[k])
        for k, p in enumerate(choice_positions(reference.trace))
        if k >= made
    ]
    candidates = [i for i in range(base, base + n) if log_weights[i] > -math.inf]
    walks = [
        Walk(traces[i], pending[i], list(choices[i]), len(choices[i]), supply=rest)
        for i in candidates
    ]
    run_walks(runner, walks, rng)
    log_as = np.full(n, -math.inf)
    for i, walk in zip(candidates, walks, strict=True):
        complete = not walk.invalid and walk.pending is None and len(walk.sites) == len(rest)
        if complete and not walk.dead:
            here = log_target(State(traces[i], pending[i]))
            log_as[i - base] = log_weights[i] + log_target(walk.state) - here
    if not np.isfinite(log_as).any():
        raise InvalidArgumentError(
            "ancestor sampling found no particle that can continue the reference trace, "
            "not even the reference itself; the program is not deterministic given its choices"
        )
    ancestor = int(rng.choice(n, p=_probabilities(log_as)))
    return ancestor, walks[candidates.index(base + ancestor)].state


def _select(sweep: tuple[list[State], np.ndarray], rng: np.random.Generator) -> State | None:
    states, log_weights = sweep
    if not np.isfinite(log_weights).any():
        return None
    return states[int(rng.choice(len(states), p=_probabilities(log_weights)))]


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


def _log_mean_exp(log_weights: np.ndarray) -> float:
    top = np.max(log_weights)
    return float(top + np.log(np.mean(np.exp(log_weights - top))))


def _probabilities(log_weights: np.ndarray) -> np.ndarray:
    """Normalized weights of a block with at least one finite log weight."""
    weights = np.exp(log_weights - np.max(log_weights))
    return weights / weights.sum()
