"""SVI over meta-choices: exact posteriors on toy programs, and the guide as an exact proposal."""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from tiny import make_tiny_lm

import ppl
from inference.variational import Categorical, Guide, LogNormal, Normal, guided, svi
from ppl.errors import InvalidArgumentError

PRIOR = torch.tensor([0.5, 0.3, 0.2])
PROMPTS = ["a", "c", "ba"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@ppl.program
def choose(lm):
    strategy = int(ppl.sample("strategy", dist.Categorical(PRIOR)))
    step = ppl.step("solution", lm, PROMPTS[strategy], stop=(), max_tokens=2)
    ppl.factor("verifier", math.log(0.9 if "e" in step else 0.05))
    ppl.answer(strategy)


def exact_posterior(lm) -> tuple[float, list[float]]:
    """Evidence and posterior over the strategy, enumerating every two-token step."""
    steps = [(0,)] + [(i, j) for i in range(1, 5) for j in range(5)]  # <eos> ends a step
    joint = []
    for strategy, prompt in enumerate(PROMPTS):
        log_p = lm.score_steps([ppl.ScoreRequest(prompt, s) for s in steps])
        likelihood = sum(
            math.exp(lp) * (0.9 if 4 in s else 0.05) for lp, s in zip(log_p, steps, strict=True)
        )
        joint.append(float(PRIOR[strategy]) * likelihood)
    evidence = sum(joint)
    return evidence, [j / evidence for j in joint]


def test_inclusive_svi_recovers_the_exact_posterior_and_the_guide_proposes_exactly():
    lm = make_tiny_lm(1)
    evidence, posterior = exact_posterior(lm)
    guide = Guide(strategy=Categorical(3))
    result = svi(
        choose, lm, guide=guide, num_steps=200, num_particles=32, seed=0, learning_rate=0.1
    )
    fitted = guide.probabilities("strategy")
    total_variation = 0.5 * sum(abs(fitted[k] - posterior[k]) for k in range(3))
    assert total_variation <= 0.05
    assert np.mean(result.ess[-20:]) > np.mean(result.ess[:5])

    # As a proposal: weights log p - log q at the guided site, unbiased evidence, exact answers.
    proposal = guided(choose, guide)
    runs = [ppl.importance(proposal, lm, num_particles=16, seed=s) for s in range(200)]
    site = runs[0].particles[0]["strategy"]
    q = guide.distribution("strategy").log_prob(site.value).item()
    assert site.log_weight == pytest.approx(math.log(PRIOR[int(site.value)]) - q, abs=1e-6)
    z_hat = np.exp([r.log_evidence for r in runs])
    assert abs(z_hat.mean() - evidence) < 4 * z_hat.std(ddof=1) / math.sqrt(len(runs))
    pooled = ppl.run("importance", proposal, lm, num_runs=4, num_particles=256, seed=1)
    answers = pooled.answer_distribution()
    for strategy in range(3):
        assert answers.get(strategy, 0.0) == pytest.approx(posterior[strategy], abs=0.05)


@ppl.program
def gaussian(observed):
    x = ppl.sample("x", dist.Normal(0.0, 1.0))
    ppl.observe("y", dist.Normal(x, 1.0), torch.tensor(observed))
    ppl.answer(0)


def test_elbo_svi_recovers_a_conjugate_posterior():
    # x ~ N(0, 1), y | x ~ N(x, 1), y = 1: the posterior is N(0.5, 1/2).
    guide = Guide(x=Normal(0.0, 1.0))
    svi(
        gaussian,
        1.0,
        guide=guide,
        num_steps=300,
        num_particles=16,
        objective="elbo",
        learning_rate=0.05,
        seed=0,
    )
    fitted = guide.distribution("x")
    assert fitted.loc.item() == pytest.approx(0.5, abs=0.1)
    assert fitted.scale.item() == pytest.approx(math.sqrt(0.5), abs=0.1)


def test_guide_families_and_errors(tiny_lm):
    temperature = LogNormal(0.0, 0.5).distribution()
    assert temperature.support.check(temperature.sample()).item()
    with pytest.raises(InvalidArgumentError, match="objective"):
        svi(choose, tiny_lm, guide=Guide(strategy=Categorical(3)), num_steps=1, objective="x")
    with pytest.raises(InvalidArgumentError, match="needs a family"):
        Guide(strategy=3)
    with pytest.raises(InvalidArgumentError, match="num_categories"):
        Categorical(1)

    @ppl.program
    def rejecting(lm):
        strategy = int(ppl.sample("strategy", dist.Categorical(PRIOR)))
        ppl.condition("reject", strategy == 0)
        ppl.answer(strategy)

    with pytest.raises(InvalidArgumentError, match="objective='inclusive'"):
        svi(
            rejecting,
            tiny_lm,
            guide=Guide(strategy=Categorical(3)),
            num_steps=2,
            num_particles=32,
            objective="elbo",
            seed=0,
        )
