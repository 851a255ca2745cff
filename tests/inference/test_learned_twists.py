"""Learned twists on a tiny random llama: hidden states from the sampling loop, exactness,
and variance reduction against the known optimal twist of a toy program."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny import make_tiny_lm

import ppl
from inference.variational import TwistHead, collect_twist_data, fit_twist
from ppl.errors import CapabilityError, InvalidArgumentError, SerializationError

K = 8  # one-token steps of the toy program
PROMPT = "b"
NUM_RUNS = 100
NUM_PARTICLES = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def optimal_twists(lm, prompt: str, depth: int) -> dict[str, float]:
    """P(no "e" in the final text | prefix) for every e-free prefix, by enumeration."""
    levels, probs = [[""]], {}
    for _ in range(depth):
        contexts = levels[-1]
        for prefix, row in zip(
            contexts, lm.next_token_logprobs([prompt + p for p in contexts]).exp(), strict=True
        ):
            probs[prefix] = row.tolist()  # vocabulary: <eos>, a, b, c, e
        levels.append([p + c for p in contexts for c in "abc"])
    psi = dict.fromkeys(levels[depth], 1.0)
    for level in reversed(levels[:depth]):
        for prefix in level:
            row = probs[prefix]
            psi[prefix] = row[0] + sum(
                row[i] * psi[prefix + c] for i, c in ((1, "a"), (2, "b"), (3, "c"))
            )
    return psi


@ppl.program
def no_e(lm, head, prompt, proposal=None):
    text = ""
    for i in range(K):
        token = ppl.step(
            f"t{i}", lm, prompt + text, stop=(), max_tokens=1, logits_processor=proposal
        )
        if head is not None:
            ppl.learned_twist(f"psi{i}", head, lm, prompt + text, token)
        text += token
        if token.finished:
            break
    ppl.condition("no_e", "e" not in text)
    ppl.answer(text)


def test_kept_hidden_states_match_a_fresh_pass_and_predict_the_last_token():
    lm = make_tiny_lm(0)
    lm.keep_hidden_states = True
    requests = [ppl.StepRequest("ab", stop=(), max_tokens=k) for k in (1, 2, 3, 5, 5, 5, 5, 5)]
    results = lm.sample_steps(requests, seed=1)
    steps = [(r.context, x.token_ids) for r, x in zip(requests, results, strict=True)]
    kept = lm.step_features(steps)
    assert lm.hidden_state_misses == 0 and kept.shape == (8, 64)

    fresh = make_tiny_lm(0)  # same weights, nothing kept: features need their own pass
    recomputed = fresh.step_features(steps)
    assert fresh.hidden_state_misses == 8
    torch.testing.assert_close(kept, recomputed, atol=1e-5, rtol=1e-5)

    # The kept state is the one whose prediction drew the step's last token.
    with torch.no_grad():
        log_p = torch.log_softmax(lm.model.lm_head(kept[:, :32]), dim=-1)
    scores = lm.score_steps(
        [
            ppl.ScoreRequest(r.context + lm.decode(x.token_ids[:-1]), x.token_ids[-1:])
            for r, x in zip(requests, results, strict=True)
        ]
    )
    for row, (result, score) in enumerate(zip(results, scores, strict=True)):
        assert float(log_p[row, result.token_ids[-1]]) == pytest.approx(score, abs=1e-5)
    # The second half of the features is the last token's input embedding.
    embedding = lm.model.get_input_embeddings().weight
    torch.testing.assert_close(kept[:, 32:], embedding[[x.token_ids[-1] for x in results]].detach())


def test_keeping_hidden_states_changes_no_sample():
    plain, keeping = make_tiny_lm(0), make_tiny_lm(0)
    keeping.keep_hidden_states = True
    requests = [ppl.StepRequest(c, stop=("c",), max_tokens=6) for c in ("a", "ab", "ba", "a")]
    assert plain.sample_steps(requests, seed=3) == keeping.sample_steps(requests, seed=3)
    assert plain._kept_hidden is None


def test_learned_twists_cut_log_evidence_variance_and_stay_unbiased():
    lm = make_tiny_lm(8)
    psi = optimal_twists(lm, PROMPT, K)
    exact_z = psi[""]
    head = TwistHead.for_lm(lm, hidden_size=32)
    data = collect_twist_data(head, no_e, lm, head, PROMPT, num_particles=600, seed=0)
    # Labels are the rollouts' outcomes: each is 1 exactly when the text has no "e".
    assert set(data.labels.tolist()) == {0.0, 1.0} and torch.all(data.weights == 1)
    fit_twist(head, data)

    # The learned twist approximates the optimal one, on average over short prefixes.
    prefixes = [p for p in psi if 1 <= len(p) <= 3]
    ids = [tuple(1 + "abc".index(c) for c in p) for p in prefixes]
    prior = np.exp(lm.score_steps([ppl.ScoreRequest(PROMPT, i) for i in ids]))
    steps = [(PROMPT + p[:-1], i[-1:]) for p, i in zip(prefixes, ids, strict=True)]
    with torch.no_grad():
        learned = head.log_psi(lm.step_features(steps)).exp().numpy()
    optimal = np.array([psi[p] for p in prefixes])
    assert np.average(np.abs(learned - optimal), weights=prior) < 0.1

    proposal = head.proposal(lm)
    runs = {"none": (None, None), "learned": (head, proposal)}
    log_z, final_ess = {}, {}
    for name, (twist_head, twist_proposal) in runs.items():
        posteriors = [
            ppl.smc(
                no_e, lm, twist_head, PROMPT, twist_proposal, num_particles=NUM_PARTICLES, seed=s
            )
            for s in range(NUM_RUNS)
        ]
        log_z[name] = np.array([p.log_evidence for p in posteriors])
        final_ess[name] = np.mean([p.ess for p in posteriors])
        assert np.all(np.isfinite(log_z[name]))
        # Unbiased: mean of Z-hat within 4 standard errors of the exact Z.
        z_hat = np.exp(log_z[name])
        standard_error = z_hat.std(ddof=1) / math.sqrt(NUM_RUNS)
        assert abs(z_hat.mean() - exact_z) < 4 * standard_error + 1e-3, name
    assert log_z["none"].var(ddof=1) >= 2 * log_z["learned"].var(ddof=1)
    assert final_ess["learned"] > final_ess["none"]


def test_posterior_with_learned_twist_matches_exact_answers():
    lm = make_tiny_lm(8)
    head = TwistHead.for_lm(lm)
    fit_twist(head, collect_twist_data(head, no_e, lm, head, PROMPT, num_particles=200, seed=1))
    psi = optimal_twists(lm, PROMPT, K)
    # P(first token is "a" | no e) from the optimal twists of the one-token prefixes.
    first = lm.next_token_logprobs([PROMPT])[0].exp().tolist()
    exact = first[1] * psi["a"] / psi[""]
    post = ppl.run(
        "smc", no_e, lm, head, PROMPT, head.proposal(lm), num_runs=8, num_particles=64, seed=2
    )
    starts_with_a = sum(
        p for answer, p in post.answer_distribution().items() if answer.startswith("a")
    )
    assert starts_with_a == pytest.approx(exact, abs=0.05)


def test_head_round_trips_through_a_file(tmp_path):
    head = TwistHead(6, hidden_size=4)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.normal_()
    head.feature_mean.fill_(0.5)
    head.save(tmp_path / "twist.pt")
    loaded = TwistHead.load(tmp_path / "twist.pt")
    features = torch.randn(5, 6)
    torch.testing.assert_close(loaded.log_psi(features), head.log_psi(features))
    (tmp_path / "bad.pt").write_bytes(b"not a head")
    with pytest.raises(SerializationError, match="cannot read a twist head"):
        TwistHead.load(tmp_path / "bad.pt")
    with pytest.raises(InvalidArgumentError, match="reads 6 features"):
        loaded.log_psi(torch.zeros(2, 5))


def test_candidate_scores_equal_scores_of_formed_features():
    head = TwistHead(8, hidden_size=3)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.normal_()
    hidden, embeddings = torch.randn(2, 4), torch.randn(5, 4)
    formed = torch.cat(
        [hidden[:, None, :].expand(2, 5, 4), embeddings[None, :, :].expand(2, 5, 4)], dim=-1
    )
    torch.testing.assert_close(
        head.log_psi_candidates(hidden, embeddings),
        head.log_psi(formed.reshape(10, 8)).reshape(2, 5),
    )


def test_learned_twist_errors(tiny_lm):
    head = TwistHead.for_lm(tiny_lm)

    @ppl.program
    def not_a_step(lm):
        ppl.learned_twist("psi", head, lm, "a", "b")
        ppl.answer(0)

    with pytest.raises(InvalidArgumentError, match="needs the Step"):
        ppl.importance(not_a_step, tiny_lm, num_particles=1, seed=0)

    class Remote:
        pass

    with pytest.raises(CapabilityError, match="does not expose hidden states"):
        TwistHead.for_lm(Remote())
    with pytest.raises(InvalidArgumentError, match="learned_twist site"):
        collect_twist_data(head, not_a_step_free, tiny_lm, num_particles=2, seed=0)


@ppl.program
def not_a_step_free(lm):
    ppl.step("s", lm, "a", stop=(), max_tokens=1)
    ppl.answer(0)
