"""The ordered draws that sample budgets and stopping rules see in a posterior.

A budget or stopping rule decides after each draw whether to draw another,
so its guarantee needs draws that are exchangeable given the problem:

- ``unit="particle"``: each particle's answer, in order (None for a zero
  weight). The particles of importance sampling are independent draws;
  those of SMC, beam search and MCMC are not (resampling and selection
  couple them, chains are correlated), so they are refused.
- ``unit="run"``: each independent run's MAP answer, in run order, from a
  posterior pooled by ``ppl.run(method, ..., num_runs=K)``. Independent runs
  of any engine are independent draws, which is what makes budgets and
  stopping rules valid for SMC: the unit of exchangeability is a run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ppl.errors import CalibrationError, InvalidArgumentError
from ppl.posterior import Posterior, normalized_weights

UNITS = ("particle", "run")
# Engines whose particles are independent draws ("" for posteriors built by hand).
INDEPENDENT_PARTICLES = ("importance", "")


def check_unit(unit: str) -> str:
    if unit not in UNITS:
        raise InvalidArgumentError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    return unit


def check_max_samples(max_samples: int | None) -> int | None:
    """``None`` (every draw there is) or a positive int.

    Example:
        >>> check_max_samples(8), check_max_samples(None)
        (8, None)
    """
    if max_samples is not None and (
        isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1
    ):
        raise InvalidArgumentError(f"max_samples must be a positive int, got {max_samples!r}")
    return max_samples


def draws(posterior: Posterior, unit: str = "particle") -> list[Any]:
    """The answers a sequential rule sees, in order: per particle, or each run's MAP answer.

    Example:
        >>> draws(ppl.run("smc", add, 4, 5, num_runs=8, num_particles=4, seed=0), "run")
        ['8', '11', '11', '8', '9', '8', '11', '7']
        >>> draws(ppl.importance(add, 4, 5, num_particles=8, seed=0))
        ['7', '7', '11', '8', '9', '8', '8', '8']
    """
    check_unit(unit)
    if unit == "particle":
        if posterior.method not in INDEPENDENT_PARTICLES:
            raise CalibrationError(
                f"the particles of a {posterior.method!r} run are not independent draws; "
                f"use unit='run' on posteriors pooled by ppl.run({posterior.method!r}, ..., "
                "num_runs=K), or importance sampling"
            )
        return [
            a if lw > -math.inf else None
            for a, lw in zip(posterior.answers, posterior.log_weights, strict=True)
        ]
    return [_run_map_answer(posterior, run) for run in range(posterior.num_runs)]


def _run_map_answer(posterior: Posterior, run: int) -> Any:
    """The MAP answer of one run (its own normalised weights), None if every weight is 0."""
    chosen = np.flatnonzero(posterior.run_index == run)
    weights = normalized_weights(posterior.log_weights[chosen])
    mass: dict[Any, float] = {}
    for index, weight in zip(chosen, weights, strict=True):
        if weight > 0:
            answer = posterior.particles[index].answer
            mass[answer] = mass.get(answer, 0.0) + float(weight)
    return max(mass, key=mass.__getitem__) if mass else None


def answer_ids(rows) -> np.ndarray:
    """Answers (hashable, None for none) as ints per row: -1 for None, else first position."""
    ids = []
    for row in rows:
        first: dict[Any, int] = {}
        ids.append([-1 if a is None else first.setdefault(a, j) for j, a in enumerate(row)])
    return np.array(ids, dtype=int).reshape(len(ids), -1)


def first_positions(answers: np.ndarray) -> np.ndarray:
    """Int answer ids (-1 for none) renamed to the position of their first occurrence in the row."""
    first = (answers[:, :, None] == answers[:, None, :]).argmax(axis=2)
    return np.where(answers < 0, -1, first)


def running_counts(answers: np.ndarray) -> np.ndarray:
    """``counts[i, t, k]``: how many of row ``i``'s first ``t + 1`` draws equal draw ``k``."""
    ids = first_positions(answers)
    same = (ids[:, :, None] == np.arange(answers.shape[1])) & (ids[:, :, None] >= 0)
    return np.cumsum(same, axis=1)


def check_draws(answers, acceptable, max_samples: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(problems, draws)`` int answer ids and rightness, cut to ``max_samples``."""
    answers = np.asarray(answers)
    acceptable = np.asarray(acceptable)
    if answers.ndim != 2 or 0 in answers.shape or not np.issubdtype(answers.dtype, np.integer):
        raise InvalidArgumentError("answers must be a non-empty (problems, samples) int array")
    if acceptable.shape != answers.shape or acceptable.dtype != bool:
        raise InvalidArgumentError(f"acceptable must be a bool array of shape {answers.shape}")
    if max_samples is not None and answers.shape[1] < max_samples:
        raise InvalidArgumentError(
            f"answers have {answers.shape[1]} samples per problem; max_samples is {max_samples}"
        )
    size = answers.shape[1] if max_samples is None else max_samples
    return answers[:, :size], acceptable[:, :size]
