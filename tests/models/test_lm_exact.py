"""Exactness through the LM path: a tiny random llama, posteriors from its own logits."""

import itertools
import math

import pytest
import torch
from exactness import assert_matches_exact, assert_unbiased_evidence
from tiny import VOCAB, make_tiny_lm

import ppl

EOS = VOCAB[0]
PROMPT = "ab"


@ppl.program
def two_steps(lm, proposal_temperature, temperature=1.0, top_k=None, top_p=None):
    """Two LM steps whose target is the sampler (temperature, top_k, top_p)."""
    sampler = {
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "proposal_temperature": proposal_temperature,
    }
    first = ppl.step("first", lm, PROMPT, stop=(), max_tokens=1, **sampler)
    ppl.condition("no_e", "e" not in first)
    second = ppl.step("second", lm, PROMPT + first, stop=(), max_tokens=2, **sampler)
    ppl.factor("fewer_c", -0.7 * second.count("c"))
    ppl.answer((str(first), str(second)[:1]))


def sampler_probs(logits: list[float], temperature=1.0, top_k=None, top_p=None) -> list[float]:
    """The sampler's distribution, written out independently of ppl.sampler (float64, lists)."""
    scaled = [x / temperature for x in logits]
    order = sorted(range(len(scaled)), key=lambda i: -scaled[i])
    keep = set(range(len(scaled)))
    if top_k is not None:
        kth = scaled[order[min(top_k, len(scaled)) - 1]]
        keep = {i for i in keep if scaled[i] >= kth}
    top = max(scaled[i] for i in keep)
    weights = {i: math.exp(scaled[i] - top) for i in keep}
    total = sum(weights.values())
    probs = {i: w / total for i, w in weights.items()}
    if top_p is not None:
        mass, cut = 0.0, None
        for i in sorted(probs, key=lambda i: -probs[i]):
            if mass < top_p:
                cut = probs[i]
            mass += probs[i]
        probs = {i: p for i, p in probs.items() if p >= cut}
        total = sum(probs.values())
        probs = {i: p / total for i, p in probs.items()}
    return [probs.get(i, 0.0) for i in range(len(logits))]


def next_token_probs(lm, text: str, **sampler) -> list[float]:
    ids = torch.tensor([lm.encode(text)])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0, -1]
    return sampler_probs(logits.double().tolist(), **sampler)


def exact_two_steps(lm, **sampler) -> tuple[dict, float]:
    """Enumerate both steps token by token with full forward passes (no cache)."""
    joint: dict = {}
    first_probs = next_token_probs(lm, PROMPT, **sampler)
    for a, p_a in enumerate(first_probs):
        first = "" if a == 0 else VOCAB[a]
        if "e" in first or p_a == 0:
            continue
        context = PROMPT + first
        for t1, p_1 in enumerate(next_token_probs(lm, context, **sampler)):
            if t1 == 0:
                sequences = [("", p_1)]
            else:
                second_probs = next_token_probs(lm, context + VOCAB[t1], **sampler)
                sequences = [
                    (VOCAB[t1] + ("" if t2 == 0 else VOCAB[t2]), p_1 * p_2)
                    for t2, p_2 in enumerate(second_probs)
                ]
            for second, p in sequences:
                weight = p_a * p * math.exp(-0.7 * second.count("c"))
                key = (first, second[:1])
                joint[key] = joint.get(key, 0.0) + weight
    z = sum(joint.values())
    return {k: w / z for k, w in joint.items() if w > 0}, math.log(z)


@pytest.mark.parametrize(
    ("method", "options", "sampler"),
    [
        ("importance", {}, {}),
        ("smc", {"ess_threshold": 1.0}, {}),
        # The untempered model as the target, sampled at 0.6.
        ("smc", {"ess_threshold": 1.0, "resample": "residual"}, {"proposal_temperature": 0.6}),
        # The sampler as the target and the proposal: weights are the factors alone.
        ("importance", {}, {"temperature": 0.7, "top_k": 3}),
        ("smc", {}, {"temperature": 1.5, "top_k": 4, "top_p": 0.9}),
        # A truncated, tempered target with a proposal at another temperature.
        (
            "smc",
            {"ess_threshold": 1.0},
            {"temperature": 0.8, "top_p": 0.8, "proposal_temperature": 1.3},
        ),
    ],
)
def test_lm_posterior_matches_model_logits(method, options, sampler):
    lm = make_tiny_lm(seed=1)
    target = {k: v for k, v in sampler.items() if k != "proposal_temperature"}
    exact, log_z = exact_two_steps(lm, **target)
    assert len(exact) > 3 and max(exact.values()) < 0.9  # a non-trivial target
    settings = (target.get("temperature", 1.0), target.get("top_k"), target.get("top_p"))
    posterior = ppl.run(
        method,
        two_steps,
        lm,
        sampler.get("proposal_temperature"),
        *settings,
        num_runs=120,
        num_particles=24,
        seed=11,
        **options,
    )
    assert_matches_exact(posterior, exact)
    assert_unbiased_evidence(posterior, log_z)


def test_step_logp_matches_fresh_scoring():
    lm = make_tiny_lm(seed=2)
    posterior = ppl.smc(two_steps, lm, 1.0, num_particles=12, seed=0, ess_threshold=1.0)
    fresh = make_tiny_lm(seed=2)
    for trace in posterior.particles:
        for site in trace.steps:
            context = PROMPT if site.name == "first" else PROMPT + trace["first"].value
            (score,) = fresh.score_steps([ppl.ScoreRequest(context, site.value.token_ids)])
            assert score == pytest.approx(site.value.logp, abs=1e-4)


def test_position_logprobs_are_the_distributions_behind_the_scores():
    lm = make_tiny_lm(seed=2)
    requests = [
        ppl.ScoreRequest(PROMPT, (1, 2, 3)),
        ppl.ScoreRequest(PROMPT + "b", (4,)),
        ppl.ScoreRequest(PROMPT, ()),
    ]
    tables = lm.position_logprobs(requests)
    assert [t.shape for t in tables] == [(3, len(VOCAB)), (1, len(VOCAB)), (0, len(VOCAB))]
    for table in tables:
        torch.testing.assert_close(table.exp().sum(1), torch.ones(len(table)))
    picked = [
        float(t[range(len(r.token_ids)), list(r.token_ids)].sum())
        for t, r in zip(tables, requests, strict=True)
    ]
    assert picked == pytest.approx(make_tiny_lm(seed=2).score_steps(requests), abs=1e-5)


def test_eos_ends_step_and_is_scored():
    lm = make_tiny_lm(seed=1)
    results = lm.sample_steps([ppl.StepRequest(PROMPT, stop=(), max_tokens=6)] * 200, seed=0)
    ended = [r for r in results if r.finished]
    assert ended, "the tiny model should emit EOS within 6 tokens for some sample"
    for r in ended:
        assert r.token_ids[-1] == 0 and EOS not in r.text
        assert len(r.text) == len(r.token_ids) - 1
    unfinished = [r for r in results if not r.finished]
    assert all(len(r.token_ids) == 6 for r in unfinished)


@pytest.mark.parametrize("stop", [("b",), ("cc", "ea")])
def test_stop_strings_end_steps(stop):
    lm = make_tiny_lm(seed=3)
    results = lm.sample_steps([ppl.StepRequest("a", stop=stop, max_tokens=12)] * 64, seed=1)
    for r in results:
        if r.finished or len(r.token_ids) == 12:
            continue
        assert any(r.text.endswith(s) for s in stop)
        assert not any(s in r.text[:-1] for s in stop)  # stopped at the first occurrence


def test_sampling_is_reproducible_for_a_seed():
    requests = [ppl.StepRequest("ab", stop=(), max_tokens=4)] * 16
    first = make_tiny_lm().sample_steps(requests, seed=5)
    again = make_tiny_lm().sample_steps(requests, seed=5)
    other = make_tiny_lm().sample_steps(requests, seed=6)
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    assert [r.token_ids for r in first] != [r.token_ids for r in other]


def test_chat_context_continues_the_assistant_message(tiny_lm):
    chat = ppl.Chat("ab", system="c") + "ba"
    assert tiny_lm.render(chat) == "cc" + "abc" + "b" + "ba"
    (result,) = tiny_lm.sample_steps([ppl.StepRequest(chat, stop=(), max_tokens=2)], seed=0)
    (score,) = make_tiny_lm().score_steps([ppl.ScoreRequest("ccabcbba", result.token_ids)])
    assert score == pytest.approx(result.logp, abs=1e-4)


def test_prefix_reuse_never_recomputes_particle_prefixes():
    lm = make_tiny_lm()
    posterior = ppl.smc(two_steps, lm, 1.0, num_particles=16, seed=0, ess_threshold=1.0)
    assert lm.stats.prefill_calls == 1  # one distinct prompt, prefilled once
    # Round 1 prefills the 2-token prompt once; in round 2 each particle feeds
    # only the one token its ancestor's cached row lacks.
    assert len(posterior.particles) == 16
    assert lm.stats.tokens_prefilled == len(PROMPT) + 16


def test_replayed_sites_never_reach_the_backend():
    class CountingLM(type(make_tiny_lm())):
        def __init__(self, base):
            super().__init__(base.model, base.tokenizer)
            self.batch_sizes = []

        def submit(self, requests, seeds):
            self.batch_sizes.append(len(requests))
            return super().submit(requests, seeds)

    lm = CountingLM(make_tiny_lm())

    @ppl.program
    def three_steps(lm):
        text = PROMPT
        for i in range(3):
            text += ppl.step(f"s{i}", lm, text, stop=(), max_tokens=1)
        ppl.answer(text)

    ppl.smc(three_steps, lm, num_particles=10, seed=0, ess_threshold=1.0)
    # One batch of requests per round, one per live particle, no scoring:
    # every re-execution replays earlier steps without asking the model.
    assert lm.batch_sizes == [10, 10, 10]
    assert lm.stats.sample_calls == 3 and lm.stats.score_calls == 0


def test_batched_cache_logits_equal_full_forward():
    lm = make_tiny_lm(seed=4)
    prefixes = ["abca", "ab", "abcab", "cc"]
    for step_round in range(3):
        logprobs = lm.next_token_logprobs(prefixes)
        for row, prefix in enumerate(prefixes):
            with torch.no_grad():
                full = lm.model(input_ids=torch.tensor([lm.encode(prefix)])).logits[0, -1]
            assert torch.allclose(logprobs[row], torch.log_softmax(full, -1), atol=1e-4), (
                step_round,
                row,
            )
        # Next round: particles fork (resampling), extend, and one changes its past.
        prefixes = [prefixes[0] + "b", prefixes[0] + "c", prefixes[2] + "a", "ca"]
        if step_round == 1:
            lm._batch.compact()


@pytest.mark.parametrize("combo", list(itertools.islice(itertools.product("abc", repeat=2), 3)))
def test_score_then_sample_same_context(combo):
    lm = make_tiny_lm()
    context = "a" + "".join(combo)
    lm.score_steps([ppl.ScoreRequest(context, (1, 2))])
    (result,) = lm.sample_steps([ppl.StepRequest(context, stop=(), max_tokens=3)], seed=0)
    (score,) = make_tiny_lm().score_steps([ppl.ScoreRequest(context, result.token_ids)])
    assert score == pytest.approx(result.logp, abs=1e-4)


def test_forwarding_lm_passes_calls_and_settings_through():
    class Counting(ppl.lm.ForwardingLM):
        def sample_steps(self, requests, *, seed=None):
            self._calls = getattr(self, "_calls", 0) + 1
            return super().sample_steps(requests, seed=seed)

    backend = make_tiny_lm(seed=2)
    wrapped = Counting(backend)
    wrapped.keep_hidden_states = True  # a setting reaches the backend, not the wrapper
    assert backend.keep_hidden_states and "keep_hidden_states" not in vars(wrapped)
    request = ppl.StepRequest(PROMPT, max_tokens=2)
    assert wrapped.sample_steps([request], seed=1) == make_tiny_lm(seed=2).sample_steps(
        [request], seed=1
    )
    assert wrapped._calls == 1 and wrapped.stats is backend.stats
    assert wrapped.vocab_size == backend.vocab_size
