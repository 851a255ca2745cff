"""Single-site trace Metropolis-Hastings over reasoning programs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from inference.mcmc.chains import chain_posterior, run_chains
from inference.mcmc.runner import Runner
from inference.mcmc.start import given_states, initial_states
from inference.mcmc.state import check_burn_in, check_proposal
from inference.population import check_positive_int
from inference.runtime import CostTracker
from ppl.posterior import Posterior
from ppl.trace import Trace


def mh(
    program: Callable,
    *args,
    num_steps: int,
    num_chains: int = 4,
    burn_in: int = 0,
    proposal: str = "regenerate",
    init_particles: int = 4,
    initial: Sequence[Trace] | None = None,
    scan_length: int | None = None,
    seed: int | None = None,
    **kwargs,
) -> Posterior:
    """Trace Metropolis-Hastings: regenerate one random choice per step, in a fixed scan.

    What it estimates: each chain is a Markov chain whose stationary
    distribution is the program's posterior over complete traces,
    ``pi(trace) ∝ prod p(choices) * prod factors`` (``ppl.step`` under its
    sampler; twists guide SMC only and are not part of ``pi``).
    After ``burn_in`` steps, the averages of its samples converge to
    expectations under ``pi``; the chains' spread gives R-hat and effective
    sample sizes (``posterior.to_arviz()``: chain = chain, draw = step).

    Step ``s`` of every chain revisits random choice ``s mod scan_length`` of
    its trace (choices in visit order; ``scan_length`` defaults to the most
    choices in any initial trace) and proposes a new value for it from the
    program's own proposal:

    - ``proposal="regenerate"`` re-draws every later choice too, and accepts
      with probability ``min(1, w(new suffix) / w(old suffix))``, ``w`` the
      importance weight (``p / q`` times the factors) of the re-run part.
    - ``proposal="rescore"`` keeps each later choice the program makes again
      (same site name and kind; for ``ppl.step``, the same model, stop strings
      and ``max_tokens`` with the model itself as proposal), re-scores the kept
      steps under the new prefix in one batched ``score_steps`` call, and
      draws the rest. The acceptance ratio includes the factors, conditions
      and the proposal densities of the discarded and fresh choices.

    A chain with no such choice (a shorter trace) stays put for that step.
    Chains move together on the particle runtime: a chain's fresh LM steps
    join the backend's running batch as soon as it is ready, each from its
    own random stream, and kept steps of all chains are re-scored in one
    batched call per model. Chains start from a trace picked by weight
    among ``init_particles`` runs of the program (or from ``initial``, one
    complete trace per chain).

    Output: ``num_steps - burn_in`` equally weighted samples per chain
    (``log_weights`` are 0, ``run_index`` is the chain). MCMC does not
    estimate the evidence: ``log_evidence`` is NaN. ``info`` holds each
    chain's ``acceptance_rate``.

    Example:
        >>> post = ppl.mh(program, lm, "a", num_steps=20, burn_in=5, num_chains=2, seed=0)
        >>> post.num_particles, all("e" not in answer for answer in post.answers)
        (30, True)
    """
    num_steps = check_positive_int("num_steps", num_steps)
    num_chains = check_positive_int("num_chains", num_chains)
    burn_in = check_burn_in(burn_in, num_steps, "num_steps")
    proposal = check_proposal(proposal)
    init_particles = check_positive_int("init_particles", init_particles)
    seed_sequence = np.random.SeedSequence(seed)
    rng = np.random.default_rng(seed_sequence)
    runner = Runner(program, args, kwargs, CostTracker())
    states = start_states(runner, num_chains, init_particles, initial, rng)
    samples, stats = run_chains(
        runner,
        states,
        (1.0,),
        num_steps=num_steps,
        burn_in=burn_in,
        proposal=proposal,
        scan_length=scan_length,
        rng=rng,
    )
    info = {"seed": seed_sequence.entropy, "num_chains": num_chains, **stats}
    return chain_posterior(runner, samples, "mh", info)


def start_states(runner, count: int, init_particles: int, initial, rng):
    """Initial states: the given traces, or one picked by weight among forward runs."""
    if initial is None:
        return initial_states(runner, count, init_particles, rng)
    return given_states(runner, initial, count)
