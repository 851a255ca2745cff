"""Learn-then-Test: choose a parameter so that a risk is controlled with high probability.

Each candidate parameter ``lambda_j`` gives a null hypothesis ``H_j: risk(lambda_j) >
target``. A binomial-tail p-value tests it from the number of losses seen in
calibration; a family-wise error controlling procedure rejects a set of nulls
so that, with probability at least ``1 - delta`` over the calibration draw,
no true null is rejected. Every rejected parameter then has risk at most
``target``, so the least conservative rejected one is returned.

Candidates are ordered from most to least conservative. The procedures:

- ``"pareto"`` (Pareto testing, split then fixed sequence): a random
  ``split`` of the calibration problems only orders the candidates, by their
  p-values on it (most promising first); fixed-sequence testing at level
  ``delta`` then walks that order on the other problems. The order is
  independent of the p-values it is tested with, so the walk is valid, and
  it starts where the risk is both low and well measured instead of at the
  most conservative candidate, which may concern no problem at all.
- ``"split-start"``: the split picks only a start point (the candidate of
  smallest p-value on it); fixed-sequence testing walks from there towards
  less conservative candidates on the other problems.
- ``"fallback"``: the fallback procedure over the conservative-first order.
  Candidate ``j`` is tested at ``delta / m`` plus the level of candidate
  ``j - 1`` when that one was rejected, so a failure costs ``delta / m``
  instead of ending the walk. Uses every problem for testing.
- ``"fixed-sequence"``: the conservative-first walk at level ``delta``, which
  stops at the first null it cannot reject; with ``starts > 1``, that many
  walks from evenly spaced start points, each at ``delta / starts``.
- ``"bonferroni"``: every candidate at ``delta / m``; needs no order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from ppl.errors import InvalidArgumentError

PROCEDURES = ("pareto", "split-start", "fallback", "fixed-sequence", "bonferroni")
SPLIT_PROCEDURES = ("pareto", "split-start")


@dataclass(frozen=True)
class Certified:
    """What Learn-then-Test certified: the chosen candidate (-1: none) and its evidence.

    ``pvalues`` are those of the problems used for testing (all of them, or
    the part not used to order the candidates); ``order`` is the order in
    which fixed-sequence testing walked the candidates.
    """

    index: int
    pvalues: np.ndarray
    order: np.ndarray
    num_testing: int


def binomial_pvalues(losses, trials, target: float, uniform: float | None = None) -> np.ndarray:
    """``P(Binomial(trials, target) <= losses)``: a valid p-value for ``risk > target``.

    When each of ``trials`` calibration outcomes is a loss independently with
    probability ``risk > target``, the count of losses is stochastically
    larger than ``Binomial(trials, target)``, so this p-value is
    super-uniform. With no trials it is 1 (nothing can be rejected).

    With ``uniform`` (a ``U(0, 1)`` draw independent of the losses), the
    randomized p-value ``P(B < losses) + uniform * P(B = losses)``: exactly
    uniform at ``risk == target`` instead of conservative, since a count can
    only take whole values, and never larger than the plain one.

    Example:
        >>> round(float(binomial_pvalues(0, 30, 0.1)), 6)  # 0.9 ** 30
        0.042391
        >>> round(float(binomial_pvalues(0, 30, 0.1, uniform=0.5)), 6)
        0.021196
    """
    losses = np.asarray(losses)
    trials = np.asarray(trials)
    some = np.maximum(trials, 1)
    with np.errstate(invalid="ignore"):
        if uniform is None:
            p = stats.binom.cdf(losses, some, target)
        else:
            below = stats.binom.cdf(losses - 1, some, target)
            p = below + uniform * stats.binom.pmf(losses, some, target)
    return np.where(trials > 0, p, 1.0)


def learn_then_test(
    losses,
    counted,
    target: float,
    delta: float,
    procedure: str = "pareto",
    *,
    starts: int = 1,
    split: float = 0.3,
    seed: int = 0,
    randomized: bool = False,
) -> Certified:
    """Certify the least conservative candidate whose risk is at most ``target``.

    ``losses[i, j]`` says whether problem ``i`` is a loss under candidate
    ``j`` and ``counted[i, j]`` whether it counts towards candidate ``j``'s
    risk at all (abstention: whether it is answered; ``None``: every problem
    counts). Candidates are ordered from most to least conservative.
    ``split`` is the fraction of problems that orders the candidates for the
    split procedures; ``seed`` draws that split and, with ``randomized``, the
    one uniform draw shared by every candidate's randomized p-value (see
    ``binomial_pvalues``). Randomized p-values use the whole error budget
    ``delta`` instead of the part a whole-number count leaves, and are
    valid with any procedure, since fixed-sequence, fallback and Bonferroni
    testing only need each p-value to be valid on its own.

    Example:
        >>> losses = np.zeros((200, 3), dtype=bool)
        >>> counted = np.ones((200, 3), dtype=bool)
        >>> counted[:, 0] = False                  # nobody reaches the strictest candidate
        >>> losses[:40, 2] = True                  # the last one errs on 20%
        >>> learn_then_test(losses, counted, 0.1, 0.1, "fixed-sequence").index
        -1
        >>> learn_then_test(losses, counted, 0.1, 0.1, "pareto").index
        1
    """
    losses = np.asarray(losses, dtype=bool)
    counted = np.ones(losses.shape, dtype=bool) if counted is None else np.asarray(counted, bool)
    check_procedure(procedure)
    rng = np.random.default_rng(seed)
    if procedure not in SPLIT_PROCEDURES:
        pvalues = _pvalues(losses, counted, target, rng.random() if randomized else None)
        index = int(select(pvalues, delta, procedure, starts=starts))
        return Certified(index, pvalues, np.arange(losses.shape[1]), len(losses))
    check_split(split, len(losses))
    order = rng.permutation(len(losses))
    cut = min(max(round(split * len(losses)), 1), len(losses) - 1)
    ordering, testing = order[:cut], order[cut:]
    ordering_p = _pvalues(losses[ordering], counted[ordering], target)
    uniform = rng.random() if randomized else None
    pvalues = _pvalues(losses[testing], counted[testing], target, uniform)
    walk = _walk_order(ordering_p, procedure)
    passed = np.cumprod(pvalues[walk] <= delta).astype(bool)
    index = int(walk[passed].max()) if passed.any() else -1
    return Certified(index, pvalues, walk, len(testing))


def _walk_order(ordering_p: np.ndarray, procedure: str) -> np.ndarray:
    """The candidates in testing order, from p-values on the ordering split."""
    size = len(ordering_p)
    if procedure == "pareto":
        # Smallest p-value first; ties go to the more conservative candidate.
        return np.lexsort((np.arange(size), ordering_p))
    return np.arange(int(np.argmin(ordering_p)), size)


def _pvalues(
    losses: np.ndarray, counted: np.ndarray, target: float, uniform: float | None = None
) -> np.ndarray:
    return binomial_pvalues((losses & counted).sum(axis=0), counted.sum(axis=0), target, uniform)


def select(
    pvalues, delta: float, procedure: str = "fixed-sequence", *, starts: int = 1
) -> np.ndarray:
    """Index of the least conservative rejected candidate along the last axis, -1 if none.

    For the procedures that need no split (``"fixed-sequence"``,
    ``"fallback"``, ``"bonferroni"``). ``pvalues[..., j]`` belongs to
    candidate ``j``, candidates ordered from most to least conservative.
    ``starts > 1`` runs fixed-sequence testing from that many evenly spaced
    start points, each at level ``delta / starts``, and pools what they
    reject.

    Example:
        >>> select([0.01, 0.02, 0.5, 0.01], delta=0.05).item()
        1
        >>> select([0.01, 0.02, 0.5, 0.01], delta=0.05, procedure="bonferroni").item()
        3
        >>> select([0.5, 0.01, 0.01, 0.5], delta=0.05, starts=2).item()
        2
        >>> select([0.5, 0.01, 0.02, 0.5], delta=0.08, procedure="fallback").item()
        2
    """
    pvalues = np.asarray(pvalues, dtype=float)
    check_procedure(procedure)
    if procedure in SPLIT_PROCEDURES:
        raise InvalidArgumentError(f"{procedure} needs the losses: call learn_then_test")
    size = pvalues.shape[-1]
    if isinstance(starts, bool) or not isinstance(starts, int) or not 1 <= starts <= size:
        raise InvalidArgumentError(f"starts must be an int from 1 to {size}, got {starts!r}")
    if procedure == "bonferroni":
        rejected = pvalues <= delta / size
    elif procedure == "fallback":
        rejected = _fallback(pvalues, delta)
    else:
        rejected = np.zeros(pvalues.shape, dtype=bool)
        for start in np.linspace(0, size, starts, endpoint=False).astype(int):
            walk = np.cumprod(pvalues[..., start:] <= delta / starts, axis=-1).astype(bool)
            rejected[..., start:] |= walk
    last = size - 1 - np.argmax(rejected[..., ::-1], axis=-1)
    return np.where(rejected.any(axis=-1), last, -1)


def _fallback(pvalues: np.ndarray, delta: float) -> np.ndarray:
    """Rejections of the fallback procedure with equal weights ``1 / m``."""
    size = pvalues.shape[-1]
    rejected = np.zeros(pvalues.shape, dtype=bool)
    level = np.zeros(pvalues.shape[:-1])
    carried = np.zeros(pvalues.shape[:-1], dtype=bool)
    for j in range(size):
        # A rejected candidate passes its level on; a failed one only loses delta / m.
        level = delta / size + np.where(carried, level, 0.0)
        rejected[..., j] = carried = pvalues[..., j] <= level
    return rejected


def procedure_text(
    procedure: str, starts: int, num_calibration: int, num_testing: int, randomized: bool
) -> str:
    """The test and procedure in words, for guarantees."""
    tail = "randomized binomial tail" if randomized else "binomial tail"
    return f"{tail}, {_walk_text(procedure, starts, num_calibration, num_testing)}"


def _walk_text(procedure: str, starts: int, num_calibration: int, num_testing: int) -> str:
    if procedure == "pareto":
        return (
            f"Pareto testing: candidates ordered on {num_calibration - num_testing} problems, "
            f"fixed-sequence on the other {num_testing}"
        )
    if procedure == "split-start":
        return (
            f"fixed-sequence on {num_testing} problems from a start point chosen on the other "
            f"{num_calibration - num_testing}"
        )
    if procedure == "fixed-sequence" and starts > 1:
        return f"fixed-sequence from {starts} start points"
    return procedure


def check_procedure(procedure: str) -> None:
    if procedure not in PROCEDURES:
        raise InvalidArgumentError(
            f"procedure must be one of {', '.join(PROCEDURES)}, got {procedure!r}"
        )


def check_split(split: float, num_problems: int) -> None:
    if isinstance(split, bool) or not isinstance(split, int | float) or not 0 < split < 1:
        raise InvalidArgumentError(
            f"split must be a fraction strictly between 0 and 1, got {split!r}"
        )
    if num_problems < 2:
        raise InvalidArgumentError("a split procedure needs at least 2 calibration problems")


def check_level(name: str, value: float) -> float:
    """``value`` as a float in (0, 1), else ``InvalidArgumentError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise InvalidArgumentError(
            f"{name} must be a number strictly between 0 and 1, got {value!r}"
        )
    return float(value)
