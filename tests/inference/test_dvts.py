"""DVTS: independent greedy subtrees, checked against brute force on enumerable toy programs."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import cli_programs
import numpy as np
import pyro.distributions as dist
import pytest
import torch
from click.testing import CliRunner
from test_beam import fraction_of_a, three_steps
from tiny import make_tiny_lm

import ppl
from models.verifiers import ProgrammaticVerifier
from ppl.cli import main
from ppl.cli.loading import load_program
from ppl.cli.report import rundir

NUM_VALUES = 3
DEPTH = 3
PRIOR = torch.tensor([0.5, 0.3, 0.2])
_generator = torch.Generator().manual_seed(16)
# STEP_SCORES[t][x0, ..., xt]: the factor entered after choice t, random so greedy has no ties.
STEP_SCORES = [torch.randn((NUM_VALUES,) * (t + 1), generator=_generator) for t in range(DEPTH)]


@ppl.program
def stepwise(with_prior: bool):
    """A verifier score after every choice: a deterministic process reward."""
    xs = ()
    for t in range(DEPTH):
        prior = PRIOR if with_prior else torch.ones(NUM_VALUES)
        xs += (int(ppl.sample(f"x{t}", dist.Categorical(prior))),)
        ppl.factor(f"f{t}", float(STEP_SCORES[t][xs]))
    ppl.answer(xs)


def path_score(xs: tuple[int, ...], include_prior: bool) -> float:
    total = sum(float(STEP_SCORES[t][xs[: t + 1]]) for t in range(len(xs)))
    if include_prior:
        total += sum(math.log(PRIOR[x]) for x in xs)
    return total


def greedy_from(root: int, include_prior: bool) -> tuple[int, ...]:
    """Brute force: from ``root``, repeatedly take the best-scored child."""
    path = (root,)
    while len(path) < DEPTH:
        path = max(
            (path + (x,) for x in range(NUM_VALUES)), key=lambda p: path_score(p, include_prior)
        )
    return path


def chains(post: ppl.Posterior) -> list[list[tuple]]:
    """Each final slot's ancestry in the genealogy, root excluded."""
    graph = post.genealogy
    final_round = len(post.rounds[0]) - 1
    result = []
    for slot in range(post.num_particles):
        node, chain = (0, final_round, slot), []
        while node[1] > 0:
            chain.append(node)
            node = next(iter(graph.predecessors(node)))
        result.append(chain)
    return result


def test_toy_is_not_solved_by_greedy_search():
    """Greedy from some root misses its best leaf, so the checks below are not exhaustive search."""
    best = {
        root: max(
            ((root,) + rest for rest in itertools.product(range(NUM_VALUES), repeat=DEPTH - 1)),
            key=lambda p: path_score(p, False),
        )
        for root in range(NUM_VALUES)
    }
    assert any(greedy_from(root, False) != best[root] for root in range(NUM_VALUES))


@pytest.mark.parametrize("num_subtrees", [1, 2, 3, 5])
@pytest.mark.parametrize("score", ["likelihood", "posterior"])
def test_each_subtree_is_the_greedy_path_from_its_own_root(num_subtrees, score):
    include_prior = score == "posterior"
    post = ppl.dvts(
        stepwise,
        include_prior,
        num_subtrees=num_subtrees,
        num_expansions=NUM_VALUES,
        score=score,
        seed=0,
    )
    # Roots: the best-scored first choices, distinct while there are enough of them.
    ranked = sorted(range(NUM_VALUES), key=lambda x: -path_score((x,), include_prior))
    roots = [ranked[i % NUM_VALUES] for i in range(num_subtrees)]
    expected = [greedy_from(root, include_prior) for root in roots]
    assert post.method == "dvts" and post.info["num_subtrees"] == num_subtrees
    assert post.answers == expected
    np.testing.assert_allclose(
        post.log_weights, [path_score(xs, include_prior) for xs in expected], rtol=1e-6
    )
    assert post.best_of_n_answer() == max(expected, key=lambda p: path_score(p, include_prior))
    assert math.isnan(post.log_evidence)


def test_subtrees_share_no_node():
    post = ppl.dvts(stepwise, False, num_subtrees=3, num_expansions=NUM_VALUES, seed=0)
    paths = chains(post)
    nodes = [set(chain) for chain in paths]
    assert all(a.isdisjoint(b) for a, b in itertools.combinations(nodes, 2))
    # After the first round every node descends from its own subtree's slot.
    for rnd in post.rounds[0][2:]:
        assert rnd.ancestors == (0, 1, 2)
    assert post.rounds[0][1].ancestors == (0, 0, 0)
    roots = [post.genealogy.nodes[chain[-1]]["text"] for chain in paths]
    assert sorted(roots) == ["0", "1", "2"]


def test_beam_keeps_the_global_best_where_dvts_keeps_diversity():
    beam = ppl.beam(stepwise, False, beam_width=3, num_expansions=NUM_VALUES, seed=0)
    dvts = ppl.dvts(stepwise, False, num_subtrees=3, num_expansions=NUM_VALUES, seed=0)
    assert len({xs[0] for xs in dvts.answers}) == NUM_VALUES
    assert beam.answers != dvts.answers


@ppl.program
def dead_end():
    """Every completion of first choice 2 is rejected before its last choice."""
    x = int(ppl.sample("x", dist.Categorical(torch.ones(3))))
    ppl.factor("prefer", -float(x))
    y = int(ppl.sample("y", dist.Bernoulli(0.5)))
    ppl.factor("second", float(y))
    ppl.condition("allowed", x != 2)
    z = int(ppl.sample("z", dist.Bernoulli(0.5)))
    ppl.factor("third", 2.0 * z)
    ppl.answer((x, y, z))


def test_rejected_subtree_stops_and_others_continue():
    post = ppl.dvts(dead_end, num_subtrees=3, num_expansions=3, seed=0)
    assert post.answers[:2] == [(0, 1, 1), (1, 1, 1)]
    np.testing.assert_allclose(post.log_weights[:2], [3.0, 2.0])
    # The rejected subtree is not expanded further: it never reaches z.
    assert post.log_weights[2] == -math.inf and post.answers[2] is None
    assert [site.name for site in post.particles[2].sites if site.kind == "sample"] == ["x", "y"]
    assert post.rounds[0][-1].texts[2] is None
    assert post.best_of_n_answer() == (0, 1, 1)
    assert post.answer_distribution().keys() == {(0, 1, 1), (1, 1, 1)}


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"num_subtrees": 0, "num_expansions": 2}, "num_subtrees must be a positive integer"),
        ({"num_subtrees": 2.0, "num_expansions": 2}, "num_subtrees must be a positive integer"),
        ({"num_subtrees": True, "num_expansions": 2}, "num_subtrees must be a positive integer"),
        ({"num_subtrees": 2, "num_expansions": -1}, "num_expansions must be a positive integer"),
        ({"num_subtrees": 2, "num_expansions": 2, "score": "best"}, "unknown beam score"),
        ({"num_subtrees": 2, "num_expansions": 2, "score": 3}, "callable"),
    ],
)
def test_bad_arguments_are_rejected(options, match):
    with pytest.raises(ppl.InvalidArgumentError, match=match):
        ppl.dvts(stepwise, False, **options)


# --- over LM steps ------------------------------------------------------------------


def test_lm_subtrees_expand_in_one_batched_call_per_round():
    lm = make_tiny_lm(seed=3)
    verifier = ProgrammaticVerifier(fraction_of_a)
    num_subtrees, num_expansions = 3, 4
    post = ppl.dvts(
        three_steps,
        lm,
        num_subtrees=num_subtrees,
        num_expansions=num_expansions,
        score=verifier.trace_scorer("ab"),
        seed=1,
    )
    # The root plus one round per step site; each round is one batched sample call.
    assert len(post.rounds[0]) == 4
    assert lm.stats.sample_calls == post.cost.lm_calls == 3
    # Every round draws num_subtrees * num_expansions steps of at most two tokens.
    budget = num_subtrees * num_expansions
    assert 3 * budget <= post.cost.tokens_generated <= 2 * 3 * budget
    assert post.num_particles == num_subtrees
    first_steps = [trace.steps[0].value for trace in post.particles]
    assert len(set(first_steps)) == num_subtrees
    expected = [
        math.log(fraction_of_a("ab", [s.value for s in trace.steps])) for trace in post.particles
    ]
    np.testing.assert_allclose(post.log_weights, expected)
    assert post.cost.verifier_calls == verifier.calls
    # The root's children are merged before roots are picked, later ones within a subtree.
    assert verifier.calls <= 3 * budget
    assert all(len(chain) == 3 for chain in chains(post))
    again = ppl.dvts(
        three_steps,
        lm,
        num_subtrees=num_subtrees,
        num_expansions=num_expansions,
        score=verifier.trace_scorer("ab"),
        seed=1,
    )
    assert again.answers == post.answers


# --- command line -------------------------------------------------------------------

PROGRAMS = Path(cli_programs.__file__)


def test_cli_runs_dvts_with_particles_as_subtrees(tmp_path):
    args = ["run", f"{PROGRAMS}:toy", "--model", "none", "--method", "dvts", "--seed", "3"]
    result = CliRunner().invoke(
        main, [*args, "--particles", "2", "--param", "num_expansions=3", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    saved = rundir.load_run(tmp_path).posterior
    direct = ppl.dvts(load_program(f"{PROGRAMS}:toy"), None, num_subtrees=2, num_expansions=3)
    # The toy's factor prefers x0 over x1 over x2: the two subtrees start from x0 and x1.
    assert saved.method == "dvts" and saved.answers == direct.answers == ["x0", "x1"]
    np.testing.assert_allclose(saved.log_weights, [0.0, -1.0])
    clash = CliRunner().invoke(
        main, [*args, "--param", "num_subtrees=2", "--out", str(tmp_path / "b")]
    )
    assert clash.exit_code == 1 and "set num_subtrees with --particles" in clash.stderr
    missing = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "c")])
    assert missing.exit_code == 1
    assert "method 'dvts' needs --param num_expansions=VALUE" in missing.stderr
