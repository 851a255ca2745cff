"""The particle backend: ragged batched cache, parking, resampling, logits processors."""

import math

import numpy as np
import pytest
import torch
from exactness import assert_matches_exact, assert_unbiased_evidence
from tiny import VOCAB, make_tiny_lm

import ppl
from models import BannedTokens
from models.token_lm import sample_categorical


def full_forward_logits(lm, text: str) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(input_ids=torch.tensor([lm.encode(text)])).logits[0, -1]


def cached_logprobs(lm, texts: list[str]) -> torch.Tensor:
    """Next-token log-probabilities of each text from the batch cache (uncached tokens fed)."""
    return lm.next_token_logprobs(texts)


def full_forward_logprobs(lm, text: str) -> torch.Tensor:
    return torch.log_softmax(full_forward_logits(lm, text), -1)


def test_cache_after_steps_resampling_and_compaction_equals_full_forward():
    lm = make_tiny_lm(seed=4, layers=3)
    rng = np.random.default_rng(0)
    texts = ["ab"] * 12
    for step_round in range(4):
        # Ragged steps: stop strings end rows at different tokens, so rows
        # idle, leave the decoding batch and are merged back.
        requests = [ppl.StepRequest(t, stop=("c", "ee"), max_tokens=5) for t in texts]
        results = lm.sample_steps(requests, seed=step_round)
        texts = [t + r.text for t, r in zip(texts, results, strict=True)]
        # Resampling: particles fork (shared rows) and others die.
        texts = [texts[i] for i in rng.integers(len(texts), size=len(texts))]
        if step_round == 2:
            lm._batch.compact()
        logprobs = cached_logprobs(lm, texts)
        for row, text in enumerate(texts):
            diff = (logprobs[row] - full_forward_logprobs(lm, text)).abs().max()
            assert diff <= 1e-4, (step_round, row, float(diff))
    assert len({len(lm.encode(t)) for t in texts}) > 1  # the rows really were ragged


def test_finished_rows_leave_the_decoding_batch():
    lm = make_tiny_lm(seed=3)
    requests = [ppl.StepRequest("a", stop=("b",), max_tokens=12)] * 32
    results = lm.sample_steps(requests, seed=1)
    lengths = sorted(len(r.token_ids) for r in results)
    assert lengths[0] < lengths[-1]  # ragged, so some rows finished early
    # Every decode forward pass serves the rows still generating plus fewer
    # idle rows than a quarter of the batch: far fewer than all rows x longest step.
    decode_steps = lengths[-1] - 1
    assert lm.stats.decode_rows < len(requests) * decode_steps
    assert lm.stats.decode_rows <= sum(lengths) - len(requests) + decode_steps * 8
    # The cache rows of finished requests came back: each continues exactly.
    texts = ["a" + r.text for r in results]
    logprobs = cached_logprobs(lm, texts)
    for row, text in enumerate(texts):
        assert torch.allclose(logprobs[row], full_forward_logprobs(lm, text), atol=1e-4)


def test_prefill_is_counted_once_per_distinct_prompt():
    lm = make_tiny_lm()

    @ppl.program
    def story(lm, prompt):
        text = prompt
        for i in range(3):
            text += ppl.step(f"s{i}", lm, text, stop=("c",), max_tokens=3)
        ppl.answer(text)

    ppl.smc(story, lm, "abab", num_particles=16, seed=0)
    assert lm.stats.prefill_calls == 1
    ppl.smc(story, lm, "cab", num_particles=16, seed=0)
    assert lm.stats.prefill_calls == 2


def test_samples_for_a_seed_do_not_depend_on_the_cache_layout():
    requests = [ppl.StepRequest(t, stop=(), max_tokens=5) for t in ["ab", "ca", "abc", "b"]]
    fresh = make_tiny_lm(seed=6).sample_steps(requests, seed=3)
    used = make_tiny_lm(seed=6)
    # Earlier calls leave rows in an order unrelated to these requests.
    used.sample_steps([ppl.StepRequest(t, max_tokens=3) for t in ["b", "abc", "cc", "ca"]], seed=9)
    again = used.sample_steps(requests, seed=3)
    assert [r.token_ids for r in again] == [r.token_ids for r in fresh]


def test_sample_categorical_matches_probabilities_and_skips_zero_mass():
    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    log_probs = probs.log().repeat(20000, 1)
    uniforms = torch.rand(log_probs.shape[0], generator=torch.Generator().manual_seed(0))
    draws = sample_categorical(log_probs, uniforms).view(-1, 2)
    assert (draws[:, 1] == 4).all()
    counts = torch.bincount(draws[:, 0], minlength=5).double() / draws.shape[0]
    assert counts[1] == 0 and counts[4] == 0
    se = (probs[0].double() * (1 - probs[0].double()) / draws.shape[0]).sqrt()
    assert ((counts - probs[0]).abs() <= 4 * se + 1e-12).all()


def test_logits_processor_and_proposal_temperature_enter_log_q_not_log_p():
    lm = make_tiny_lm(seed=1)
    ban_c = BannedTokens([VOCAB.index("c")])
    requests = [
        ppl.StepRequest(
            "ab", stop=(), max_tokens=1, proposal_temperature=0.7, logits_processor=ban_c
        )
    ]
    raw = full_forward_logits(lm, "ab").double()
    masked = raw.clone()
    masked[VOCAB.index("c")] = -math.inf
    for result in lm.sample_steps(requests * 50, seed=2):
        (token,) = result.token_ids
        assert token != VOCAB.index("c")
        assert result.logp == pytest.approx(float(torch.log_softmax(raw, -1)[token]), abs=1e-4)
        assert result.logq == pytest.approx(
            float(torch.log_softmax(masked / 0.7, -1)[token]), abs=1e-4
        )


@ppl.program
def no_e_text(lm, processor):
    text = "a"
    for i in range(3):
        token = ppl.step(f"t{i}", lm, text, stop=(), max_tokens=1, logits_processor=processor)
        ppl.condition(f"no_e_{i}", "e" not in token)
        text += token
        if token.finished:
            break
    ppl.answer(text)


def exact_no_e(lm) -> tuple[dict, float]:
    """Enumerate three tokens with full forward passes; mass on texts without 'e'."""
    joint: dict = {}

    def walk(text, prob, depth):
        if depth == 3:
            joint[text] = joint.get(text, 0.0) + prob
            return
        probs = torch.softmax(full_forward_logits(lm, text).double(), -1).tolist()
        for token, p in enumerate(probs):
            if token == 0:
                joint[text] = joint.get(text, 0.0) + prob * p
            elif VOCAB[token] != "e":
                walk(text + VOCAB[token], prob * p, depth + 1)

    walk("a", 1.0, 0)
    z = sum(joint.values())
    return {k: v / z for k, v in joint.items()}, math.log(z)


def test_masked_proposal_is_exact_and_loses_no_particle():
    lm = make_tiny_lm(seed=5)
    no_e = BannedTokens.from_predicate(lm, lambda text: "e" in text)
    assert no_e.token_ids == (VOCAB.index("e"),)  # EOS adds no text, so it stays allowed
    exact, log_z = exact_no_e(lm)
    posterior = ppl.run("importance", no_e_text, lm, no_e, num_runs=100, num_particles=20, seed=3)
    assert np.isfinite(posterior.log_weights).all()
    assert_matches_exact(posterior, exact)
    assert_unbiased_evidence(posterior, log_z)


def test_processor_that_bans_everything_is_a_clear_error():
    lm = make_tiny_lm()
    everything = BannedTokens(range(len(VOCAB)))
    with pytest.raises(ppl.BackendError, match="logits processor"):
        lm.sample_steps([ppl.StepRequest("ab", logits_processor=everything)], seed=0)
    # The failed call leaves no half-updated cache behind.
    (result,) = lm.sample_steps([ppl.StepRequest("ab", stop=(), max_tokens=2)], seed=0)
    (score,) = make_tiny_lm().score_steps([ppl.ScoreRequest("ab", result.token_ids)])
    assert score == pytest.approx(result.logp, abs=1e-4)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_logits_are_a_clear_error(bad):
    lm = make_tiny_lm()
    with torch.no_grad():
        lm.model.lm_head.weight[3, 0] = bad
    with pytest.raises(ppl.BackendError, match="non-finite logits"):
        lm.sample_steps([ppl.StepRequest("ab", stop=(), max_tokens=2)], seed=0)


def test_huge_finite_logits_are_not_mistaken_for_non_finite():
    """Logits whose sum overflows float32 are still finite: the step goes on."""
    lm = make_tiny_lm()
    model, prompt = lm.model, torch.tensor([lm.encode("ab")])
    with torch.no_grad():
        hidden = model(input_ids=prompt, output_hidden_states=True).hidden_states[-1][0, -1]
        # Every next-token logit becomes 1e38; five of them sum past float32's 3.4e38.
        model.lm_head.weight.copy_((hidden.sign() / hidden.abs().sum() * 1e38).expand(5, -1))
        logits = model(input_ids=prompt).logits[0, -1]
    assert torch.isfinite(logits).all() and not torch.isfinite(logits.sum())
    (result,) = lm.sample_steps([ppl.StepRequest("ab", stop=(), max_tokens=1)], seed=0)
    assert len(result.token_ids) == 1 and math.isfinite(result.logp)


def test_unhashable_processor_is_rejected():
    @ppl.program
    def bad(lm):
        ppl.step("s", lm, "ab", logits_processor=[1, 2])
        ppl.answer(0)

    with pytest.raises(ppl.InvalidArgumentError, match="hashable"):
        ppl.importance(bad, make_tiny_lm(), num_particles=2, seed=0)


def test_bfloat16_model_samples_and_scores_consistently():
    base = make_tiny_lm(seed=2)
    lm = type(base)(base.model.to(torch.bfloat16), base.tokenizer)
    results = lm.sample_steps([ppl.StepRequest("ab", stop=(), max_tokens=4)] * 8, seed=0)
    fresh = make_tiny_lm(seed=2)
    for result in results:
        (score,) = fresh.score_steps([ppl.ScoreRequest("ab", result.token_ids)])
        # bfloat16 keeps about 3 significant digits of each logit.
        assert result.logp == pytest.approx(score, abs=0.05 * len(result.token_ids))
