"""Online early stopping by confidence: thresholds from warm-up, tokens saved, and the
restricted posterior it estimates, exact against enumeration on a tiny llama."""

import math

import numpy as np
import pytest
import torch
from exactness import assert_matches_exact, assert_unbiased_evidence
from tiny import VOCAB, make_tiny_lm

import ppl
from inference.early_stopping import ConfidenceStopping
from inference.resampling import get_resampler
from inference.runtime import Runtime
from models.verifiers import Confidence
from models.verifiers.confidence import lowest_group_confidence
from ppl.errors import InvalidArgumentError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "ab"
K = 2
WINDOW = 2


@ppl.program
def two_steps(lm):
    first = ppl.step("first", lm, PROMPT, stop=(), max_tokens=2, top_logprobs=K)
    ppl.factor("fewer_c", -0.7 * first.count("c"))
    if first.finished:
        ppl.answer((str(first), ""))
        return
    second = ppl.step("second", lm, PROMPT + first, stop=(), max_tokens=2, top_logprobs=K)
    ppl.answer((str(first), str(second)[:1]))


@ppl.program
def long_lines(lm, max_tokens=6):
    text = PROMPT
    for i in range(2):
        line = ppl.step(f"line_{i}", lm, text, stop=(), max_tokens=max_tokens, top_logprobs=K)
        text += line
        if line.finished:
            break
    ppl.answer(text[2:3])


def rows_of(trace):
    return [row for site in trace.steps for row in site.value.top_logprobs]


def test_threshold_is_the_warmup_quantile_and_bad_rules_are_rejected():
    confidences = [4.0, 1.0, 3.0, 2.0, 5.0, 0.0, 9.0, 7.0, 8.0, 6.0]
    # keep the top 10%: the 90th percentile of 0..9 by interpolation, 8.1; the top 90%: 0.9.
    assert ppl.ConfidenceStop(10, keep=0.1).threshold(confidences) == pytest.approx(8.1)
    assert ppl.ConfidenceStop(10, keep=0.9).threshold(confidences) == pytest.approx(0.9)
    assert ppl.ConfidenceStop(10, keep=1.0).threshold(confidences) == 0.0
    for bad in ({"keep": 0}, {"keep": 1.5}, {"num_warmup": 0}, {"window": 0}):
        with pytest.raises(InvalidArgumentError, match=next(iter(bad))):
            ppl.ConfidenceStop(**{"num_warmup": 4, **bad})
    with pytest.raises(InvalidArgumentError, match="warm-up"):
        ppl.ConfidenceStop(4).threshold([])
    with pytest.raises(InvalidArgumentError, match="warm-up"):
        ppl.ConfidenceStop(4).threshold([1.0, math.nan])


def test_engines_reject_bad_early_stopping_settings(tiny_lm):
    with pytest.raises(InvalidArgumentError, match="num_warmup=9 exceeds num_particles=8"):
        ppl.importance(long_lines, tiny_lm, num_particles=8, early_stop=ppl.ConfidenceStop(9))
    with pytest.raises(InvalidArgumentError, match="ConfidenceStop"):
        ppl.importance(long_lines, tiny_lm, num_particles=8, early_stop=0.9)
    with pytest.raises(InvalidArgumentError, match="rejuvenation_steps"):
        ppl.smc(
            long_lines,
            tiny_lm,
            num_particles=4,
            rejuvenation_steps=1,
            early_stop=ppl.ConfidenceStop(2),
        )

    @ppl.program
    def no_top(lm):
        ppl.answer(str(ppl.step("s", lm, PROMPT, max_tokens=2)))

    with pytest.raises(InvalidArgumentError, match="top_logprobs=k"):
        ppl.importance(no_top, tiny_lm, num_particles=4, early_stop=ppl.ConfidenceStop(2))


def test_importance_stopping_only_truncates_and_saves_tokens(tmp_path):
    """Same seed, same streams: kept particles are the plain run's, stopped ones its prefixes."""
    lm = make_tiny_lm(seed=1)
    rule = ppl.ConfidenceStop(num_warmup=6, keep=0.5, window=3)
    plain = ppl.importance(long_lines, lm, num_particles=24, seed=3)
    stopped = ppl.importance(long_lines, lm, num_particles=24, seed=3, early_stop=rule)
    warmup = [lowest_group_confidence(rows_of(t), 3) for t in stopped.particles[:6]]
    threshold = stopped.info["confidence_threshold"]
    assert threshold == pytest.approx(np.quantile(warmup, 0.5))
    interrupted = 0
    for full, trace, log_weight in zip(
        plain.particles, stopped.particles, stopped.log_weights, strict=True
    ):
        rows = rows_of(trace)
        tokens = [t for site in trace.steps for t in site.value.token_ids]
        full_tokens = [t for site in full.steps for t in site.value.token_ids]
        assert full_tokens[: len(tokens)] == tokens
        if log_weight > -math.inf:
            assert trace == full or trace.answer == full.answer
            assert lowest_group_confidence(rows, 3) >= threshold
        else:
            assert lowest_group_confidence(rows, 3) < threshold
            # Stopped at the first token whose window fell below: not one token later.
            if len(rows) > 3:
                assert lowest_group_confidence(rows[:-1], 3) >= threshold
            interrupted += len(tokens) < len(full_tokens) and not trace.has_answer
    assert interrupted >= 1 and stopped.info["stopped_early"] >= interrupted
    in_traces = sum(len(s.value.token_ids) for t in stopped.particles for s in t.steps)
    assert stopped.cost.tokens_generated == in_traces
    assert stopped.cost.tokens_generated < plain.cost.tokens_generated
    stopped.save(tmp_path / "run.json")  # interrupted steps included
    back = ppl.Posterior.load(tmp_path / "run.json")
    assert back.info == stopped.info and back.answer_distribution() == stopped.answer_distribution()
    shares = ppl.confidence_vote(stopped, Confidence("lowest_group", window=3))
    assert sum(shares.values()) == pytest.approx(1.0) and set(shares) <= set(
        a for a, w in zip(stopped.answers, stopped.log_weights, strict=True) if w > -math.inf
    )


def test_smc_stops_below_the_threshold_of_a_separate_warmup():
    lm = make_tiny_lm(seed=1)
    rule = ppl.ConfidenceStop(num_warmup=8, keep=0.5, window=4)
    post = ppl.smc(long_lines, lm, num_particles=12, seed=4, early_stop=rule)
    threshold = post.info["confidence_threshold"]
    assert post.info["num_warmup"] == 8 and post.info["num_particles"] == 12
    for trace, log_weight in zip(post.particles, post.log_weights, strict=True):
        confident = lowest_group_confidence(rows_of(trace), 4) >= threshold
        assert confident == (log_weight > -math.inf)
    assert 0 < np.isfinite(post.log_weights).sum() < 12


def _distributions(lm, text, cache={}):  # noqa: B006 (a cache of forward passes)
    key = (id(lm), text)
    if key not in cache:
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([lm.encode(text)])).logits[0, -1]
        cache[key] = torch.log_softmax(logits.double(), -1)
    return cache[key]


def _step_outcomes(lm, context, max_tokens):
    """Every outcome of one step: (text, finished, log p, top rows)."""
    log_p = _distributions(lm, context)
    row = tuple(log_p.topk(K).values.tolist())
    for t in range(len(VOCAB)):
        if t == 0:
            yield "", True, log_p[0].item(), [row]
        elif max_tokens == 1:
            yield VOCAB[t], False, log_p[t].item(), [row]
        else:
            for text, finished, lp, rows in _step_outcomes(lm, context + VOCAB[t], max_tokens - 1):
                yield VOCAB[t] + text, finished, log_p[t].item() + lp, [row, *rows]


def exact_restricted(lm, threshold):
    """The posterior of ``two_steps`` given lowest group confidence >= threshold, and log Z."""
    joint: dict = {}
    for first, done, lp1, rows1 in _step_outcomes(lm, PROMPT, 2):
        seconds = [("", True, 0.0, [])] if done else _step_outcomes(lm, PROMPT + first, 2)
        for second, _, lp2, rows2 in seconds:
            if lowest_group_confidence(rows1 + rows2, WINDOW) >= threshold:
                key = (first, second[:1])
                weight = math.exp(lp1 + lp2 - 0.7 * first.count("c"))
                joint[key] = joint.get(key, 0.0) + weight
    z = sum(joint.values())
    return {k: w / z for k, w in joint.items()}, math.log(z)


def fixed_threshold(program, *args, seed, threshold, resample=None, num_particles):
    """One run of the stopping policy with a given threshold (no warm-up)."""
    runtime = Runtime(program, args, {}, seed=seed, method="smc" if resample else "importance")
    return ConfidenceStopping(
        runtime,
        num_particles,
        rule=ppl.ConfidenceStop(1, window=WINDOW),
        resampler=get_resampler(resample) if resample else None,
        ess_threshold=1.0 if resample else 0.0,
        threshold=threshold,
    ).run()


@pytest.mark.parametrize("resample", [None, "systematic"])
def test_stopped_runs_estimate_the_posterior_restricted_to_confident_traces(resample):
    lm = make_tiny_lm(seed=1)
    unrestricted, log_z_all = exact_restricted(lm, -math.inf)
    threshold = 1.1
    exact, log_z = exact_restricted(lm, threshold)
    # The rule removes a real part of the target (38%) and leaves a non-trivial one.
    assert 0.2 < 1 - math.exp(log_z - log_z_all) < 0.8
    assert len(exact) > 3 and max(exact.values()) < 0.9
    posterior = ppl.run(
        fixed_threshold,
        two_steps,
        lm,
        num_runs=60,
        num_particles=16,
        seed=7,
        threshold=threshold,
        resample=resample,
    )
    assert_matches_exact(posterior, exact)
    assert_unbiased_evidence(posterior, log_z)
    with pytest.raises(AssertionError):  # and the test can tell it from the program's posterior
        assert_matches_exact(posterior, unrestricted)
