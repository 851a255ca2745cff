"""Verifiers: aggregation, weight conversion, programmatic checks, LM judge, PRMs, views."""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
import transformers
from exactness import assert_matches_exact
from tiny import make_tiny_lm
from tokenizers import Tokenizer, decoders
from tokenizers.models import BPE
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForTokenClassification,
    PreTrainedTokenizerFast,
)

import ppl
from models.verifiers import (
    PRM,
    LMJudge,
    ProgrammaticVerifier,
    aggregate_scores,
    to_log_weight,
)

# --- aggregation and weights ----------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "expected"),
    [("last", 0.8), ("min", 0.5), ("prod", 0.9 * 0.5 * 0.8), ("mean", 2.2 / 3)],
)
def test_aggregations(how, expected):
    assert aggregate_scores([0.9, 0.5, 0.8], how) == pytest.approx(expected)
    assert aggregate_scores([], how) == 1.0


def test_unknown_aggregation_is_rejected():
    with pytest.raises(ppl.InvalidArgumentError, match="unknown aggregation"):
        aggregate_scores([0.5], "max")
    with pytest.raises(ppl.InvalidArgumentError, match="unknown aggregation"):
        ProgrammaticVerifier(lambda q, s: 1.0, aggregate="median")


@pytest.mark.parametrize(
    ("p", "transform", "temperature", "expected"),
    [
        (0.25, "log", 1.0, math.log(0.25)),
        (0.25, "log", 0.5, 2 * math.log(0.25)),
        (0.0, "log", 1.0, -math.inf),
        (0.8, "logit", 1.0, math.log(4.0)),
        (0.8, "logit", 2.0, math.log(4.0) / 2),
        (1.0, "logit", 1.0, math.log((1 - 1e-6) / 1e-6)),
        (0.0, "logit", 1.0, -math.log((1 - 1e-6) / 1e-6)),
    ],
)
def test_weight_conversions(p, transform, temperature, expected):
    assert to_log_weight(p, transform, temperature) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("args", "match"),
    [((1.2,), r"\[0, 1\]"), ((0.5, "exp"), "unknown transform"), ((0.5, "log", 0.0), "> 0")],
)
def test_bad_weight_conversions_are_rejected(args, match):
    with pytest.raises(ppl.InvalidArgumentError, match=match):
        to_log_weight(*args)


VALUES = torch.tensor([0.2, 0.3, 0.5])
SCORES = [0.9, 0.5, 0.1]  # a verifier's probability for each value of x


@ppl.program
def scored_choice(verifier, transform, temperature):
    x = int(ppl.sample("x", dist.Categorical(VALUES)))
    verifier.factor("check", str(x), [str(x)], transform=transform, temperature=temperature)
    ppl.answer(x)


@pytest.mark.parametrize(
    ("transform", "temperature", "weight"),
    [
        ("log", 1.0, lambda p: p),
        ("log", 0.5, lambda p: p**2),
        ("logit", 1.0, lambda p: p / (1 - p)),
    ],
)
def test_verifier_factor_targets_prior_times_converted_score(transform, temperature, weight):
    verifier = ProgrammaticVerifier(lambda question, steps: SCORES[int(question)])
    joint = [float(v) * weight(s) for v, s in zip(VALUES, SCORES, strict=True)]
    exact = {x: w / sum(joint) for x, w in enumerate(joint)}
    post = ppl.run(
        "importance",
        scored_choice,
        verifier,
        transform,
        temperature,
        num_runs=60,
        num_particles=20,
        seed=4,
    )
    assert_matches_exact(post, exact)


# --- programmatic verifiers -------------------------------------------------------------


def test_calculator_scores_each_step():
    calculator = ProgrammaticVerifier.calculator(aggregate="min")
    steps = ["3 * 12 = 36\n", "no equation here\n", "36 - 5 = 30\n", "Answer: 30"]
    assert calculator.step_scores([("q", steps)]) == [[1.0, 1.0, 0.0, 1.0]]
    assert calculator.score("q", steps) == 0.0
    assert calculator.score("q", steps[:2]) == 1.0
    assert calculator.calls == 3


def test_step_level_last_aggregation_judges_only_the_last_step():
    seen = []

    def judge(question, steps):
        seen.append(steps)
        return len(steps[-1]) / 10

    verifier = ProgrammaticVerifier(judge, level="step", aggregate="last")
    assert verifier.score_batch([("q", ["a", "bbb"]), ("q", [])]) == [0.3, 1.0]
    assert seen == [("a", "bbb")]


def test_step_level_verifier_sees_each_prefix():
    seen = []
    verifier = ProgrammaticVerifier(
        lambda q, steps: seen.append(steps) or 1.0, level="step", aggregate="prod"
    )
    verifier.score("q", ["x", "y", "z"])
    assert seen == [("x",), ("x", "y"), ("x", "y", "z")]


def test_regex_and_unit_test_verifiers():
    regex = ProgrammaticVerifier.regex(r"Answer: 31\b")
    assert regex.score_batch([("q", ["36 - 5 = 31\n", "Answer: 31"]), ("q", "Answer: 310")]) == [
        1.0,
        0.0,
    ]

    def passes_tests(question, steps):
        scope = {}
        try:
            exec("".join(steps), scope)
            return scope["square"](3) == 9 and scope["square"](-2) == 4
        except Exception:
            return False

    unit_tests = ProgrammaticVerifier(passes_tests)
    good = ["def square(x):\n", "    return x * x\n"]
    bad = ["def square(x):\n", "    return 2 * x\n"]
    assert unit_tests.score_batch([("square", good), ("square", bad), ("square", ["(("])]) == [
        1.0,
        0.0,
        0.0,
    ]


class CountingVerifier(ProgrammaticVerifier):
    """Records the size of every ``score_batch`` call."""

    def __init__(self, fn, **options):
        super().__init__(fn, **options)
        self.batch_sizes: list[int] = []

    def score_batch(self, items):
        self.batch_sizes.append(len(items))
        return super().score_batch(items)


@pytest.mark.parametrize("engine", ["importance", "smc"])
def test_population_engines_score_each_round_in_one_batch(engine):
    verifier = CountingVerifier(lambda q, steps: 0.9 if steps[-1] == "1" else 0.2, level="step")

    def flips(batched: bool):
        @ppl.program
        def program():
            steps = []
            for i in range(3):
                steps.append(str(int(ppl.sample(f"x{i}", dist.Bernoulli(0.5)))))
                if batched:
                    verifier.factor(f"v{i}", "q", steps, transform="log")
                else:
                    p = ppl.memo(f"v{i}.score", verifier.score, "q", tuple(steps))
                    ppl.factor(f"v{i}", math.log(p))
            ppl.answer("".join(steps))

        return program

    run = getattr(ppl, engine)
    post = run(flips(True), num_particles=24, seed=4)
    # One call per round for all 24 particles, not one per particle.
    assert verifier.batch_sizes == [24, 24, 24]
    assert post.cost.verifier_calls == 72
    verifier.batch_sizes.clear()
    one_by_one = run(flips(False), num_particles=24, seed=4)
    assert verifier.batch_sizes == [1] * 72
    # Batching changes only how scores are computed, never the result.
    assert post.answers == one_by_one.answers
    np.testing.assert_array_equal(post.log_weights, one_by_one.log_weights)
    assert post.log_evidence == one_by_one.log_evidence


def test_memo_batch_must_return_one_result_per_call():
    def first_only(calls):
        return [calls[0][0]]

    @ppl.program
    def program():
        x = int(ppl.sample("x", dist.Bernoulli(0.5)))
        ppl.memo("m", abs, x, batch=first_only)
        ppl.answer(x)

    with pytest.raises(ppl.BackendError, match="returned 1 results for 3 calls"):
        ppl.importance(program, num_particles=3, seed=0)
    with pytest.raises(ppl.InvalidArgumentError, match="batch must be callable"):
        ppl.importance(
            ppl.program(lambda: ppl.memo("m", abs, -1, batch=3)), num_particles=1, seed=0
        )


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), "yes", None])
def test_invalid_verifier_outputs_are_errors(bad):
    verifier = ProgrammaticVerifier(lambda q, s: bad)
    with pytest.raises(ppl.VerifierError, match="probabilities in"):
        verifier.score("q", ["x"])


def test_memoised_verifier_is_never_recomputed_and_counted():
    calls = []

    def judge(question, steps):
        calls.append(steps)
        return 0.9 if steps[-1] == "1" else 0.4

    verifier = ProgrammaticVerifier(judge, level="step", aggregate="last")

    @ppl.program
    def flips():
        steps = []
        for i in range(4):
            steps.append(str(int(ppl.sample(f"x{i}", dist.Bernoulli(0.5)))))
            verifier.twist(f"v{i}", "q", steps)
        ppl.answer("".join(steps))

    post = ppl.smc(flips, num_particles=16, ess_threshold=1.0, seed=0)
    # Every particle judges each of its 4 steps once; resampled copies replay.
    assert len(calls) == verifier.calls == post.cost.verifier_calls == 16 * 4
    for trace in post.particles:
        steps = tuple(trace.answer)
        for i in range(4):
            assert trace[f"v{i}"].value == (0.9 if steps[i] == "1" else 0.4)


# --- LM judge -------------------------------------------------------------------------


def continuation_log_prob(lm, context_ids, continuation_ids) -> float:
    ids = torch.tensor([list(context_ids) + list(continuation_ids)])
    with torch.no_grad():
        log_p = torch.log_softmax(lm.model(input_ids=ids).logits[0].double(), -1)
    start = len(context_ids)
    return sum(float(log_p[start - 1 + i, t]) for i, t in enumerate(continuation_ids))


def exact_judge(lm, context, yes, no) -> float:
    ids = lm.encode(context)
    log_yes = continuation_log_prob(lm, ids, lm.encode(context + yes)[len(ids) :])
    log_no = continuation_log_prob(lm, ids, lm.encode(context + no)[len(ids) :])
    return math.exp(log_yes) / (math.exp(log_yes) + math.exp(log_no))


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize(("yes", "no"), [("a", "b"), ("ac", "e")])
def test_lm_judge_matches_model_probabilities(chat, yes, no):
    lm = make_tiny_lm(seed=7)
    judge = LMJudge(lm, template="{question}c{solution}", chat=chat, yes=yes, no=no)
    items = [("ab", ["a", "bc"]), ("ba", ["ce", "a", "b"])]
    before = lm.stats.score_calls
    scores = judge.step_scores(items)
    assert lm.stats.score_calls == before + 1  # every step of every solution in one call
    for (question, steps), got in zip(items, scores, strict=True):
        expected = [
            exact_judge(lm, judge.prompt(question, tuple(steps[:k])), yes, no)
            for k in range(1, len(steps) + 1)
        ]
        np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert judge.score_batch(items) == pytest.approx([min(s) for s in scores], rel=1e-4)


def test_lm_judge_outcome_level_scores_the_whole_solution():
    lm = make_tiny_lm(seed=7)
    judge = LMJudge(
        lm, level="outcome", template="{question}c{solution}", chat=False, yes="a", no="b"
    )
    (score,) = judge.score_batch([("ab", ["a", "bc"])])
    assert score == pytest.approx(exact_judge(lm, "abcabc", "a", "b"), rel=1e-4)


def test_lm_judge_rejects_answers_that_do_not_tokenize():
    lm = make_tiny_lm()
    judge = LMJudge(lm, template="{question}{solution}", chat=False, yes="Y", no="b")
    with pytest.raises(ppl.VerifierError, match="does not tokenize"):
        judge.score("ab", ["c"])
    with pytest.raises(ppl.VerifierError, match="distinct"):
        LMJudge(lm, yes="a", no="a")


def test_lm_judge_needs_a_tokenizing_backend():
    class Opaque(ppl.LM):
        def sample_steps(self, requests, *, seed=None):
            return []

        def score_steps(self, requests):
            return []

    with pytest.raises(ppl.VerifierError, match="encode"):
        LMJudge(Opaque())


# --- process reward models ------------------------------------------------------------

PRM_VOCAB = ["<pad>", "a", "b", "c", "+", "-", "|", "t"]


def save_tiny_prm(path, model_class, num_labels=2, seed=0):
    backend = Tokenizer(BPE(vocab={t: i for i, t in enumerate(PRM_VOCAB)}, merges=[]))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>")
    config = LlamaConfig(
        vocab_size=len(PRM_VOCAB),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=num_labels,
        initializer_range=0.5,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = model_class(config)
    torch.random.set_rng_state(state)
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model.eval()


def token_ids(text):
    return [PRM_VOCAB.index(ch) for ch in text]


ITEMS = [("ab", ["a", "bc", "cc"]), ("c", ["b"]), ("ba", [])]


def manual_logits(model, text):
    with torch.no_grad():
        return model(input_ids=torch.tensor([token_ids(text)])).logits[0].double()


def test_token_classification_prm_reads_each_separator(tmp_path):
    model = save_tiny_prm(tmp_path, LlamaForTokenClassification)
    prm = PRM(tmp_path, step_separator="|", question_separator="t", aggregate="prod")
    assert prm.kind == "token-classification"
    scores = prm.step_scores(ITEMS)
    # "ab" + "t" + "a|bc|cc|": the separators sit at positions 4, 7 and 10.
    logits = manual_logits(model, "abta|bc|cc|")
    expected = torch.softmax(logits[[4, 7, 10]], -1)[:, 1].tolist()
    np.testing.assert_allclose(scores[0], expected, rtol=1e-5)
    # Padding inside a batch changes nothing.
    np.testing.assert_allclose(prm.step_scores(ITEMS[1:2])[0], scores[1], rtol=1e-5)
    assert scores[2] == []
    assert prm.score_batch(ITEMS) == pytest.approx([np.prod(s) for s in scores[:2]] + [1.0])
    assert 0.05 < min(expected) and max(expected) < 0.95  # a non-trivial model


def test_single_label_prm_uses_the_sigmoid(tmp_path):
    model = save_tiny_prm(tmp_path, LlamaForTokenClassification, num_labels=1)
    prm = PRM(tmp_path, step_separator="|", question_separator="")
    (scores,) = prm.step_scores([("ab", ["c", "a"])])
    logits = manual_logits(model, "abc|a|")
    np.testing.assert_allclose(scores, torch.sigmoid(logits[[3, 5], 0]).tolist(), rtol=1e-5)


def test_step_tag_prm_reads_verdict_tokens_at_the_tag(tmp_path):
    model = save_tiny_prm(tmp_path, LlamaForCausalLM)
    prm = PRM(tmp_path, step_separator="t|", question_separator="|", step_tag="t", batch_size=2)
    assert prm.kind == "step-tag"
    scores = prm.step_scores(ITEMS)
    logits = manual_logits(model, "ab|at|bct|cct|")
    plus, minus = PRM_VOCAB.index("+"), PRM_VOCAB.index("-")
    expected = torch.softmax(logits[[4, 8, 12]][:, [plus, minus]], -1)[:, 0].tolist()
    np.testing.assert_allclose(scores[0], expected, rtol=1e-5)
    np.testing.assert_allclose(prm.step_scores(ITEMS[1:2])[0], scores[1], rtol=1e-5)


def test_prm_configuration_errors(tmp_path):
    with pytest.raises(ppl.VerifierError, match="not a local"):
        PRM(tmp_path / "missing")
    save_tiny_prm(tmp_path, LlamaForCausalLM)
    with pytest.raises(ppl.VerifierError, match="one token"):
        PRM(tmp_path, step_separator="|", positive_token="++")
    with pytest.raises(ppl.VerifierError, match="no tokens"):
        PRM(tmp_path, step_separator="\n")
    with pytest.raises(ppl.VerifierError, match="does not occur"):
        PRM(tmp_path, step_separator="|", step_tag="t")
    with pytest.raises(ppl.InvalidArgumentError, match="unknown PRM kind"):
        PRM(tmp_path, step_separator="|", kind="value-head")


# --- posterior views ------------------------------------------------------------------


def voted_posterior():
    answers = ["31", "29", "31", "30", "29"]
    sites = [0.2, 0.9, 0.3, 0.95, 0.8]
    traces = [
        ppl.Trace((ppl.Site("final.score", "memo", s), ppl.Site("answer", "answer", a)))
        for a, s in zip(answers, sites, strict=True)
    ]
    return ppl.Posterior(traces, [0.0, 0.0, 0.0, -math.inf, 0.0])


def test_best_of_n_and_weighted_majority_views():
    post = voted_posterior()
    # Particle 3 has the best score but weight zero: it never counts.
    assert post.best_of_n_answer("final.score") == "29"
    assert post.best_of_n_answer([5.0, 1.0, 2.0, 9.0, 0.0]) == "31"
    assert post.best_of_n_answer(lambda trace: len(trace.answer)) == "31"
    vote = post.weighted_vote("final.score")
    assert vote == pytest.approx({"29": 1.7 / 2.2, "31": 0.5 / 2.2})
    assert list(vote) == ["29", "31"]
    assert post.weighted_majority_answer("final.score") == "29"


def test_verifier_view_errors():
    post = voted_posterior()
    with pytest.raises(ppl.InvalidArgumentError, match="one number per particle"):
        post.best_of_n_answer([1.0, 2.0])
    with pytest.raises(ppl.InvalidArgumentError, match="no site"):
        post.weighted_vote("missing")
    with pytest.raises(ppl.InvalidArgumentError, match="non-negative"):
        post.weighted_vote([-1.0] * 5)
    with pytest.raises(ppl.EmptyPosteriorError, match="zero"):
        post.weighted_majority_answer([0.0] * 5)
