"""Trace MCMC moves: regenerate one random choice, re-run the program, accept or reject.

A state is a trace of the program: complete, or (inside SMC) stopped at its
next random choice after ``horizon`` choices. Its target is

    log gamma(trace) = sum of log p over random choices (``step``: its sampler,
                       ``ppl.sampler``) + sum of factors, conditions and
                       observations [+ the current twist, for a stopped trace]

Factors and observations may be tempered by ``beta`` (parallel tempering);
conditions stay hard at every temperature, and a ``-inf`` factor or twist
rejects a trace at every temperature, as it does in SMC. A twist is not part of
the target of a complete trace (the runtime removes the last potential when a
program returns).

A move picks the ``index``-th random choice of the trace (the index comes from
a fixed scan, never from the state), draws a new value from the program's
proposal for it and re-runs the program from there:

- ``regenerate``: every later choice is drawn afresh. The acceptance ratio is
  the ratio of the suffix importance weights, ``w(new suffix) / w(old suffix)``.
- ``rescore``: a later choice the program makes again (same name and kind,
  and for ``step`` the same model, stop strings and token limit, proposed by
  the model itself) keeps its value, re-scored under the new prefix; the
  others are drawn afresh. The acceptance ratio is
  ``gamma(new) q(discarded old values) / (gamma(old) q(fresh new values))``,
  where the site drawn at ``index`` counts on both sides. Whether a choice is
  kept is a symmetric test of the two visits, so the reverse move keeps the
  same choices and the ratio is the Metropolis-Hastings ratio of this proposal.

Moves of many states run in lock-step: each round draws every pending fresh
choice in one batched call per language model, and all kept steps are
re-scored together in one batched ``score_steps`` call per model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ppl.errors import (
    BackendError,
    EmptyPosteriorError,
    InvalidArgumentError,
    ReplayDivergenceError,
)
from ppl.handlers import PendingChoice
from ppl.lm import ScoreRequest
from ppl.posterior import Cost, Posterior, normalized_weights
from ppl.runtime import Execution, as_program, execute, resolve_choices
from ppl.trace import Site, Trace
from ppl.values import Step

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


class Runner:
    """Executes one program for an engine and counts its work: LM calls, memo calls, time."""

    def __init__(self, program, args: tuple, kwargs: dict):
        self.prog = as_program(program)
        self.args = args
        self.kwargs = kwargs
        self.verifier_calls = 0
        self.started = time.perf_counter()
        self._lms: dict[int, tuple[object, dict[str, int]]] = {}

    def execute(self, trace: Trace) -> Execution:
        try:
            execution = execute(self.prog, self.args, self.kwargs, trace)
        except Exception as error:
            error.add_note(f"while running program {self.prog.name!r} for an MCMC move")
            raise
        self.verifier_calls += execution.memo_calls
        return execution

    def draw(self, choices: Sequence[PendingChoice], rng: np.random.Generator) -> list[Site]:
        """Draw every choice; ``step`` choices of one model share one batched call."""
        for choice in choices:
            if choice.kind == "step":
                self._see(choice.fn.lm)
        return resolve_choices(choices, rng)

    def score(self, requests: Sequence[tuple[object, ScoreRequest]]) -> list[float]:
        """Score every ``(lm, request)``; one batched ``score_steps`` call per model."""
        scores = [0.0] * len(requests)
        by_lm: dict[int, tuple[object, list[int]]] = {}
        for i, (lm, _) in enumerate(requests):
            by_lm.setdefault(id(lm), (lm, []))[1].append(i)
        for lm, indices in by_lm.values():
            self._see(lm)
            results = lm.score_steps([requests[i][1] for i in indices])
            if len(results) != len(indices):
                raise BackendError(
                    f"{type(lm).__name__}.score_steps returned {len(results)} scores "
                    f"for {len(indices)} requests"
                )
            for i, score in zip(indices, results, strict=True):
                scores[i] = float(score)
        return scores

    def _see(self, lm) -> None:
        if id(lm) not in self._lms:
            self._lms[id(lm)] = (lm, lm.stats.snapshot())

    def cost(self) -> Cost:
        cost = Cost(
            verifier_calls=self.verifier_calls, wall_seconds=time.perf_counter() - self.started
        )
        for lm, before in self._lms.values():
            after = lm.stats.snapshot()
            cost += Cost(
                tokens_generated=after["tokens_generated"] - before["tokens_generated"],
                tokens_prefilled=after["tokens_prefilled"] - before["tokens_prefilled"],
                tokens_scored=after["tokens_scored"] - before["tokens_scored"],
                lm_calls=after["sample_calls"]
                + after["score_calls"]
                - before["sample_calls"]
                - before["score_calls"],
            )
        return cost


class _Unscored(Step):
    """A kept step whose log-probability under its new context is not scored yet.

    It carries its old ``logp`` until the batched re-scoring sets the new one.
    A program that reads ``logp`` before then is noticed, and its walk is
    re-run with the scored value.
    """

    read = False

    @property
    def logp(self) -> float:
        self.read = True
        return self._logp

    @logp.setter
    def logp(self, value: float) -> None:
        self._logp = value


class Walk:
    """A proposal under way: a trace extended one random choice at a time.

    Each new choice is kept (``keep``: an old value by name, for ``rescore``),
    supplied (``supply``: given values in order, for splicing a reference
    trajectory onto a prefix) or drawn afresh. A walk ends when the program
    returns, after ``horizon`` choices, or as soon as its target is zero.
    """

    def __init__(
        self,
        trace: Trace,
        pending: PendingChoice | None,
        choices: list[PendingChoice] | None,
        num_choices: int,
        *,
        horizon: int | None = None,
        keep: dict[str, tuple[Site, PendingChoice]] | None = None,
        supply: list[tuple[Site, PendingChoice]] | None = None,
    ):
        self.prefix = (trace, pending, None if choices is None else list(choices))
        self.trace, self.pending = trace, pending
        self.choices = None if choices is None else list(choices)
        self.num_prefix_choices = num_choices
        self.horizon, self.keep, self.supply = horizon, keep, supply
        self.sites: list[Site] = []  # the random choices this walk added, in order
        self.positions: list[int] = []  # their positions in the trace
        self.kept: set[str] = set()
        self.unscored: list[tuple[int, object, ScoreRequest]] = []
        self.log_q = 0.0  # log proposal density of the fresh values
        self.dead = False  # the target is zero: the proposal is rejected
        self.invalid = False  # splice only: the program does not make the supplied choices

    @property
    def done(self) -> bool:
        return (
            self.pending is None
            or self.dead
            or self.invalid
            or (
                self.horizon is not None
                and self.num_prefix_choices + len(self.sites) >= self.horizon
            )
        )

    @property
    def state(self) -> State:
        choices = None if self.choices is None else tuple(self.choices)
        return State(self.trace, self.pending, choices)

    def stale_read(self) -> bool:
        """Whether the program read ``logp`` of a kept step before it was re-scored."""
        return any(self.sites[k].value.read for k, _, _ in self.unscored)


def run_walks(runner: Runner, walks: Sequence[Walk], rng: np.random.Generator) -> None:
    """Advance every walk to its end in lock-step.

    Each round draws the pending fresh choice of every walk that needs one, in
    one batched call per model; kept steps are re-scored at the end, in one
    batched call per model.
    """
    for walk in walks:
        _advance(runner, walk)
    while True:
        waiting = [w for w in walks if not w.done]
        if not waiting:
            break
        sites = runner.draw([w.pending for w in waiting], rng)
        for walk, site in zip(waiting, sites, strict=True):
            if site.log_prob > -math.inf:
                walk.log_q += log_proposal(site)
            _extend(runner, walk, site)
            _advance(runner, walk)
    _score_kept_steps(runner, walks)


def _advance(runner: Runner, walk: Walk) -> None:
    """Take kept or supplied values until the walk needs a fresh draw or ends."""
    while not walk.done:
        site = _reused_site(walk)
        if site is None:
            return
        _extend(runner, walk, site)


def _extend(runner: Runner, walk: Walk, site: Site) -> None:
    walk.positions.append(len(walk.trace.sites))
    walk.sites.append(site)
    if walk.choices is not None:
        walk.choices.append(walk.pending)
    execution = runner.execute(walk.trace.extend(site))
    walk.trace, walk.pending = execution.trace, execution.pending
    if (site.log_prob == -math.inf or execution.log_weight == -math.inf) and not walk.stale_read():
        walk.dead = True


def _reused_site(walk: Walk) -> Site | None:
    """The kept or supplied site for the walk's pending choice; None: draw it afresh."""
    choice = walk.pending
    if walk.supply is not None:
        k = len(walk.sites)
        if k >= len(walk.supply):
            walk.invalid = True
            return None
        old, old_choice = walk.supply[k]
        if old.name != choice.name or old.kind != choice.kind:
            walk.invalid = True
            return None
        if choice.kind == "step" and not _keepable(choice, old_choice):
            raise InvalidArgumentError(
                f"ancestor sampling cannot re-score step {choice.name!r}: it needs steps "
                "drawn from their own target (no proposal_temperature, no logits processor) "
                "whose model, sampler, stop strings and max_tokens do not depend on earlier "
                "choices"
            )
    elif walk.keep is not None:
        old, old_choice = walk.keep.get(choice.name, (None, None))
        if old is None or not _keepable(choice, old_choice):
            return None
    else:
        return None
    walk.kept.add(choice.name)
    if choice.kind == "sample":
        log_p = _log_density(choice.fn, old.value)
        log_q = log_p if choice.proposal is None else _log_density(choice.proposal, old.value)
        log_weight = log_p - log_q if log_p > -math.inf else -math.inf
        return Site(choice.name, "sample", old.value, log_prob=log_p, log_weight=log_weight)
    request = choice.fn.request
    value = _Unscored(
        str(old.value),
        token_ids=old.value.token_ids,
        logp=old.value.logp,
        finished=old.value.finished,
    )
    walk.unscored.append((len(walk.sites), choice.fn.lm, request.score_request(value.token_ids)))
    # q = p for a step drawn from its own target, so a kept step adds no weight.
    return Site(choice.name, "step", value, log_prob=0.0, log_weight=0.0, fingerprint=hash(request))


def _keepable(new: PendingChoice, old: PendingChoice) -> bool:
    """Whether a later choice keeps its value: a symmetric test of its two visits."""
    if new.kind != old.kind:
        return False
    if new.kind != "step":
        return True
    a, b = new.fn.request, old.fn.request
    return (
        new.fn.lm is old.fn.lm
        and a.stop == b.stop
        and a.max_tokens == b.max_tokens
        and a.sampler == b.sampler
        and a.proposal_is_target
        and b.proposal_is_target
    )


def _log_density(fn, value) -> float:
    # A value outside the new distribution's support has density zero.
    try:
        result = float(fn.log_prob(value).sum())
    except (ValueError, RuntimeError, IndexError):
        return -math.inf
    return -math.inf if math.isnan(result) else result


def _score_kept_steps(runner: Runner, walks: Sequence[Walk]) -> None:
    requests = [(lm, request) for w in walks for _, lm, request in w.unscored]
    if not requests:
        return
    scores = iter(runner.score(requests))
    for walk in walks:
        if not walk.unscored:
            continue
        rerun = walk.stale_read()
        sites = list(walk.trace.sites)
        for k, _, _ in walk.unscored:
            score = next(scores)
            walk.sites[k].value.logp = score
            walk.sites[k] = replace(walk.sites[k], log_prob=score)
            sites[walk.positions[k]] = walk.sites[k]
        if rerun:
            _rerun(runner, walk)
        else:
            walk.trace = Trace(tuple(sites), walk.trace.verified)


def _rerun(runner: Runner, walk: Walk) -> None:
    """Re-run a walk whose program read a kept step's ``logp`` before it was scored."""
    trace, pending, choices = walk.prefix
    positions = []
    ended_at = walk.pending
    try:
        for k, site in enumerate(walk.sites):
            if isinstance(site.value, _Unscored):
                v = site.value
                step = Step(str(v), token_ids=v.token_ids, logp=v._logp, finished=v.finished)
                site = walk.sites[k] = replace(site, value=step)
            if pending is None or pending.name != site.name:
                raise ReplayDivergenceError(f"the program did not reach site {site.name!r} again")
            # Step requests are checked by replay; a sample site's density is checked here.
            if site.kind == "sample" and not math.isclose(
                _log_density(pending.fn, site.value), site.log_prob, rel_tol=1e-9, abs_tol=1e-9
            ):
                raise ReplayDivergenceError(
                    f"the distribution of sample site {site.name!r} changed on re-running"
                )
            if choices is not None:
                choices.append(pending)
            positions.append(len(trace.sites))
            execution = runner.execute(trace.extend(site))
            trace, pending = execution.trace, execution.pending
        if (pending is None) != (ended_at is None) or (
            pending is not None and pending.name != ended_at.name
        ):
            raise ReplayDivergenceError("the program took another path after the kept steps")
    except ReplayDivergenceError as error:
        error.add_note(
            "a kept step's Step.logp changed when it was re-scored under its new prefix, and "
            "the program's path or step contexts depend on it; use proposal='regenerate'"
        )
        raise
    walk.trace, walk.pending, walk.choices, walk.positions = trace, pending, choices, positions
    walk.dead = False


def mh_move(
    runner: Runner,
    states: Sequence[State],
    index: int,
    *,
    proposal: str,
    rng: np.random.Generator,
    betas: Sequence[float] | None = None,
    horizon: int | None = None,
) -> tuple[list[State], list[bool | None]]:
    """One Metropolis-Hastings move of every state at its ``index``-th random choice.

    Returns the new states and, per state, whether its move was accepted (None
    when the state has no ``index``-th choice and stays as it is). ``betas``
    temper each state's factors; ``horizon`` is the number of choices of the
    partial traces of an SMC round (None: complete traces).
    """
    new_states = list(states)
    accepted: list[bool | None] = [None] * len(states)
    walks, moved = [], []
    for i, state in enumerate(states):
        positions = choice_positions(state.trace)
        if index >= len(positions):
            continue
        position = positions[index]
        prefix = Trace(state.trace.sites[:position], min(state.trace.verified, position))
        if state.choices is not None:
            pending, choices = state.choices[index], list(state.choices[:index])
        else:
            pending, choices = runner.execute(prefix).pending, None
        keep = None
        if proposal == "rescore":
            if state.choices is None:
                raise InvalidArgumentError("rescore moves need states that record their choices")
            keep = {
                state.trace.sites[p].name: (state.trace.sites[p], state.choices[k])
                for k, p in enumerate(positions)
                if k > index
            }
        walks.append(Walk(prefix, pending, choices, index, horizon=horizon, keep=keep))
        moved.append((i, positions[index:]))
    run_walks(runner, walks, rng)
    for walk, (i, old_positions) in zip(walks, moved, strict=True):
        beta = 1.0 if betas is None else betas[i]
        new = walk.state
        log_new = -math.inf if walk.dead else log_target(new, beta)
        u = rng.random()
        if log_new == -math.inf:
            accepted[i] = False
            continue
        old = states[i]
        sites = old.trace.sites
        log_q_reverse = sum(
            log_proposal(sites[p]) for p in old_positions if sites[p].name not in walk.kept
        )
        log_ratio = (log_new - walk.log_q) - (log_target(old, beta) - log_q_reverse)
        accepted[i] = bool(math.log(u) < log_ratio)
        if accepted[i]:
            new_states[i] = new
    return new_states, accepted


def initial_states(
    runner: Runner, count: int, init_particles: int, rng: np.random.Generator
) -> list[State]:
    """``count`` complete states, each picked by weight among ``init_particles`` forward runs.

    A chain whose runs all have weight zero tries again, up to a limit.
    """
    start = runner.execute(Trace())
    states: list[State | None] = [None] * count
    todo = list(range(count))
    for _ in range(_INIT_ATTEMPTS):
        walks = [
            Walk(start.trace, start.pending, [], 0) for _ in todo for _ in range(init_particles)
        ]
        run_walks(runner, walks, rng)
        log_weights = np.array(
            [-math.inf if w.dead else log_target(w.state) - w.log_q for w in walks]
        )
        failed = []
        for b, chain in enumerate(todo):
            block = log_weights[b * init_particles : (b + 1) * init_particles]
            if not np.isfinite(block).any():
                failed.append(chain)
                continue
            pick = rng.choice(init_particles, p=normalized_weights(block))
            states[chain] = walks[b * init_particles + pick].state
        todo = failed
        if not todo:
            return states
    raise EmptyPosteriorError(
        f"no initial trace of positive probability in {_INIT_ATTEMPTS * init_particles} runs "
        f"of {runner.prog.name!r} for {len(todo)} chain(s); loosen the constraints, raise "
        "init_particles, or pass initial traces"
    )


_INIT_ATTEMPTS = 20


def states_from_traces(runner: Runner, traces: Sequence[Trace]) -> list[State]:
    """States for given complete traces, recovering the request of each random choice."""
    states = []
    for i, trace in enumerate(traces):
        if not isinstance(trace, Trace):
            raise InvalidArgumentError(
                f"initial state {i} must be a ppl.Trace, got {type(trace).__name__}"
            )
        choices = []
        for position in choice_positions(trace):
            pending = runner.execute(Trace(trace.sites[:position])).pending
            name = trace.sites[position].name
            if pending is None or pending.name != name:
                raise ReplayDivergenceError(
                    f"initial trace {i} does not replay: the program does not reach {name!r}"
                )
            choices.append(pending)
        execution = runner.execute(trace)
        if execution.pending is not None:
            raise InvalidArgumentError(
                f"initial trace {i} is partial: the program next asks for "
                f"{execution.pending.name!r}; pass complete traces"
            )
        state = State(execution.trace, None, tuple(choices))
        if log_target(state) == -math.inf:
            raise InvalidArgumentError(f"initial trace {i} has probability zero under the target")
        states.append(state)
    return states


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
        cost=runner.cost(),
        method=method,
        info={**info, "draws_in_order": True},
    )
