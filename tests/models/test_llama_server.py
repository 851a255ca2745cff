"""Integration tier: OpenAILM against llama.cpp's C++ batching ``llama-server``.

The server (built by ``scripts/build_llama_cpp.sh``; ``make test-integration``
sets ``PPLSCALE_LLAMA_SERVER``) serves the embedded GGUF on 127.0.0.1 with
parallel slots, continuous batching and its prompt cache, as vLLM and SGLang
serve at scale. It runs the Q4_1 weights with quantized kernels and
``TransformersLM`` their dequantized copy, so log-probabilities agree to a few
hundredths of a nat per token.
"""

import math
import subprocess
import threading
import time

import httpx
import numpy as np
import pytest
import server_process
import torch
from server_process import free_port, running_server, stop_server

import models
import ppl
from models import embedded
from models.openai_lm import OpenAILM
from ppl.cli.executors import load_results, run_dataset

pytestmark = pytest.mark.slow
PROMPT = "The capital of France is"
SLOTS = 4


def server_or_skip():
    try:
        return embedded.llama_cpp_server_path()
    except ppl.ModelNotInstalledError as error:
        pytest.skip(f"integration tier: {error}")


def server_command(port: int, slots: int = SLOTS) -> list[str]:
    return embedded.llama_cpp_server_command(port, slots=slots, n_ctx=4096, threads=2)


def start_server(port: int, log_path, slots: int = SLOTS) -> subprocess.Popen:
    return server_process.start_server(server_command(port, slots), log_path)


def make_client(port: int, reference, **options) -> OpenAILM:
    options.setdefault("timeout", 120.0)
    return OpenAILM(
        f"http://127.0.0.1:{port}/v1",
        "smollm2",
        tokenizer=reference.tokenizer,
        server="llama.cpp",
        eos_token_ids=sorted(reference.eos_token_ids),
        **options,
    )


def wait_ready(port: int, reference) -> None:
    with make_client(port, reference) as probe:
        probe.wait_until_ready(timeout=120)


@pytest.fixture(scope="module")
def reference():
    return models.default_lm()


@pytest.fixture(scope="module")
def server(tmp_path_factory, reference):
    server_or_skip()
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    with running_server(
        server_command(port), log_path, lambda: wait_ready(port, reference), "llama-server"
    ):
        yield port


@pytest.fixture
def lm(server, reference):
    with make_client(server, reference) as client:
        yield client


def test_steps_match_the_model_and_end_at_the_stop_string(lm, reference):
    requests = [ppl.StepRequest("Once upon a time", stop=(",", "."), max_tokens=8)] * 8
    results = lm.sample_steps(requests, seed=0)
    scores = reference.score_steps(
        [ppl.ScoreRequest("Once upon a time", r.token_ids) for r in results]
    )
    total = 0.0
    for result, score in zip(results, scores, strict=True):
        # Quantized kernels move a token by up to ~0.3 nats, the mean by ~0.03.
        assert abs(result.logp - score) <= 0.3 + 0.05 * len(result.token_ids)
        total += abs(result.logp - score) / len(result.token_ids)
        assert result.text == reference.decode(result.token_ids) and result.logq == result.logp
        cut = [k for k in range(1, len(result.text) + 1) if any(s in result.text[:k] for s in ",.")]
        # The step ends with the token that completes the first stop string, or at max_tokens.
        assert (cut and reference.decode(result.token_ids[:-1]).count(",") == 0) or len(
            result.token_ids
        ) == 8
    assert total / len(results) <= 0.06
    assert any(r.text.endswith(",") for r in results)


def tokens_decoded(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return embedded.parse_server_metrics(text)["tokens_predicted_total"]


def test_the_server_stops_decoding_a_step_at_its_stop_string(lm, server):
    # Streamed and closed at the stop string, a step costs the server about the
    # tokens it keeps, not max_tokens (64 here, for up to 8 kept tokens).
    requests = [ppl.StepRequest("Once upon a time", stop=(" ",), max_tokens=64)] * 8
    before = tokens_decoded(server)
    results = lm.sample_steps(requests, seed=1)
    time.sleep(0.5)  # the server notices the closed streams
    kept = sum(len(r.token_ids) for r in results)
    assert all(len(r.token_ids) < 64 for r in results)
    assert tokens_decoded(server) - before <= kept + 3 * len(results)


def test_one_rounds_requests_are_all_in_flight_together(lm):
    # Twice the slots by default, so a slot that frees finds a request queued.
    requests = [ppl.StepRequest("Once upon a time", stop=(), max_tokens=4)] * (2 * SLOTS)
    lm.sample_steps(requests, seed=1)
    assert lm.max_concurrency == 2 * SLOTS
    assert lm.stats.peak_in_flight == 2 * SLOTS
    slots = httpx.get(lm.base_url.removesuffix("/v1") + "/slots").json()
    assert len(slots) == SLOTS


def top_tokens(reference, context: str, k: int) -> dict[int, float]:
    """The ``k`` most likely next tokens after ``context`` and their log-probabilities."""
    with torch.no_grad():
        logits = reference.model(torch.tensor([reference.encode(context)])).logits[0, -1]
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    best = torch.topk(log_probs, k).indices.tolist()
    return {int(t): float(log_probs[t]) for t in best}


def test_smc_through_the_server_matches_exact_enumeration(lm, reference):
    first = top_tokens(reference, PROMPT, 3)
    second = {a: top_tokens(reference, PROMPT + reference.decode([a]), 2) for a in first}

    @ppl.program
    def two_tokens(lm):
        a = ppl.step("a", lm, PROMPT, stop=(), max_tokens=1)
        ppl.condition("a_allowed", a.token_ids[0] in first)
        b = ppl.step("b", lm, PROMPT + a, stop=(), max_tokens=1)
        ppl.condition("b_allowed", b.token_ids[0] in second[a.token_ids[0]])
        ppl.answer((a.token_ids[0], b.token_ids[0]))

    exact = {(a, b): math.exp(first[a] + lb) for a in first for b, lb in second[a].items()}
    total = sum(exact.values())
    exact = {answer: p / total for answer, p in exact.items()}
    runs = [
        ppl.smc(two_tokens, lm, num_particles=16, seed=seed, ess_threshold=1.0) for seed in range(6)
    ]
    estimates = np.array([[run.answer_distribution().get(a, 0.0) for a in exact] for run in runs])
    # Runs are independent: their spread gives the standard error; 0.04 covers quantization.
    standard_error = estimates.std(axis=0, ddof=1) / math.sqrt(len(runs))
    gap = np.abs(estimates.mean(axis=0) - np.array(list(exact.values())))
    assert np.all(gap <= 4 * standard_error + 0.04), (gap, standard_error)


def test_a_slow_slot_holds_back_no_other_request(lm, server, reference):
    # One slot decodes a long request; the round's requests go through the other slots.
    hog = threading.Thread(
        target=httpx.post,
        args=(f"http://127.0.0.1:{server}/v1/completions",),
        kwargs={"json": {"prompt": "Tell a long story.", "max_tokens": 300}, "timeout": 600},
    )
    hog.start()
    requests = [ppl.StepRequest("Once upon a time", stop=(".",), max_tokens=6)] * 6
    results = lm.sample_steps(requests, seed=2)
    hog.join()
    assert len(results) == 6 and lm.stats.failed_requests == 0 and not lm.failures
    assert all(math.isfinite(r.logp) and r.token_ids for r in results)


@ppl.program
def words_without_e(lm, prompt):
    text = prompt
    for i in range(2):
        word = ppl.step(f"word_{i}", lm, text, stop=(" ",), max_tokens=3)
        ppl.condition(f"no_e_{i}", "e" not in word.lower())
        text += word
    ppl.answer(text)


def test_requests_sent_while_the_server_starts_are_retried(tmp_path, reference):
    # Refused connections, then 503 "Loading model": retried with backoff, none lost.
    server_or_skip()
    port = free_port()
    process = start_server(port, tmp_path / "server.log")
    try:
        with make_client(port, reference, retries=12, backoff=0.1, max_concurrency=8) as client:
            requests = [ppl.StepRequest("One day", stop=(".",), max_tokens=4)] * 8
            results = client.sample_steps(requests, seed=0)
            assert client.stats.retries > 0 and client.stats.failed_requests == 0
        assert len(results) == 8 and all(math.isfinite(r.logp) for r in results)
    finally:
        stop_server(process)


def test_server_killed_mid_run_loses_nothing_duplicates_nothing_and_resumes(tmp_path, reference):
    server_or_skip()
    port = free_port()
    process = start_server(port, tmp_path / "server.log")
    problems = [{"id": f"q{i}", "prompt": p} for i, p in enumerate(["One day", "The cat", "A dog"])]
    killed = []

    def make_runner():
        client = make_client(port, reference, retries=1, backoff=0.05, timeout=30)

        def run_one(problem):
            if problem["id"] == "q1" and not killed:
                stop_server(process)  # the server dies as q1 starts
                killed.append(True)
            posterior = ppl.smc(words_without_e, client, problem["prompt"], num_particles=4, seed=0)
            return {"answers": sorted(posterior.answer_distribution())}

        return run_one

    try:
        with make_client(port, reference) as probe:
            probe.wait_until_ready(timeout=120)
        down = run_dataset(problems, make_runner, out_dir=tmp_path / "out")
        assert down.finished == ["q0"] and sorted(down.failed) == ["q1", "q2"]
        assert "ServerUnreachable" in down.failed["q1"]
        kept = (tmp_path / "out" / "q0.json").read_text()

        process = start_server(port, tmp_path / "server2.log")
        with make_client(port, reference) as probe:
            probe.wait_until_ready(timeout=120)
        resumed = run_dataset(problems, make_runner, out_dir=tmp_path / "out")
        assert resumed.skipped == ["q0"] and resumed.finished == ["q1", "q2"] and resumed.complete
        assert set(load_results(tmp_path / "out")) == {"q0", "q1", "q2"}
        assert sorted(p.name for p in (tmp_path / "out").glob("q*.json")) == [
            "q0.json",
            "q1.json",
            "q2.json",
        ]
        assert (tmp_path / "out" / "q0.json").read_text() == kept
    finally:
        stop_server(process)
