"""Advancing particles: re-execute a program under replay, stop at the next choice.

A particle is its trace. ``execute`` runs the program from the start,
replaying the recorded sites, scoring new deterministic ones, and stopping at
the first unrecorded random choice. ``resolve_choices`` draws the pending
choices of many particles at once: one batched backend call per LM serves every
pending ``step`` site. Replayed sites never reach a backend, and recorded
``memo`` results are never recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ppl.errors import BackendError, MissingAnswerError, ReplayDivergenceError
from ppl.handlers import EscapeMessenger, PendingChoice, RecordMessenger, ReplayMessenger, Suspend
from ppl.handlers.replay_messenger import _FAST_REPLAYS
from ppl.primitives import Program, program
from ppl.slots import mix64
from ppl.trace import Site, Trace
from ppl.values import Step


@dataclass(frozen=True, slots=True)
class Execution:
    """Outcome of one re-execution.

    ``pending`` is the next random choice, or None when the program returned.
    ``log_weight`` is what the new sites added (when the program returned, it
    also removes the last twist potential, so finished weights target the
    untwisted posterior).
    """

    trace: Trace
    pending: PendingChoice | None
    log_weight: float
    memo_calls: int


def as_program(fn: Callable) -> Program:
    return fn if isinstance(fn, Program) else program(fn)


def execute(
    prog: Program, args: tuple, kwargs: dict, trace: Trace, *, batch_calls: bool = False
) -> Execution:
    """Run ``prog`` from the start, replaying ``trace``, until its next random choice.

    With ``batch_calls``, a new ``ppl.memo`` call that has a ``batch``
    function also stops the run (a pending choice of kind ``"call"``, which
    ``resolve_calls`` computes).

    Example:
        >>> ex = execute(coin, (), {}, Trace())
        >>> ex.pending.name, ex.pending.kind
        ('flip', 'sample')
    """
    record = RecordMessenger()
    replay = ReplayMessenger(trace)
    pending = None
    _FAST_REPLAYS.append((replay, record))
    try:
        with record, EscapeMessenger(batch_calls), replay:
            prog.fn(*args, **kwargs)
    except Suspend as suspend:
        pending = suspend.choice
    finally:
        _FAST_REPLAYS.pop()
    # Every replayed site has now been checked against the program's requests.
    new_trace = Trace(tuple(record.sites), min(replay.position, len(trace.sites)))
    log_weight = record.log_weight
    if pending is None:
        if replay.position < len(trace.sites):
            missed = trace.sites[replay.position]
            raise ReplayDivergenceError(
                f"program {prog.name!r} returned before reaching recorded site "
                f"{missed.name!r}; it must take the same path for the same random choices"
            )
        if not new_trace.has_answer:
            last = f" (last site: {new_trace.sites[-1].name!r})" if new_trace.sites else ""
            raise MissingAnswerError(
                f"program {prog.name!r} returned without calling ppl.answer(...){last}"
            )
        # Remove the final potential; a -inf potential keeps the particle dead.
        log_twist = record.log_twist
        log_weight = -math.inf if log_twist == -math.inf else log_weight - log_twist
    return Execution(new_trace, pending, log_weight, record.memo_calls)


def resolve_choices(pending: Sequence[PendingChoice], rng: np.random.Generator) -> list[Site]:
    """Draw every pending choice; ``step`` sites of one LM share one batched call.

    Example:
        >>> pending = [execute(program, (lm, "a"), {}, Trace()).pending] * 3
        >>> sites = resolve_choices(pending, np.random.default_rng(0))
        >>> [site.name for site in sites]
        ['letter_0', 'letter_0', 'letter_0']
    """
    sites: list[Site | None] = [None] * len(pending)
    by_lm: dict[int, tuple[object, list[int]]] = {}
    for i, choice in enumerate(pending):
        if choice.kind == "step":
            by_lm.setdefault(id(choice.fn.lm), (choice.fn.lm, []))[1].append(i)
        else:
            sites[i] = draw_sample_site(choice, int(rng.integers(2**63)))
    for lm, indices in by_lm.values():
        requests = [pending[i].fn.request for i in indices]
        results = lm.sample_steps(requests, seed=int(rng.integers(2**63)))
        if len(results) != len(requests):
            raise BackendError(
                f"{type(lm).__name__}.sample_steps returned {len(results)} results "
                f"for {len(requests)} requests"
            )
        for i, result in zip(indices, results, strict=True):
            sites[i] = step_site(pending[i], result, lm)
    return sites


def step_site(choice: PendingChoice, result, lm) -> Site:
    """The ``step`` site of a drawn step; checks the backend's log-probabilities.

    Example (``program``'s first step, drawn by ``lm`` directly):
        >>> pending = execute(program, (lm, "a"), {}, Trace()).pending
        >>> (result,) = lm.sample_steps([pending.fn.request], seed=0)
        >>> site = step_site(pending, result, lm)
        >>> site.name, site.kind, round(site.log_prob, 2), site.log_weight
        ('letter_0', 'step', -0.52, 0.0)
    """
    if math.isnan(result.logp) or not math.isfinite(result.logq):
        raise BackendError(
            f"{type(lm).__name__} returned logp={result.logp}, logq={result.logq} at "
            f"site {choice.name!r}; log q of a drawn step must be finite"
        )
    value = Step.from_result(result)
    return Site(
        choice.name,
        "step",
        value,
        log_prob=result.logp,
        log_weight=result.logp - result.logq,
        fingerprint=hash(choice.fn.request),
    )


def stream_seed(entropy: int, key: tuple[int, ...]) -> int:
    """The 63-bit seed of the random stream ``key`` (e.g. lineage and step) of a run.

    SplitMix64 folded over the key's length, the entropy's 64-bit words and
    the key's parts: a few integer operations per draw. ``key`` must not be
    empty.

    Example:
        >>> stream_seed(7, (0, 3)) == stream_seed(7, (0, 3)) != stream_seed(7, (1, 3))
        True
    """
    return seed_after(stream_prefix(entropy, key[:-1]), key[-1])


def stream_prefix(entropy: int, prefix: tuple[int, ...]) -> int:
    """``stream_seed``'s state for the keys ``(*prefix, last)``, before ``last`` is folded in.

    Streams that share a prefix, such as one particle's draws, fold it once.

    Example:
        >>> seed_after(stream_prefix(7, (0,)), 3) == stream_seed(7, (0, 3))
        True
    """
    state = mix64(len(prefix) + 1)
    while True:
        state = mix64(state ^ entropy)
        entropy >>= 64
        if not entropy:
            break
    for part in prefix:
        state = mix64(state ^ part)
    return state


def seed_after(state: int, last: int) -> int:
    """The seed of the key ending in ``last`` from its prefix's ``stream_prefix`` state.

    Example:
        >>> state = stream_prefix(7, (1, 0))
        >>> [seed_after(state, c) == stream_seed(7, (1, 0, c)) for c in range(3)]
        [True, True, True]
    """
    return mix64(state ^ last) >> 1


def resolve_calls(pending: Sequence[PendingChoice]) -> list[Site]:
    """Compute pending ``"call"`` choices: one ``batch`` call per batch function.

    Example (two executions of a program whose memo site has a batch function):
        >>> batches = []
        >>> def square_all(calls):
        ...     batches.append(len(calls))
        ...     return [x * x for (x,) in calls]
        >>> @ppl.program
        ... def squared(x: int):
        ...     ppl.answer(ppl.memo("square", lambda x: x * x, x, batch=square_all))
        >>> executions = [execute(squared, (x,), {}, Trace(), batch_calls=True) for x in (2, 3)]
        >>> sites = resolve_calls([ex.pending for ex in executions])
        >>> [site.value for site in sites], batches
        ([4, 9], [2])
    """
    groups: dict[object, list[int]] = {}
    for i, choice in enumerate(pending):
        batch = choice.fn.batch
        try:
            hash(batch)
        except TypeError:  # an unhashable callable object: group by identity
            batch = id(batch)
        groups.setdefault(batch, []).append(i)
    sites: list[Site | None] = [None] * len(pending)
    for indices in groups.values():
        batch = pending[indices[0]].fn.batch
        results = list(batch([pending[i].fn.args for i in indices]))
        if len(results) != len(indices):
            raise BackendError(
                f"the batch function of memo site {pending[indices[0]].name!r} returned "
                f"{len(results)} results for {len(indices)} calls"
            )
        for i, value in zip(indices, results, strict=True):
            sites[i] = Site(pending[i].name, "memo", value)
    return sites


def draw_sample_site(choice: PendingChoice, seed: int) -> Site:
    """Draw a ``sample`` site from its proposal (or its distribution) with the given seed."""
    proposal = choice.proposal if choice.proposal is not None else choice.fn
    # Pyro distributions draw from torch's global generator: seed a forked copy
    # so results are reproducible and the user's global state is untouched.
    # (torch.manual_seed would also queue accelerator seeding, which is slow.)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        value = proposal.sample()
    log_prob = float(choice.fn.log_prob(value).sum())
    if choice.proposal is None:
        return Site(choice.name, "sample", value, log_prob=log_prob, log_weight=0.0)
    log_q = float(choice.proposal.log_prob(value).sum())
    return Site(choice.name, "sample", value, log_prob=log_prob, log_weight=log_prob - log_q)
