"""Tests of ``ppl.Posterior``: persistence, answer views, diagnostics, combining.

Posteriors come from real engine runs on toy programs over plain Pyro
distributions (no language model), or are built by hand where a test needs
exact control over the weights or values.
"""

from __future__ import annotations

import json
import math

import networkx as nx
import numpy as np
import pyro.distributions as dist
import pytest
import torch
from scipy.special import logsumexp

import ppl
from ppl.posterior import Cost, Round
from ppl.runtime import execute

PRIOR = torch.tensor([0.2, 0.3, 0.5])
LOG_FACTOR = torch.tensor([0.0, -1.0, -2.0])
# Exact evidence of ``toy``: sum_x prior(x) * exp(factor(x)).
TOY_LOG_Z = math.log(float((PRIOR * LOG_FACTOR.exp()).sum()))


def parity(x: int) -> dict:
    return {"even": x % 2 == 0, "x": x}


@ppl.program
def toy():
    x = ppl.sample("x", dist.Categorical(PRIOR))
    ppl.factor("f", LOG_FACTOR[x])
    ppl.memo("m", parity, int(x))
    ppl.answer((int(x), "label"))


@ppl.program
def two_step():
    """Two random choices with a factor between them, and a constraint at the end."""
    x = ppl.sample("x", dist.Categorical(PRIOR))
    ppl.factor("fx", LOG_FACTOR[x])
    y = ppl.sample("y", dist.Categorical(torch.ones(4)))
    ppl.condition("not_3", int(y) != 3)
    ppl.answer((int(x), int(y)))


@ppl.program
def never():
    x = ppl.sample("x", dist.Categorical(PRIOR))
    ppl.condition("impossible", False)
    ppl.answer(int(x))


def answer_trace(answer, *extra_sites) -> ppl.Trace:
    return ppl.Trace((*extra_sites, ppl.Site("answer", "answer", answer)))


def hand_posterior(answers, log_weights, **kwargs) -> ppl.Posterior:
    return ppl.Posterior([answer_trace(a) for a in answers], log_weights, **kwargs)


def strip_wall_time(data: dict) -> dict:
    return {**data, "cost": {**data["cost"], "wall_seconds": None}}


# --- save / load ---------------------------------------------------------------


@pytest.mark.parametrize(
    "engine",
    [
        lambda: ppl.importance(two_step, num_particles=16, seed=3),
        lambda: ppl.smc(two_step, num_particles=16, ess_threshold=1.0, seed=3),
        lambda: ppl.run("smc", two_step, num_runs=2, num_particles=8, seed=3),
    ],
    ids=["importance", "smc", "run"],
)
def test_engine_posterior_save_load_round_trip(engine, tmp_path):
    post = engine()
    # The constraint at the end leaves some particles with weight zero.
    assert np.isneginf(post.log_weights).any()
    path = tmp_path / "post.json"
    post.save(path)
    assert "-Infinity" in path.read_text()
    loaded = ppl.Posterior.load(path)

    assert loaded.to_dict() == post.to_dict()
    assert np.array_equal(loaded.log_weights, post.log_weights)
    assert np.array_equal(loaded.run_index, post.run_index)
    assert np.array_equal(loaded.log_evidences, post.log_evidences)
    assert loaded.answers == post.answers
    assert all(type(a) is tuple for a in loaded.answers)
    assert loaded.answer_distribution() == post.answer_distribution()
    assert loaded.log_evidence == post.log_evidence
    assert loaded.ess == post.ess
    assert loaded.cost == post.cost
    assert loaded.method == post.method
    assert loaded.info == post.info
    assert loaded.ess_history == post.ess_history
    assert loaded.rounds == post.rounds
    assert nx.utils.graphs_equal(loaded.genealogy, post.genealogy)
    for original, restored in zip(post.particles, loaded.particles, strict=True):
        assert [s.name for s in restored] == [s.name for s in original]
        assert restored["x"].value.dtype == original["x"].value.dtype
        assert torch.equal(restored["x"].value, original["x"].value)


def test_loaded_trace_replays_to_same_answer(tmp_path):
    post = ppl.importance(toy, num_particles=6, seed=1)
    post.save(tmp_path / "p.json")
    loaded = ppl.Posterior.load(tmp_path / "p.json")
    for original, restored in zip(post.particles, loaded.particles, strict=True):
        execution = execute(toy, (), {}, restored)
        assert execution.pending is None
        assert execution.memo_calls == 0  # the recorded memo value is replayed
        assert execution.trace.answer == original.answer


@pytest.mark.parametrize(
    "tensor",
    [
        torch.tensor(1.1, dtype=torch.float32),
        torch.tensor([0.1, -2.5e-8, 3e30], dtype=torch.float64),
        torch.tensor([[1, 2], [3, 4]], dtype=torch.int32),
        torch.tensor(7, dtype=torch.int64),
        torch.tensor([True, False]),
        torch.tensor([1.5, float("-inf")], dtype=torch.float16),
    ],
    ids=["f32", "f64", "i32", "i64", "bool", "f16"],
)
def test_hand_built_posterior_round_trip_values(tensor, tmp_path):
    step = ppl.Step("Hello", token_ids=(5, 6, 7), logp=-2.25, finished=True)
    unfinished = ppl.Step(" world", token_ids=(8,), logp=-(0.1 + 0.2), finished=False)
    answer = (1, "label", (2.5, None), ppl.Step("ans", token_ids=(9,), logp=-1.0))
    sites = (
        ppl.Site("s0", "step", step, log_prob=-2.25, log_weight=-0.5, fingerprint=12345),
        ppl.Site("s1", "step", unfinished, log_prob=-0.3, log_weight=0.1 + 0.2),
        ppl.Site("t", "sample", tensor, log_prob=-1.0 / 3.0),
        ppl.Site("c", "memo", ppl.Chat("q?", system="be brief", assistant="so")),
        ppl.Site("d", "memo", {"k": [1, (2, 3)], (1, "a"): frozenset({1, 2}), 3: None}),
        ppl.Site("f", "factor", -math.inf, log_prob=-math.inf, log_weight=-math.inf),
        ppl.Site("answer", "answer", answer),
    )
    rounds = [
        [
            Round((0, 1), (None, None), (0.0, 0.0), False),
            Round((1, 1), ("Hello", None), (-0.5, -math.inf), True),
        ]
    ]
    post = ppl.Posterior(
        [ppl.Trace(sites), answer_trace("other")],
        [-0.5, -math.inf],
        ess_history=[[1.0]],
        rounds=rounds,
        cost=Cost(tokens_generated=4, lm_calls=2, verifier_calls=1, wall_seconds=0.25),
        method="smc",
        info={"seed": 2**100 + 1, "note": ("a", 1)},
    )
    path = tmp_path / "hand.json"
    post.save(path)
    loaded = ppl.Posterior.load(path)

    assert loaded.to_dict() == post.to_dict()
    assert np.array_equal(loaded.log_weights, post.log_weights)
    assert loaded.rounds == rounds
    assert loaded.cost == post.cost
    assert loaded.info == post.info and type(loaded.info["note"]) is tuple

    trace = loaded.particles[0]
    for name, original in (("s0", step), ("s1", unfinished)):
        value = trace[name].value
        assert isinstance(value, ppl.Step)
        assert str(value) == str(original)
        assert value.token_ids == original.token_ids
        assert value.logp == original.logp
        assert value.finished == original.finished
    assert trace["s0"].log_weight == -0.5 and trace["s1"].log_weight == 0.1 + 0.2
    assert trace["s0"].fingerprint is None  # fingerprints are process-local

    restored = trace["t"].value
    assert isinstance(restored, torch.Tensor)
    assert restored.dtype == tensor.dtype
    assert restored.shape == tensor.shape
    assert torch.equal(restored, tensor)
    assert trace["t"].log_prob == -1.0 / 3.0

    assert trace["c"].value == ppl.Chat("q?", system="be brief", assistant="so")
    memo = trace["d"].value
    assert memo == {"k": [1, (2, 3)], (1, "a"): frozenset({1, 2}), 3: None}
    assert type(memo["k"][1]) is tuple
    assert trace["f"].value == -math.inf

    assert loaded.answers == [answer, "other"]
    restored_answer = loaded.answers[0]
    assert type(restored_answer) is tuple and type(restored_answer[2]) is tuple
    assert isinstance(restored_answer[3], ppl.Step) and restored_answer[3].token_ids == (9,)


def test_save_unserializable_memo_names_site(tmp_path):
    @ppl.program
    def opaque():
        x = ppl.sample("x", dist.Categorical(PRIOR))
        ppl.memo("handle", lambda v: object(), int(x))
        ppl.answer(int(x))

    post = ppl.importance(opaque, num_particles=3, seed=0)
    path = tmp_path / "bad.json"
    with pytest.raises(ppl.SerializationError, match=r"site 'handle' of particle 0") as info:
        post.save(path)
    assert "object" in str(info.value)
    assert not path.exists()  # nothing half-written


def test_numpy_array_memo_round_trips(tmp_path):
    @ppl.program
    def with_array():
        x = ppl.sample("x", dist.Categorical(PRIOR))
        ppl.memo("arr", lambda v: np.arange(3, dtype=np.int32) + v, int(x))
        ppl.memo("one", lambda v: np.array([v], dtype=np.float32), int(x))
        ppl.answer(int(x))

    post = ppl.importance(with_array, num_particles=2, seed=0)
    post.save(tmp_path / "arr.json")
    loaded = ppl.Posterior.load(tmp_path / "arr.json")
    for before, after in zip(post.particles, loaded.particles, strict=True):
        for name in ("arr", "one"):
            assert after[name].value.dtype == before[name].value.dtype
            assert np.array_equal(after[name].value, before[name].value)


def test_load_rejects_unknown_format(tmp_path):
    data = ppl.importance(toy, num_particles=2, seed=0).to_dict()
    data["format"] = 999
    path = tmp_path / "future.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ppl.SerializationError, match="999"):
        ppl.Posterior.load(path)


# --- answers -------------------------------------------------------------------


def test_summary_reports_answers_and_evidence():
    post = ppl.importance(toy, num_particles=50, seed=0)
    text = post.summary()
    distribution = post.answer_distribution()
    assert len(distribution) == 3
    for answer, probability in distribution.items():
        line = next(line for line in text.splitlines() if line.startswith(repr(answer)))
        assert f"{probability:.3f}" in line
    assert "log evidence" in text
    assert f"{post.log_evidence:.3f}" in text
    assert "verifier calls 50" in text


def test_summary_truncates_answers():
    post = hand_posterior(list(range(12)), np.log(np.arange(12, 0, -1.0)))
    text = post.summary(max_answers=10)
    assert "... 2 more answers" in text
    assert repr(9) in text.splitlines()[10]


@pytest.mark.parametrize("engine", [ppl.importance, ppl.smc])
def test_answer_distribution_normalized_and_sorted(engine):
    post = engine(toy, num_particles=200, seed=4)
    distribution = post.answer_distribution()
    assert set(distribution) == {(0, "label"), (1, "label"), (2, "label")}
    assert math.isclose(sum(distribution.values()), 1.0, rel_tol=1e-12)
    probabilities = list(distribution.values())
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(p > 0 for p in probabilities)
    # Exact posterior: prior * exp(factor) / Z = [0.529, 0.292, 0.179].
    exact = (PRIOR * LOG_FACTOR.exp()) / (PRIOR * LOG_FACTOR.exp()).sum()
    for x in range(3):
        assert abs(distribution[(x, "label")] - float(exact[x])) < 0.1
    assert abs(post.log_evidence - TOY_LOG_Z) < 0.15


def test_map_and_majority_differ():
    # Three 'common' particles of weight 1, one 'rare' of weight 10.
    post = hand_posterior(["common"] * 3 + ["rare"], [0.0, 0.0, 0.0, math.log(10.0)])
    assert post.answer_distribution() == pytest.approx({"rare": 10 / 13, "common": 3 / 13})
    assert post.map_answer() == "rare"
    assert post.majority_answer() == "common"


def test_majority_ignores_dead_particles_and_breaks_ties_by_probability():
    dead = hand_posterior(["a", "a", "a", "b"], [-math.inf, -math.inf, -math.inf, 0.0])
    assert dead.majority_answer() == "b"
    tie = hand_posterior(["a", "b", "a", "b"], [0.0, 1.0, 0.0, 1.0])
    assert tie.majority_answer() == "b"
    assert tie.map_answer() == "b"


@pytest.mark.parametrize("engine", [ppl.importance, ppl.smc])
def test_all_dead_posterior_is_empty(engine):
    post = engine(never, num_particles=8, seed=0)
    assert np.isneginf(post.log_weights).all()
    assert post.is_empty
    assert post.log_evidence == -math.inf
    assert post.answer_distribution() == {}
    assert post.ess == 0.0
    assert math.isnan(post.log_evidence_se)
    with pytest.raises(ppl.EmptyPosteriorError, match="map_answer"):
        post.map_answer()
    with pytest.raises(ppl.EmptyPosteriorError):
        post.majority_answer()
    assert "empty posterior" in post.summary()


def test_partly_dead_posterior_is_not_empty():
    post = hand_posterior(["a", "b"], [-math.inf, -3.0])
    assert not post.is_empty
    assert post.answer_distribution() == {"b": 1.0}
    assert post.log_evidence == pytest.approx(-3.0 - math.log(2))


# --- combining and evidence ------------------------------------------------------


def test_combine_two_runs():
    first = ppl.importance(toy, num_particles=30, seed=1)
    second = ppl.importance(toy, num_particles=30, seed=2)
    pooled = ppl.Posterior.combine([first, second])

    assert pooled.num_runs == 2
    assert pooled.num_particles == 60
    assert pooled.run_index.tolist() == [0] * 30 + [1] * 30
    assert pooled.answers == first.answers + second.answers
    assert np.array_equal(pooled.log_evidences, [first.log_evidence, second.log_evidence])
    expected = math.log(np.mean(np.exp([first.log_evidence, second.log_evidence])))
    assert pooled.log_evidence == pytest.approx(expected, rel=1e-12)
    assert pooled.cost.verifier_calls == 60
    assert pooled.info["num_runs"] == 2
    assert len(pooled.rounds) == 2 and len(pooled.ess_history) == 2
    assert_pooled_by_evidence(pooled, [first, second])


def assert_pooled_by_evidence(pooled, runs):
    """The pooled vote is sum_k Z_k pi_k / sum_k Z_k."""
    z = np.exp(pooled.log_evidences)
    for answer, probability in pooled.answer_distribution().items():
        mixed = sum(
            z_k * run.answer_distribution().get(answer, 0.0)
            for z_k, run in zip(z, runs, strict=True)
        )
        assert probability == pytest.approx(mixed / z.sum(), rel=1e-9)


def test_combine_offsets_multi_run_posteriors():
    pooled = ppl.run("importance", toy, num_runs=2, num_particles=3, seed=0)
    single = ppl.importance(toy, num_particles=3, seed=5)
    combined = ppl.Posterior.combine([single, pooled, single])
    assert combined.num_runs == 4
    assert combined.run_index.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert np.array_equal(
        combined.log_evidences, [single.log_evidence, *pooled.log_evidences, single.log_evidence]
    )


def test_combine_nothing_raises():
    with pytest.raises(ppl.InvalidArgumentError):
        ppl.Posterior.combine([])


def test_combine_unequal_runs_weights_by_evidence():
    first = ppl.importance(toy, num_particles=100, seed=1)
    second = ppl.importance(toy, num_particles=10, seed=2)
    assert_pooled_by_evidence(ppl.Posterior.combine([first, second]), [first, second])


def test_run_gives_finite_log_evidence_se():
    post = ppl.run("smc", toy, num_runs=3, num_particles=20, seed=0)
    assert post.num_runs == 3
    assert post.run_index.tolist() == [0] * 20 + [1] * 20 + [2] * 20
    se = post.log_evidence_se
    assert math.isfinite(se) and se >= 0
    z = np.exp(post.log_evidences)
    assert se == pytest.approx(np.std(z, ddof=1) / math.sqrt(3) / z.mean(), rel=1e-9)
    assert post.log_evidence == pytest.approx(logsumexp(post.log_evidences) - math.log(3))


def test_importance_log_evidence_se_from_ess():
    post = ppl.importance(toy, num_particles=40, seed=0)
    assert post.num_runs == 1
    assert 1.0 < post.ess < 40.0  # non-uniform weights, so the SE is not 0
    expected = math.sqrt(1.0 / post.ess - 1.0 / post.num_particles)
    assert post.log_evidence_se == pytest.approx(expected, rel=1e-12)
    assert post.log_evidence_se > 0


def test_single_resampled_smc_run_has_no_se():
    post = ppl.smc(two_step, num_particles=16, ess_threshold=1.0, seed=0)
    assert any(r.resampled for r in post.rounds[0])
    assert math.isnan(post.log_evidence_se)
    assert "+/- n/a" in post.summary()


def test_empty_multi_run_log_evidence_se_is_nan_without_warning():
    post = ppl.run("importance", never, num_runs=2, num_particles=4, seed=0)
    assert math.isnan(post.log_evidence_se)


# --- genealogy ---------------------------------------------------------------------


def test_genealogy_after_always_resampling():
    post = ppl.smc(two_step, num_particles=20, ess_threshold=1.0, seed=2)
    graph = post.genealogy
    assert isinstance(graph, nx.DiGraph)
    num_rounds = len(post.rounds[0])
    assert num_rounds == 3  # initial execution, then one round per random choice
    assert graph.number_of_nodes() == num_rounds * 20
    for node, data in graph.nodes(data=True):
        assert set(data) >= {"text", "log_weight", "resampled_from"}
        run, t, slot = node
        assert run == 0 and 0 <= slot < 20
        if t == 0:
            assert graph.in_degree(node) == 0
            assert data["text"] is None
        else:
            assert graph.in_degree(node) == 1
            (parent,) = graph.predecessors(node)
            assert parent[1] == t - 1
            if data["resampled_from"] is not None:
                assert parent == (0, t - 1, data["resampled_from"])
    resampled = [n for n, d in graph.nodes(data=True) if d["resampled_from"] is not None]
    assert resampled
    # Walking up from each final slot retraces that particle's random choices.
    for slot, trace in enumerate(post.particles):
        node, texts = (0, num_rounds - 1, slot), []
        while node[1] > 0:
            texts.append(graph.nodes[node]["text"])
            (node,) = graph.predecessors(node)
        assert texts[::-1] == [str(int(trace["x"].value)), str(int(trace["y"].value))]


def test_importance_genealogy_never_resamples():
    post = ppl.importance(two_step, num_particles=10, seed=0)
    graph = post.genealogy
    assert all(d["resampled_from"] is None for _, d in graph.nodes(data=True))
    assert all(graph.in_degree(n) == (0 if n[1] == 0 else 1) for n in graph.nodes)
    # Without resampling each slot keeps its own line.
    assert all(parent[2] == child[2] for parent, child in graph.edges)


# --- arviz -----------------------------------------------------------------------


def test_to_arviz_sample_stats_and_log_evidence():
    post = ppl.run("smc", toy, num_runs=3, num_particles=20, seed=0)
    idata = post.to_arviz()
    import arviz as az

    assert isinstance(idata, az.InferenceData)
    assert {"sample_stats", "log_evidence"} <= set(idata.groups())
    log_weight = idata.sample_stats["log_weight"]
    assert log_weight.dims == ("chain", "draw")
    assert log_weight.shape == (3, 20)
    np.testing.assert_array_equal(log_weight.values.ravel(), post.log_weights)
    np.testing.assert_array_equal(idata.log_evidence["log_evidence"].values, post.log_evidences)


def test_to_arviz_posterior_answer_indicators():
    post = ppl.run("smc", toy, num_runs=3, num_particles=20, seed=0)
    idata = post.to_arviz()
    assert {"posterior", "sample_stats", "log_evidence"} <= set(idata.groups())
    answer = idata.posterior["answer_indicator"]
    assert answer.dims == ("chain", "draw", "answer")
    assert answer.shape[:2] == (3, 20)
    np.testing.assert_array_equal(answer.sum("answer").values, np.ones((3, 20)))


def test_to_arviz_rejects_unequal_runs():
    pooled = ppl.Posterior.combine(
        [ppl.importance(toy, num_particles=3, seed=0), ppl.importance(toy, num_particles=4, seed=1)]
    )
    with pytest.raises(ppl.InvalidArgumentError, match="same number of particles"):
        pooled.to_arviz()


# --- cost --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "engine",
    [
        lambda prog: ppl.importance(prog, num_particles=12, seed=0),
        lambda prog: ppl.smc(prog, num_particles=12, ess_threshold=1.0, seed=0),
    ],
    ids=["importance", "smc"],
)
def test_memo_runs_once_per_particle(engine):
    calls = []

    def verifier(x):
        calls.append(x)
        return x * 10

    @ppl.program
    def checked():
        x = ppl.sample("x", dist.Categorical(PRIOR))
        ppl.factor("fx", LOG_FACTOR[x])
        score = ppl.memo("check", verifier, int(x))
        y = ppl.sample("y", dist.Categorical(torch.ones(2)))
        ppl.answer((score, int(y)))

    post = engine(checked)
    # Each particle re-executes after x and after y; the memo is reached both
    # times but only the first visit calls the verifier.
    assert post.cost.verifier_calls == 12
    assert len(calls) == 12
    for trace in post.particles:
        assert trace["check"].value == int(trace["x"].value) * 10
        assert trace.answer[0] == trace["check"].value
    if post.method == "smc":
        assert any(r.resampled for r in post.rounds[0])
