"""Bad programs and bad arguments fail loudly, naming what and where."""

import itertools
import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from tiny import make_tiny_lm

import ppl


def coin_flips(n):
    for i in range(n):
        ppl.sample(f"flip{i}", dist.Bernoulli(0.5))


def test_duplicate_site_names_are_rejected():
    @ppl.program
    def looped():
        for _ in range(2):
            ppl.sample("x", dist.Bernoulli(0.5))
        ppl.answer(0)

    with pytest.raises(ppl.DuplicateSiteError, match="'x'"):
        ppl.importance(looped, num_particles=2, seed=0)


def test_duplicate_answer_is_rejected():
    @ppl.program
    def twice():
        ppl.answer(1)
        ppl.answer(2)

    with pytest.raises(ppl.DuplicateSiteError, match="'answer'"):
        ppl.importance(twice, num_particles=1, seed=0)


def test_missing_answer_names_program_and_last_site():
    @ppl.program
    def forgetful():
        coin_flips(2)

    with pytest.raises(ppl.MissingAnswerError, match="forgetful.*flip1"):
        ppl.smc(forgetful, num_particles=3, seed=0)


def test_path_divergence_on_replay_names_the_site():
    calls = itertools.count()

    @ppl.program
    def flaky():
        ppl.sample("x", dist.Bernoulli(0.5))
        if next(calls) % 2:  # hidden state: a different path on re-execution
            ppl.sample("sneaky", dist.Bernoulli(0.5))
        ppl.sample("y", dist.Bernoulli(0.5))
        ppl.answer(0)

    with pytest.raises(ppl.ReplayDivergenceError, match="sneaky|'y'"):
        ppl.smc(flaky, num_particles=2, seed=0)


def test_context_divergence_on_replay_names_the_step(tiny_lm):
    calls = itertools.count()

    @ppl.program
    def drifting(lm):
        s = ppl.step("s0", lm, "a" + "b" * (next(calls) % 2), stop=(), max_tokens=1)
        ppl.step("s1", lm, "a" + s, stop=(), max_tokens=1)
        ppl.answer(0)

    with pytest.raises(ppl.ReplayDivergenceError, match="'s0'"):
        ppl.smc(drifting, tiny_lm, num_particles=1, seed=0)


def test_some_rejected_particles_do_not_abort():
    @ppl.program
    def picky():
        x = int(ppl.sample("x", dist.Categorical(torch.ones(4))))
        ppl.condition("even", x % 2 == 0)
        ppl.answer(x)

    posterior = ppl.smc(picky, num_particles=400, seed=1, ess_threshold=0.0)
    assert np.isneginf(posterior.log_weights).any()
    assert set(posterior.answer_distribution()) == {0, 2}
    assert posterior.log_evidence == pytest.approx(math.log(0.5), abs=0.25)


@pytest.mark.parametrize("method", ["importance", "smc"])
def test_all_rejected_gives_empty_posterior(method):
    @ppl.program
    def impossible():
        ppl.sample("x", dist.Bernoulli(0.5))
        ppl.condition("never", False)
        ppl.sample("unreached", dist.Bernoulli(0.5))
        ppl.answer(0)

    posterior = ppl.run(method, impossible, num_runs=1, num_particles=8, seed=0)
    assert posterior.is_empty and posterior.log_evidence == -math.inf
    assert posterior.answer_distribution() == {}
    assert "empty posterior" in posterior.summary()
    with pytest.raises(ppl.EmptyPosteriorError, match="weight zero"):
        posterior.map_answer()


def test_memo_runs_once_per_particle_and_is_replayed():
    calls = []

    def verifier(x):
        calls.append(x)
        return x * 2

    @ppl.program
    def checked():
        x = int(ppl.sample("x", dist.Categorical(torch.ones(3))))
        doubled = ppl.memo("verify", verifier, x)
        ppl.sample("later_1", dist.Bernoulli(0.5))
        ppl.sample("later_2", dist.Bernoulli(0.5))
        ppl.answer(doubled)

    posterior = ppl.smc(checked, num_particles=6, seed=0, ess_threshold=0.0)
    assert len(calls) == 6 and posterior.cost.verifier_calls == 6
    assert all(t.answer == 2 * int(t["x"].value) for t in posterior.particles)


def test_user_exceptions_propagate_with_the_particle():
    @ppl.program
    def broken():
        x = int(ppl.sample("x", dist.Bernoulli(0.5)))
        raise RuntimeError(f"boom {x}")

    with pytest.raises(RuntimeError, match="boom") as info:
        ppl.importance(broken, num_particles=2, seed=0)
    assert any("particle" in note for note in info.value.__notes__)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: ppl.smc(p, num_particles=0, seed=0), "num_particles"),
        (lambda p: ppl.smc(p, num_particles=4, ess_threshold=1.5, seed=0), "ess_threshold"),
        (lambda p: ppl.smc(p, num_particles=4, resample="bogus", seed=0), "bogus"),
        (lambda p: ppl.smc(p, num_particles=4, rejuvenation_steps=-1, seed=0), "rejuvenation"),
        (lambda p: ppl.run("nope", p, num_runs=2, num_particles=2), "unknown method"),
        (lambda p: ppl.run("smc", p, num_runs=0, num_particles=2), "num_runs"),
    ],
)
def test_invalid_engine_arguments(call, match):
    @ppl.program
    def trivial():
        ppl.answer(0)

    with pytest.raises(ppl.InvalidArgumentError, match=match):
        call(trivial)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 0.0}, "temperature"),
        ({"stop": ("",)}, "stop"),
        ({"context": 42}, "context"),
    ],
)
def test_invalid_step_arguments(kwargs, match):
    lm = make_tiny_lm()
    arguments = {"context": "ab", **kwargs}
    context = arguments.pop("context")
    with pytest.raises(ppl.InvalidArgumentError, match=match):
        ppl.LMStep(lm, context, **arguments)


def test_nan_factor_names_the_site():
    @ppl.program
    def nan_weight():
        ppl.factor("bad_score", float("nan"))
        ppl.answer(0)

    with pytest.raises(ppl.InvalidArgumentError, match="bad_score"):
        ppl.importance(nan_weight, num_particles=1, seed=0)


def test_unhashable_answer_is_rejected():
    @ppl.program
    def listy():
        ppl.answer([1, 2])

    with pytest.raises(ppl.InvalidArgumentError, match="hashable"):
        ppl.importance(listy, num_particles=1, seed=0)


def test_programs_run_directly_outside_inference(tiny_lm):
    @ppl.program
    def direct(lm):
        s = ppl.step("s", lm, "ab", stop=(), max_tokens=2)
        ppl.condition("ignored", False)
        return ppl.answer(str(s))

    text = direct(tiny_lm)
    assert isinstance(text, str) and len(text) <= 2
