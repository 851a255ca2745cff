"""MCMC states of trace moves and their target density (see ``inference.mcmc.kernel``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ppl.errors import (
    InvalidArgumentError,
)
from ppl.handlers import PendingChoice
from ppl.trace import Site, Trace

PROPOSALS = ("regenerate", "rescore")
RANDOM_KINDS = frozenset({"step", "sample"})
_TEMPERED_KINDS = frozenset({"factor", "observe"})
_TARGET_KINDS = frozenset({"step", "sample", "factor", "condition", "observe"})


@dataclass(frozen=True, slots=True)
class State:
    """A trace with the choice it stopped at (None when the program returned).

    ``choices[k]`` is the request the ``k``-th random choice was drawn or kept
    under; ``rescore`` moves need it and ``None`` means unknown.
    """

    trace: Trace
    pending: PendingChoice | None = None
    choices: tuple[PendingChoice, ...] | None = None


def choice_positions(trace: Trace) -> list[int]:
    """Positions of the random choices (``step`` and ``sample`` sites) in ``trace``."""
    return [i for i, site in enumerate(trace.sites) if site.kind in RANDOM_KINDS]


def log_target(state: State, beta: float = 1.0) -> float:
    """``log gamma`` of a state, with factors and observations tempered by ``beta``."""
    total = 0.0
    twist = 0.0
    for site in state.trace.sites:
        if site.kind == "twist":
            if site.log_prob == -math.inf:
                return -math.inf
            twist = site.log_prob
        elif site.kind in _TARGET_KINDS:
            log_prob = site.log_prob
            if log_prob == -math.inf:
                return -math.inf
            total += beta * log_prob if site.kind in _TEMPERED_KINDS else log_prob
    return total + twist if state.pending is not None else total


def log_tempered_terms(trace: Trace) -> float:
    """The sum of factors and observations: the part of the target that ``beta`` scales."""
    return sum(s.log_prob for s in trace.sites if s.kind in _TEMPERED_KINDS)


def log_proposal(site: Site) -> float:
    """``log q`` of a random choice's value, from ``log_weight = log p - log q``."""
    return site.log_prob - site.log_weight


def check_burn_in(burn_in, total: int, total_name: str) -> int:
    if isinstance(burn_in, bool) or not isinstance(burn_in, int | np.integer) or burn_in < 0:
        raise InvalidArgumentError(f"burn_in must be a non-negative integer, got {burn_in!r}")
    if burn_in >= total:
        raise InvalidArgumentError(
            f"burn_in ({burn_in}) must be smaller than {total_name} ({total}); "
            "no sample would be kept"
        )
    return int(burn_in)


def check_proposal(proposal) -> str:
    if proposal not in PROPOSALS:
        raise InvalidArgumentError(f"unknown proposal {proposal!r}; choose one of {PROPOSALS}")
    return proposal
