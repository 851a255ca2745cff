"""Metropolis-Hastings chains (optionally tempered, with swaps) and their posterior."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from inference.mcmc.kernel import mh_move
from inference.mcmc.runner import Runner
from inference.mcmc.state import State, choice_positions, log_tempered_terms
from inference.population import check_positive_int
from ppl.posterior import Posterior
from ppl.trace import Trace


def default_scan_length(states: Sequence[State]) -> int:
    """The most random choices in any state: fixed once, from the initial states."""
    return max([1, *(len(choice_positions(s.trace)) for s in states)])


def run_chains(
    runner: Runner,
    states: list[State],
    betas: Sequence[float],
    *,
    num_steps: int,
    burn_in: int,
    proposal: str,
    scan_length: int | None,
    rng: np.random.Generator,
) -> tuple[list[list[Trace]], dict]:
    """Run ``len(states) / len(betas)`` ensembles of tempered chains, one move each per step.

    ``states`` is ensemble-major: ensemble ``c`` holds ``states[c*K : (c+1)*K]``
    at ``betas[0..K-1]``. Step ``s`` moves every state at random choice
    ``s mod scan_length`` (a fixed scan), then proposes swaps between
    neighbouring temperatures ``(k, k+1)`` with ``k = s mod 2, s mod 2 + 2, ...``
    (deterministic even-odd swaps). After ``burn_in`` steps each ensemble's
    ``betas[0]`` state is recorded at every step. ``scan_length=None`` takes
    ``default_scan_length(states)``.

    Returns the recorded traces per ensemble and the run's settings and
    statistics for ``Posterior.info``: ``acceptance_rate`` per ensemble (per
    ensemble and temperature, plus ``swap_acceptance_rate`` per pair, when
    tempered).
    """
    if scan_length is None:
        scan_length = default_scan_length(states)
    scan_length = check_positive_int("scan_length", scan_length)
    num_temperatures = len(betas)
    num_ensembles = len(states) // num_temperatures
    state_betas = [betas[i % num_temperatures] for i in range(len(states))]
    accepts = np.zeros(len(states))
    moves = np.zeros(len(states))
    swap_accepts = np.zeros(max(num_temperatures - 1, 0))
    swap_tries = np.zeros(max(num_temperatures - 1, 0))
    samples: list[list[Trace]] = [[] for _ in range(num_ensembles)]
    for step in range(num_steps):
        states, accepted = mh_move(
            runner, states, step % scan_length, proposal=proposal, rng=rng, betas=state_betas
        )
        for i, ok in enumerate(accepted):
            if ok is not None:
                moves[i] += 1
                accepts[i] += ok
        for c in range(num_ensembles):
            base = c * num_temperatures
            for k in range(step % 2, num_temperatures - 1, 2):
                cold, hot = states[base + k], states[base + k + 1]
                log_ratio = (betas[k] - betas[k + 1]) * (
                    log_tempered_terms(hot.trace) - log_tempered_terms(cold.trace)
                )
                swap_tries[k] += 1
                if math.log(rng.random()) < log_ratio:
                    states[base + k], states[base + k + 1] = hot, cold
                    swap_accepts[k] += 1
        if step >= burn_in:
            for c in range(num_ensembles):
                samples[c].append(states[c * num_temperatures].trace)
    rates = np.divide(accepts, moves, out=np.full(len(states), math.nan), where=moves > 0)
    info = {
        "num_steps": num_steps,
        "burn_in": burn_in,
        "proposal": proposal,
        "scan_length": scan_length,
    }
    if num_temperatures == 1:
        info["acceptance_rate"] = rates.tolist()
    else:
        info["acceptance_rate"] = rates.reshape(num_ensembles, num_temperatures).tolist()
        info["swap_acceptance_rate"] = np.divide(
            swap_accepts, swap_tries, out=np.full(len(swap_tries), math.nan), where=swap_tries > 0
        ).tolist()
    return samples, info


def chain_posterior(
    runner: Runner, samples: Sequence[Sequence[Trace]], method: str, info: dict
) -> Posterior:
    """Chains of equally weighted samples as a posterior: one run per chain, no evidence.

    ``info["draws_in_order"]`` tells exporters (``to_arviz``) that each run's
    particles are a chain's draws in order, to be kept as they are.
    """
    num_chains = len(samples)
    return Posterior(
        [trace for chain in samples for trace in chain],
        np.zeros(sum(len(chain) for chain in samples)),
        run_index=np.repeat(np.arange(num_chains), [len(chain) for chain in samples]),
        log_evidences=np.full(num_chains, math.nan),
        cost=runner.tracker.cost(),
        method=method,
        info={**info, "draws_in_order": True},
    )
