"""Continuous scheduling: speculative SMC stays exact, and draws do not depend on scheduling."""

import math

import pytest
import torch
from exactness import assert_matches_exact, assert_unbiased_evidence
from tiny import VOCAB, make_tiny_lm

import ppl
from ppl.lm import StepRequest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "ab"


@ppl.program
def ragged(lm):
    # The first step ends after one token at "c" or EOS and after two otherwise,
    # so particles reach the resampling barrier at different passes.
    first = ppl.step("first", lm, PROMPT, stop=("c",), max_tokens=2)
    ppl.factor("more_b", 0.9 * first.count("b"))
    second = ppl.step("second", lm, PROMPT + first, stop=(), max_tokens=1)
    ppl.factor("fewer_e", -0.6 * second.count("e"))
    ppl.answer((str(first), str(second)))


def _probs(lm, text: str) -> list[float]:
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([lm.encode(text)])).logits[0, -1]
    return torch.softmax(logits.double(), -1).tolist()


def _first_steps(lm) -> list[tuple[str, float]]:
    steps = []
    for t1, p1 in enumerate(_probs(lm, PROMPT)):
        if t1 == 0 or VOCAB[t1] == "c":
            steps.append(("" if t1 == 0 else "c", p1))
            continue
        for t2, p2 in enumerate(_probs(lm, PROMPT + VOCAB[t1])):
            steps.append((VOCAB[t1] + ("" if t2 == 0 else VOCAB[t2]), p1 * p2))
    return steps


def exact_ragged(lm) -> tuple[dict, float]:
    joint: dict = {}
    for first, p_first in _first_steps(lm):
        for t, p_second in enumerate(_probs(lm, PROMPT + first)):
            second = "" if t == 0 else VOCAB[t]
            log_factor = 0.9 * first.count("b") - 0.6 * second.count("e")
            key = (first, second)
            joint[key] = joint.get(key, 0.0) + p_first * p_second * math.exp(log_factor)
    z = sum(joint.values())
    return {k: w / z for k, w in joint.items()}, math.log(z)


def test_speculative_smc_matches_enumeration():
    lm = make_tiny_lm(seed=1)
    exact, log_z = exact_ragged(lm)
    assert len(exact) > 5 and max(exact.values()) < 0.9
    single = ppl.smc(ragged, lm, num_particles=24, seed=0, ess_threshold=1.0)
    # Early particles drew their second step before the decision, and some of
    # that work was discarded with particles resampled away.
    assert single.info["speculative_choices"] > 0
    assert single.info["discarded_choices"] > 0
    posterior = ppl.run(
        "smc", ragged, lm, num_runs=150, num_particles=24, seed=5, ess_threshold=1.0
    )
    assert_matches_exact(posterior, exact)
    assert_unbiased_evidence(posterior, log_z)


def _summary(posterior):
    return (
        [str(t["first"].value) + "|" + str(t["second"].value) for t in posterior.particles],
        posterior.log_weights.round(6).tolist(),
        [r.ancestors for r in posterior.rounds[0]],
    )


@pytest.mark.parametrize("method", ["smc", "importance"])
def test_same_seed_same_posterior_whatever_shares_the_batch(method):
    engine = getattr(ppl, method)
    alone = engine(ragged, make_tiny_lm(seed=2), num_particles=12, seed=3)
    lm = make_tiny_lm(seed=2)
    # Unrelated long steps decode in the same passes and change every row layout.
    lm.submit([StepRequest(c, stop=(), max_tokens=12) for c in ["cab", "b", "ca"]], [1, 2, 3])
    shared = engine(ragged, lm, num_particles=12, seed=3)
    assert _summary(shared) == _summary(alone)
    assert _summary(engine(ragged, lm, num_particles=12, seed=4)) != _summary(alone)
