"""Beam search: exact top-k on enumerable toy programs, and batched LM expansion."""

from __future__ import annotations

import itertools
import math
from collections import deque

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from tiny import make_tiny_lm

import ppl
from inference.beam import Node, Search, beam, dvts, per_subtree, top_k
from inference.population import Population
from inference.resampling import get_resampler
from inference.runtime import Particle, Runtime, Scheduler, round_hooks
from models import TransformersLM
from models.verifiers import ProgrammaticVerifier
from ppl.lm import StepRequest

NUM_VALUES = 3
DEPTH = 3
# Scores of every full assignment, distinct so the top-k is unique.
TABLE = torch.randn(NUM_VALUES, NUM_VALUES, NUM_VALUES, generator=torch.Generator().manual_seed(5))
PRIOR = torch.tensor([0.6, 0.3, 0.1])
# Per-level factors; each level's smallest gap (x weight) exceeds all later spreads.
LEVELS = [[0.0, -1.0, -2.5], [-0.5, -3.0, -0.1], [-1.0, -0.2, -0.3]]
LEVEL_WEIGHTS = [100.0, 10.0, 1.0]


def best_completion(prefix: tuple[int, ...], include_prior: bool) -> float:
    """The best final score reachable from ``prefix``: a perfect twist."""
    best = -math.inf
    for rest in itertools.product(range(NUM_VALUES), repeat=DEPTH - len(prefix)):
        value = float(TABLE[prefix + rest])
        if include_prior:
            value += sum(math.log(PRIOR[x]) for x in rest)
        best = max(best, value)
    return best


@ppl.program
def lexicographic():
    """Factors whose earlier terms dominate later ones, so greedy levels are exact."""
    xs = ()
    for t in range(DEPTH):
        x = int(ppl.sample(f"x{t}", dist.Categorical(torch.ones(NUM_VALUES))))
        ppl.factor(f"f{t}", LEVEL_WEIGHTS[t] * LEVELS[t][x])
        xs += (x,)
    ppl.answer(xs)


@ppl.program
def twisted(include_prior: bool):
    """One final factor; each partial trace twisted by the best score reachable from it."""
    xs = ()
    for t in range(DEPTH):
        x = int(ppl.sample(f"x{t}", dist.Categorical(PRIOR)))
        xs += (x,)
        if t < DEPTH - 1:
            ppl.twist(best_completion(xs, include_prior))
    ppl.factor("final", float(TABLE[xs]))
    ppl.answer(xs)


def brute_force_top(score_of, k: int) -> list[tuple[tuple[int, ...], float]]:
    scored = [(xs, score_of(xs)) for xs in itertools.product(range(NUM_VALUES), repeat=DEPTH)]
    return sorted(scored, key=lambda item: -item[1])[:k]


@pytest.mark.parametrize("k", [1, 2, 5, 27])
def test_lexicographic_scores_give_exact_top_k(k):
    def score_of(xs):
        return sum(LEVEL_WEIGHTS[t] * LEVELS[t][x] for t, x in enumerate(xs))

    expected = brute_force_top(score_of, k)
    post = ppl.beam(lexicographic, beam_width=k, num_expansions=NUM_VALUES, seed=0)
    assert post.method == "beam"
    assert post.answers == [xs for xs, _ in expected]
    np.testing.assert_allclose(post.log_weights, [s for _, s in expected], rtol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("score", ["likelihood", "posterior"])
def test_perfect_twist_gives_exact_top_k(k, score):
    include_prior = score == "posterior"

    def score_of(xs):
        prior = sum(math.log(PRIOR[x]) for x in xs) if include_prior else 0.0
        return float(TABLE[xs]) + prior

    expected = brute_force_top(score_of, k)
    post = ppl.beam(
        twisted, include_prior, beam_width=k, num_expansions=NUM_VALUES, score=score, seed=0
    )
    assert post.answers == [xs for xs, _ in expected]
    # Final scores drop the last twist, as SMC weights do.
    np.testing.assert_allclose(post.log_weights, [s for _, s in expected], rtol=1e-6)
    assert post.best_of_n_answer() == expected[0][0]


@ppl.program
def untwisted():
    xs = ()
    for t in range(DEPTH):
        xs += (int(ppl.sample(f"x{t}", dist.Categorical(torch.ones(NUM_VALUES)))),)
    ppl.factor("final", float(TABLE[xs]))
    ppl.answer(xs)


def test_beam_width_one_without_twist_is_greedy():
    """With only a final factor every partial trace ties; the beam keeps the first."""
    post = ppl.beam(untwisted, beam_width=1, num_expansions=3)
    assert post.answers == [(0, 0, int(TABLE[0, 0].argmax()))]


def test_genealogy_follows_kept_beams():
    post = ppl.beam(lexicographic, beam_width=2, num_expansions=NUM_VALUES, seed=0)
    graph = post.genealogy
    final_round = len(post.rounds[0]) - 1
    for slot, answer in enumerate(post.answers):
        node = (0, final_round, slot)
        texts = []
        while node is not None:
            texts.append(graph.nodes[node]["text"])
            parents = list(graph.predecessors(node))
            node = parents[0] if parents else None
        assert tuple(int(t) for t in reversed(texts) if t is not None) == answer


@pytest.mark.parametrize(
    ("search", "size"), [(ppl.beam, {"beam_width": 2}), (ppl.dvts, {"num_subtrees": 2})]
)
def test_all_rejected_gives_empty_posterior(search, size):
    @ppl.program
    def impossible():
        x = ppl.sample("x", dist.Categorical(torch.ones(2)))
        ppl.condition("never", False)
        ppl.answer(int(x))

    post = search(impossible, **size, num_expansions=2, seed=0)
    assert post.is_empty
    with pytest.raises(ppl.EmptyPosteriorError):
        post.best_of_n_answer()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"beam_width": 0, "num_expansions": 2}, "beam_width"),
        ({"beam_width": 2, "num_expansions": 1.5}, "num_expansions"),
        ({"beam_width": 2, "num_expansions": 2, "score": "best"}, "unknown beam score"),
        ({"beam_width": 2, "num_expansions": 2, "score": 3}, "callable"),
    ],
)
def test_bad_arguments_are_rejected(options, match):
    with pytest.raises(ppl.InvalidArgumentError, match=match):
        ppl.beam(lexicographic, **options)


def test_score_function_must_return_one_score_per_trace():
    with pytest.raises(ppl.VerifierError, match="one finite log score"):
        ppl.beam(lexicographic, beam_width=2, num_expansions=2, score=lambda traces: [0.0])


# --- over LM steps ------------------------------------------------------------------


@ppl.program
def three_steps(lm):
    text = "ab"
    for i in range(3):
        text += ppl.step(f"s{i}", lm, text, stop=(), max_tokens=2)
    ppl.answer(text[2:])


def fraction_of_a(question, steps):
    text = "".join(steps)
    return (text.count("a") + 1) / (len(text) + 2)


def test_lm_beam_expands_all_beams_in_one_call_per_round():
    lm = make_tiny_lm(seed=3)
    verifier = ProgrammaticVerifier(fraction_of_a)
    post = ppl.beam(
        three_steps,
        lm,
        beam_width=3,
        num_expansions=4,
        score=verifier.trace_scorer("ab"),
        seed=1,
    )
    # Rounds: the root plus one per step site; each step round is one batched sample call.
    assert len(post.rounds[0]) == 4
    assert lm.stats.sample_calls == 3
    assert post.cost.lm_calls == 3 and post.cost.tokens_generated > 0
    # Round 1 draws beam_width * num_expansions children of the root; later rounds
    # num_expansions per kept beam.
    assert 2 * 4 * 3 <= post.cost.tokens_generated <= 2 * 4 * (3 + 3 + 3)
    assert len(post.particles) == 3
    assert len({tuple(str(s.value) for s in t.steps) for t in post.particles}) == 3
    expected = [
        math.log(fraction_of_a("ab", [s.value for s in trace.steps])) for trace in post.particles
    ]
    np.testing.assert_allclose(post.log_weights, expected)
    assert list(post.log_weights) == sorted(post.log_weights, reverse=True)
    assert post.cost.verifier_calls == verifier.calls
    again = ppl.beam(
        three_steps, lm, beam_width=3, num_expansions=4, score=verifier.trace_scorer("ab"), seed=1
    )
    assert again.answers == post.answers


def test_memoised_verifier_calls_are_counted_once_per_new_execution():
    lm = make_tiny_lm(seed=5)
    calls = []

    def judge(question, steps):
        calls.append(steps)
        return fraction_of_a(question, steps)

    verifier = ProgrammaticVerifier(judge)

    @ppl.program
    def checked(lm):
        text, steps = "ab", []
        for i in range(2):
            step = ppl.step(f"s{i}", lm, text, stop=(), max_tokens=2)
            steps.append(step)
            verifier.factor(f"v{i}", "ab", steps)
            text += step
        ppl.answer(text[2:])

    post = ppl.beam(checked, lm, beam_width=2, num_expansions=3, seed=0)
    assert post.cost.verifier_calls == len(calls) == verifier.calls > 0
    # Each distinct child runs its new verifier site exactly once.
    assert len(calls) == len({tuple(c) for c in calls})


# --- the selection step ----------------------------------------------------------------


def nodes(parents, scores) -> list[Node]:
    """Hand-made candidates; node ``i`` is named by letter ``i``."""
    return [
        Node(Particle(i, (i,)), score, parent, "abcdefgh"[i])
        for i, (parent, score) in enumerate(zip(parents, scores, strict=True))
    ]


def names(kept: list[Node]) -> str:
    return "".join(node.text for node in kept)


def test_top_k_keeps_the_global_best_in_score_order():
    round_nodes = nodes([0, 0, 1, 1, 2], [-1.0, -3.0, -0.5, -1.0, -math.inf])
    assert names(top_k(round_nodes, 3)) == "cad"  # ties: the earlier node first
    assert names(top_k(round_nodes, 10)) == "cadb"  # a rejected node is dropped
    dead = nodes([0, 1], [-math.inf, -math.inf])
    assert names(top_k(dead, 1)) == "a"  # kept only when nothing else is left


def test_per_subtree_keeps_each_subtrees_best():
    round_nodes = nodes([0, 0, 1, 1, 2, 2], [-1.0, -3.0, -5.0, -4.0, -0.1, -0.2])
    assert names(per_subtree(round_nodes, 3)) == "ade"
    # Top-k would take both of subtree 2's children and lose subtree 1.
    assert names(top_k(round_nodes, 3)) == "efa"
    # A subtree whose children are all rejected keeps one, so it stops with -inf.
    rejected = nodes([0, 1, 1], [-1.0, -math.inf, -math.inf])
    kept = per_subtree(rejected, 2)
    assert names(kept) == "ab" and not kept[1].expandable


def test_per_subtree_starts_subtrees_from_distinct_root_children():
    from_root = nodes([0, 0, 0, 0], [-2.0, -1.0, -3.0, -0.5])
    assert names(per_subtree(from_root, 3)) == "dba"
    # Fewer distinct children than subtrees: the best ones are shared, in order.
    assert names(per_subtree(from_root[:2], 5)) == "babab"


# --- exactness over LM steps ------------------------------------------------------------

# Factors by letter, distinct; the first letter's weight dominates every later spread.
LETTER_FACTORS = {"": -0.6, "a": 0.0, "b": -1.4, "c": -0.2, "e": -2.5}
LETTER_WEIGHTS = (100.0, 1.0)


@ppl.program
def ranked_letters(lm):
    text, letters = "ab", ()
    for i, weight in enumerate(LETTER_WEIGHTS):
        # A hot proposal reaches every letter; the score is the factors alone.
        letter = ppl.step(f"l{i}", lm, text, stop=(), max_tokens=1, proposal_temperature=30.0)
        ppl.factor(f"f{i}", weight * LETTER_FACTORS[str(letter)])
        text, letters = text + letter, letters + (str(letter),)
    ppl.answer(letters)


def letters_score(letters) -> float:
    return sum(w * LETTER_FACTORS[x] for w, x in zip(LETTER_WEIGHTS, letters, strict=True))


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("k", [1, 3, 7])
def test_lm_beam_with_dominant_early_factors_is_exact_top_k(k):
    ranked = sorted(
        itertools.product(LETTER_FACTORS, repeat=len(LETTER_WEIGHTS)),
        key=lambda x: -letters_score(x),
    )
    post = ppl.beam(ranked_letters, make_tiny_lm(seed=4), beam_width=k, num_expansions=40, seed=2)
    assert post.answers == ranked[:k]
    np.testing.assert_allclose(post.log_weights, [letters_score(x) for x in ranked[:k]])
    # DVTS: subtree i is the greedy path from the i-th best first letter.
    post = ppl.dvts(ranked_letters, make_tiny_lm(seed=4), num_subtrees=k, num_expansions=40, seed=2)
    firsts = sorted(LETTER_FACTORS, key=lambda x: -LETTER_FACTORS[x])
    best_second = firsts[0]
    assert post.answers == [(firsts[i % len(firsts)], best_second) for i in range(k)]


# --- the same seed, the same search, whatever the batching -----------------------------


class OneRowPerPass(TransformersLM):
    """The tiny model serving one step at a time, the latest submitted first.

    Every decode pass holds a single row, and steps end in about the reverse
    of the order a full batch ends them in.
    """

    def __init__(self, seed: int):
        base = make_tiny_lm(seed=seed)
        super().__init__(base.model, base.tokenizer)
        self.queue: deque = deque()
        self.current: tuple[int, int] | None = None  # (our ticket, the running batch's)
        self.next_ticket = 0

    def submit(self, requests, seeds):
        tickets = list(range(self.next_ticket, self.next_ticket + len(requests)))
        self.next_ticket += len(requests)
        self.queue.extend(zip(tickets, requests, seeds, strict=True))
        return tickets

    def advance(self):
        if self.current is None and self.queue:
            ticket, request, seed = self.queue.pop()
            self.current = (ticket, super().submit([request], [seed])[0])
        ended = [(self.current[0], result) for inner, result in super().advance()]
        if ended:
            self.current = None
        return ended

    def cancel(self, tickets):
        self.queue = deque(entry for entry in self.queue if entry[0] not in tickets)
        if self.current is not None and self.current[0] in tickets:
            super().cancel([self.current[1]])
            self.current = None

    @property
    def busy(self):
        return bool(self.queue) or self.current is not None


def search_view(post: ppl.Posterior):
    return (
        post.answers,
        post.log_weights.round(6).tolist(),
        [(r.ancestors, r.texts) for r in post.rounds[0]],
    )


SEARCHES = [(beam, "beam_width", top_k), (dvts, "num_subtrees", per_subtree)]


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(("search", "size", "selector"), SEARCHES)
def test_same_seed_same_search_whatever_shares_the_batch(search, size, selector):
    scorer = ProgrammaticVerifier(fraction_of_a).trace_scorer("ab")
    settings = {size: 3, "num_expansions": 3, "score": scorer, "seed": 7}
    alone_lm = make_tiny_lm(seed=3)
    alone = search_view(search(three_steps, alone_lm, **settings))
    # One row per decode pass, latest first: every step is decoded on its own.
    single_rows = OneRowPerPass(seed=3)
    assert search_view(search(three_steps, single_rows, **settings)) == alone
    assert single_rows.stats.forward_calls > 2 * alone_lm.stats.forward_calls
    # Unrelated long steps decode in the same passes and change every row layout.
    lm = make_tiny_lm(seed=3)
    lm.submit([StepRequest(c, stop=(), max_tokens=12) for c in ["cab", "b", "ca"]], [1, 2, 3])
    assert search_view(search(three_steps, lm, **settings)) == alone
    # Another problem's SMC run shares the scheduler and its decode passes.
    lm = make_tiny_lm(seed=3)
    scheduler = Scheduler()
    runtime = Runtime(three_steps, (lm,), {}, seed=7, method=search.__name__, scheduler=scheduler)
    searching = Search(runtime, 3, 3, selector=selector, score=scorer)
    other = Runtime(three_steps, (lm,), {}, seed=1, method="smc", scheduler=scheduler)
    population = Population(other, 5, resampler=get_resampler("systematic"), ess_threshold=1.0)
    searching.init()
    population.init()
    scheduler.drive([(runtime, searching), (other, population)])
    assert search_view(searching.finish()) == alone
    smc = population.finish()
    assert smc.num_particles == 5 and smc.cost.tokens_generated > 0
    # The two runs shared decode passes: fewer than the search and SMC take one after the other.
    smc_alone_lm = make_tiny_lm(seed=3)
    ppl.smc(three_steps, smc_alone_lm, num_particles=5, ess_threshold=1.0, seed=1)
    assert lm.stats.forward_calls < (
        alone_lm.stats.forward_calls + smc_alone_lm.stats.forward_calls
    )
    assert search_view(search(three_steps, lm, **{**settings, "seed": 8})) != alone


def test_round_hooks_see_every_selection():
    events = []
    with round_hooks(events.append):
        post = ppl.dvts(stepwise_scores, num_subtrees=2, num_expansions=2, seed=0)
    assert [e.index for e in events] == list(range(len(post.rounds[0])))
    assert {e.method for e in events} == {"dvts"}
    for event, rnd in zip(events, post.rounds[0], strict=True):
        assert event.log_weights.tolist() == list(rnd.log_weights)
        assert event.resampled == rnd.resampled


@ppl.program
def stepwise_scores():
    x = int(ppl.sample("x", dist.Categorical(torch.ones(3))))
    ppl.factor("fx", -float(x))
    y = int(ppl.sample("y", dist.Categorical(torch.ones(5))))
    ppl.factor("fy", float(y == x))
    ppl.answer((x, y))


def test_rejected_traces_score_minus_inf_without_asking_the_score_function():
    seen = []

    def score(traces):
        seen.extend(trace.answer for trace in traces)
        return [0.0] * len(traces)

    @ppl.program
    def odd_one_out():
        x = int(ppl.sample("x", dist.Categorical(torch.ones(3))))
        ppl.condition("not_one", x != 1)
        ppl.answer(x)

    post = ppl.beam(odd_one_out, beam_width=3, num_expansions=3, score=score, seed=0)
    assert post.answers == [0, 2] and post.log_weights.tolist() == [0.0, 0.0]
    assert seen == [0, 2] and post.cost.verifier_calls == 2
