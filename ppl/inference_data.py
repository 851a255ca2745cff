"""ArviZ export of a ``Posterior``: chain = independent run, draw = particle.

Weighted particles are not ArviZ draws, so the ``posterior`` group holds an
equal-weight resample of each run (systematic resampling, then a random
permutation so that copies of one particle are not adjacent, which would
otherwise look like autocorrelation to R-hat and ESS). ``sample_stats`` keeps
the weighted sample itself, in particle order. MCMC chains
(``info["draws_in_order"]``) are already equal-weight draws whose order
carries their autocorrelation, so they are exported as they are.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ppl.answers import answer_label
from ppl.errors import InvalidArgumentError
from ppl.weights import normalized_weights

if TYPE_CHECKING:  # the Posterior calls this module (to_arviz): no import at run time
    from ppl.posterior import Posterior

INDICATOR = "answer_indicator"
# Site kinds whose numeric values are exported (verifier scores are memo or
# factor sites). Conditions are 0 on every posterior draw and twists are
# auxiliary, so neither says anything about the posterior.
NUMERIC_KINDS = ("sample", "memo", "factor", "observe")


def run_members(posterior: Posterior) -> np.ndarray:
    """Particle indices of each run, shape ``(num_runs, particles_per_run)``.

    Raises ``InvalidArgumentError`` unless every run has the same number of particles.
    """
    if posterior.num_particles == 0:
        raise InvalidArgumentError("to_arviz needs a posterior with at least one particle")
    sizes = np.bincount(posterior.run_index, minlength=posterior.num_runs)
    if len(set(sizes.tolist())) != 1:
        raise InvalidArgumentError(
            f"to_arviz needs the same number of particles in every run, got {sizes.tolist()}"
        )
    return np.stack([np.flatnonzero(posterior.run_index == k) for k in range(posterior.num_runs)])


def equal_weight_draws(posterior: Posterior, seed: int = 0) -> np.ndarray:
    """Global particle indices of an equal-weight resample of each run.

    Shape ``(num_runs, particles_per_run)``; a run whose particles all have
    weight zero gets ``-1`` throughout.

    Example:
        >>> equal_weight_draws(ppl.importance(coin, num_particles=8, seed=0)).shape
        (1, 8)
    """
    members = run_members(posterior)
    if posterior.info.get("draws_in_order"):
        return members
    rng = np.random.default_rng(seed)
    draws = np.full(members.shape, -1)
    num_draws = members.shape[1]
    for k, run in enumerate(members):
        weights = normalized_weights(posterior.log_weights[run])
        if weights.sum() == 0:
            continue
        points = (np.arange(num_draws) + rng.random()) / num_draws
        cumulative = np.cumsum(weights)
        cumulative[np.flatnonzero(weights > 0)[-1] :] = 1.0
        chosen = np.searchsorted(cumulative, points, side="right")
        draws[k] = run[rng.permutation(chosen)]
    return draws


def to_inference_data(posterior: Posterior, *, seed: int = 0):
    """ArviZ ``InferenceData`` of a posterior; see ``Posterior.to_arviz``.

    Groups:

    - ``posterior``: ``answer_indicator`` (dims ``chain, draw, answer``; one-hot,
      coordinate ``answer`` holds the answer labels, most probable first) and
      one variable per numeric scalar ``sample``/``memo``/``factor``/``observe``
      site, named after the site (NaN where a particle has no such site). Draws
      are an equal-weight resample of each run, NaN for a run of weight zero.
    - ``sample_stats``: ``log_weight`` and ``tokens`` (generated tokens) per
      particle in particle order, ``resampled_particle`` (which particle slot
      each posterior draw copies), ``ess`` and ``resampled`` per step (dims
      ``chain, step``; NaN/False past a run's last step).
    - ``log_evidence``: ``log_evidence`` per chain (each run's log Z estimate).

    Example:
        >>> idata = to_inference_data(post)
        >>> sorted(idata.groups()), idata.posterior.sizes["chain"], idata.posterior.sizes["draw"]
        (['log_evidence', 'posterior', 'sample_stats'], 1, 8)
    """
    import arviz as az

    members = run_members(posterior)
    draws = equal_weight_draws(posterior, seed)
    return az.InferenceData(
        posterior=_posterior_group(posterior, draws, seed),
        sample_stats=_sample_stats(posterior, members, draws),
        log_evidence=_log_evidence_group(posterior),
    )


def _chain_draw(draws: np.ndarray) -> dict[str, np.ndarray]:
    return {"chain": np.arange(draws.shape[0]), "draw": np.arange(draws.shape[1])}


def _posterior_group(posterior: Posterior, draws: np.ndarray, seed: int):
    """One-hot answers and numeric sites of each equal-weight draw (NaN where none)."""
    import xarray as xr

    valid = draws >= 0
    labels = [answer_label(a) for a in posterior.answer_distribution()]
    column = {label: j for j, label in enumerate(labels)}
    indicators = np.full((*draws.shape, len(labels)), np.nan)
    answers = posterior.answers
    for k, j in zip(*np.nonzero(valid), strict=True):
        indicators[k, j] = 0.0
        indicators[k, j, column[answer_label(answers[draws[k, j]])]] = 1.0
    variables: dict[str, Any] = {INDICATOR: (("chain", "draw", "answer"), indicators)}
    for name, values in _numeric_sites(posterior).items():
        drawn = np.where(valid, values[np.maximum(draws, 0)], np.nan)
        variables[f"site_{name}" if name == INDICATOR else name] = (("chain", "draw"), drawn)
    return xr.Dataset(
        variables,
        coords={**_chain_draw(draws), "answer": np.array(labels, dtype=str)},
        attrs={
            "inference_library": "pplscale",
            "method": posterior.method,
            "draws": "MCMC draws in chain order"
            if posterior.info.get("draws_in_order")
            else f"equal-weight systematic resample of each run (seed {seed})",
        },
    )


def _sample_stats(posterior: Posterior, members: np.ndarray, draws: np.ndarray):
    """Per particle: weight, tokens, the slot each draw copies; per step: ESS, resampling."""
    import xarray as xr

    tokens = np.array(
        [sum(len(s.value.token_ids) for s in t.steps) for t in posterior.particles], dtype=float
    )
    slot = np.full(draws.shape, -1)
    for k in range(draws.shape[0]):
        if (draws[k] >= 0).any():
            slot[k] = np.searchsorted(members[k], draws[k])
    ess, resampled = _per_step(posterior)
    return xr.Dataset(
        {
            "log_weight": (("chain", "draw"), posterior.log_weights[members]),
            "tokens": (("chain", "draw"), tokens[members]),
            "resampled_particle": (("chain", "draw"), slot),
            "ess": (("chain", "step"), ess),
            "resampled": (("chain", "step"), resampled),
        },
        coords={**_chain_draw(draws), "step": np.arange(ess.shape[1])},
        attrs={
            "inference_library": "pplscale",
            **{f"cost_{name}": value for name, value in asdict(posterior.cost).items()},
        },
    )


def _log_evidence_group(posterior: Posterior):
    import xarray as xr

    return xr.Dataset(
        {"log_evidence": (("chain",), posterior.log_evidences)},
        coords={"chain": np.arange(posterior.num_runs)},
        attrs={
            "pooled_log_evidence": posterior.log_evidence,
            "pooled_log_evidence_se": posterior.log_evidence_se,
        },
    )


def resampled_after(posterior: Posterior, run: int) -> list[bool]:
    """Whether the population of ``run`` was resampled after each step (``ess_history`` index).

    ``rounds[t]`` records resampling that happened before round ``t``, and
    ``ess_history[s]`` is the ESS of round ``s + 1``; so resampling after step
    ``s`` is ``rounds[s + 2].resampled``.
    """
    rounds = posterior.rounds[run]
    steps = len(posterior.ess_history[run])
    return [s + 2 < len(rounds) and rounds[s + 2].resampled for s in range(steps)]


def _per_step(posterior: Posterior) -> tuple[np.ndarray, np.ndarray]:
    num_steps = max((len(h) for h in posterior.ess_history), default=0)
    ess = np.full((posterior.num_runs, num_steps), np.nan)
    resampled = np.zeros((posterior.num_runs, num_steps), dtype=bool)
    for k, history in enumerate(posterior.ess_history):
        ess[k, : len(history)] = history
        flags = resampled_after(posterior, k)
        resampled[k, : len(flags)] = flags
    return ess, resampled


def _numeric_sites(posterior: Posterior) -> dict[str, np.ndarray]:
    """Per-particle values of every site that is a numeric scalar wherever it occurs."""
    values: dict[str, np.ndarray] = {}
    mixed: set[str] = set()
    for i, trace in enumerate(posterior.particles):
        for site in trace.sites:
            if site.kind not in NUMERIC_KINDS or site.name in mixed:
                continue
            number = _as_number(site.value)
            if number is None:
                mixed.add(site.name)
                values.pop(site.name, None)
                continue
            if site.name not in values:
                values[site.name] = np.full(posterior.num_particles, np.nan)
            values[site.name][i] = number
    return values


def _as_number(value) -> float | None:
    if isinstance(value, torch.Tensor):
        return float(value.item()) if value.numel() == 1 else None
    if isinstance(value, np.ndarray):
        return float(value.item()) if value.size == 1 else None
    if isinstance(value, numbers.Real):
        return float(value)
    return None
