"""Beam search and diverse verifier tree search over a program's choices, scored by verifiers.

Both are one policy over the particle runtime (``Search``) and differ only in
their selector: ``top_k`` keeps the best nodes of a round, ``per_subtree``
the best node of each subtree. A search node is a runtime particle.
Expanding a node forks it once per expansion, each fork with its own
lineage and so its own random stream; the forks draw their next choice
through the runtime (LM steps join the backend's running batch). Siblings
that drew the same value are merged before any of them runs on, and the
others run on to their next choice (memo calls settled). The selection step
is the barrier: when every child of the round has reported, it scores the
children, keeps what the selector picks among them and the finished nodes,
retires the rest and expands the kept ones. Since draws depend only on the
seed and lineage, and merging and selection only on the children's order
of creation, a seed gives the same search whatever shares the decode passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from inference.population import check_positive_int
from inference.runtime import Particle, Runtime
from ppl.errors import InvalidArgumentError, VerifierError
from ppl.handlers import PendingChoice
from ppl.posterior import Posterior, Round, effective_sample_size
from ppl.trace import Site, Trace

SCORES = ("likelihood", "posterior")
TraceScore = Callable[[Sequence[Trace]], Sequence[float]]


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
    times (LM steps of all beams in one running batch; a discrete
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

    A trace the program rules out (a failed ``ppl.condition``, a ``-inf``
    factor) scores ``-inf`` whatever ``score`` is, and is never extended.

    When a twist gives each partial trace the best final score reachable
    from it, or earlier choices' factors dominate all later ones, the result
    is the exact top-``beam_width`` among the traces the expansions reach.

    The returned posterior's ``log_weights`` are the final beams' scores, so
    ``answer_distribution()`` is a score-weighted vote over them and
    ``best_of_n_answer()`` the best beam's answer. Search gives no estimate
    of the normalizing constant, so ``log_evidence`` is NaN (shown as n/a).

    Example:
        >>> post = ppl.beam(program, lm, "a", beam_width=2, num_expansions=3,
        ...                 score="posterior", seed=0)
        >>> post.answers, post.log_weights.round(2).tolist()
        (['', 'a'], [-1.05, -2.2])
        >>> math.isnan(post.log_evidence)
        True
    """
    beam_width = check_positive_int("beam_width", beam_width)
    num_expansions = check_positive_int("num_expansions", num_expansions)
    runtime = Runtime(program, args, kwargs, seed=seed, method="beam")
    search = Search(runtime, beam_width, num_expansions, selector=top_k, score=score)
    return search.run(info={"beam_width": beam_width, "num_expansions": num_expansions})


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
    :func:`beam` does) and gives each subtree a distinct first choice, the
    best-scored ones first; only when fewer distinct first choices exist
    than subtrees do some subtrees start from the same one. Each later
    round, every unfinished subtree extends its one node ``num_expansions``
    ways (the LM steps of all subtrees in one running batch; small discrete
    ``ppl.sample`` supports are enumerated) and keeps only its best-scored
    child: a greedy search by the verifier. A subtree stops when its node
    finishes, or when every child is rejected (its score is then ``-inf``).
    ``score`` is as for :func:`beam`.

    What it returns: one trace per subtree, in subtree order (slot ``i`` of
    every round in ``rounds`` and ``genealogy`` is subtree ``i``), with its
    score as log weight; not a weighted sample of the posterior.
    ``best_of_n_answer()`` is the best leaf's answer and
    ``answer_distribution()`` a score-weighted vote over the leaves.
    ``log_evidence`` is NaN, as for beam search.

    Example:
        >>> post = ppl.dvts(program, lm, "a", num_subtrees=2, num_expansions=3, seed=0)
        >>> post.answers  # the subtrees start from distinct first letters
        ['a', 'cb']
    """
    num_subtrees = check_positive_int("num_subtrees", num_subtrees)
    num_expansions = check_positive_int("num_expansions", num_expansions)
    runtime = Runtime(program, args, kwargs, seed=seed, method="dvts")
    search = Search(runtime, num_subtrees, num_expansions, selector=per_subtree, score=score)
    return search.run(info={"num_subtrees": num_subtrees, "num_expansions": num_expansions})


# --- selection ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    """A search node: a particle, its score, its parent's slot and the choice that made it.

    ``parent`` is the node's parent's slot in the previous round (its own slot
    when carried over finished); ``text`` the choice it made this round (None
    when carried over).

    Example:
        >>> from inference.runtime import Particle
        >>> node = Node(Particle(0, (0,)), score=-1.5, parent=0, text="a")
        >>> node.score, node.expandable  # a particle with no pending choice has finished
        (-1.5, False)
    """

    particle: Particle
    score: float
    parent: int
    text: str | None

    @property
    def expandable(self) -> bool:
        return self.score > -math.inf and not self.particle.stopped


# A selector picks the next round's nodes, in slot order, among a round's candidates.
Selector = Callable[[Sequence[Node], int], list[Node]]


def top_k(nodes: Sequence[Node], width: int) -> list[Node]:
    """Beam search's selector: the ``width`` best-scored nodes, earlier ones first among ties.

    Rejected nodes (score ``-inf``) are kept only when nothing else is left,
    so that a search where everything was rejected reports an empty posterior.

    Example:
        >>> from inference.runtime import Particle
        >>> scores = [-2.0, -0.5, -math.inf, -0.5]
        >>> nodes = [Node(Particle(i, (i,)), s, i // 2, "abcd"[i]) for i, s in enumerate(scores)]
        >>> [node.text for node in top_k(nodes, 3)]
        ['b', 'd', 'a']
    """
    alive = [node for node in nodes if node.score > -math.inf] or list(nodes)
    order = np.argsort([-node.score for node in alive], kind="stable")
    return [alive[i] for i in order[:width]]


def per_subtree(nodes: Sequence[Node], width: int) -> list[Node]:
    """DVTS's selector: slot ``i`` keeps the best node of subtree ``i``.

    Slot ``i`` continues the subtree of the previous round's ``i``-th parent
    (cyclically: in the first round every slot shares the root). Slots that
    share a parent take its best children, distinct while there are enough.

    Example:
        >>> from inference.runtime import Particle
        >>> def nodes(parents, scores):
        ...     return [Node(Particle(i, (i,)), s, p, "abcdef"[i])
        ...             for i, (p, s) in enumerate(zip(parents, scores))]
        >>> [n.text for n in per_subtree(nodes([0, 0, 1, 1], [-1.0, -0.2, -3.0, -4.0]), 2)]
        ['b', 'c']
        >>> [n.text for n in per_subtree(nodes([0, 0], [-1.0, -0.2]), 3)]  # from the root
        ['b', 'a', 'b']
    """
    parents = sorted({node.parent for node in nodes})
    slots = [parents[i % len(parents)] for i in range(width)]
    best = {p: top_k([n for n in nodes if n.parent == p], slots.count(p)) for p in parents}
    taken = dict.fromkeys(parents, 0)
    kept = []
    for parent in slots:
        kept.append(best[parent][taken[parent] % len(best[parent])])
        taken[parent] += 1
    return kept


# --- the policy ---------------------------------------------------------------------------


class Search:
    """The beam / DVTS policy over a ``Runtime``: ``init`` starts the root, ``step`` selects.

    ``width`` slots are kept per round; each unfinished kept node is expanded
    ``num_expansions`` ways (``width * num_expansions`` ways from the root),
    and ``selector`` picks the next round's nodes. See the module docstring.

    Example:
        >>> from inference.runtime import Runtime
        >>> runtime = Runtime(coin, (), {}, seed=0, method="beam")
        >>> search = Search(runtime, 2, 2, selector=top_k, score="posterior")
        >>> post = search.run()
        >>> post.answers, post.log_weights.round(3).tolist()
        ([0, 1], [-0.357, -1.204])
    """

    def __init__(
        self,
        runtime: Runtime,
        width: int,
        num_expansions: int,
        *,
        selector: Selector,
        score: str | TraceScore = "likelihood",
    ):
        if isinstance(score, str) and score not in SCORES:
            raise InvalidArgumentError(
                f"unknown beam score {score!r}; choose one of {SCORES} or pass "
                "a function traces -> log scores"
            )
        if not isinstance(score, str) and not callable(score):
            raise InvalidArgumentError(
                f"score must be one of {SCORES} or a callable, got {score!r}"
            )
        self.runtime, self.width, self.num_expansions = runtime, width, num_expansions
        self.selector, self.score = selector, score
        self.particles: list[Particle] = []  # the round's children, which the runtime advances
        self.beams: list[Node] = []
        self.rounds: list[Round] = []
        self.ess_history: list[float] = []
        self.over = False
        self._slot_of: dict[Particle, int] = {}  # child -> its parent's slot
        self._to_draw: set[Particle] = set()
        self._undrawn: dict[int, int] = {}  # slot -> children yet to draw
        self._drawn: dict[Particle, Site] = {}  # draws held until every sibling has drawn
        self._waiting: set[Particle] = set()  # children that have not reported
        self._stepping = False

    def run(self, info: dict | None = None) -> Posterior:
        self.init()
        self.runtime.drive(self)
        return self.finish(info)

    def finish(self, info: dict | None = None) -> Posterior:
        """The posterior of the kept nodes, once the search is over."""
        return self.runtime.posterior(
            [node.particle for node in self.beams],
            ess_history=self.ess_history,
            rounds=self.rounds,
            info=info,
            log_weights=[node.score for node in self.beams],
            log_evidence=math.nan,
        )

    def init(self) -> None:
        root = self.runtime.start(0)
        self.particles, self._slot_of = [root], {root: 0}
        self._waiting = set() if root.settled else {root}
        self._guarded(lambda: None)

    # --- the runtime's questions --------------------------------------------------
    def may_draw(self, particle: Particle) -> bool:
        return particle in self._to_draw

    def on_draw(self, particle: Particle, site: Site) -> bool:
        """Hold the draw until every sibling has drawn, then merge equal ones."""
        self._to_draw.discard(particle)
        self._drawn[particle] = site
        slot = self._slot_of[particle]
        self._undrawn[slot] -= 1
        if self._undrawn[slot] == 0:
            self._guarded(lambda: self._merge(slot))
        return False

    def on_choice(self, particle: Particle) -> None:
        self._waiting.discard(particle)
        self._guarded(lambda: None)

    def _guarded(self, action: Callable[[], None]) -> None:
        """Run ``action``, then select while a round is complete (never re-entered)."""
        if self._stepping:
            action()
            return
        self._stepping = True
        try:
            action()
            while not self._waiting and not self.over:
                self.step()
        finally:
            self._stepping = False

    def _merge(self, slot: int) -> None:
        """Children of one node that drew the same value are one child: the first goes on."""
        seen: set[str] = set()
        unique = []
        for child in [p for p in self.particles if self._slot_of[p] == slot]:
            site = self._drawn.pop(child)
            key = _text(site.value)
            if key in seen:
                self.runtime.retire(child)
                self._waiting.discard(child)
            else:
                seen.add(key)
                unique.append((child, site))
        for child, site in unique:
            self.runtime.choose(self, child, site)

    # --- rounds -------------------------------------------------------------------
    def step(self) -> None:
        """The selection barrier: score the round's children, select, expand the kept nodes."""
        children = [p for p in self.particles if not p.retired]
        if not self.rounds:
            # An unfinished root has no rival, so only a finished one needs a score.
            (root,) = children
            kept = [Node(root, self._score([root])[0] if root.stopped else 0.0, 0, None)]
        else:
            scores = self._score(children)
            nodes = [
                replace(node, parent=slot, text=None)
                for slot, node in enumerate(self.beams)
                if not node.expandable
            ]
            nodes += [
                Node(child, s, self._slot_of[child], child.texts[-1])
                for child, s in zip(children, scores, strict=True)
            ]
            kept = self.selector(nodes, self.width)
            survivors = {id(node.particle) for node in kept}
            for node in nodes:
                if id(node.particle) not in survivors:
                    self.runtime.retire(node.particle)
        self._record(kept)
        self._expand()

    def _score(self, particles: list[Particle]) -> list[float]:
        scores = [-math.inf] * len(particles)
        alive = [i for i, p in enumerate(particles) if p.log_weight > -math.inf]
        if isinstance(self.score, str):
            for i in alive:
                scores[i] = _builtin_score(particles[i].trace, particles[i].pending, self.score)
            return scores
        traces = [particles[i].trace for i in alive]
        returned = [float(s) for s in self.score(traces)] if traces else []
        self.runtime.tracker.verifier_calls += len(traces)
        if len(returned) != len(traces) or any(math.isnan(s) or s == math.inf for s in returned):
            raise VerifierError(
                f"the beam score function returned {returned!r} for {len(traces)} traces; it "
                "must return one finite log score (or -inf) per trace"
            )
        for i, s in zip(alive, returned, strict=True):
            scores[i] = s
        return scores

    def _record(self, kept: list[Node]) -> None:
        self.beams = kept
        log_scores = tuple(node.score for node in kept)
        resampled = bool(self.rounds)
        if resampled:
            self.ess_history.append(effective_sample_size(np.array(log_scores)))
        parents = tuple(node.parent for node in kept)
        self.rounds.append(Round(parents, tuple(node.text for node in kept), log_scores, resampled))
        self.runtime.round_done(len(self.rounds) - 1, np.array(log_scores), resampled)

    def _expand(self) -> None:
        """Fork every unfinished kept node; forks of a small discrete choice take each value."""
        self.particles, self._slot_of, self._to_draw, self._undrawn = [], {}, set(), {}
        enumerated = []
        for slot, node in enumerate(self.beams):
            if not node.expandable:
                continue
            parent = node.particle
            sites = _enumerate(parent.pending, self.num_expansions)
            # The search starts from width copies of the root.
            copies = self.width if len(self.rounds) == 1 else 1
            count = len(sites) if sites is not None else self.num_expansions * copies
            children = [
                self.runtime.fork(
                    parent, parent.choices, len(self.particles) + k, (*parent.lineage, slot, k)
                )
                for k in range(count)
            ]
            self.particles += children
            self._slot_of.update(dict.fromkeys(children, slot))
            if sites is None:
                self._to_draw.update(children)
                self._undrawn[slot] = count
            else:
                enumerated += zip(children, sites, strict=True)
        self._waiting = set(self.particles)
        self.over = not self.particles
        for child, site in enumerated:
            self.runtime.choose(self, child, site)


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


def _text(value) -> str:
    return str(value.tolist() if hasattr(value, "tolist") else value)
