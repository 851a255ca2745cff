"""OpenAILM against a real HTTP server (tests/openai_reference_server.py) over a tiny llama.

The server answers from its own copy of the model, so weights through HTTP are
compared exactly with the model's logits; fault injection covers retries,
timeouts, malformed answers and particle-level failures.
"""

import json
import math
import pickle
import time
from pathlib import Path

import cli_programs
import pytest
import torch
from click.testing import CliRunner
from exactness import assert_matches_exact, assert_unbiased_evidence
from openai_reference_server import ReferenceServer
from test_lm_exact import PROMPT, exact_two_steps, two_steps
from tiny import make_tiny_lm

import models
import ppl
from models.openai_lm import SERVERS, OpenAILM
from ppl.cli import main

EOS_ID = 0


@pytest.fixture
def server():
    served = ReferenceServer(make_tiny_lm(seed=1))
    yield served
    served.stop()


def client(served, **options) -> OpenAILM:
    options.setdefault("tokenizer", make_tiny_lm(seed=1).tokenizer)
    options.setdefault("server", "vllm")
    return OpenAILM(served.url, "tiny", **options)


def token_logprobs(lm, context: str, token_ids, temperature=1.0) -> list[float]:
    """Per-token log-probabilities by full forward passes (no cache)."""
    ids = torch.tensor([list(lm.encode(context)) + list(token_ids)])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0].double()
    log_q = torch.log_softmax(logits / temperature, -1)
    start = len(lm.encode(context)) - 1
    return [float(log_q[start + k, t]) for k, t in enumerate(token_ids)]


def test_steps_carry_exact_model_logprobs_and_aligned_text(server):
    reference = make_tiny_lm(seed=1)
    with client(server) as lm:
        requests = [ppl.StepRequest(PROMPT, stop=("c",), max_tokens=5)] * 24
        results = lm.sample_steps(requests, seed=0)
    assert any(r.finished for r in results) and any("c" in r.text for r in results)
    for r in results:
        assert r.logp == pytest.approx(
            sum(token_logprobs(reference, PROMPT, r.token_ids)), abs=1e-4
        )
        assert r.logq == r.logp
        # The server cuts the stop string from its text; the step keeps it.
        assert r.text == reference.decode(r.token_ids[:-1] if r.finished else r.token_ids)
        assert r.finished == (r.token_ids[-1] == EOS_ID)
        if "c" in r.text:
            assert r.text.endswith("c") and len(r.token_ids) <= 5


def test_same_seed_gives_same_steps(server):
    with client(server) as lm:
        requests = [ppl.StepRequest(PROMPT, stop=(), max_tokens=4)] * 6
        first = lm.sample_steps(requests, seed=3)
        again = lm.sample_steps(requests, seed=3)
    assert [(r.text, r.token_ids) for r in first] == [(r.text, r.token_ids) for r in again]
    assert [r.logp for r in first] == pytest.approx([r.logp for r in again], abs=1e-5)
    assert len({r.token_ids for r in first}) > 1  # per-request seeds differ


def test_a_step_leaves_when_its_particle_is_ready_not_with_a_round(server):
    server.slow_prompts = {"cccc": 1.5}
    with client(server, max_concurrency=4) as lm:
        slow, fast = lm.submit(
            [ppl.StepRequest("cccc", max_tokens=1), ppl.StepRequest(PROMPT, max_tokens=1)], [1, 2]
        )
        assert [ticket for ticket, _ in lm.advance()] == [fast]
        # A step submitted after the fast one ended is answered while the slow one waits.
        (later,) = lm.submit([ppl.StepRequest(PROMPT, max_tokens=2)], [3])
        assert [ticket for ticket, _ in lm.advance()] == [later] and lm.busy
        (ended,) = lm.advance()
        assert ended[0] == slow and math.isfinite(ended[1].logp) and not lm.busy


def test_posterior_through_a_server_does_not_depend_on_its_concurrency(server):
    posteriors = []
    for limit in (1, 3, 16):
        with client(server, max_concurrency=limit) as lm:
            posteriors.append(ppl.smc(two_steps, lm, None, num_particles=12, seed=5))
            assert lm.stats.peak_in_flight <= limit
    first = posteriors[0]
    for other in posteriors[1:]:
        assert other.answers == first.answers
        assert other.log_weights == pytest.approx(first.log_weights, abs=1e-6)


def test_processed_logprobs_give_exact_weights_for_a_proposal_temperature():
    served = ReferenceServer(make_tiny_lm(seed=1), logprobs="processed")
    reference = make_tiny_lm(seed=1)
    request = ppl.StepRequest(PROMPT, stop=(), max_tokens=3, proposal_temperature=0.5)
    try:
        with client(served, logprobs="processed") as lm:
            results = lm.sample_steps([request] * 8, seed=1)
    finally:
        served.stop()
    for r in results:
        log_p = token_logprobs(reference, PROMPT, r.token_ids)
        log_q = token_logprobs(reference, PROMPT, r.token_ids, temperature=0.5)
        assert r.logp == pytest.approx(sum(log_p), abs=1e-4)
        assert r.logq == pytest.approx(sum(log_q), abs=1e-4)
        assert r.logq != pytest.approx(r.logp, abs=1e-3)


def test_a_tempered_truncated_target_is_sampled_and_reported_by_the_server():
    served = ReferenceServer(make_tiny_lm(seed=1), logprobs="processed")
    request = ppl.StepRequest(PROMPT, stop=(), max_tokens=3, temperature=0.6, top_k=3)
    try:
        with client(served, logprobs="processed") as lm:
            results = lm.sample_steps([request] * 8, seed=1)
    finally:
        served.stop()
    scores = make_tiny_lm(seed=1).score_steps([request.score_request(r.token_ids) for r in results])
    for r, score in zip(results, scores, strict=True):
        assert r.logp == r.logq == pytest.approx(score, abs=1e-4)


@pytest.mark.parametrize(
    ("method", "options", "sampler", "logprobs", "num_runs"),
    [
        ("importance", {}, (None,), "raw", 40),
        ("smc", {"ess_threshold": 1.0}, (0.6,), "processed", 24),
        ("smc", {}, (None, 0.7, 3, 0.95), "processed", 24),
    ],
)
def test_posterior_through_http_matches_model_logits(method, options, sampler, logprobs, num_runs):
    served = ReferenceServer(make_tiny_lm(seed=1), logprobs=logprobs)
    target = dict(zip(("temperature", "top_k", "top_p"), sampler[1:], strict=False))
    exact, log_z = exact_two_steps(make_tiny_lm(seed=1), **target)
    try:
        with client(served, logprobs=logprobs) as lm:
            posterior = ppl.run(
                method,
                two_steps,
                lm,
                *sampler,
                num_runs=num_runs,
                num_particles=16,
                seed=5,
                **options,
            )
    finally:
        served.stop()
    assert_matches_exact(posterior, exact)
    assert_unbiased_evidence(posterior, log_z)


def test_score_steps_by_echo_matches_model(server):
    reference = make_tiny_lm(seed=1)
    continuations = [(1, 2), (3,), (4, 4, 1), (2, 0)]
    with client(server) as lm:
        scores = lm.score_steps([ppl.ScoreRequest(PROMPT, c) for c in continuations])
        assert lm.stats.tokens_scored == 8
    for score, continuation in zip(scores, continuations, strict=True):
        assert score == pytest.approx(
            sum(token_logprobs(reference, PROMPT, continuation)), abs=1e-4
        )


def test_chat_contexts_are_rendered_locally(server):
    reference = make_tiny_lm(seed=1)
    chat = ppl.Chat("ab", system="c") + "a"
    with client(server) as lm:
        assert lm.render(chat) == reference.render(chat)
        results = lm.sample_steps([ppl.StepRequest(chat, stop=(), max_tokens=3)] * 4, seed=2)
    scores = reference.score_steps([ppl.ScoreRequest(chat, r.token_ids) for r in results])
    for r, score in zip(results, scores, strict=True):
        assert r.logp == pytest.approx(score, abs=1e-4)


def test_what_http_cannot_do_exactly_raises_capability_errors(server):
    banned = models.BannedTokens([1])
    with client(server) as lm:
        with pytest.raises(ppl.CapabilityError, match="logits processor"):
            lm.sample_steps([ppl.StepRequest(PROMPT, logits_processor=banned)])
        with pytest.raises(ppl.CapabilityError, match="temperature=0.5"):
            lm.sample_steps([ppl.StepRequest(PROMPT, temperature=0.5)])
        with pytest.raises(ppl.CapabilityError, match="top_k=5"):
            lm.sample_steps([ppl.StepRequest(PROMPT, top_k=5)])
        with pytest.raises(ppl.CapabilityError, match="no server reports"):
            lm.sample_steps([ppl.StepRequest(PROMPT, top_p=0.9, proposal_temperature=2.0)])
        with pytest.raises(ppl.CapabilityError, match="score with a local backend"):
            lm.score_steps([ppl.ScoreRequest(PROMPT, (1,), temperature=0.7)])
    with client(server, server="llama-cpp-python") as lm:
        with pytest.raises(ppl.CapabilityError, match="cannot score"):
            lm.score_steps([ppl.ScoreRequest(PROMPT, (1,))])
    assert server.requests == 0


def test_model_server_and_tokenizer_are_discovered(tmp_path):
    reference = make_tiny_lm(seed=1)
    reference.tokenizer.save_pretrained(tmp_path)
    served = ReferenceServer(make_tiny_lm(seed=1), model=str(tmp_path))
    unknown = ReferenceServer(make_tiny_lm(seed=1), owner="someone")
    try:
        with OpenAILM(served.url) as lm:
            assert lm.model == str(tmp_path) and lm.server == SERVERS["vllm"]
            assert lm.eos_token_ids == {0}
            (result,) = lm.sample_steps([ppl.StepRequest(PROMPT, max_tokens=3)], seed=0)
        expected = sum(token_logprobs(reference, PROMPT, result.token_ids))
        assert result.logp == pytest.approx(expected, abs=1e-4)
        with pytest.raises(ppl.InvalidArgumentError, match="cannot tell which server"):
            OpenAILM(unknown.url, tokenizer=reference.tokenizer)
        with pytest.raises(ppl.InvalidArgumentError, match="no local tokenizer for 'tiny'"):
            OpenAILM(unknown.url, server="vllm")
    finally:
        served.stop()
        unknown.stop()


def test_ppl_run_with_an_openai_model(tmp_path):
    make_tiny_lm(seed=1).tokenizer.save_pretrained(tmp_path / "tokenizer")
    served = ReferenceServer(make_tiny_lm(seed=1), model=str(tmp_path / "tokenizer"))
    program = f"{Path(cli_programs.__file__)}:letters"
    try:
        result = CliRunner().invoke(
            main,
            ["run", program, "--input", "ab", "--model", f"openai:{served.url}"]
            + ["--particles", "6", "--out", str(tmp_path / "run"), "--json"],
        )
    finally:
        served.stop()
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["diagnostics"]["cost"]["tokens_generated"] > 0
    assert served.requests >= 6


def test_bad_options_are_rejected(server):
    with pytest.raises(ppl.InvalidArgumentError, match="unknown server"):
        client(server, server="tgi")
    with pytest.raises(ppl.InvalidArgumentError, match="logprobs"):
        client(server, logprobs="scaled")
    with pytest.raises(ppl.InvalidArgumentError, match="max_concurrency"):
        client(server, max_concurrency=0)


def test_client_pickles_without_its_connection(server):
    with client(server) as lm:
        lm.sample_steps([ppl.StepRequest(PROMPT, max_tokens=2)], seed=0)
        copy = pickle.loads(pickle.dumps(lm))
    with copy:
        (result,) = copy.sample_steps([ppl.StepRequest(PROMPT, max_tokens=2)], seed=0)
    assert math.isfinite(result.logp)


# --- faults -------------------------------------------------------------------
def test_transient_errors_are_retried(server):
    server.statuses.extend([503, 502])
    with client(server, retries=3, backoff=0.01) as lm:
        (result,) = lm.sample_steps([ppl.StepRequest(PROMPT, max_tokens=2)], seed=0)
        assert lm.stats.retries == 2 and lm.stats.failed_requests == 0
    assert math.isfinite(result.logp)


def test_a_failing_request_fails_only_its_particle(server):
    server.fail_prompts = ("abb",)

    @ppl.program
    def branch(lm):
        first = ppl.step("first", lm, PROMPT, stop=(), max_tokens=1)
        ppl.step("second", lm, PROMPT + first, stop=(), max_tokens=2)
        ppl.answer(str(first))

    with client(server, retries=1, backoff=0.01) as lm:
        posterior = ppl.importance(branch, lm, num_particles=24, seed=0)
        failed = lm.stats.failed_requests
        assert len(lm.failures) == failed and "500" in lm.failures[0].error
    dead = [trace["first"].value == "b" for trace in posterior.particles]
    assert 0 < sum(dead) < 24 and failed == sum(dead)
    for is_dead, log_weight in zip(dead, posterior.log_weights, strict=True):
        assert (log_weight == -math.inf) == is_dead
    assert posterior.answer_distribution().get("b", 0.0) == 0.0


def test_dispatched_steps_raise_only_when_the_server_is_down(server):
    server.fail_prompts = ("abb",)
    failing, good = ppl.StepRequest("abb", max_tokens=1), ppl.StepRequest(PROMPT, max_tokens=1)
    with client(server, retries=0) as lm:
        lm.submit([failing], [1])
        with pytest.raises(ppl.ServerUnavailable, match="500") as info:
            lm.advance()
        assert "no request to the server has succeeded yet" in info.value.__notes__
        lm.submit([good], [2])
        assert math.isfinite(lm.advance()[0][1].logp) and not lm.busy
        # Idle between steps: a lone failing request still fails only its particle.
        lm.submit([failing], [3])
        assert lm.advance()[0][1].logp == -math.inf and lm.stats.failed_requests == 1
        server.stop()
        lm.submit([good], [4])
        with pytest.raises(ppl.ServerUnreachable, match="cannot reach"):
            lm.advance()


def test_malformed_json_fails_the_particle_with_bad_response(server):
    server.malformed_prompts = ("abc",)
    requests = [ppl.StepRequest("abc", max_tokens=1), ppl.StepRequest("aba", max_tokens=1)]
    with client(server, retries=0) as lm:
        bad, good = lm.sample_steps(requests, seed=0)
        assert lm.failures[0].error.startswith("BadResponse")
        assert bad.logp == -math.inf and math.isfinite(good.logp)
        with pytest.raises(ppl.BadResponse, match="malformed JSON"):
            lm.sample_steps(requests[:1], seed=0)


def test_slow_server_times_out_with_a_clear_error(server):
    server.delay = 1.0
    with client(server, timeout=0.2, retries=1, backoff=0.01) as lm:
        started = time.perf_counter()
        with pytest.raises(ppl.ServerUnavailable, match="did not answer within 0.2 s") as info:
            lm.sample_steps([ppl.StepRequest(PROMPT, max_tokens=1)] * 3, seed=0)
        assert time.perf_counter() - started < 3.0
    assert "all 3 requests" in str(info.value.__notes__)


def test_unreachable_server_and_rejected_requests(server):
    server.stop()
    with client(server, retries=2, backoff=0.01) as lm:
        with pytest.raises(ppl.ServerUnavailable, match="cannot reach"):
            lm.sample_steps([ppl.StepRequest(PROMPT, max_tokens=1)], seed=0)
        assert lm.stats.requests == 3
        with pytest.raises(ppl.ServerUnavailable, match="not ready"):
            lm.wait_until_ready(timeout=0.3)
    restarted = ReferenceServer(make_tiny_lm(seed=1))
    restarted.statuses.append(400)
    try:
        with client(restarted, retries=3) as lm:
            with pytest.raises(ppl.BadResponse, match="rejected the request \\(400\\)"):
                lm.sample_steps([ppl.StepRequest(PROMPT, max_tokens=1)], seed=0)
            assert lm.stats.retries == 0
    finally:
        restarted.stop()


def _target_top(reference, context, token_ids, request):
    """The top-k of the step's target before each token, by full forward passes."""
    ids = list(reference.encode(context))
    rows = []
    for i in range(len(token_ids)):
        with torch.no_grad():
            logits = reference.model(torch.tensor([ids + list(token_ids[:i])])).logits[:, -1]
        log_p = ppl.sampler.target_log_probs(logits, [request.sampler])[0]
        top = log_p.topk(request.top_logprobs).values
        rows.append([v for v in top.tolist() if v > -math.inf])
    return rows


@pytest.mark.parametrize(
    ("logprobs", "sampler"), [("raw", {}), ("processed", {"temperature": 0.6, "top_k": 3})]
)
def test_top_logprobs_through_http_are_the_targets(logprobs, sampler):
    served = ReferenceServer(make_tiny_lm(seed=1), logprobs=logprobs)
    reference = make_tiny_lm(seed=1)
    request = ppl.StepRequest(PROMPT, stop=("c",), max_tokens=4, top_logprobs=4, **sampler)
    try:
        with client(served, logprobs=logprobs) as lm:
            results = lm.sample_steps([request] * 6, seed=2)
    finally:
        served.stop()
    for r in results:
        assert len(r.top_logprobs) == len(r.token_ids)
        expected = _target_top(reference, PROMPT, r.token_ids, request)
        for row, want in zip(r.top_logprobs, expected, strict=True):
            assert row == pytest.approx(want, abs=1e-4)  # outside a top_k support: dropped


def test_top_logprobs_with_a_proposal_temperature_raise_capability_error(server):
    request = ppl.StepRequest(PROMPT, proposal_temperature=0.5, top_logprobs=2)
    with client(server, logprobs="processed") as lm:
        with pytest.raises(ppl.CapabilityError, match="top_logprobs=2 with proposal_temperature"):
            lm.sample_steps([request])
    assert server.requests == 0


def test_top_logprobs_are_parsed_from_both_answer_formats():
    from models.openai_lm import _top_logprobs

    completions = {"top_logprobs": [{"a": -2.0, "b": -0.1, "c": -3.0, "d": -9999.0}]}
    assert _top_logprobs(completions, 2) == ((-0.1, -2.0),)
    assert _top_logprobs(completions, 5) == ((-0.1, -2.0, -3.0),)
    chat = {"content": [{"id": 1, "logprob": -0.1, "top_logprobs": [{"logprob": -2.0}]}]}
    assert _top_logprobs(chat, 3) == ((-2.0,),)
    assert _top_logprobs(completions, 0) == ()
    with pytest.raises(ppl.BadResponse, match="top log-probabilities"):
        _top_logprobs({"tokens": ["a"]}, 2)
