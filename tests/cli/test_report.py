"""Tests of the uncertainty report: ArviZ export, diagnostics, genealogy, plots, HTML, run dirs.

Posteriors come from real engine runs on toy programs over plain Pyro
distributions, or from simulated importance sampling where a test needs many
repetitions (interval coverage, Pareto k).
"""

from __future__ import annotations

import base64
import json
import math
import re

import arviz as az
import networkx as nx
import numpy as np
import pyro.distributions as dist
import pytest
import torch
import xarray as xr
from scipy.special import logsumexp

import ppl
from ppl.cli.report import html, load_run, plots, rundir, save_run, write_run_report
from ppl.cli.report.genealogy import exportable, node_id
from ppl.cli.report.genealogy import to_json as genealogy_to_json
from ppl.cli.report.genealogy import write_graphml as write_genealogy_graphml
from ppl.diagnostics import across_runs, diagnose, pareto_k
from ppl.inference_data import to_inference_data
from ppl.intervals import bootstrap_intervals, dirichlet_intervals
from ppl.serialization import decode
from ppl.weights import normalized_weights

PRIOR = torch.tensor([0.2, 0.3, 0.5])
LOG_FACTOR = torch.tensor([0.0, -1.0, -2.0])
EXACT = (PRIOR * LOG_FACTOR.exp()) / (PRIOR * LOG_FACTOR.exp()).sum()


@ppl.program
def toy():
    x = ppl.sample("x", dist.Categorical(PRIOR))
    ppl.factor("f", LOG_FACTOR[x])
    ppl.memo("half", lambda v: v / 2, int(x))
    ppl.memo("even", lambda v: v % 2 == 0, int(x))
    ppl.memo("label", lambda v: f"x={v}", int(x))
    ppl.answer(int(x))


@ppl.program
def two_step():
    x = ppl.sample("x", dist.Categorical(PRIOR))
    ppl.factor("fx", LOG_FACTOR[x])
    y = ppl.sample("y", dist.Categorical(torch.ones(4)))
    ppl.condition("not_3", int(y) != 3)
    ppl.answer((int(x), int(y) % 2))


@ppl.program
def never():
    ppl.sample("x", dist.Categorical(PRIOR))
    ppl.condition("impossible", False)
    ppl.answer(0)


def coin(p: float):
    """Importance sampling of Bernoulli(p) through a weighted uniform proposal."""

    @ppl.program
    def flip():
        x = ppl.sample("x", dist.Bernoulli(0.5))
        ppl.factor("w", math.log(p if int(x) else 1.0 - p))
        ppl.answer(int(x))

    return flip


TARGET = np.array([0.5, 0.3, 0.2])
PROPOSAL = np.array([0.2, 0.3, 0.5])


def simulated_log_weights(rng, size):
    """Importance sampling of Categorical(TARGET) from Categorical(PROPOSAL)."""
    x = rng.choice(3, size=size, p=PROPOSAL)
    return x, np.log(TARGET[x] / PROPOSAL[x])


# --- ArviZ export ------------------------------------------------------------------


def test_to_arviz_round_trips_through_netcdf(tmp_path):
    post = ppl.run("smc", two_step, num_runs=3, num_particles=20, ess_threshold=1.0, seed=1)
    assert np.isneginf(post.log_weights).any()  # -inf weights must survive the file
    idata = post.to_arviz()
    path = tmp_path / "posterior.nc"
    idata.to_netcdf(str(path))
    loaded = az.from_netcdf(str(path))

    assert set(loaded.groups()) == {"posterior", "sample_stats", "log_evidence"}
    for group in loaded.groups():
        xr.testing.assert_identical(loaded[group], idata[group])
    labels = loaded.posterior["answer"].values.tolist()
    assert labels == [repr(a) for a in post.answer_distribution()]
    np.testing.assert_array_equal(
        loaded.sample_stats["log_weight"].values.ravel(), post.log_weights
    )
    np.testing.assert_array_equal(loaded.log_evidence["log_evidence"].values, post.log_evidences)
    ess = loaded.sample_stats["ess"].values
    for k in range(3):
        np.testing.assert_array_equal(ess[k, : len(post.ess_history[k])], post.ess_history[k])
    # Resampling after step s is recorded in round s + 2.
    resampled = loaded.sample_stats["resampled"].values
    assert resampled[:, 0].all() and not resampled[:, 1].any()
    assert loaded.log_evidence.attrs["pooled_log_evidence"] == post.log_evidence


def test_posterior_draws_are_a_systematic_equal_weight_resample():
    post = ppl.run("importance", toy, num_runs=2, num_particles=300, seed=0)
    idata = post.to_arviz()
    members = [np.flatnonzero(post.run_index == k) for k in range(2)]
    slots = idata.sample_stats["resampled_particle"].values
    for k in range(2):
        weights = normalized_weights(post.log_weights[members[k]])
        copies = np.bincount(slots[k], minlength=300)
        # Systematic resampling gives every particle floor(N w) or ceil(N w) copies.
        assert np.all(copies >= np.floor(300 * weights) - 1e-9)
        assert np.all(copies <= np.ceil(300 * weights) + 1e-9)
        for j in range(300):
            particle = post.particles[members[k][slots[k, j]]]
            assert idata.posterior["x"].values[k, j] == int(particle["x"].value)
            assert idata.posterior["half"].values[k, j] == int(particle["x"].value) / 2
            label = repr(particle.answer)
            row = idata.posterior["answer_indicator"].sel(answer=label).values[k, j]
            assert row == 1.0
    indicators = idata.posterior["answer_indicator"].values
    np.testing.assert_array_equal(indicators.sum(axis=-1), np.ones((2, 300)))
    # Copies are shuffled, so the draw order carries no autocorrelation.
    assert not np.all(np.diff(slots[0]) >= 0)


def test_to_arviz_exports_numeric_sites_only():
    idata = ppl.importance(toy, num_particles=10, seed=0).to_arviz()
    names = set(idata.posterior.data_vars)
    assert names == {"answer_indicator", "x", "f", "half", "even"}
    assert set(np.unique(idata.posterior["even"].values)) <= {0.0, 1.0}


def test_to_arviz_marks_a_dead_run_as_missing():
    pooled = ppl.Posterior.combine(
        [ppl.importance(never, num_particles=5, seed=0), ppl.importance(toy, num_particles=5)]
    )
    indicators = pooled.to_arviz().posterior["answer_indicator"].values
    assert np.isnan(indicators[0]).all()
    assert not np.isnan(indicators[1]).any()


def test_to_arviz_is_reproducible_for_a_seed():
    post = ppl.importance(toy, num_particles=50, seed=0)
    first, second = post.to_arviz(seed=3), post.to_arviz(seed=3)
    xr.testing.assert_identical(first.posterior, second.posterior)


# --- Pareto k --------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.6, 0.8])
def test_pareto_k_of_gaussian_importance_weights(sigma):
    # Target N(0, 1), proposal N(0, sigma^2): w(x) ∝ exp(x^2 (1/sigma^2 - 1) / 2) has
    # Pareto tail index k = 1 - sigma^2. One estimate at N = 20000 has a standard
    # deviation of about 0.07; the mean of 8 independent ones is within 0.1.
    rng = np.random.default_rng(0)
    estimates = []
    for _ in range(8):
        x = rng.normal(0.0, sigma, 20000)
        estimates.append(pareto_k(-(x**2) / 2 + x**2 / (2 * sigma**2)))
    assert abs(np.mean(estimates) - (1 - sigma**2)) < 0.1


def test_pareto_k_takes_log_weights_not_their_negation():
    # The sign convention: heavy-tailed log weights give a large k, their negation
    # (bounded weights) a negative one.
    x = np.random.default_rng(1).normal(0.0, 0.5, 20000)
    log_weights = x**2 * 1.5
    assert pareto_k(log_weights) > 0.5
    assert pareto_k(-log_weights) < 0.0


def test_pareto_k_ignores_dead_particles_and_is_undefined_without_a_tail():
    x = np.random.default_rng(2).normal(0.0, 0.6, 5000)
    log_weights = -(x**2) / 2 + x**2 / (2 * 0.36)
    with_dead = np.concatenate([log_weights, np.full(100, -np.inf)])
    assert pareto_k(with_dead) == pareto_k(log_weights)
    assert math.isnan(pareto_k(np.zeros(100)))  # equal weights: no tail
    assert math.isnan(pareto_k(log_weights[:20]))  # too few to fit a tail
    with pytest.raises(ppl.InvalidArgumentError):
        pareto_k([0.0, np.nan])


# --- R-hat and ESS across runs -------------------------------------------------------


def test_rhat_passes_agreeing_runs():
    post = ppl.run("importance", coin(0.3), num_runs=4, num_particles=1000, seed=0)
    report = diagnose(post)
    assert set(report.rhat) == {"0", "1"}
    assert all(1.0 - 0.01 < r < 1.01 for r in report.rhat.values())
    assert not any("R-hat" in w for w in report.warnings)
    assert all(e > 1000 for e in report.ess_across_runs.values())


def test_rhat_flags_disagreeing_runs():
    runs = [ppl.importance(coin(p), num_particles=1000, seed=s) for s, p in enumerate([0.2] * 2)]
    runs += [
        ppl.importance(coin(p), num_particles=1000, seed=9 + s) for s, p in enumerate([0.6] * 2)
    ]
    report = diagnose(ppl.Posterior.combine(runs))
    assert all(r > 1.05 for r in report.rhat.values())
    assert any(w.startswith("R-hat") and "runs disagree" in w for w in report.warnings)


def test_rhat_is_infinite_when_runs_agree_only_with_themselves():
    runs = [
        ppl.Posterior([ppl.Trace((ppl.Site("answer", "answer", a),))] * 8, np.zeros(8))
        for a in ("a", "a", "b", "b")
    ]
    idata = ppl.Posterior.combine(runs).to_arviz()
    assert across_runs(idata, "rhat") == {"'a'": math.inf, "'b'": math.inf}
    single = ppl.Posterior.combine(runs[:2]).to_arviz()
    assert math.isnan(across_runs(single, "rhat")["'a'"])  # never varies: undefined


def test_rhat_needs_two_runs():
    report = diagnose(ppl.importance(toy, num_particles=50, seed=0))
    assert report.rhat == {} and math.isnan(report.max_rhat)
    assert any("at least 2 independent runs" in n for n in report.notes)


# --- answer intervals -----------------------------------------------------------------


def test_dirichlet_intervals_cover_at_the_nominal_rate():
    # 400 importance-sampling estimates of Categorical([.5, .3, .2]) from N = 200
    # weighted particles; coverage of 90% intervals has a binomial standard error
    # of 0.015 at 400 repetitions.
    rng = np.random.default_rng(0)
    truth = TARGET
    covered = np.zeros(3)
    widths = np.zeros(3)
    for _ in range(400):
        x, log_weights = simulated_log_weights(rng, 200)
        weights = normalized_weights(log_weights)
        estimate = {a: float(weights[x == a].sum()) for a in range(3)}
        ess = 1.0 / np.sum(weights**2)
        intervals = dirichlet_intervals(estimate, ess, level=0.9)
        for a in range(3):
            lower, upper = intervals[a]
            covered[a] += lower <= truth[a] <= upper
            widths[a] += upper - lower
    assert np.all(covered / 400 >= 0.85)
    assert np.all(widths / 400 < 0.25)


@ppl.program
def sticky():
    """MH proposing from the prior rejects most moves away from x = 0: autocorrelated draws."""
    x = ppl.sample("x", dist.Categorical(PRIOR))
    ppl.factor("f", 2 * LOG_FACTOR[x])
    ppl.answer(int(x))


def test_mcmc_intervals_use_the_autocorrelation_ess():
    # 80 MH runs of 2 chains x 100 draws. Counting every draw as independent,
    # 90% intervals covered only 38-62% of the time here; with each answer's
    # autocorrelation ESS they cover at the nominal rate (binomial SE 0.034).
    exact = PRIOR * torch.exp(2 * LOG_FACTOR)
    exact = (exact / exact.sum()).tolist()
    covered = np.zeros(2)
    for seed in range(80):
        report = diagnose(ppl.mh(sticky, num_steps=100, num_chains=2, seed=seed), level=0.9)
        assert report.interval_method == "dirichlet"
        for estimate in report.answers:
            if estimate.answer < 2:
                covered[estimate.answer] += (
                    estimate.lower <= exact[estimate.answer] <= estimate.upper
                )
    assert np.all(covered / 80 >= 0.8), covered / 80


def test_bootstrap_intervals_over_runs_cover():
    # 200 pooled estimates from 16 runs of 50 particles; percentile intervals
    # over runs cover a little below nominal at this many runs (about 0.88 of 0.9).
    rng = np.random.default_rng(1)
    truth = TARGET
    covered = np.zeros(3)
    for repetition in range(200):
        per_run, log_evidences = np.zeros((16, 3)), np.zeros(16)
        for k in range(16):
            x, log_weights = simulated_log_weights(rng, 50)
            weights = normalized_weights(log_weights)
            per_run[k] = [weights[x == a].sum() for a in range(3)]
            log_evidences[k] = logsumexp(log_weights) - math.log(50)
        lower, upper = bootstrap_intervals(per_run, log_evidences, 0.9, seed=repetition)
        covered += (lower <= truth) & (truth <= upper)
    assert np.all(covered / 200 >= 0.8)


def test_bootstrap_intervals_skip_dead_runs():
    per_run = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    lower, upper = bootstrap_intervals(per_run, np.array([0.0, -np.inf, 0.0]), 0.9)
    np.testing.assert_array_equal(lower, [1.0, 0.0])
    np.testing.assert_array_equal(upper, [1.0, 0.0])


def test_diagnose_picks_interval_method_by_number_of_runs():
    one = diagnose(ppl.run("importance", toy, num_runs=2, num_particles=50, seed=0))
    many = diagnose(ppl.run("importance", toy, num_runs=10, num_particles=50, seed=0))
    assert one.interval_method == "dirichlet" and many.interval_method == "bootstrap"
    for report in (one, many):
        assert [a.answer for a in report.answers] == [0, 1, 2]
        for a in report.answers:
            assert a.lower <= a.probability <= a.upper
            assert abs(a.probability - float(EXACT[a.answer])) < 0.15
            assert len(a.run_probabilities) == report.num_runs
    with pytest.raises(ppl.InvalidArgumentError):
        diagnose(ppl.importance(toy, num_particles=5), intervals="jackknife")
    with pytest.raises(ppl.InvalidArgumentError):
        diagnose(ppl.importance(toy, num_particles=5), level=1.5)


# --- diagnostics and warnings ------------------------------------------------------------


def test_diagnose_reports_ess_resampling_evidence_and_cost():
    post = ppl.run("smc", two_step, num_runs=3, num_particles=30, ess_threshold=1.0, seed=0)
    report = diagnose(post)
    assert report.ess == pytest.approx(post.ess)
    assert [r.ess_history for r in report.runs] == post.ess_history
    assert all(r.resampled_after == [0] for r in report.runs)
    assert report.num_resamplings == 3
    assert report.log_evidence == post.log_evidence
    assert report.log_evidence_se == post.log_evidence_se
    assert [r.log_evidence for r in report.runs] == post.log_evidences.tolist()
    assert report.cost == post.cost
    counts = {a.answer: a.count for a in report.answers}
    alive = [a for a, w in zip(post.answers, post.log_weights, strict=True) if w > -np.inf]
    assert counts == {a: alive.count(a) for a in set(alive)}
    text = report.text()
    assert "R-hat (max)" in text and "resamplings     3" in text
    json.dumps(report.to_dict(), allow_nan=False)  # strict JSON


def test_warning_for_low_ess():
    log_weights = np.array([0.0] + [-20.0] * 49)
    post = ppl.Posterior(
        [ppl.Trace((ppl.Site("answer", "answer", i),)) for i in range(50)], log_weights
    )
    report = diagnose(post)
    assert any("final ESS 1.0 is below 10%" in w for w in report.warnings)


def test_warning_for_heavy_tailed_weights():
    # Proposal N(0, 0.3^2) for a N(0, 1) target: k = 1 - 0.09 = 0.91.
    x = np.random.default_rng(0).normal(0.0, 0.3, 4000)
    log_weights = -(x**2) / 2 + x**2 / (2 * 0.09)
    traces = [ppl.Trace((ppl.Site("answer", "answer", int(v > 0)),)) for v in x]
    report = diagnose(ppl.Posterior(traces, log_weights))
    assert report.pareto_k > 0.7
    assert any(w.startswith(f"Pareto k {report.pareto_k:.2f} > 0.7") for w in report.warnings)


def test_warnings_for_empty_posterior_and_dead_runs():
    empty = diagnose(ppl.importance(never, num_particles=8, seed=0))
    assert empty.answers == [] and any(
        "every particle has weight zero" in w for w in empty.warnings
    )
    assert "empty posterior" in empty.text()
    mixed = diagnose(
        ppl.Posterior.combine(
            [ppl.importance(toy, num_particles=30, seed=0), ppl.importance(never, num_particles=30)]
        )
    )
    assert "run 1: every particle has weight zero" in mixed.warnings


def test_no_warnings_for_a_healthy_run():
    report = diagnose(ppl.run("importance", coin(0.4), num_runs=4, num_particles=500, seed=0))
    assert report.warnings == []


# --- genealogy ----------------------------------------------------------------------------


def test_genealogy_counts_nodes_and_resampling_parents():
    post = ppl.run("smc", two_step, num_runs=2, num_particles=12, ess_threshold=1.0, seed=3)
    graph = post.genealogy
    num_rounds = [len(rounds) for rounds in post.rounds]
    assert graph.number_of_nodes() == sum(12 * r for r in num_rounds)
    assert graph.number_of_edges() == sum(12 * (r - 1) for r in num_rounds)
    for run, rounds in enumerate(post.rounds):
        for t, rnd in enumerate(rounds[1:], start=1):
            children = [(run, t, slot) for slot in range(12)]
            parents = {p for child in children for p in graph.predecessors(child)}
            assert parents == {(run, t - 1, a) for a in rnd.ancestors}
            for child in children:
                (parent,) = graph.predecessors(child)
                assert graph.edges[parent, child]["resampled"] == rnd.resampled
                data = graph.nodes[child]
                assert (data["run"], data["step"], data["slot"]) == child
    resampling_rounds = [rnd for rounds in post.rounds for rnd in rounds if rnd.resampled]
    assert resampling_rounds and all(len(set(r.ancestors)) < 12 for r in resampling_rounds)


def test_genealogy_graphml_and_json_round_trip(tmp_path):
    post = ppl.smc(two_step, num_particles=10, ess_threshold=1.0, seed=0)
    graph = post.genealogy
    path = tmp_path / "genealogy.graphml"
    write_genealogy_graphml(graph, path)
    loaded = nx.read_graphml(path)
    assert loaded.number_of_nodes() == graph.number_of_nodes()
    assert loaded.number_of_edges() == graph.number_of_edges()
    for (run, step, slot), data in graph.nodes(data=True):
        exported = loaded.nodes[node_id(run, step, slot)]
        assert exported["text"] == (data["text"] or "")
        assert exported["log_weight"] == data["log_weight"]  # -inf included
        assert exported["resampled_from"] == (
            -1 if data["resampled_from"] is None else data["resampled_from"]
        )
    for parent, child in graph.edges:
        assert loaded.has_edge(node_id(*parent), node_id(*child))
    restored = nx.node_link_graph(json.loads(json.dumps(genealogy_to_json(graph))), edges="edges")
    assert nx.utils.graphs_equal(restored, exportable(graph))


def test_genealogy_drawing_has_one_segment_per_edge():
    post = ppl.run("smc", two_step, num_runs=2, num_particles=9, ess_threshold=1.0, seed=0)
    figure = plots.genealogy_figure(post.genealogy)
    axes = figure.get_axes()
    assert len(axes) == 2
    for run, ax in enumerate(axes):
        segments = sum(len(c.get_segments()) for c in ax.collections if hasattr(c, "get_segments"))
        assert segments == 9 * (len(post.rounds[run]) - 1)
    assert plots.png_bytes(figure).startswith(b"\x89PNG")


# --- HTML report and run directories -----------------------------------------------------------


@ppl.program
def tagged():
    x = ppl.sample("x", dist.Categorical(PRIOR))
    ppl.factor("f", LOG_FACTOR[x])
    ppl.answer(f"<b>{int(x)}</b> & 'more'")


def test_html_report_is_self_contained_and_escaped():
    post = ppl.run("smc", tagged, num_runs=3, num_particles=40, seed=0)
    report = diagnose(post)
    page = html.run_report(
        post, report, title="t<1>", metadata={"program": "x.py:f"}, idata=post.to_arviz()
    )
    assert '<table id="summary">' in page
    assert "<b>0</b>" not in page and "&lt;b&gt;0&lt;/b&gt; &amp; &#x27;more&#x27;" in page
    assert "<title>t&lt;1&gt;</title>" in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # nothing remote
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 5  # answers, ESS, weights, ranks, genealogy
    assert all(base64.b64decode(data).startswith(b"\x89PNG") for data in images)
    assert "<script" not in page


def test_save_run_writes_every_file_and_reloads(tmp_path):
    post = ppl.run("smc", two_step, num_runs=2, num_particles=16, seed=0)
    report = save_run(post, tmp_path / "run", metadata={"program": "p.py:two_step", "seed": 0})
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert names == {"result.json", "posterior.nc", "genealogy.graphml", "report.html"}
    saved = load_run(tmp_path / "run")
    assert saved.posterior.to_dict() == post.to_dict()
    assert saved.metadata == {"program": "p.py:two_step", "seed": 0}
    assert saved.result["diagnostics"] == report.to_dict()
    assert decode(saved.result["map_answer"]) == post.map_answer()
    assert az.from_netcdf(str(tmp_path / "run" / "posterior.nc")).posterior.sizes["chain"] == 2
    (tmp_path / "run" / "report.html").unlink()
    path = write_run_report(tmp_path / "run")
    assert path == tmp_path / "run" / "report.html" and '<table id="summary">' in path.read_text()


def test_save_run_keeps_results_when_the_posterior_cannot_be_saved(tmp_path):
    @ppl.program
    def opaque():
        x = ppl.sample("x", dist.Categorical(PRIOR))
        ppl.memo("handle", lambda v: object(), int(x))
        ppl.answer(int(x))

    post = ppl.importance(opaque, num_particles=5, seed=0)
    save_run(post, tmp_path / "run", metadata={})
    result = rundir.read_result(tmp_path / "run")
    assert result["posterior"] is None and "handle" in result["posterior_error"]
    assert result["map_answer"] == post.map_answer()
    assert (tmp_path / "run" / "report.html").exists()
    with pytest.raises(ppl.ReportError, match="no saved posterior"):
        write_run_report(tmp_path / "run")


def test_unequal_runs_save_without_netcdf(tmp_path):
    pooled = ppl.Posterior.combine(
        [ppl.importance(toy, num_particles=5, seed=0), ppl.importance(toy, num_particles=6)]
    )
    report = save_run(pooled, tmp_path / "run", metadata={})
    assert not (tmp_path / "run" / "posterior.nc").exists()
    assert any("same number of particles" in n for n in report.notes)


def test_read_result_rejects_what_is_not_a_run(tmp_path):
    with pytest.raises(ppl.ReportError, match="not a directory"):
        rundir.read_result(tmp_path / "missing")
    with pytest.raises(ppl.ReportError, match="holds no result.json"):
        rundir.read_result(tmp_path)
    (tmp_path / "result.json").write_text("{not json")
    with pytest.raises(ppl.ReportError, match="cannot read"):
        rundir.read_result(tmp_path)
    (tmp_path / "result.json").write_text('{"format": 99}')
    with pytest.raises(ppl.ReportError, match="not a result file"):
        rundir.read_result(tmp_path)


def test_ensure_writable_reports_the_reason(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ppl.ReportError, match="cannot write to output directory"):
        rundir.ensure_writable(blocker / "sub")


def test_to_inference_data_rejects_an_empty_posterior():
    with pytest.raises(ppl.InvalidArgumentError, match="at least one particle"):
        to_inference_data(ppl.Posterior([], []))
