"""run_dataset: one atomic result file per problem, resumption, failures recorded; Ray workers."""

import json
import os
from pathlib import Path

import pytest
import tiny
from tiny import make_tiny_lm

import ppl
from ppl.cli.executors import load_results, run_dataset


@ppl.program
def two_letters(lm, prompt):
    first = ppl.step("first", lm, prompt, stop=(), max_tokens=1)
    ppl.condition("no_e", "e" not in first)
    second = ppl.step("second", lm, prompt + first, stop=(), max_tokens=1)
    ppl.answer(str(first) + str(second))


def make_runner():
    """Each worker builds its own model once; problems with "fail" raise."""
    lm = make_tiny_lm(seed=1)

    def run_one(problem):
        if problem.get("fail"):
            raise ValueError(f"problem {problem['id']} is marked to fail")
        if problem.get("interrupt"):
            raise KeyboardInterrupt
        posterior = ppl.smc(two_letters, lm, problem["prompt"], num_particles=8, seed=0)
        distribution = posterior.answer_distribution()
        return {
            "answers": sorted(distribution.items()),
            "log_evidence": posterior.log_evidence,
            "pid": os.getpid(),
        }

    return run_one


PROBLEMS = [{"id": f"p{i}", "prompt": prompt} for i, prompt in enumerate(["a", "ab", "ba", "c"])]


def test_local_writes_each_problem_and_reruns_only_unfinished(tmp_path):
    problems = [dict(p) for p in PROBLEMS]
    problems[2]["fail"] = True
    run = run_dataset(problems, make_runner, out_dir=tmp_path)
    assert run.finished == ["p0", "p1", "p3"] and list(run.failed) == ["p2"]
    assert not run.complete
    assert "ValueError: problem p2 is marked to fail" in run.failed["p2"]
    error = json.loads((tmp_path / "p2.error.json").read_text())
    assert error["id"] == "p2" and "ValueError" in error["error"]
    results = load_results(tmp_path)
    assert set(results) == {"p0", "p1", "p3"}
    assert abs(sum(p for _, p in results["p0"]["answers"]) - 1.0) < 1e-9

    problems[2]["fail"] = False
    again = run_dataset(problems, make_runner, out_dir=tmp_path)
    assert again.skipped == ["p0", "p1", "p3"] and again.finished == ["p2"] and again.complete
    assert not (tmp_path / "p2.error.json").exists()
    assert load_results(tmp_path)["p0"] == results["p0"]  # untouched


def test_an_interrupted_run_keeps_what_finished(tmp_path):
    problems = [dict(p) for p in PROBLEMS]
    problems[2]["interrupt"] = True
    with pytest.raises(KeyboardInterrupt):
        run_dataset(problems, make_runner, out_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p0.json", "p1.json"]  # no temp files
    problems[2]["interrupt"] = False
    resumed = run_dataset(problems, make_runner, out_dir=tmp_path)
    assert resumed.skipped == ["p0", "p1"] and resumed.finished == ["p2", "p3"]


def test_a_truncated_result_file_is_rerun(tmp_path):
    run_dataset(PROBLEMS[:1], make_runner, out_dir=tmp_path)
    full = (tmp_path / "p0.json").read_text()
    (tmp_path / "p0.json").write_text(full[: len(full) // 2])
    again = run_dataset(PROBLEMS[:1], make_runner, out_dir=tmp_path)
    assert again.finished == ["p0"] and (tmp_path / "p0.json").read_text() == full


def test_unserializable_results_are_recorded_as_failures(tmp_path):
    run = run_dataset([{"id": 7}], lambda: lambda problem: {"set": {1, 2}}, out_dir=tmp_path)
    assert "not JSON-serializable" in run.failed["7"]
    assert not (tmp_path / "7.json").exists()


@pytest.mark.parametrize(
    ("problems", "options", "match"),
    [
        ([{"id": "a"}, {"id": "a"}], {}, "more than once"),
        ([{"id": "../x"}], {}, "ids must be"),
        ([{"id": 1.5}], {}, "ids must be"),
        (["text"], {}, "must be mappings"),
        (PROBLEMS, {"workers": 2}, "executor='ray'"),
        (PROBLEMS, {"executor": "dask"}, "executor must be"),
        (PROBLEMS, {"executor": "ray", "workers": 0}, "positive int"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, problems, options, match):
    with pytest.raises(ppl.InvalidArgumentError, match=match):
        run_dataset(problems, make_runner, out_dir=tmp_path, **options)


@pytest.mark.slow
def test_ray_workers_stream_results_to_files(tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="optional extra: pip install 'pplscale[ray]'")
    # Workers import this module and the tiny model's module by name, and the packages.
    here, helpers = Path(__file__).parent, Path(tiny.__file__).parent
    root = Path(ppl.__file__).resolve().parents[1]
    paths = [str(here), str(helpers), str(root), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    problems = [dict(p) for p in PROBLEMS] + [{"id": "bad", "prompt": "a", "fail": True}]
    run = run_dataset(
        problems,
        make_runner,
        out_dir=tmp_path / "ray",
        executor="ray",
        workers=2,
        ray_init={"log_to_driver": False},
    )
    assert sorted(run.finished) == ["p0", "p1", "p2", "p3"] and list(run.failed) == ["bad"]
    assert "marked to fail" in run.failed["bad"]
    distributed = load_results(tmp_path / "ray")
    assert len({r["pid"] for r in distributed.values()}) == 2  # two workers, each its own model
    assert os.getpid() not in {r["pid"] for r in distributed.values()}
    run_dataset(PROBLEMS, make_runner, out_dir=tmp_path / "local")
    local = load_results(tmp_path / "local")
    for key, result in local.items():
        # Same seeds, same model: the same posterior wherever it ran.
        labels, probs = zip(*distributed[key]["answers"], strict=True)
        assert list(labels) == [a for a, _ in result["answers"]]
        assert list(probs) == pytest.approx([p for _, p in result["answers"]])
        assert distributed[key]["log_evidence"] == pytest.approx(result["log_evidence"])
