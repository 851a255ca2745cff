"""The proposal walk of a trace move: re-run a program from a redrawn choice, batched.

Walks of many states run together on the particle runtime: each fresh LM step
joins its backend's running batch as soon as its walk is ready; steps a
``rescore`` move keeps are re-scored together in one batched ``score_steps``
call per model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from inference.mcmc.runner import Runner
from inference.mcmc.state import State, log_proposal
from inference.runtime import Particle, Runtime
from ppl.errors import (
    InvalidArgumentError,
    ReplayDivergenceError,
)
from ppl.handlers import PendingChoice
from ppl.lm import ScoreRequest
from ppl.trace import Site, Trace
from ppl.values import Step


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
    """Advance every walk to its end on the particle runtime.

    Each walk is a particle of one runtime run: its fresh LM steps join each
    backend's running batch as soon as the walk is ready, each drawn from
    the walk's own stream (a run seed taken from ``rng``); kept steps are
    re-scored at the end, in one batched call per model.
    """
    runtime = Runtime(
        runner.prog,
        runner.args,
        runner.kwargs,
        seed=int(rng.integers(2**63)),
        method="mh",
        tracker=runner.tracker,
    )
    policy = _WalkPolicy(walks)
    runtime.drive(policy)
    for particle, walk in zip(policy.particles, walks, strict=True):
        walk.trace, walk.pending = particle.trace, particle.pending
    _score_kept_steps(runner, walks)


class _WalkPolicy:
    """The walks as a runtime policy: one particle per walk, reused values supplied."""

    def __init__(self, walks: Sequence[Walk]):
        self.particles = [Particle(k, (k,), w.trace, w.pending) for k, w in enumerate(walks)]
        self.walks = dict(zip(self.particles, walks, strict=True))
        self.reused: dict[Particle, Site | None] = {}

    def may_draw(self, particle: Particle) -> bool:
        walk = self.walks[particle]
        walk.trace, walk.pending = particle.trace, particle.pending
        if walk.done:
            return False
        site = _reused_site(walk)
        if walk.invalid:
            return False
        self.reused[particle] = site
        walk.positions.append(len(walk.trace.sites))
        if walk.choices is not None:
            walk.choices.append(walk.pending)
        return True

    def supplied(self, particle: Particle) -> Site | None:
        return self.reused[particle]

    def on_choice(self, particle: Particle) -> None:
        walk = self.walks[particle]
        site = particle.trace.sites[walk.positions[-1]]
        walk.sites.append(site)
        if self.reused.pop(particle) is None and site.log_prob > -math.inf:
            walk.log_q += log_proposal(site)
        if site.log_prob == -math.inf or (
            particle.log_weight == -math.inf and not walk.stale_read()
        ):
            walk.dead = True
        # The walk keeps its own target; a -inf that a stale Step.logp caused may vanish
        # once the kept steps are re-scored, so the particle goes on.
        particle.log_weight = 0.0


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
    # Top log-probabilities belong to the old context and re-scoring does not
    # renew them, so a step that records them is drawn again.
    return (
        not a.top_logprobs
        and not b.top_logprobs
        and new.fn.lm is old.fn.lm
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
        rerun = walk.stale_read() and not walk.dead
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
