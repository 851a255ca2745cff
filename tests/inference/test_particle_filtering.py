"""Particle filtering (reward log-odds, resampling every step) against enumeration."""

import sys
from pathlib import Path

import pytest
from exactness import assert_matches_exact
from test_lm_exact import next_token_probs
from tiny import VOCAB, make_tiny_lm

import ppl
from models.verifiers import ProgrammaticVerifier
from ppl.lm import LMStats

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from particle_filtering import solve, step_reward  # noqa: E402

PROMPT = "ab"
SAMPLER = {"temperature": 0.7, "top_k": 3}
reward = ProgrammaticVerifier(
    lambda question, steps: 0.8 if steps[-1] == "c" else 0.3, level="step", aggregate="last"
)


@ppl.program
def two_rewarded_steps(lm, potential):
    """The example's shape on a tiny vocabulary: two steps guided by the reward's odds."""
    lines = []
    for i in range(2):
        line = ppl.step(f"line_{i}", lm, PROMPT + "".join(lines), stop=(), max_tokens=1, **SAMPLER)
        lines.append(str(line))
        score = reward.twist if potential == "latest" and i == 0 else reward.factor
        score(f"reward_{i}", PROMPT, lines, transform="logit")
    ppl.answer(tuple(lines))


def exact(lm, potential: str) -> dict:
    """The sampler times the odds of the last step (latest) or of every step (product)."""

    def odds(line):
        r = 0.8 if line == "c" else 0.3
        return r / (1 - r)

    joint = {}
    for a, p_a in enumerate(next_token_probs(lm, PROMPT, **SAMPLER)):
        first = "" if a == 0 else VOCAB[a]
        for b, p_b in enumerate(next_token_probs(lm, PROMPT + first, **SAMPLER)):
            second = "" if b == 0 else VOCAB[b]
            if p_a * p_b > 0:
                first_odds = odds(first) if potential == "product" else 1.0
                joint[(first, second)] = p_a * p_b * first_odds * odds(second)
    total = sum(joint.values())
    return {k: v / total for k, v in joint.items()}


@pytest.mark.parametrize("potential", ["latest", "product"])
def test_particle_filter_targets_sampler_times_step_odds(potential):
    lm = make_tiny_lm(seed=1)
    target = exact(lm, potential)
    assert len(target) > 3 and max(target.values()) < 0.9  # a non-trivial target
    posterior = ppl.run(
        "smc",
        two_rewarded_steps,
        lm,
        potential,
        num_runs=120,
        num_particles=24,
        ess_threshold=1.0,
        seed=5,
    )
    assert_matches_exact(posterior, target)
    # The two potentials differ enough for the test to tell them apart.
    other = exact(lm, "product" if potential == "latest" else "latest")
    assert max(abs(target[k] - other[k]) for k in target) > 0.05


def test_step_reward_and_potential_errors(tiny_lm):
    assert step_reward("", ("3 + 4 = 7\n",)) == 1.0
    assert step_reward("", ("3 + 4 = 8\n",)) == 0.05
    assert step_reward("", ("2 + 2 = 4\n", "Answer: 5")) == 1.0  # only the newest line counts
    with pytest.raises(ppl.InvalidArgumentError, match="potential must be one of"):
        ppl.smc(solve, tiny_lm, "q", potential="both", num_particles=2)


class ClosesEveryReply(ppl.LM):
    """Every step is one true equation and then the end of the model's reply."""

    def __init__(self):
        self.stats = LMStats()
        self.contexts = []

    def sample_steps(self, requests, *, seed=None):
        self.contexts += [r.context for r in requests]
        return [ppl.StepResult("2 + 2 = 4", (1, 0), -1.0, -1.0, True) for _ in requests]

    def score_steps(self, requests):
        raise NotImplementedError


def test_a_reply_closed_early_goes_on_at_the_next_line():
    lm = ClosesEveryReply()
    posterior = ppl.importance(solve, lm, "What is 2 + 2?", num_particles=1, seed=0)
    # Only "Answer" or the line limit ends a solution, as its_hub prompts a closed reply again.
    assert [site.name for site in posterior.particles[0].steps] == ["line_0", "line_1", "line_2"]
    assert lm.contexts[-1].assistant == "2 + 2 = 4\n2 + 2 = 4\n"
    assert posterior.answers == ["4"]
