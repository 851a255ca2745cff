"""Engines against exact enumeration on programs of plain Pyro distributions."""

import itertools
import math

import pyro.distributions as dist
import pytest
import torch
from exactness import assert_matches_exact, assert_unbiased_evidence

import ppl
from inference import RESAMPLERS

PRIOR = [0.5, 0.3, 0.2]
TRANSITION = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]]
BIAS = 0.4
LOG_F0 = [math.log(0.2), math.log(0.9), math.log(0.6)]
LOG_F1 = [[0.0, -1.0, -0.5], [-2.0, 0.3, 0.0], [-0.2, -0.4, 0.5]]
TWIST_1 = [-1.0, 0.5, 0.2]
TWIST_2 = [[0.3, -0.7, 0.1], [-1.5, 0.4, 0.0], [0.6, -0.2, -0.9]]
TEMPERATURE = 1.7


def _categorical(probs, tempered):
    probs = torch.tensor(probs)
    if tempered:
        probs = probs ** (1 / TEMPERATURE)
        probs = probs / probs.sum()
    return dist.Categorical(probs)


@ppl.program
def chain(use_twist: bool, tempered: bool):
    x0 = int(ppl.sample("x0", _categorical(PRIOR, False), proposal=_categorical(PRIOR, tempered)))
    ppl.factor("f0", LOG_F0[x0])
    if use_twist:
        ppl.twist(TWIST_1[x0])
    row = TRANSITION[x0]
    x1 = int(ppl.sample("x1", _categorical(row, False), proposal=_categorical(row, tempered)))
    ppl.factor("f1", LOG_F1[x0][x1])
    if use_twist:
        ppl.twist(TWIST_2[x0][x1])
    x2 = int(ppl.sample("x2", dist.Bernoulli(BIAS)))
    ppl.condition("not_2_and_1", not (x1 == 2 and x2 == 1))
    ppl.answer((x0, x1 + x2))


def exact_chain() -> tuple[dict, float]:
    joint: dict = {}
    for x0, x1, x2 in itertools.product(range(3), range(3), range(2)):
        if x1 == 2 and x2 == 1:
            continue
        weight = (
            PRIOR[x0]
            * TRANSITION[x0][x1]
            * (BIAS if x2 else 1 - BIAS)
            * math.exp(LOG_F0[x0] + LOG_F1[x0][x1])
        )
        joint[(x0, x1 + x2)] = joint.get((x0, x1 + x2), 0.0) + weight
    z = sum(joint.values())
    return {a: w / z for a, w in joint.items()}, math.log(z)


CASES = [
    ("importance", {}, False, False),
    ("importance", {}, False, True),
    *[("smc", {"resample": s, "ess_threshold": 1.0}, False, False) for s in RESAMPLERS],
    ("smc", {"resample": "systematic", "ess_threshold": 1.0}, True, False),
    ("smc", {"resample": "systematic", "ess_threshold": 1.0}, False, True),
    ("smc", {"resample": "multinomial", "ess_threshold": 0.5}, True, True),
]


@pytest.mark.parametrize(("method", "options", "use_twist", "tempered"), CASES)
def test_posterior_and_evidence_match_enumeration(method, options, use_twist, tempered):
    exact, log_z = exact_chain()
    posterior = ppl.run(
        method, chain, use_twist, tempered, num_runs=150, num_particles=16, seed=7, **options
    )
    assert_matches_exact(posterior, exact)
    assert_unbiased_evidence(posterior, log_z)
    if method == "smc":
        assert any(r.resampled for rounds in posterior.rounds for r in rounds)


def test_twists_change_resampling_but_not_target():
    plain = ppl.smc(chain, False, False, num_particles=64, seed=3, ess_threshold=1.0)
    twisted = ppl.smc(chain, True, False, num_particles=64, seed=3, ess_threshold=1.0)
    assert plain.rounds[0][1].log_weights != twisted.rounds[0][1].log_weights
    for posterior in (plain, twisted):
        for trace, log_weight in zip(posterior.particles, posterior.log_weights, strict=True):
            if log_weight > -math.inf:
                assert trace.has_answer
