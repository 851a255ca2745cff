"""Beam search and diverse verifier tree search over a program's choices, scored by verifiers."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from inference.population import check_positive_int
from inference.runtime import CostTracker
from ppl.errors import InvalidArgumentError, VerifierError
from ppl.handlers import PendingChoice
from ppl.posterior import Posterior, Round, effective_sample_size
from ppl.runtime import as_program, execute, resolve_choices
from ppl.trace import Site, Trace

SCORES = ("likelihood", "posterior")
TraceScore = Callable[[Sequence[Trace]], Sequence[float]]


@dataclass(frozen=True, slots=True)
class _Beam:
    trace: Trace
    pending: PendingChoice | None
    score: float
    parent: int  # slot in the previous round's beam
    text: str | None  # the choice this beam made in the round that created it


def beam(
    program: Callable,
    *args,
    beam_width: int,
    num_expansions: int,
    seed: int | None = None,
    score: str | TraceScore = "likelihood",
    **kwargs,
) -> Posterior:
    """Beam search: keep the ``beam_width`` best partial traces, extend each several ways.

    What it returns: up to ``beam_width`` finished traces found by a greedy
    search for high ``score``; not a weighted sample of the posterior. The
    search starts from ``beam_width`` copies of the empty trace. Each round,
    every unfinished beam makes its next random choice ``num_expansions``
    times (LM steps of all beams in one batched call; a discrete
    ``ppl.sample`` site whose support has at most ``num_expansions`` values
    is enumerated instead of sampled); children are run to their next
    choice, duplicates merged, and the best ``beam_width`` of the children
    and the finished beams are kept. The search ends when every kept beam
    has finished.

    ``score`` ranks (partial) traces:

    - ``"likelihood"``: the program's factors, conditions and observations,
      plus its current ``ppl.twist`` potential while unfinished. The LM only
      proposes; verifiers entered with ``ppl.factor``/``ppl.twist`` decide.
    - ``"posterior"``: that plus the log-probability of every random choice,
      the log of the unnormalized target: a search for its mode.
    - a batched function ``traces -> log scores``, e.g.
      ``verifier.trace_scorer(question)``; each scored trace counts as one
      verifier call.

    When a twist gives each partial trace the best final score reachable
    from it, or earlier choices' factors dominate all later ones, the result
    is the exact top-``beam_width`` among the traces the expansions reach.

    The returned posterior's ``log_weights`` are the final beams' scores, so
    ``answer_distribution()`` is a score-weighted vote over them and
    ``best_of_n_answer()`` the best beam's answer. Search gives no estimate
    of the normalizing constant, so ``log_evidence`` is NaN (shown as n/a).

    Example:
        >>> post = ppl.beam(solve, lm, question, beam_width=4, num_expansions=4,  # doctest: +SKIP
        ...                 seed=0)
        >>> post.best_of_n_answer()  # doctest: +SKIP
    """
    beam_width = check_positive_int("beam_width", beam_width)
    num_expansions = check_positive_int("num_expansions", num_expansions)
    return _search(
        program,
        args,
        kwargs,
        width=beam_width,
        num_expansions=num_expansions,
        seed=seed,
        score=score,
        subtrees=False,
    )


def dvts(
    program: Callable,
    *args,
    num_subtrees: int,
    num_expansions: int,
    seed: int | None = None,
    score: str | TraceScore = "likelihood",
    **kwargs,
) -> Posterior:
    """Diverse verifier tree search: ``num_subtrees`` independent greedy searches.

    The total budget of ``num_subtrees * num_expansions`` children per round
    is split into ``num_subtrees`` subtrees that never share a node. The
    first round draws that many children of the empty trace (as
    :func:`beam` does, in one batched call) and gives each subtree a
    distinct first choice, the best-scored ones first; only when fewer
    distinct first choices exist than subtrees do some subtrees start from
    the same one. Each later round, every unfinished subtree extends its one
    node ``num_expansions`` ways (the LM steps of all subtrees in one
    batched call; small discrete ``ppl.sample`` supports are enumerated) and
    keeps only its best-scored child: a greedy search by the verifier. A
    subtree stops when its node finishes, or when every child is rejected
    (its score is then ``-inf``). ``score`` is as for :func:`beam`.

    What it returns: one trace per subtree, in subtree order (slot ``i`` of
    every round in ``rounds`` and ``genealogy`` is subtree ``i``), with its
    score as log weight; not a weighted sample of the posterior.
    ``best_of_n_answer()`` is the best leaf's answer and
    ``answer_distribution()`` a score-weighted vote over the leaves.
    ``log_evidence`` is NaN, as for beam search.

    Example:
        >>> post = ppl.dvts(solve, lm, question, num_subtrees=4, num_expansions=4,  # doctest: +SKIP
        ...                 score=verifier.trace_scorer(question), seed=0)
        >>> post.best_of_n_answer()  # doctest: +SKIP
    """
    num_subtrees = check_positive_int("num_subtrees", num_subtrees)
    num_expansions = check_positive_int("num_expansions", num_expansions)
    return _search(
        program,
        args,
        kwargs,
        width=num_subtrees,
        num_expansions=num_expansions,
        seed=seed,
        score=score,
        subtrees=True,
    )


def _search(
    program: Callable,
    args: tuple,
    kwargs: dict,
    *,
    width: int,
    num_expansions: int,
    seed: int | None,
    score: str | TraceScore,
    subtrees: bool,
) -> Posterior:
    """Beam search keeping the ``width`` best nodes, or with ``subtrees`` one per subtree."""
    if isinstance(score, str) and score not in SCORES:
        raise InvalidArgumentError(
            f"unknown beam score {score!r}; choose one of {SCORES} or pass "
            "a function traces -> log scores"
        )
    if not isinstance(score, str) and not callable(score):
        raise InvalidArgumentError(f"score must be one of {SCORES} or a callable, got {score!r}")
    prog = as_program(program)
    seed_sequence = np.random.SeedSequence(seed)
    rng = np.random.default_rng(seed_sequence)
    tracker = CostTracker()
    memo_calls = 0
    scored_traces = 0

    def run_to_next_choice(trace: Trace) -> tuple[Trace, PendingChoice | None]:
        nonlocal memo_calls
        try:
            execution = execute(prog, args, kwargs, trace)
        except Exception as error:
            error.add_note(f"while running program {prog.name!r} for a search node")
            raise
        memo_calls += execution.memo_calls
        if execution.pending is not None and execution.pending.kind == "step":
            tracker.track(execution.pending.fn.lm)
        return execution.trace, execution.pending

    def score_all(executions: list[tuple[Trace, PendingChoice | None]]) -> list[float]:
        nonlocal scored_traces
        if isinstance(score, str):
            return [_builtin_score(trace, pending, score) for trace, pending in executions]
        traces = [trace for trace, _ in executions]
        scores = [float(s) for s in score(traces)] if traces else []
        scored_traces += len(traces)
        if len(scores) != len(traces) or any(math.isnan(s) or s == math.inf for s in scores):
            raise VerifierError(
                f"the beam score function returned {scores!r} for {len(traces)} traces; it "
                "must return one finite log score (or -inf) per trace"
            )
        return scores

    root_trace, root_pending = run_to_next_choice(Trace())
    # An unfinished root has no rival, so only a finished one needs a score.
    root_score = score_all([(root_trace, None)])[0] if root_pending is None else 0.0
    beams = [_Beam(root_trace, root_pending, root_score, 0, None)]
    rounds = [Round((0,), (None,), (root_score,), False)]
    ess_history: list[float] = []

    while any(b.pending is not None for b in beams) and any(b.score > -math.inf for b in beams):
        candidates = [
            _Beam(b.trace, None, b.score, slot, None)
            for slot, b in enumerate(beams)
            if b.pending is None
        ]
        children: list[tuple[int, Trace]] = []
        to_draw: list[tuple[int, PendingChoice]] = []
        for slot, b in enumerate(beams):
            if b.pending is None:
                continue
            enumerated = _enumerate(b.pending, num_expansions)
            if enumerated is None:
                # The search starts from width copies of the root.
                copies = width if len(rounds) == 1 else 1
                to_draw += [(slot, b.pending)] * (num_expansions * copies)
            else:
                children += [(slot, b.trace.extend(site)) for site in enumerated]
        drawn = resolve_choices([choice for _, choice in to_draw], rng) if to_draw else []
        children += [
            (slot, beams[slot].trace.extend(site))
            for (slot, _), site in zip(to_draw, drawn, strict=True)
        ]
        unique: dict[tuple, tuple[int, Trace]] = {}
        for slot, trace in children:
            # Subtrees share no node, so only siblings within one are merged.
            unique.setdefault((slot if subtrees else 0, _choice_key(trace)), (slot, trace))
        parents = [slot for slot, _ in unique.values()]
        texts = [_text(trace.sites[-1].value) for _, trace in unique.values()]
        executions = [run_to_next_choice(trace) for _, trace in unique.values()]
        scores = score_all(executions)
        candidates += [
            _Beam(trace, pending, s, parent, text)
            for (trace, pending), s, parent, text in zip(
                executions, scores, parents, texts, strict=True
            )
        ]
        if not subtrees:
            beams = _best(candidates, width)
        elif len(rounds) == 1:
            # Subtrees start from distinct first choices while there are enough of them.
            roots = _best(candidates, width)
            beams = [roots[i % len(roots)] for i in range(width)]
        else:
            beams = [
                _best([c for c in candidates if c.parent == slot], 1)[0] for slot in range(width)
            ]
            # A subtree whose children were all rejected stops.
            beams = [b if b.score > -math.inf else replace(b, pending=None) for b in beams]
        log_scores = tuple(b.score for b in beams)
        ess_history.append(effective_sample_size(np.array(log_scores)))
        rounds.append(
            Round(tuple(b.parent for b in beams), tuple(b.text for b in beams), log_scores, True)
        )

    tracker.verifier_calls = memo_calls + scored_traces
    cost = tracker.cost()
    return Posterior(
        [b.trace for b in beams],
        [b.score for b in beams],
        log_evidences=[math.nan],
        ess_history=[ess_history],
        rounds=[rounds],
        cost=cost,
        method="dvts" if subtrees else "beam",
        info={
            "seed": seed_sequence.entropy,
            "num_subtrees" if subtrees else "beam_width": width,
            "num_expansions": num_expansions,
        },
    )


def _best(candidates: list[_Beam], k: int) -> list[_Beam]:
    """The ``k`` best-scored candidates, earlier ones first among ties.

    Dead candidates are kept only when nothing is alive, to report an empty posterior.
    """
    pool = [c for c in candidates if c.score > -math.inf] or candidates
    order = np.argsort([-c.score for c in pool], kind="stable")
    return [pool[i] for i in order[:k]]


def _builtin_score(trace: Trace, pending: PendingChoice | None, how: str) -> float:
    total = 0.0
    log_twist = 0.0
    for site in trace.sites:
        if site.kind in ("factor", "condition", "observe"):
            total += site.log_prob
        elif site.kind == "twist":
            log_twist = site.log_prob
        elif how == "posterior" and site.kind in ("step", "sample"):
            total += site.log_prob
    # As in SMC, the last potential is removed once the program has returned.
    return total + log_twist if pending is not None else total


def _enumerate(choice: PendingChoice, num_expansions: int) -> list[Site] | None:
    """Every value of a discrete ``sample`` choice, if there are at most ``num_expansions``."""
    fn = choice.fn
    if choice.kind != "sample" or not getattr(fn, "has_enumerate_support", False):
        return None
    if fn.batch_shape != ():
        return None
    support = fn.enumerate_support(expand=False)
    if len(support) > num_expansions:
        return None
    return [
        Site(choice.name, "sample", value, log_prob=float(fn.log_prob(value).sum()))
        for value in support
    ]


def _choice_key(trace: Trace) -> tuple:
    return tuple(
        (site.name, _text(site.value)) for site in trace.sites if site.kind in ("step", "sample")
    )


def _text(value) -> str:
    return str(value.tolist() if hasattr(value, "tolist") else value)
