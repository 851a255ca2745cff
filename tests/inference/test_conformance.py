"""Every registered engine passes the same checks.

Empty posteriors, the particle error note, the JSON round trip, cost
accounting, reproducibility for a seed, and, where the engine targets the
program's posterior, agreement with exact enumeration.
"""

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from exactness import assert_matches_exact
from tiny import make_tiny_lm

import ppl
from inference.registry import ENGINES

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# What each engine needs beyond its size; sizes are small, for speed.
SETTINGS = {
    "importance": {"num_particles": 6},
    "smc": {"num_particles": 6, "ess_threshold": 1.0},
    "beam": {"beam_width": 3, "num_expansions": 2},
    "dvts": {"num_subtrees": 3, "num_expansions": 2},
    "particle_gibbs": {"num_particles": 3, "num_iterations": 4, "num_chains": 2},
    "mh": {"num_steps": 6, "num_chains": 2},
    "parallel_tempering": {"num_steps": 6, "num_chains": 2},
}
# Engines that search or sample a population can report an empty posterior; chains
# need one valid trace to start from and say which setting to raise instead.
CHAINS = {
    "particle_gibbs": "num_particles",
    "mh": "init_particles",
    "parallel_tempering": "init_particles",
}
WEIGHTS = [0.5, 0.3, 0.2]
LOG_FACTORS = [0.0, -1.2, 0.8]


def run(name, program, *args, seed=0, **overrides):
    engine = ENGINES[name]
    return engine.fn(program, *args, seed=seed, **{**SETTINGS[name], **overrides})


def test_every_engine_is_covered():
    assert set(SETTINGS) == set(ENGINES)


@ppl.program
def impossible():
    x = ppl.sample("x", dist.Categorical(torch.ones(2)))
    ppl.condition("never", False)
    ppl.answer(int(x))


@pytest.mark.parametrize("name", list(ENGINES))
def test_every_particle_rejected(name):
    if name in CHAINS:
        with pytest.raises(ppl.EmptyPosteriorError, match=CHAINS[name]):
            run(name, impossible)
        return
    posterior = run(name, impossible)
    assert posterior.is_empty and posterior.answer_distribution() == {}
    with pytest.raises(ppl.EmptyPosteriorError):
        posterior.map_answer()


@ppl.program
def broken():
    x = int(ppl.sample("x", dist.Bernoulli(0.5)))
    raise RuntimeError(f"boom {x}")


@pytest.mark.parametrize("name", list(ENGINES))
def test_errors_carry_the_particle_note(name):
    with pytest.raises(RuntimeError, match="boom") as info:
        run(name, broken)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "while running program 'broken'" in notes


@ppl.program
def story(lm):
    first = ppl.step("first", lm, "ab", stop=("c",), max_tokens=3)
    checked = ppl.memo("length", len, str(first))
    ppl.factor("short", -0.3 * checked)
    second = ppl.step("second", lm, "ab" + first, stop=(), max_tokens=2)
    ppl.answer(str(second)[:1])


@pytest.fixture(scope="module")
def lm():
    return make_tiny_lm(seed=2)


@pytest.mark.parametrize("name", list(ENGINES))
def test_cost_round_trip_and_seed(name, lm, tmp_path):
    posterior = run(name, story, lm, seed=3)
    cost = posterior.cost
    assert cost.tokens_generated > 0 and cost.lm_calls > 0 and cost.wall_seconds > 0
    assert cost.verifier_calls > 0
    path = tmp_path / "posterior.json"
    posterior.save(path)
    loaded = ppl.Posterior.load(path)
    assert loaded.answers == posterior.answers and loaded.method == posterior.method
    np.testing.assert_array_equal(loaded.log_weights, posterior.log_weights)
    assert loaded.cost == posterior.cost
    again = run(name, story, lm, seed=3)
    assert again.answers == posterior.answers
    np.testing.assert_array_equal(again.log_weights, posterior.log_weights)
    assert [str(t["first"].value) for t in again.particles] == [
        str(t["first"].value) for t in posterior.particles
    ]


@ppl.program
def weighted():
    x = int(ppl.sample("x", dist.Categorical(torch.tensor(WEIGHTS))))
    ppl.factor("f", LOG_FACTORS[x])
    y = int(ppl.sample("y", dist.Bernoulli(0.3 + 0.2 * x)))
    ppl.condition("not_both", not (x == 2 and y == 1))
    ppl.answer((x, y))


def exact_weighted() -> dict:
    joint = {}
    for x, w in enumerate(WEIGHTS):
        for y in (0, 1):
            if x == 2 and y == 1:
                continue
            p_y = 0.3 + 0.2 * x
            joint[(x, y)] = w * math.exp(LOG_FACTORS[x]) * (p_y if y else 1 - p_y)
    z = sum(joint.values())
    return {a: p / z for a, p in joint.items()}


EXACT_SETTINGS = {
    "importance": {"num_runs": 60, "num_particles": 16},
    "smc": {"num_runs": 60, "num_particles": 16, "ess_threshold": 1.0},
    "particle_gibbs": {"num_runs": 12, "num_particles": 4, "num_iterations": 150},
    "mh": {"num_runs": 12, "num_steps": 300},
    "parallel_tempering": {"num_runs": 12, "num_steps": 200},
}


@pytest.mark.parametrize("name", [n for n, e in ENGINES.items() if e.exact])
def test_exact_engines_match_enumeration(name):
    settings = {**SETTINGS[name], **EXACT_SETTINGS[name]}
    if name in CHAINS:
        settings["num_chains"] = 1
    posterior = ppl.run(name, weighted, seed=11, **settings)
    assert_matches_exact(posterior, exact_weighted())


def test_search_engines_are_not_marked_exact():
    assert {n for n, e in ENGINES.items() if not e.exact} == {"beam", "dvts"}
