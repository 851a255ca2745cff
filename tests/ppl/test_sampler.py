"""The sampler as the target: temperature, top-k and top-p as practitioners sample."""

import math

import pytest
import torch
from test_lm_exact import PROMPT, sampler_probs
from tiny import make_tiny_lm
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import ppl
from ppl.sampler import Sampler, proposal_log_probs, target_log_probs

SETTINGS = [
    Sampler(),
    Sampler(0.7),
    Sampler(1.0, top_k=1),
    Sampler(0.7, top_k=50),
    Sampler(1.3, top_p=0.9),
    Sampler(0.6, top_k=20, top_p=0.8),
    Sampler(2.0, top_p=0.05),
]


def hf_log_probs(logits: torch.Tensor, sampler: Sampler) -> torch.Tensor:
    """What Hugging Face ``generate`` samples from, warper by warper."""
    scores = TemperatureLogitsWarper(sampler.temperature)(None, logits.clone())
    if sampler.top_k is not None:
        scores = TopKLogitsWarper(sampler.top_k)(None, scores)
    if sampler.top_p is not None:
        scores = TopPLogitsWarper(sampler.top_p)(None, scores)
    return torch.log_softmax(scores, dim=-1)


def test_target_is_what_hugging_face_generate_samples_from():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(len(SETTINGS), 200, generator=generator)
    ours = target_log_probs(logits, SETTINGS)
    for row, sampler in enumerate(SETTINGS):
        theirs = hf_log_probs(logits[row : row + 1], sampler)[0]
        assert torch.equal(ours[row] > -math.inf, theirs > -math.inf), sampler
        kept = theirs > -math.inf
        torch.testing.assert_close(ours[row][kept], theirs[kept], atol=1e-5, rtol=0)


def test_target_matches_an_independent_reference_with_ties():
    logits = torch.tensor([[2.0, 2.0, 1.0, 1.0, 1.0, -1.0, 0.5]] * 4, dtype=torch.float64)
    samplers = [Sampler(top_k=1), Sampler(top_k=3), Sampler(0.5, top_p=0.5), Sampler(top_p=0.999)]
    ours = target_log_probs(logits, samplers).exp()
    for row, s in enumerate(samplers):
        expected = sampler_probs(logits[row].tolist(), s.temperature, s.top_k, s.top_p)
        assert ours[row].tolist() == pytest.approx(expected, abs=1e-6)
    # Ties at the cut are kept: top_k=1 keeps both maxima, top_k=3 all three 1.0s.
    assert (ours[0] > 0).sum() == 2 and (ours[1] > 0).sum() == 5


def test_proposal_covers_exactly_the_target_support():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    samplers = [Sampler(0.7, top_k=5), Sampler(top_p=0.5), Sampler()]
    log_p = target_log_probs(logits, samplers)
    log_q = proposal_log_probs(logits, [1.5, 0.3, 2.0], log_p)
    assert torch.equal(log_q > -math.inf, log_p > -math.inf)
    torch.testing.assert_close(log_q.exp().sum(1), torch.ones(3))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"temperature": 0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"proposal_temperature": -1.0}, "proposal_temperature"),
    ],
)
def test_bad_sampler_settings_are_clear_errors(tiny_lm, settings, message):
    @ppl.program
    def one_step(lm):
        ppl.answer(str(ppl.step("s", lm, PROMPT, max_tokens=1, **settings)))

    with pytest.raises(ppl.InvalidArgumentError, match=message):
        ppl.importance(one_step, tiny_lm, num_particles=2, seed=0)


def test_sampled_steps_are_scored_under_their_sampler():
    lm = make_tiny_lm(seed=2)
    request = ppl.StepRequest(PROMPT, stop=(), max_tokens=4, temperature=0.6, top_k=3, top_p=0.9)
    results = lm.sample_steps([request] * 32, seed=0)
    scores = make_tiny_lm(seed=2).score_steps([request.score_request(r.token_ids) for r in results])
    assert [r.logp for r in results] == pytest.approx(scores, abs=1e-4)
    assert all(r.logq == r.logp for r in results)  # the sampler is the proposal


def test_untempered_target_with_a_proposal_temperature_is_the_old_proposal_only_form():
    lm = make_tiny_lm(seed=2)
    tempered = ppl.StepRequest(PROMPT, stop=(), max_tokens=3, proposal_temperature=0.5)
    results = lm.sample_steps([tempered] * 16, seed=3)
    plain = make_tiny_lm(seed=2).score_steps(
        [ppl.ScoreRequest(PROMPT, r.token_ids) for r in results]
    )
    assert [r.logp for r in results] == pytest.approx(plain, abs=1e-4)
    cold = make_tiny_lm(seed=2).score_steps(
        [ppl.ScoreRequest(PROMPT, r.token_ids, temperature=0.5) for r in results]
    )
    assert [r.logq for r in results] == pytest.approx(cold, abs=1e-4)


def test_answer_is_a_reserved_site_name(tiny_lm):
    @ppl.program
    def named_answer(lm):
        ppl.answer(str(ppl.step("answer", lm, PROMPT, max_tokens=1)))

    with pytest.raises(ppl.InvalidArgumentError, match="reserved for ppl.answer"):
        ppl.importance(named_answer, tiny_lm, num_particles=2, seed=0)
