"""``ppl bench`` on a tiny random model: outputs, accounting, resumption, errors."""

from __future__ import annotations

import csv
import json
import textwrap
from collections import defaultdict

import numpy as np
import pytest
import transformers
from click.testing import CliRunner
from tiny import make_tiny_lm

import ppl
from models import TransformersLM
from ppl.cli.bench.command import bench
from ppl.cli.bench.engines import ceilings, load_verifier, run_seed
from ppl.cli.loading import load_target
from ppl.cli.tasks import Problem, Task, arithmetic, load_jsonl
from ppl.intervals import wilson_interval
from ppl.posterior import Posterior
from ppl.trace import Site, Trace

QUESTIONS = ["ab", "ba", "cab", "abc", "bca", "aab", "cc", "bb", "ca", "ac"]
PROGRAM = """
import os

import ppl
from models.verifiers import ProgrammaticVerifier


@ppl.program
def guess(lm, question):
    if question == "cc" and os.environ.get("BENCH_CRASH"):
        raise RuntimeError("simulated crash")
    first = ppl.step("first", lm, question, stop=(), max_tokens=1)
    ppl.factor("prefer_a", 0.0 if first == "a" else -1.0)
    second = ppl.step("second", lm, question + first, stop=(), max_tokens=1)
    ppl.answer(str(first) or str(second))


# Prefers solutions whose first step repeats the question's last letter (the answer).
verifier = ProgrammaticVerifier(lambda q, steps: 0.9 if steps[0] == q[-1] else 0.2)
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    lm = make_tiny_lm(seed=0)
    transformers.utils.logging.disable_progress_bar()
    lm.model.save_pretrained(root / "model")
    lm.tokenizer.save_pretrained(root / "model")
    (root / "program.py").write_text(textwrap.dedent(PROGRAM))
    task = root / "task.jsonl"
    task.write_text("".join(json.dumps({"question": q, "answer": q[-1]}) + "\n" for q in QUESTIONS))
    return root


def invoke(
    setup, out, *extra, methods="importance,majority", budgets="1", env=None, progress=False
):
    args = [
        "--task",
        str(setup / "task.jsonl"),
        "--program",
        f"{setup / 'program.py'}:guess",
        "--model",
        str(setup / "model"),
        "--methods",
        methods,
        "--budgets",
        budgets,
        "--out",
        str(out),
        "--progress" if progress else "--no-progress",
        *extra,
    ]
    return CliRunner().invoke(bench, args, env=env or {})


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def read_runs(out):
    return [json.loads(path.read_text()) for path in sorted((out / "runs").glob("*.json"))]


ALL = "importance,majority,beam,smc,best_of_n,weighted_majority"


def test_bench_writes_curves_for_every_method(setup, tmp_path):
    out = tmp_path / "out"
    result = invoke(
        setup, out, "--verifier", f"{setup / 'program.py'}:verifier", methods=ALL, budgets="1,2"
    )
    assert result.exit_code == 0, result.output
    assert "60 runs computed, 0 reused; 10 problems" in result.output
    rows = read_csv(out / "results.csv")
    assert [(r["method"], int(r["budget"])) for r in rows] == [
        (m, b) for m in ALL.split(",") for b in (1, 2)
    ]
    summary = json.loads((out / "results.json").read_text())
    assert summary["config"]["program"].endswith("program.py:guess")
    assert len(summary["results"]) == len(rows)
    png = (out / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    task = load_jsonl(setup / "task.jsonl")
    problems = {p.id: p for p in task}
    runs = read_runs(out)
    assert len(runs) == 3 * 2 * 10
    correct = defaultdict(list)
    for run in runs:
        for method, answer in run["answers"].items():
            assert run["correct"][method] == task.is_correct(problems[run["problem"]], answer)
            correct[method, run["budget"]].append(run["correct"][method])
    for row, reported in zip(rows, summary["results"], strict=True):
        method, budget = row["method"], int(row["budget"])
        accuracy = float(np.mean(correct[method, budget]))
        assert float(row["accuracy"]) == pytest.approx(accuracy, abs=1e-6)
        low, high = wilson_interval(accuracy, 10)
        assert float(row["ci_low"]) == pytest.approx(low, abs=1e-5)
        assert float(row["ci_high"]) == pytest.approx(high, abs=1e-5)
        assert int(row["problems"]) == 10 and int(row["seeds"]) == 1
        assert reported["accuracy"] == pytest.approx(accuracy)
        # Every particle writes exactly two one-token steps.
        if method != "beam":
            assert float(row["tokens_generated_per_problem"]) == 2 * budget
        # Best-of-N scores each particle once; beam each distinct child of its two rounds.
        verifier_calls = float(row["verifier_calls_per_problem"])
        if method in ("best_of_n", "weighted_majority"):
            assert verifier_calls == budget
        elif method == "beam":
            assert 2 <= verifier_calls <= 2 * budget
        else:
            assert verifier_calls == 0
    assert 0 < np.mean([float(r["accuracy"]) for r in rows]) < 1


def test_wilson_interval_reference_values():
    assert wilson_interval(0.5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0.0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(1.0, 20) == pytest.approx((0.8389, 1.0), abs=1e-4)


def test_rerun_reuses_finished_runs_and_adds_new_cells(setup, tmp_path):
    out = tmp_path / "out"
    first = invoke(setup, out, budgets="1")
    assert "10 runs computed, 0 reused" in first.output
    before = read_runs(out)
    second = invoke(setup, out, "--seeds", "2", methods="importance,majority,smc")
    assert second.exit_code == 0, second.output
    assert "30 runs computed, 10 reused" in second.output
    assert all(run in read_runs(out) for run in before)
    rows = read_csv(out / "results.csv")
    assert [r["method"] for r in rows] == ["importance", "majority", "smc"]
    assert {int(r["seeds"]) for r in rows} == {2}
    third = invoke(setup, out, "--seeds", "2", methods="smc")
    assert "0 runs computed, 20 reused" in third.output


def test_interrupted_bench_continues_where_it_stopped(setup, tmp_path):
    out = tmp_path / "out"
    crashed = invoke(setup, out, "--rows", "1", methods="importance,smc", env={"BENCH_CRASH": "1"})
    assert isinstance(crashed.exception, RuntimeError)
    assert "rerun the command to continue" in "\n".join(crashed.exception.__notes__)
    finished = read_runs(out)
    # Problems are run in order; "cc" is the seventh, so six importance runs finished.
    assert sorted(r["problem"] for r in finished) == ["1", "2", "3", "4", "5", "6"]
    assert not (out / "results.csv").exists()

    resumed = invoke(setup, out, methods="importance,smc")
    assert resumed.exit_code == 0, resumed.output
    assert "14 runs computed, 6 reused" in resumed.output
    runs = read_runs(out)
    assert all(run in runs for run in finished)
    keys = [(r["engine"], r["budget"], r["seed"], r["problem"]) for r in runs]
    assert len(keys) == len(set(keys)) == 20


def _comparable(run):
    # Shared passes split prefill and calls differently; times differ run to run.
    ignored = ("wall_seconds", "verifier_seconds", "tokens_prefilled", "lm_calls")
    return {k: v for k, v in run.items() if k not in ignored}


PACKED = "importance,majority,smc,particle_filtering"


def test_packed_problems_give_the_records_of_one_at_a_time(setup, tmp_path):
    packed = invoke(setup, tmp_path / "packed", "--rows", "8", methods=PACKED, budgets="1,3")
    alone = invoke(setup, tmp_path / "alone", "--rows", "1", methods=PACKED, budgets="1,3")
    assert packed.exit_code == 0, packed.output
    assert alone.exit_code == 0, alone.output
    packed_runs, alone_runs = read_runs(tmp_path / "packed"), read_runs(tmp_path / "alone")
    assert len(packed_runs) == 3 * 2 * 10
    # Same answers, correctness and generated tokens per problem: each problem is
    # charged its own tokens although up to 8 rows of several problems shared passes.
    assert [_comparable(r) for r in packed_runs] == [_comparable(r) for r in alone_runs]
    assert {r["tokens_generated"] for r in packed_runs if r["budget"] == 3} == {6}
    # Each problem is charged a share of the prefill of the passes it took part in.
    # (Both runs reuse prefixes across problems, so neither total bounds the other.)
    assert all(r["tokens_prefilled"] > 0 for r in packed_runs)
    accuracy = [
        [(r["method"], r["budget"], r["accuracy"]) for r in read_csv(tmp_path / d / "results.csv")]
        for d in ("packed", "alone")
    ]
    assert accuracy[0] == accuracy[1]


def test_interrupted_packed_bench_keeps_every_finished_problem(setup, tmp_path):
    out = tmp_path / "out"
    crashed = invoke(setup, out, "--rows", "4", methods="importance", env={"BENCH_CRASH": "1"})
    assert isinstance(crashed.exception, RuntimeError)
    assert "rerun the command to continue" in "\n".join(crashed.exception.__notes__)
    finished = read_runs(out)
    # "cc" (the seventh problem) is admitted once three of the first six have ended.
    assert 3 <= len(finished) <= 6
    assert {r["problem"] for r in finished} <= {"1", "2", "3", "4", "5", "6"}
    resumed = invoke(setup, out, "--rows", "4", methods="importance")
    assert resumed.exit_code == 0, resumed.output
    assert f"{10 - len(finished)} runs computed, {len(finished)} reused" in resumed.output
    whole = invoke(setup, tmp_path / "whole", "--rows", "4", methods="importance")
    assert whole.exit_code == 0, whole.output
    runs = read_runs(out)
    assert all(run in runs for run in finished)
    assert [_comparable(r) for r in runs] == [_comparable(r) for r in read_runs(tmp_path / "whole")]


def test_unreadable_record_is_run_again(setup, tmp_path):
    out = tmp_path / "out"
    invoke(setup, out)
    record = sorted((out / "runs").glob("*.json"))[0]
    record.write_text('{"engine": "importance", "bud')
    again = invoke(setup, out, progress=True)
    assert again.exit_code == 0, again.output
    assert "1 runs computed, 9 reused" in again.stdout
    assert "9/10" in again.stderr  # the progress bar starts from the finished runs
    assert len(read_runs(out)) == 10


def test_refuses_to_mix_benchmarks(setup, tmp_path):
    out = tmp_path / "out"
    invoke(setup, out)
    other = invoke(setup, out, "--seed", "7")
    assert other.exit_code != 0
    assert "holds runs of a different configuration (differs in seed)" in other.output


@pytest.mark.parametrize(
    ("extra", "options", "message"),
    [
        ((), {"methods": "importance,greedy"}, "unknown method"),
        ((), {"methods": "best_of_n"}, "need --verifier"),
        ((), {"budgets": "0,2"}, "positive integers"),
        ((), {"budgets": "1,x"}, "comma-separated integers"),
        (("--verifier", "nonsense"), {}, "must look like path/to/file.py:name"),
    ],
)
def test_bad_options_are_reported(setup, tmp_path, extra, options, message):
    result = invoke(setup, tmp_path / "out", *extra, **options)
    assert result.exit_code != 0
    assert message in result.output


def test_load_target_errors(tmp_path):
    with pytest.raises(ppl.RecipeError, match="does not exist"):
        load_target(str(tmp_path / "missing.py") + ":fn")
    (tmp_path / "mod.py").write_text("x = 1\n")
    with pytest.raises(ppl.RecipeError, match="has no function 'fn'"):
        load_target(f"{tmp_path / 'mod.py'}:fn")
    assert load_target(f"{tmp_path / 'mod.py'}:x") == 1
    assert load_target("ppl.cli.tasks:arithmetic") is arithmetic


def test_dvts_runs_budget_over_expansions_subtrees(setup, tmp_path):
    out = tmp_path / "out"
    verifier = f"{setup / 'program.py'}:verifier"
    result = invoke(
        setup, out, "--verifier", verifier, "--beam-expansions", "2", methods="dvts", budgets="4"
    )
    assert result.exit_code == 0, result.output
    assert [r["method"] for r in read_csv(out / "results.csv")] == ["dvts"]
    task = load_jsonl(setup / "task.jsonl")
    program = load_target(f"{setup / 'program.py'}:guess")
    scorer = load_verifier(verifier, None)
    lm = TransformersLM.from_pretrained(str(setup / "model"))
    runs = {run["problem"]: run for run in read_runs(out)}
    assert len(runs) == len(task)
    for index, problem in enumerate(task):
        run = runs[problem.id]
        assert run["engine"] == "dvts"
        direct = ppl.dvts(
            program,
            lm,
            problem.question,
            num_subtrees=2,
            num_expansions=2,
            seed=run_seed(0, 0, index),
            score=scorer.trace_scorer(problem.question),
        )
        assert run["answers"] == {"dvts": task.canonical(direct.best_of_n_answer())}
        # Two rounds of two subtrees times two children, one token each.
        assert run["tokens_generated"] == direct.cost.tokens_generated == 2 * 4


def test_coverage_and_verified_coverage_bound_every_selection(setup, tmp_path):
    out = tmp_path / "out"
    verifier = f"{setup / 'program.py'}:verifier"
    methods = "importance,majority,best_of_n,weighted_majority,smc,particle_filtering"
    result = invoke(setup, out, "--verifier", verifier, methods=methods, budgets="4")
    assert result.exit_code == 0, result.output
    assert "coverage" in result.output and "verified" in result.output
    task = load_jsonl(setup / "task.jsonl")
    program = load_target(f"{setup / 'program.py'}:guess")
    scorer = load_verifier(verifier, None)
    lm = TransformersLM.from_pretrained(str(setup / "model"))
    engines = {
        "importance": lambda q, s: ppl.importance(program, lm, q, num_particles=4, seed=s),
        "smc": lambda q, s: ppl.smc(program, lm, q, num_particles=4, seed=s),
        "particle_filtering": lambda q, s: ppl.smc(
            program, lm, q, num_particles=4, ess_threshold=1.0, seed=s
        ),
    }
    expected = defaultdict(list)
    for run in read_runs(out):
        index, problem = next((i, p) for i, p in enumerate(task) if p.id == run["problem"])
        posterior = engines[run["engine"]](problem.question, run_seed(0, 0, index))
        scores = scorer.score_batch(
            [(problem.question, [s.value for s in t.steps]) for t in posterior.particles]
        )
        alive = [i for i, w in enumerate(posterior.log_weights) if w > -np.inf]
        right = [i for i in alive if task.is_correct(problem, task.canonical(posterior.answers[i]))]
        assert run["coverage"] == bool(right)
        assert run["verified_coverage"] == any(scores[i] >= 0.5 for i in right)
        # No rule that picks a surviving particle's answer beats coverage on a problem.
        assert all(run["coverage"] or not correct for correct in run["correct"].values())
        expected[run["engine"]].append((run["coverage"], run["verified_coverage"]))
    rows = {r["method"]: r for r in read_csv(out / "results.csv")}
    assert set(rows) == set(methods.split(","))
    for method, row in rows.items():
        engine = (
            "importance" if method in ("majority", "best_of_n", "weighted_majority") else method
        )
        coverage, verified = np.mean(expected[engine], axis=0)
        assert float(row["coverage"]) == pytest.approx(coverage)
        assert float(row["verified_coverage"]) == pytest.approx(verified)
        assert float(row["accuracy"]) <= float(row["coverage"]) + 1e-9
        assert float(row["verified_coverage"]) <= float(row["coverage"])


@pytest.mark.parametrize(
    ("scores", "log_weights", "expected"),
    [
        # The right particle 0 is rejected; the accepted right particle 2 has weight zero.
        ([0.2, 0.9, 0.9], [0.0, 0.0, -np.inf], (True, False)),
        ([0.6, 0.1, 0.0], [0.0, 0.0, -np.inf], (True, True)),
        ([0.9, 0.9, 0.9], [-np.inf, 0.0, 0.0], (True, True)),
        ([0.9, 0.9, 0.9], [-np.inf, 0.0, -np.inf], (False, False)),
        (None, [0.0, 0.0, 0.0], (True, None)),
    ],
)
def test_ceilings_count_surviving_right_and_accepted_particles(scores, log_weights, expected):
    task = Task("t", (Problem("p", "q", ("a",)),))
    answers = ["a", "b", "a"]
    posterior = Posterior(
        [Trace((Site("answer", "answer", a),)) for a in answers], np.array(log_weights)
    )
    found = ceilings(posterior, answers, scores, task, task.problems[0])
    assert (found["coverage"], found["verified_coverage"]) == expected


def test_coverage_is_missing_without_a_verifier(setup, tmp_path):
    out = tmp_path / "out"
    result = invoke(setup, out, methods="importance", budgets="2")
    assert result.exit_code == 0, result.output
    (row,) = read_csv(out / "results.csv")
    assert 0 <= float(row["coverage"]) <= 1 and row["verified_coverage"] == "nan"
    runs = read_runs(out)
    assert all(isinstance(run["coverage"], bool) for run in runs)
    assert all(run["verified_coverage"] is None for run in runs)
