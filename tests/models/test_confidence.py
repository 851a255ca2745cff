"""Confidence scorers: the measures by hand, backends' top log-probabilities, and the
scorers as factor, twist and trace score, exact against enumeration on a tiny llama."""

import math

import pytest
import torch
from exactness import assert_matches_exact
from tiny import VOCAB, make_tiny_lm

import ppl
from models.verifiers import Confidence
from models.verifiers.confidence import (
    group_confidences,
    lowest_group_confidence,
    mean_confidence,
    self_certainty,
    tail_confidence,
    token_confidences,
    trace_top_logprobs,
)
from ppl.errors import InvalidArgumentError
from ppl.lm import StepRequest
from ppl.sampler import Sampler, target_log_probs
from ppl.values import Step

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOP = [(-0.1, -2.0), (-0.5, -1.0), (-3.0, -4.0), (-0.2, -0.4)]
PROMPT = "ab"


def test_measures_by_hand():
    assert token_confidences(TOP) == pytest.approx([1.05, 0.75, 3.5, 0.3])
    assert group_confidences(TOP, 2) == pytest.approx([0.9, 2.125, 1.9])
    assert lowest_group_confidence(TOP, 2) == pytest.approx(0.9)
    assert lowest_group_confidence(TOP, 10) == pytest.approx(5.6 / 4)  # one group
    assert tail_confidence(TOP, 2) == pytest.approx(1.9)
    assert mean_confidence(TOP) == pytest.approx(5.6 / 4)


def test_self_certainty_is_kl_from_uniform_on_the_support():
    probs = [0.7, 0.2, 0.1]
    row = tuple(math.log(p) for p in probs)
    kl = sum(math.log((1 / 3) / p) / 3 for p in probs)
    assert self_certainty([row]) == pytest.approx(kl)
    # The top-k restricted and renormalised: a scaled row gives the same value.
    assert self_certainty([tuple(v + math.log(0.5) for v in row)]) == pytest.approx(kl)


def test_self_certainty_is_exact_when_the_top_k_cover_a_truncated_target(tiny_lm):
    request = StepRequest(PROMPT, stop=(), max_tokens=3, top_k=3, top_logprobs=3)
    (result,) = tiny_lm.sample_steps([request], seed=1)
    ids = list(tiny_lm.encode(PROMPT))
    expected = []
    for i in range(len(result.token_ids)):
        with torch.no_grad():
            logits = tiny_lm.model(torch.tensor([ids + list(result.token_ids[:i])])).logits[:, -1]
        p = target_log_probs(logits, [Sampler(top_k=3)])[0].exp()
        support = p[p > 0].double()
        expected.append(float((support.log().neg() - math.log(len(support))).mean()))
    assert self_certainty(result.top_logprobs) == pytest.approx(sum(expected) / len(expected))


def test_bad_input_is_rejected_clearly():
    with pytest.raises(InvalidArgumentError, match="top_logprobs"):
        token_confidences([()])
    with pytest.raises(InvalidArgumentError, match="window"):
        lowest_group_confidence(TOP, 0)
    with pytest.raises(InvalidArgumentError, match="no tokens"):
        tail_confidence([], 4)
    with pytest.raises(InvalidArgumentError, match="unknown confidence measure"):
        Confidence("entropy")
    with pytest.raises(InvalidArgumentError, match="temperature"):
        Confidence(temperature=0)
    with pytest.raises(InvalidArgumentError, match="top_logprobs=k"):
        trace_top_logprobs([Step("a", token_ids=(1,))])
    with pytest.raises(InvalidArgumentError, match="not a ppl.Step"):
        Confidence("token").score(["plain text"])


def test_backend_top_logprobs_are_the_target_distributions(tiny_lm):
    """Two steps decoded together in the running batch, each with its own k and sampler."""
    requests = [
        StepRequest(PROMPT, stop=(), max_tokens=5, temperature=0.7, top_k=4, top_logprobs=3),
        StepRequest(PROMPT + "c", stop=(), max_tokens=4, top_logprobs=2),
    ]
    for request, result in zip(requests, tiny_lm.sample_steps(requests, seed=3), strict=True):
        assert len(result.top_logprobs) == len(result.token_ids)
        ids = list(tiny_lm.encode(request.context))
        for i, row in enumerate(result.top_logprobs):
            with torch.no_grad():
                logits = tiny_lm.model(torch.tensor([ids + list(result.token_ids[:i])])).logits
            log_p = target_log_probs(logits[:, -1, :], [request.sampler])[0]
            expected = log_p.topk(request.top_logprobs).values.tolist()
            assert row == pytest.approx(expected, abs=1e-4)
    (plain,) = tiny_lm.sample_steps([StepRequest(PROMPT, max_tokens=3)], seed=0)
    assert plain.top_logprobs == ()


# --- the scorers as likelihood terms: exact against enumeration -------------------------
K = 2
SCORER = Confidence("token", temperature=0.1)


@ppl.program
def confident(lm, mode):
    """One LM step of up to two tokens, weighted or guided by its token confidence."""
    first = ppl.step("first", lm, PROMPT, stop=(), max_tokens=2, top_logprobs=K)
    if mode == "twist":
        SCORER.twist([first])
        ppl.factor("fewer_c", -0.7 * first.count("c"))
        second = ppl.step("second", lm, PROMPT + first, stop=(), max_tokens=1, top_logprobs=K)
        ppl.answer((str(first), str(second)))
        return
    SCORER.factor("confidence", [first])
    ppl.answer(str(first))


def _target(lm, text):
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([lm.encode(text)])).logits[0, -1]
    return torch.log_softmax(logits.double(), -1)


def _tokens(lm, context, max_tokens):
    """Every token sequence of one step: (text, log p, token confidences)."""
    out = []
    log_p = _target(lm, context)
    c = -log_p.topk(K).values.mean().item()
    for t in range(len(VOCAB)):
        if t == 0 or max_tokens == 1:
            out.append(("" if t == 0 else VOCAB[t], log_p[t].item(), [c]))
            continue
        for text, lp, cs in _tokens(lm, context + VOCAB[t], max_tokens - 1):
            out.append((VOCAB[t] + text, log_p[t].item() + lp, [c, *cs]))
    return out


def exact_confident(lm, mode, temperature=SCORER.temperature):
    joint: dict = {}
    for first, lp, cs in _tokens(lm, PROMPT, 2):
        if mode == "factor":
            joint[first] = joint.get(first, 0.0) + math.exp(lp + sum(cs) / len(cs) / temperature)
            continue
        for second, lp2, _ in _tokens(lm, PROMPT + first, 1):
            key = (first, second)
            joint[key] = joint.get(key, 0.0) + math.exp(lp + lp2 - 0.7 * first.count("c"))
    z = sum(joint.values())
    return {k: w / z for k, w in joint.items()}


@pytest.mark.parametrize(("method", "mode"), [("importance", "factor"), ("smc", "twist")])
def test_scorer_as_factor_and_twist_matches_enumeration(method, mode):
    """A factor changes the target to p * exp(c / T); a twist guides SMC and leaves it."""
    lm = make_tiny_lm(seed=1)
    exact = exact_confident(lm, mode)
    assert len(exact) > 3 and max(exact.values()) < 0.9
    options = {"ess_threshold": 1.0} if method == "smc" else {}
    posterior = ppl.run(
        method, confident, lm, mode, num_runs=60, num_particles=16, seed=5, **options
    )
    assert_matches_exact(posterior, exact)
    if mode == "factor":  # the test tells the weighted target from the model's
        with pytest.raises(AssertionError):
            assert_matches_exact(posterior, exact_confident(lm, mode, temperature=math.inf))


def test_trace_scorer_scores_every_step_of_a_trace(tiny_lm):
    posterior = ppl.importance(confident, tiny_lm, "twist", num_particles=4, seed=0)
    for measure in ("token", "lowest_group", "tail", "self_certainty"):
        scorer = Confidence(measure, window=2, temperature=2.0)
        scores = scorer.trace_scorer()(posterior.particles)
        for trace, score in zip(posterior.particles, scores, strict=True):
            rows = [row for site in trace.steps for row in site.value.top_logprobs]
            assert score == pytest.approx(scorer.of_rows(rows) / 2.0)
    beam = ppl.beam(
        confident,
        tiny_lm,
        "twist",
        beam_width=2,
        num_expansions=2,
        score=Confidence("tail", window=2).trace_scorer(),
        seed=0,
    )
    assert not beam.is_empty
