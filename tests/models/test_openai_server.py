"""Integration tier: OpenAILM against a real llama.cpp server serving the embedded GGUF.

The server is llama-cpp-python's (``pip install 'pplscale[server]'``), started
on a free port of 127.0.0.1 for this module; the module is skipped when it is
not installed. The server runs the Q4_1 weights with llama.cpp's quantized
kernels and ``TransformersLM`` their dequantized copy, so log-probabilities
agree to a few hundredths of a nat per token, not exactly.
"""

import math
import subprocess

import pytest
import server_process
from server_process import free_port, running_server, stop_server

pytest.importorskip(
    "llama_cpp.server.app", reason="integration tier: pip install 'pplscale[server]'"
)

import models  # noqa: E402
import ppl  # noqa: E402
from models import embedded  # noqa: E402
from models.openai_lm import OpenAILM  # noqa: E402
from ppl.cli.executors import load_results, run_dataset  # noqa: E402

pytestmark = pytest.mark.slow
PROMPT = "Once upon a time"


def assert_close_to_model(pairs) -> None:
    """Server log p against the dequantized model's, for (server, local, num_tokens) steps.

    Quantized kernels move single tokens by up to about 0.3 nats and the mean
    over tokens by about 0.03 (measured on this model).
    """
    for served, local, num_tokens in pairs:
        assert abs(served - local) <= 0.3 + 0.05 * num_tokens
    total = sum(abs(served - local) for served, local, _ in pairs)
    assert total / sum(n for _, _, n in pairs) <= 0.06


def start_server(port: int, log_path) -> subprocess.Popen:
    return server_process.start_server(server_command(port), log_path)


def server_command(port: int) -> list[str]:
    return embedded.llama_server_command(port, n_ctx=2048)


def wait_ready(port: int, reference) -> None:
    with make_client(port, reference) as probe:
        probe.wait_until_ready(timeout=120)


@pytest.fixture(scope="module")
def reference():
    return models.default_lm()


def make_client(port: int, reference, **options) -> OpenAILM:
    options.setdefault("timeout", 60.0)
    return OpenAILM(
        f"http://127.0.0.1:{port}/v1",
        "smollm2",
        tokenizer=reference.tokenizer,
        server="llama-cpp-python",
        eos_token_ids=reference.eos_token_ids,
        **options,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory, reference):
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    with running_server(
        server_command(port), log_path, lambda: wait_ready(port, reference), "llama.cpp server"
    ):
        yield port


@pytest.fixture
def lm(server, reference):
    with make_client(server, reference) as client:
        yield client


def test_steps_match_the_model_and_keep_the_stop_string(lm, reference):
    requests = [ppl.StepRequest(PROMPT, stop=(",", "."), max_tokens=6)] * 6
    results = lm.sample_steps(requests, seed=0)
    assert any(r.text == "," for r in results)  # the server's own text is "" for these
    scores = reference.score_steps([ppl.ScoreRequest(PROMPT, r.token_ids) for r in results])
    assert_close_to_model(
        [(r.logp, score, len(r.token_ids)) for r, score in zip(results, scores, strict=True)]
    )
    for r in results:
        assert r.text == reference.decode(r.token_ids)
        assert r.logq == r.logp and not r.finished
        if r.text.endswith((",", ".")):
            assert not any(s in r.text[:-1] for s in (",", "."))
        else:
            assert len(r.token_ids) == 6


def test_multibyte_characters_split_over_tokens_keep_their_text(lm, reference):
    # Byte tokens of CJK characters come back as empty pieces: the text is
    # rebuilt from the server's text instead.
    results = lm.sample_steps(
        [ppl.StepRequest("Chinese: 我喜欢", stop=(), max_tokens=6)] * 4, seed=0
    )
    assert any(ord(c) > 0x2E80 for r in results for c in r.text)
    for r in results:
        assert r.text and "\ufffd" not in r.text
        assert r.text == reference.decode(r.token_ids) and math.isfinite(r.logp)


def test_a_url_is_enough(server, lm):
    # The server's model id is the GGUF path: the tokenizer is read from it.
    with OpenAILM(f"http://127.0.0.1:{server}/v1") as discovered:
        assert discovered.server == models.SERVERS["llama-cpp-python"]
        assert discovered.model == str(embedded.gguf_path())
        requests = [ppl.StepRequest(PROMPT, stop=(".",), max_tokens=4)] * 2
        found = discovered.sample_steps(requests, seed=1)
    assert [r.token_ids for r in found] == [r.token_ids for r in lm.sample_steps(requests, seed=1)]


def test_same_seed_same_steps(lm):
    requests = [ppl.StepRequest(PROMPT, stop=(".",), max_tokens=4)] * 3
    first = lm.sample_steps(requests, seed=4)
    again = lm.sample_steps(requests, seed=4)
    assert [r.token_ids for r in first] == [r.token_ids for r in again]


@ppl.program
def words_without_e(lm, prompt):
    text = prompt
    for i in range(3):
        word = ppl.step(f"word_{i}", lm, text, stop=(" ",), max_tokens=3)
        ppl.condition(f"no_e_{i}", "e" not in word.lower())
        text += word
    ppl.answer(text)


def test_smc_through_the_server_and_locally_target_the_same_posterior(lm, reference):
    through_server = ppl.smc(words_without_e, lm, PROMPT, num_particles=16, seed=0)
    local = ppl.smc(words_without_e, reference, PROMPT, num_particles=16, seed=0)
    for posterior in (through_server, local):
        assert not posterior.is_empty
        live = [w for w in posterior.log_weights if w > -math.inf]
        assert live and all(math.isfinite(w) for w in live)
        for answer in posterior.answer_distribution():
            assert answer.startswith(PROMPT) and "e" not in answer[len(PROMPT) :].lower()
    # Every step the server drew is a step of the local model with (nearly) the same
    # log p. Resampled copies share steps: each distinct step counts once.
    steps = {}
    for trace in through_server.particles:
        text = PROMPT
        for site in trace.steps:
            steps[text, site.value.token_ids] = site.value.logp
            text += site.value
    pairs = [
        (logp, reference.score_steps([ppl.ScoreRequest(text, token_ids)])[0], len(token_ids))
        for (text, token_ids), logp in steps.items()
    ]
    assert_close_to_model(pairs)
    assert through_server.cost.tokens_generated > 0


def test_what_llama_cpp_cannot_report_is_a_capability_error(lm):
    with pytest.raises(ppl.CapabilityError, match="temperature=0.7"):
        lm.sample_steps([ppl.StepRequest(PROMPT, temperature=0.7)], seed=0)
    with pytest.raises(ppl.CapabilityError, match="cannot score"):
        lm.score_steps([ppl.ScoreRequest(PROMPT, (28,))])
    # A chat reply ends at <|im_end|>, which llama-cpp-python leaves out of the log-probabilities.
    with pytest.raises(ppl.CapabilityError, match="end-of-sequence"):
        lm.sample_steps([ppl.StepRequest(ppl.Chat("Reply with one word: hi"), stop=())], seed=0)


def test_server_killed_mid_run_loses_nothing_and_resumes(tmp_path, reference):
    port = free_port()
    process = start_server(port, tmp_path / "server.log")
    problems = [{"id": f"q{i}", "prompt": p} for i, p in enumerate(["One day", "The cat", "A dog"])]
    killed = []

    class KilledOnFirstCall(ppl.LM):
        """Forwards to the client, but stops the server as problem q1 sends its first step."""

        def __init__(self, client):
            self.client = client

        @property
        def stats(self):
            return self.client.stats

        def sample_steps(self, requests, *, seed=None):
            if not killed:
                stop_server(process)
                killed.append(True)
            return self.client.sample_steps(requests, seed=seed)

        def score_steps(self, requests):
            return self.client.score_steps(requests)

    def make_runner():
        client = make_client(port, reference, retries=1, backoff=0.05, timeout=20)

        def run_one(problem):
            lm = KilledOnFirstCall(client) if problem["id"] == "q1" else client
            posterior = ppl.smc(words_without_e, lm, problem["prompt"], num_particles=4, seed=0)
            return {"answers": sorted(posterior.answer_distribution())}

        return run_one

    try:
        with make_client(port, reference) as probe:
            probe.wait_until_ready(timeout=120)
        down = run_dataset(problems, make_runner, out_dir=tmp_path / "out")
        assert down.finished == ["q0"] and sorted(down.failed) == ["q1", "q2"]
        assert "ServerUnreachable" in down.failed["q1"] and "ServerUnreachable" in down.failed["q2"]
        assert set(load_results(tmp_path / "out")) == {"q0"}
        kept = (tmp_path / "out" / "q0.json").read_text()

        process = start_server(port, tmp_path / "server2.log")
        with make_client(port, reference) as probe:
            probe.wait_until_ready(timeout=120)
        resumed = run_dataset(problems, make_runner, out_dir=tmp_path / "out")
        assert resumed.skipped == ["q0"] and resumed.finished == ["q1", "q2"] and resumed.complete
        assert set(load_results(tmp_path / "out")) == {"q0", "q1", "q2"}
        assert (tmp_path / "out" / "q0.json").read_text() == kept
    finally:
        stop_server(process)
