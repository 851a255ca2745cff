"""``ppl calibrate`` and ``ppl run --calibration`` through click's ``CliRunner``.

Dataset runs of the LM-free ``toy`` program (``tests/cli_programs.py``) give
the calibration and held-out problems; each problem's expected answer is
drawn from its exact posterior, so the problems are exchangeable.
"""

from __future__ import annotations

import json
from pathlib import Path

import cli_programs
import numpy as np
import pytest
from click.testing import CliRunner

from inference.conformal import AnswerSets, load_calibration
from ppl.cli import main
from ppl.cli.report import load_runs, rundir

PROGRAMS = Path(cli_programs.__file__)
PRIOR = np.array([0.2, 0.3, 0.5])


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def write_dataset(path: Path, num_problems: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(num_problems):
        bias = float(rng.uniform(-2.0, 3.0))
        exact = PRIOR * np.exp(np.array([0.0, -1.0, -2.0]) + bias * np.arange(3))
        answer = f"x{rng.choice(3, p=exact / exact.sum())}"
        lines.append(json.dumps({"args": ["x", bias], "answer": answer}))
    path.write_text("\n".join(lines) + "\n")
    return path


def run_dataset(directory: Path, dataset: Path, *extra):
    result = invoke(
        "run", f"{PROGRAMS}:toy", "--model", "none", "--dataset", dataset,
        "--method", "importance", "--particles", 5, "--out", directory, "-q", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    calibration, heldout = root / "cal", root / "heldout"
    run_dataset(calibration, write_dataset(root / "cal.jsonl", 40, seed=0))
    run_dataset(heldout, write_dataset(root / "heldout.jsonl", 15, seed=1))
    return root, calibration, heldout


def test_calibrate_answer_sets_and_evaluate(runs, tmp_path):
    _, calibration, heldout = runs
    out = tmp_path / "sets.json"
    result = invoke(
        "calibrate", "--runs", calibration, "--method", "answer-sets", "--alpha", 0.3,
        "--score", "aps", "--evaluate", heldout, "--out", out, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    sets = load_calibration(out)
    assert isinstance(sets, AnswerSets) and sets.num_calibration == 40
    assert report["calibration"]["threshold"] == sets.threshold
    assert report["problems"] == 40 and "0.70" in report["guarantee"]
    # The printed evaluation is the library's own on the held-out runs.
    expected = sets.evaluate(load_runs(heldout)).to_dict()
    assert report["evaluation"] == {"runs": str(heldout), **expected}
    assert json.loads(out.read_text())["provenance"]["source"] == str(calibration)


@pytest.mark.parametrize(
    ("method", "options", "fact"),
    [
        ("abstention", ["--alpha", 0.4, "--delta", 0.2], "threshold"),
        ("budget", ["--alpha", 0.3, "--rule", "agreement"], "parameter"),
        ("abstention", ["--alpha", 0.4, "--procedure", "fixed-sequence"], "threshold"),
        ("budget", ["--alpha", 0.3, "--procedure", "split-start"], "parameter"),
        ("stopping", ["--alpha", 0.1], "threshold"),
        ("stopping", ["--alpha", 0.1, "--no-randomized", "--seed", 3], "threshold"),
    ],
)
def test_calibrate_other_methods(runs, tmp_path, method, options, fact):
    _, calibration, _ = runs
    out = tmp_path / f"{method}.json"
    result = invoke("calibrate", "--runs", calibration, "--method", method, *options, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"{fact}:" in result.output and "guarantee:" in result.output
    loaded = load_calibration(out)
    assert loaded.method == method
    if "--procedure" in options:
        assert loaded.procedure == options[options.index("--procedure") + 1]
        assert f"procedure: {loaded.procedure}" in result.output
    plain = "--no-randomized" in options
    assert loaded.randomized is not plain and loaded.seed == (3 if plain else 0)
    assert ("randomized binomial tail" in loaded.guarantee()) is not plain


def test_calibrate_stopping_over_runs_and_apply_it(tmp_path):
    dataset = write_dataset(tmp_path / "cal.jsonl", 30, seed=2)
    calibration = tmp_path / "cal"
    run_dataset(calibration, dataset, "--runs", 4)
    out = tmp_path / "stop.json"
    result = invoke(
        "calibrate", "--runs", calibration, "--method", "stopping", "--unit", "run",
        "--alpha", 0.2, "--out", out, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)["calibration"]
    assert report["unit"] == "run" and report["max_samples"] == 4
    rule = load_calibration(out)
    posterior = load_runs(calibration)[0].posterior
    decision = rule.predict(posterior)
    assert decision.details["samples drawn"] <= 4 and "4 runs" in decision.guarantee
    applied = run_dataset(
        tmp_path / "applied", dataset, "--runs", 4, "--calibration", out, "--json"
    )
    summary = json.loads(applied.output)["calibration"]
    rows = rundir.read_result(tmp_path / "applied")["problems"]
    assert summary["method"] == "stopping" and summary["problems"] == 30
    assert summary["mean_samples"] == pytest.approx(
        np.mean([r["calibration"]["drawn"] for r in rows])
    )


def test_run_with_calibration_reports_the_set_and_guarantee(runs, tmp_path):
    _, calibration, _ = runs
    calib = tmp_path / "sets.json"
    invoke("calibrate", "--runs", calibration, "--alpha", 0.3, "--out", calib, "-q")
    out = tmp_path / "single"
    result = invoke(
        "run", f"{PROGRAMS}:toy", "--model", "none", "--input-json", '["x", 0.5]',
        "--method", "importance", "--particles", 5, "--out", out, "--calibration", calib,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "answer set (70% coverage)" in result.output
    saved = rundir.read_result(out)
    decision = saved["calibration"]
    assert decision["method"] == "answer-sets" and "0.70" in decision["guarantee"]
    posterior = rundir.load_run(out).posterior
    again = load_calibration(calib).predict(posterior, seed=0)
    assert decision["labels"] == again.labels
    page = (out / rundir.REPORT_FILE).read_text()
    assert "Calibrated decision" in page and "Guarantee: an acceptable answer" in page
    # ppl report re-renders the decision from result.json.
    (out / rundir.REPORT_FILE).unlink()
    assert invoke("report", out).exit_code == 0
    assert "Calibrated decision" in (out / rundir.REPORT_FILE).read_text()


def test_dataset_run_with_calibration_reports_coverage(runs, tmp_path):
    root, calibration, heldout = runs
    calib = tmp_path / "sets.json"
    invoke("calibrate", "--runs", calibration, "--alpha", 0.3, "--out", calib, "-q")
    out = tmp_path / "applied"
    result = run_dataset(out, root / "heldout.jsonl", "--calibration", calib, "--json")
    summary = json.loads(result.output)["calibration"]
    rows = rundir.read_result(out)["problems"]
    hits = [r["calibration"]["contains_expected"] for r in rows]
    assert summary["method"] == "answer-sets" and summary["problems"] == 15
    assert summary["coverage"] == pytest.approx(np.mean(hits))
    assert summary["mean_set_size"] == pytest.approx(
        np.mean([len(r["calibration"]["labels"]) for r in rows])
    )
    page = (out / rundir.REPORT_FILE).read_text()
    assert "Calibrated decisions" in page and "calibrated decision" in page
    # A rerun resumes: finished problems get the new calibration's decision too.
    abstain = tmp_path / "abstain.json"
    invoke(
        "calibrate", "--runs", calibration, "--method", "abstention", "--alpha", 0.7,
        "--delta", 0.2, "--procedure", "fixed-sequence", "--out", abstain, "-q",
    )  # fmt: skip
    again = json.loads(
        run_dataset(out, root / "heldout.jsonl", "--calibration", abstain, "--json").output
    )
    assert again["already_done"] == 15
    assert again["calibration"]["method"] == "abstention"
    rule = load_calibration(abstain)
    # On these tiny-model runs a 70% error target is met by answering everything.
    assert rule.threshold == 0.0
    rows = rundir.read_result(out)["problems"]
    answered = [not r["calibration"]["abstained"] for r in rows]
    assert sum(answered) == 15
    assert again["calibration"]["answer_rate"] == pytest.approx(np.mean(answered))
    errors = [
        not r["calibration"]["contains_expected"] for r in rows if not r["calibration"]["abstained"]
    ]
    assert again["calibration"]["risk"] == pytest.approx(np.mean(errors))


def test_calibrate_errors_are_one_line(tmp_path, runs):
    root, _, _ = runs
    no_answers = tmp_path / "plain.jsonl"
    no_answers.write_text(json.dumps({"args": ["x", 0.0]}) + "\n")
    run_dataset(tmp_path / "plain", no_answers)
    result = invoke("calibrate", "--runs", tmp_path / "plain", "--out", tmp_path / "c.json")
    assert result.exit_code == 1
    assert "no expected answer" in result.stderr and "Traceback" not in result.output
    result = invoke("calibrate", "--runs", root, "--out", tmp_path / "c.json")
    assert result.exit_code == 1 and "ppl run --dataset" in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    result = invoke(
        "run", f"{PROGRAMS}:toy", "--model", "none", "--out", tmp_path / "r", "--calibration", bad
    )
    assert result.exit_code == 1 and "not a calibration file" in result.stderr
    result = invoke("calibrate", "--runs", root / "cal", "--alpha", 2, "--out", tmp_path / "c.json")
    assert result.exit_code == 1 and "alpha" in result.stderr
