import math
import pickle

import pytest
import torch

from models.verifiers.confidence import (
    group_confidences,
    lowest_group_confidence,
    self_certainty,
    tail_confidence,
    token_confidences,
)
from ppl.errors import InvalidArgumentError
from ppl.lm import StepRequest
from ppl.sampler import target_log_probs
from ppl.serialization import decode, encode
from ppl.values import Step

TOP = [(-0.1, -2.0), (-0.5, -1.0), (-3.0, -4.0), (-0.2, -0.4)]


def test_token_confidence_by_hand():
    assert token_confidences(TOP) == pytest.approx([1.05, 0.75, 3.5, 0.3])


def test_group_and_tail_confidence_by_hand():
    assert group_confidences(TOP, 2) == pytest.approx([0.9, 2.125, 1.9])
    assert lowest_group_confidence(TOP, 2) == pytest.approx(0.9)
    assert lowest_group_confidence(TOP, 10) == pytest.approx(5.6 / 4)
    assert tail_confidence(TOP, 2) == pytest.approx(1.9)


def test_self_certainty_by_hand():
    assert self_certainty(TOP, 100) == pytest.approx(5.6 / 4 - math.log(100))


def test_bad_input_raises():
    with pytest.raises(InvalidArgumentError, match="top_logprobs"):
        token_confidences([()])
    with pytest.raises(InvalidArgumentError, match="window"):
        lowest_group_confidence(TOP, 0)


def test_step_top_logprobs_round_trip():
    step = Step("a", token_ids=(1, 2), logp=-1.0, top_logprobs=[(-0.1, -2.0), (-0.3, -1.5)])
    for back in (pickle.loads(pickle.dumps(step)), decode(encode(step, "x"))):
        assert back.top_logprobs == step.top_logprobs and back.logp == step.logp


def test_backend_top_logprobs_equal_full_forward(tiny_lm):
    request = StepRequest("ab", stop=(), max_tokens=5, temperature=0.7, top_k=6, top_logprobs=3)
    (result,) = tiny_lm.sample_steps([request], seed=3)
    assert len(result.top_logprobs) == len(result.token_ids)
    ids = tiny_lm.encode("ab")
    for i, row in enumerate(result.top_logprobs):
        prefix = torch.tensor([list(ids) + list(result.token_ids[:i])])
        with torch.no_grad():
            logits = tiny_lm.model(prefix).logits[:, -1, :]
        log_p = target_log_probs(logits, [request.sampler])[0]
        expected = log_p.topk(3).values.tolist()
        assert row == pytest.approx(expected, abs=1e-4)


def test_threshold_is_exact_percentile():
    from inference.confidence_vote import confidence_threshold

    warm = [4.0, 1.0, 3.0, 2.0, 5.0, 0.0, 9.0, 7.0, 8.0, 6.0]
    # sorted 0..9: the 90th percentile by linear interpolation is 0.9 * 9 = 8.1
    assert confidence_threshold(warm, eta=10) == pytest.approx(8.1)
    assert confidence_threshold(warm, eta=90) == pytest.approx(0.9)
    with pytest.raises(InvalidArgumentError, match="eta"):
        confidence_threshold(warm, eta=0)
    with pytest.raises(InvalidArgumentError, match="warm-up"):
        confidence_threshold([], eta=10)


def test_weighted_vote_by_hand():
    from inference.confidence_vote import weighted_vote

    assert weighted_vote(["a", "b", "a", "b"], [1.0, 1.5, 1.0, 0.4]) == "a"
    assert weighted_vote(["a", "b", "b"], [3.0, 1.0, 1.0]) == "a"
    with pytest.raises(InvalidArgumentError, match="one per answer"):
        weighted_vote(["a"], [])


def test_openai_top_logprobs_parsed_in_order():
    from models.openai_lm import _top_logprobs
    from ppl.errors import BadResponse

    answer = {"choices": [{"logprobs": {"top_logprobs": [{"a": -2.0, "b": -0.1, "c": -3.0}]}}]}
    assert _top_logprobs(answer, 2) == ((-0.1, -2.0),)
    assert _top_logprobs(answer, 0) == ()
    with pytest.raises(BadResponse, match="top_logprobs"):
        _top_logprobs({"choices": [{"logprobs": {}}]}, 2)
