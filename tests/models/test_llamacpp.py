"""The optional llama.cpp backend on the embedded GGUF (skipped when llama-cpp-python is absent)."""

import math

import pytest

pytest.importorskip("llama_cpp", reason="optional backend: pip install 'pplscale[llamacpp]'")

import models  # noqa: E402
import ppl  # noqa: E402
from models.llamacpp_lm import LlamaCppLM  # noqa: E402

pytestmark = pytest.mark.slow
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def llama():
    lm = LlamaCppLM.embedded(max_sequences=16)
    yield lm
    lm.close()


def test_one_sequence_logp_equals_rescoring(llama):
    (result,) = llama.sample_steps([ppl.StepRequest(PROMPT, stop=("."), max_tokens=12)], seed=0)
    llama._forget()
    (score,) = llama.score_steps([ppl.ScoreRequest(PROMPT, result.token_ids)])
    assert score == pytest.approx(result.logp, abs=1e-3)


def test_batched_steps_agree_with_transformers(llama):
    requests = [ppl.StepRequest(PROMPT, stop=(".",), max_tokens=12)] * 8
    results = llama.sample_steps(requests, seed=1)
    assert llama.stats.prefill_calls >= 1
    reference = models.default_lm().score_steps(
        [ppl.ScoreRequest(PROMPT, r.token_ids) for r in results]
    )
    for result, score in zip(results, reference, strict=True):
        # Same weights, quantized kernels: close per token, not bit-equal.
        assert abs(result.logp - score) <= 0.1 * len(result.token_ids)
        assert result.logq == result.logp


def test_forks_share_the_prompt_and_resampling_recomputes_nothing(llama):
    llama._forget()
    before = llama.stats.snapshot()

    @ppl.program
    def story(lm):
        text = PROMPT
        for i in range(3):
            text += ppl.step(f"s{i}", lm, text, stop=(" ",), max_tokens=4)
        ppl.answer(text)

    ppl.smc(story, llama, num_particles=12, seed=0, ess_threshold=1.0)
    after = llama.stats.snapshot()
    assert after["prefill_calls"] - before["prefill_calls"] == 1
    prompt_tokens = len(llama.encode(PROMPT))
    generated = after["tokens_generated"] - before["tokens_generated"]
    # Every token enters the cache once, through a decode pass or a feed (a step
    # joining the running batch feeds the rows already decoding their next token):
    # the prompt once, then the generated tokens but the last of each final step,
    # plus at most one boundary token per particle at each of the 2 step boundaries,
    # for the copies a fork makes. Recomputed prefixes would exceed this.
    fed = after["tokens_prefilled"] - before["tokens_prefilled"]
    decoded = (after["decode_rows"] - before["decode_rows"]) - (
        after["idle_rows"] - before["idle_rows"]
    )
    assert fed + decoded <= prompt_tokens + (generated - 12) + 2 * 12
    assert generated > 12


def test_lipogram_with_mask_through_llamacpp(llama):
    no_e = models.BannedTokens.from_predicate(llama, lambda text: "e" in text.lower())

    @ppl.program
    def lipogram(lm):
        text = ""
        for i in range(8):
            token = ppl.step(
                f"t{i}", lm, "The cat" + text, stop=(), max_tokens=1, logits_processor=no_e
            )
            ppl.condition(f"no_e_{i}", "e" not in token.lower())
            text += token
        ppl.answer(text)

    posterior = ppl.smc(lipogram, llama, num_particles=8, seed=0)
    assert all(math.isfinite(w) for w in posterior.log_weights)
    assert all("e" not in answer.lower() for answer in posterior.answers)


def test_too_many_particles_is_a_clear_error(llama):
    with pytest.raises(ppl.InvalidArgumentError, match="max_sequences"):
        llama.sample_steps([ppl.StepRequest(PROMPT, max_tokens=1)] * 17, seed=0)
