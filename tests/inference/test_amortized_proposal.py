"""A logit-bias proposal trained by reweighted wake-sleep, on a tiny random llama: it learns
to avoid a forbidden token, cuts the variance of the evidence and keeps it unbiased."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_learned_twists import optimal_twists
from tiny import VOCAB, make_tiny_lm

import ppl
from inference.variational import LogitBiasProposal, train_logit_bias
from ppl.errors import InvalidArgumentError, SerializationError

K = 8  # one-token steps of the toy program
PROMPT = "b"
NUM_RUNS = 100
NUM_PARTICLES = 64
E = VOCAB.index("e")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@ppl.program
def no_e(lm, prompt, proposal=None):
    text = ""
    for i in range(K):
        token = ppl.step(
            f"t{i}", lm, prompt + text, stop=(), max_tokens=1, logits_processor=proposal
        )
        text += token
        if token.finished:
            break
    ppl.condition("no_e", "e" not in text)
    ppl.answer(text)


@pytest.fixture(scope="module")
def trained():
    lm = make_tiny_lm(8)
    proposal = LogitBiasProposal.for_lm(lm)
    # Module fixtures run outside one_torch_thread; tiny models train faster on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        history = train_logit_bias(
            proposal,
            no_e,
            lm,
            PROMPT,
            proposal,
            num_particles=64,
            num_iterations=60,
            learning_rate=0.2,
            seed=0,
        )
    finally:
        torch.set_num_threads(threads)
    return lm, proposal, history


def test_learned_bias_avoids_the_forbidden_token(trained):
    lm, proposal, history = trained
    assert len(history.ess) == len(history.losses) == 60
    # The first iteration proposes from the model; the last ones from the trained bias.
    assert np.mean(history.ess[-10:]) > 2 * np.mean(history.ess[:10])
    assert int(proposal.bias.argmin()) == E
    prefixes = [PROMPT + p for p in ("", "a", "b", "c", "aa", "ab", "ba", "ca", "cc")]
    model_e = lm.next_token_logprobs(prefixes).exp()[:, E]
    proposal_e = proposal.next_token_logprobs(lm, prefixes).exp()[:, E]
    # After "ba" the model writes "e" with probability 0.79; the proposal rarely does anywhere.
    assert float(model_e.max()) > 0.5
    assert float(proposal_e.max()) < 0.02
    assert torch.all(proposal_e < model_e / 10)


def test_trained_proposal_cuts_evidence_variance_and_stays_unbiased(trained):
    lm, proposal, _ = trained
    exact_z = optimal_twists(lm, PROMPT, K)[""]
    log_z, mean_ess = {}, {}
    for name, q in (("model", None), ("learned", proposal)):
        posteriors = [
            ppl.importance(no_e, lm, PROMPT, q, num_particles=NUM_PARTICLES, seed=s)
            for s in range(NUM_RUNS)
        ]
        log_z[name] = np.array([p.log_evidence for p in posteriors])
        mean_ess[name] = np.mean([p.ess for p in posteriors])
        assert np.all(np.isfinite(log_z[name])), name
        # Unbiased: the mean of Z-hat within 4 standard errors of the exact Z.
        z_hat = np.exp(log_z[name])
        standard_error = z_hat.std(ddof=1) / math.sqrt(NUM_RUNS)
        assert abs(z_hat.mean() - exact_z) < 4 * standard_error, name
    assert log_z["model"].var(ddof=1) >= 2 * log_z["learned"].var(ddof=1)
    assert mean_ess["learned"] > mean_ess["model"]


def test_proposal_round_trips_through_a_file(trained, tmp_path):
    lm, proposal, _ = trained
    proposal.save(tmp_path / "bias.pt")
    loaded = LogitBiasProposal.load(tmp_path / "bias.pt")
    assert loaded.vocab_size == len(VOCAB)
    torch.testing.assert_close(loaded.bias.detach(), proposal.bias.detach(), rtol=0, atol=0)
    # The same draws and weights as the proposal it was saved from.
    before = ppl.importance(no_e, lm, PROMPT, proposal, num_particles=16, seed=3)
    after = ppl.importance(no_e, lm, PROMPT, loaded, num_particles=16, seed=3)
    assert before.answers == after.answers
    np.testing.assert_allclose(before.log_weights, after.log_weights, rtol=0, atol=1e-5)
    (tmp_path / "bad.pt").write_bytes(b"not a proposal")
    with pytest.raises(SerializationError, match="cannot read a logit-bias proposal"):
        LogitBiasProposal.load(tmp_path / "bad.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(SerializationError, match="is not a logit-bias proposal saved by pplscale"):
        LogitBiasProposal.load(tmp_path / "other.pt")


def test_mismatched_vocabulary_and_unused_proposal_raise(tiny_lm):
    wrong = LogitBiasProposal(len(VOCAB) + 2)
    with pytest.raises(InvalidArgumentError, match="covers 7 tokens.*has 5"):
        train_logit_bias(
            wrong, no_e, tiny_lm, PROMPT, wrong, num_particles=4, num_iterations=1, seed=0
        )
    with pytest.raises(InvalidArgumentError, match="covers 7 tokens.*has 5"):
        ppl.importance(no_e, tiny_lm, PROMPT, wrong, num_particles=2, seed=0)
    with pytest.raises(InvalidArgumentError, match="vocab_size must be a positive int"):
        LogitBiasProposal(0)
    unused = LogitBiasProposal.for_lm(tiny_lm)
    with pytest.raises(InvalidArgumentError, match="drew no step with this proposal"):
        train_logit_bias(
            unused, no_e, tiny_lm, PROMPT, None, num_particles=4, num_iterations=1, seed=0
        )
