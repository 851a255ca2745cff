"""Beam search: exact top-k on enumerable toy programs, and batched LM expansion."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from tiny import make_tiny_lm

import ppl
from models.verifiers import ProgrammaticVerifier

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
