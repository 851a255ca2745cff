"""Tests of the ``ppl`` command line through click's ``CliRunner``: every subcommand and error path.

Programs live in ``tests/cli_programs.py`` and are loaded by path, as users'
files are. LM-free programs run with ``--model none``; LM programs use a tiny
random model saved to disk and loaded with ``--model hf:DIR``.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import arviz as az
import cli_programs
import numpy as np
import pytest
from click.testing import CliRunner
from tiny import save_tiny_model
from tqdm import tqdm

import inference
import ppl
from inference.runtime import round_hooks
from ppl.cli import main
from ppl.cli.loading import load_program
from ppl.cli.recipes import available_methods, load_recipe, resolve_method
from ppl.cli.report import rundir
from ppl.cli.run import _count_round

PROGRAMS = Path(cli_programs.__file__)
RECIPES = Path(ppl.__file__).resolve().parents[1] / "examples" / "recipes"
# Exact posterior of cli_programs.toy: prior [.2, .3, .5] times exp([0, -1, -2]).
TOY_EXACT = np.array([0.2, 0.3 * math.exp(-1), 0.5 * math.exp(-2)])
TOY_EXACT /= TOY_EXACT.sum()
TOY_LOG_Z = math.log(0.2 + 0.3 * math.exp(-1) + 0.5 * math.exp(-2))


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def toy(*args):
    return invoke("run", f"{PROGRAMS}:toy", "--model", "none", *args)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-model")
    save_tiny_model(directory)
    return directory


def assert_fails(result, *fragments: str, code: int = 1):
    assert result.exit_code == code, result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.output


# --- help -------------------------------------------------------------------------------


def test_help_lists_commands_and_options():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "run" in result.output and "report" in result.output
    run_help = invoke("run", "--help").output
    for option in (
        "--input",
        "--input-json",
        "--dataset",
        "--method",
        "--particles",
        "--runs",
        "--model",
        "--seed",
        "--param",
        "--out",
        "--quiet",
        "--json",
        "--debug",
        "importance, smc",
        "hf:DIR",
        "openai:URL",
    ):
        assert option in run_help
    report_help = invoke("report", "--help").output
    assert "DIRECTORY" in report_help and "--out" in report_help and "--json" in report_help


# --- ppl run ------------------------------------------------------------------------------


def test_run_program_writes_all_files_and_estimates_the_posterior(tmp_path):
    out = tmp_path / "toy"
    result = toy("--method", "importance", "--particles", 500, "--runs", 4, "--out", out)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {
        "result.json",
        "posterior.nc",
        "genealogy.graphml",
        "report.html",
    }
    assert "R-hat (max)" in result.stdout and f"wrote {out / 'report.html'}" in result.stdout
    saved = rundir.load_run(out)
    post = saved.posterior
    assert post.num_runs == 4 and post.num_particles == 2000 and post.method == "importance"
    distribution = post.answer_distribution()
    for x in range(3):
        assert abs(distribution[f"x{x}"] - TOY_EXACT[x]) < 0.05
    assert abs(post.log_evidence - TOY_LOG_Z) < 0.05
    assert saved.metadata["method"] == "importance" and saved.metadata["runs"] == 4
    idata = az.from_netcdf(str(out / "posterior.nc"))
    assert idata.posterior.sizes["chain"] == 4 and idata.posterior.sizes["draw"] == 500


def test_single_run_matches_the_engine_with_the_same_seed(tmp_path):
    result = toy("--input", "y", "--particles", 30, "--seed", 7, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    program = load_program(f"{PROGRAMS}:toy")
    direct = ppl.smc(program, None, "y", num_particles=30, seed=7)
    saved = rundir.load_run(tmp_path).posterior
    assert saved.answers == direct.answers
    np.testing.assert_array_equal(saved.log_weights, direct.log_weights)


def test_json_output_is_one_parsable_object(tmp_path):
    result = toy("--particles", 20, "--out", tmp_path, "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["out"] == str(tmp_path)
    assert data["map_answer"] == data["diagnostics"]["answers"][0]["answer"]
    assert data["diagnostics"]["num_particles"] == 20


def test_quiet_prints_nothing(tmp_path):
    result = toy("--particles", 10, "--out", tmp_path, "--quiet")
    assert result.exit_code == 0 and result.output == ""
    assert (tmp_path / "report.html").exists()


def test_input_json_array_and_object(tmp_path):
    positional = toy("--input-json", '["p", 0.0]', "--particles", 8, "--out", tmp_path / "a")
    keywords = toy("--input-json", '{"label": "k"}', "--particles", 8, "--out", tmp_path / "b")
    assert positional.exit_code == 0 and keywords.exit_code == 0
    assert all(a.startswith("p") for a in rundir.load_run(tmp_path / "a").posterior.answers)
    assert all(a.startswith("k") for a in rundir.load_run(tmp_path / "b").posterior.answers)


@pytest.mark.parametrize(("threshold", "resamplings"), [("0.0", 0), ("1.0", 1)])
def test_param_reaches_the_method(tmp_path, threshold, resamplings):
    result = invoke(
        "run",
        f"{PROGRAMS}:two_choices",
        "--model",
        "none",
        "--particles",
        20,
        "--param",
        f"ess_threshold={threshold}",
        "--out",
        tmp_path,
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["diagnostics"]["num_resamplings"] == resamplings
    post = rundir.load_run(tmp_path).posterior
    assert sum(r.resampled for r in post.rounds[0]) == resamplings


def test_default_out_directory(tmp_path):
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path):
        result = runner.invoke(
            main, ["run", f"{PROGRAMS}:toy", "--model", "none", "--particles", "5", "-q"]
        )
        assert result.exit_code == 0
        (directory,) = Path("runs").iterdir()
        assert directory.name.startswith("toy-") and (directory / "result.json").exists()


def test_run_lm_program_from_hf_directory(tmp_path, tiny_model_dir):
    result = invoke(
        "run",
        f"{PROGRAMS}:letters",
        "--input",
        "ab",
        "--model",
        f"hf:{tiny_model_dir}",
        "--particles",
        6,
        "--out",
        tmp_path,
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["diagnostics"]["cost"]["tokens_generated"] > 0
    post = rundir.load_run(tmp_path).posterior
    for trace, log_weight in zip(post.particles, post.log_weights, strict=True):
        if log_weight > -math.inf:
            assert "e" not in trace.answer


def test_progress_counts_the_runtime_rounds_without_wrapping_the_lm(tiny_lm):
    program = load_program(f"{PROGRAMS}:letters")
    with tqdm(file=io.StringIO(), disable=False) as bar:
        with round_hooks(lambda event: _count_round(bar, event)):
            post = ppl.smc(program, tiny_lm, "ab", num_particles=5, seed=0)
        assert bar.n == len(post.rounds[0]) > 1


# --- recipes -------------------------------------------------------------------------------


def write_recipe(tmp_path, body: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(body)
    return path


def test_recipe_run_and_command_line_overrides(tmp_path):
    recipe = write_recipe(
        tmp_path,
        f"""
program = "{PROGRAMS.as_posix()}:toy"
method = "importance"
particles = 7
runs = 2
model = "none"
seed = 3
out = "{(tmp_path / "from-recipe").as_posix()}"

[input]
args = ["r"]
kwargs = {{ bias = 0.0 }}
""",
    )
    result = invoke("run", recipe, "-q")
    assert result.exit_code == 0, result.output
    saved = rundir.load_run(tmp_path / "from-recipe")
    assert saved.posterior.num_particles == 14 and saved.metadata["recipe"] == str(recipe)
    assert all(a.startswith("r") for a in saved.posterior.answers)
    overridden = invoke("run", recipe, "--particles", 3, "--input", "o", "--out", tmp_path / "o")
    assert overridden.exit_code == 0
    post = rundir.load_run(tmp_path / "o").posterior
    assert post.num_particles == 6 and all(a.startswith("o") for a in post.answers)


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_recipes_resolve(path):
    spec = load_recipe(path)
    assert spec.method in available_methods() and spec.model == "default"
    resolve_method(spec.method, spec.parameters)
    assert isinstance(load_program(spec.program), ppl.Program)
    assert spec.dataset is None or Path(spec.dataset).is_file()


def test_lipogram_recipe_is_the_demo():
    spec = load_recipe(RECIPES / "lipogram.toml")
    assert (spec.method, spec.particles, spec.model) == ("smc", 16, "default")
    assert spec.program == "examples/lipogram.py:lipogram" or spec.program.endswith(
        "/examples/lipogram.py:lipogram"
    )


@pytest.mark.slow
def test_lipogram_recipe_on_embedded_model(tmp_path):
    result = invoke("run", RECIPES / "lipogram.toml", "--particles", 4, "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    post = rundir.load_run(tmp_path).posterior
    for answer, log_weight in zip(post.answers, post.log_weights, strict=True):
        if log_weight > -math.inf:
            assert "e" not in answer.lower()
    assert (tmp_path / "report.html").exists()


# --- datasets ------------------------------------------------------------------------------


def write_dataset(tmp_path, lines) -> Path:
    path = tmp_path / "problems.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_dataset_run_saves_each_problem_and_resumes(tmp_path):
    marker = tmp_path / "fail-now"
    marker.write_text("")
    dataset = write_dataset(
        tmp_path,
        [
            {"args": ["a", str(marker)], "answer": "a0"},
            {"args": ["b", str(marker)], "answer": "b2"},
            {"args": ["c", str(marker)]},
        ],
    )
    out = tmp_path / "out"
    target = f"{PROGRAMS}:fragile"

    def run_dataset(*extra):
        return invoke(
            "run",
            target,
            "--dataset",
            dataset,
            "--model",
            "none",
            "--particles",
            50,
            "--method",
            "importance",
            "--out",
            out,
            *extra,
        )

    interrupted = run_dataset()
    assert_fails(interrupted, "failing on purpose")
    assert (rundir.problem_dir(out, 0) / "result.json").is_file()
    assert not rundir.problem_dir(out, 1).exists()
    first = (rundir.problem_dir(out, 0) / "result.json").read_text()

    marker.unlink()
    resumed = run_dataset("--json")
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert (summary["run_now"], summary["already_done"], summary["finished"]) == (2, 1, 3)
    assert (rundir.problem_dir(out, 0) / "result.json").read_text() == first
    rows = {p["index"]: p for p in summary["problems"]}
    assert rows[0]["correct"] == (rows[0]["map_answer"] == "a0")
    assert rows[2]["expected"] is None and rows[2]["correct"] is None
    saved = rundir.read_result(out)
    assert saved["kind"] == "dataset" and saved["finished"] == 3
    assert '<table id="summary">' in (out / "report.html").read_text()
    assert rundir.load_run(rundir.problem_dir(out, 1)).posterior.num_particles == 50

    again = run_dataset("--json")
    assert json.loads(again.stdout)["run_now"] == 0
    changed = run_dataset("--seed", 1)
    assert_fails(changed, "holds the result of a different run")


@pytest.mark.slow
def test_dataset_on_ray_workers_saves_what_finished_and_matches_local(tmp_path, tiny_model_dir):
    pytest.importorskip("ray", reason="optional extra: pip install 'pplscale[ray]'")
    marker = tmp_path / "fail-now"
    marker.write_text("")
    absent = str(tmp_path / "absent")
    dataset = write_dataset(
        tmp_path,
        [{"args": [prefix, absent]} for prefix in ("a", "ab", "ba")]
        + [{"args": ["c", str(marker)]}],
    )

    def run_dataset(out, *extra):
        return invoke(
            "run",
            f"{PROGRAMS}:fragile_letters",
            "--dataset",
            dataset,
            "--model",
            f"hf:{tiny_model_dir}",
            "--particles",
            8,
            "--out",
            out,
            "--json",
            *extra,
        )

    on_ray = ("--executor", "ray", "--workers", 2)
    interrupted = run_dataset(tmp_path / "ray", *on_ray)
    assert interrupted.exit_code == 1, interrupted.output
    error = json.loads(interrupted.stdout)["error"]
    assert "1 of 4 problems failed" in error
    assert "problem 3: program 'fragile_letters' raised RuntimeError: failing on purpose" in error
    assert [rundir.problem_dir(tmp_path / "ray", i).is_dir() for i in range(4)] == [1, 1, 1, 0]

    marker.unlink()
    resumed = run_dataset(tmp_path / "ray", *on_ray)
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert (summary["run_now"], summary["already_done"], summary["finished"]) == (1, 3, 4)

    local = run_dataset(tmp_path / "local")
    assert local.exit_code == 0, local.output
    for index in range(4):
        # Same per-problem seeds and model: the same posterior wherever it ran.
        distributed = rundir.load_run(rundir.problem_dir(tmp_path / "ray", index)).posterior
        here = rundir.load_run(rundir.problem_dir(tmp_path / "local", index)).posterior
        assert distributed.answer_distribution() == pytest.approx(here.answer_distribution())
        assert distributed.log_evidence == pytest.approx(here.log_evidence)


@pytest.mark.parametrize("method", ["smc", "importance"])
def test_dataset_packed_in_one_batch_matches_one_at_a_time(tmp_path, tiny_model_dir, method):
    dataset = write_dataset(tmp_path, [{"args": [p]} for p in ("a", "ab", "ba", "c", "cab")])

    def run_dataset(out, rows):
        return invoke(
            "run",
            f"{PROGRAMS}:letters",
            "--dataset",
            dataset,
            "--model",
            f"hf:{tiny_model_dir}",
            "--method",
            method,
            "--particles",
            4,
            "--rows",
            rows,
            "--out",
            out,
            "--json",
        )

    packed, alone = run_dataset(tmp_path / "packed", 12), run_dataset(tmp_path / "alone", 1)
    assert packed.exit_code == 0, packed.output
    assert alone.exit_code == 0, alone.output
    assert json.loads(packed.stdout)["problems"] == json.loads(alone.stdout)["problems"]
    for index in range(5):
        shared = rundir.load_run(rundir.problem_dir(tmp_path / "packed", index)).posterior
        here = rundir.load_run(rundir.problem_dir(tmp_path / "alone", index)).posterior
        assert shared.answers == here.answers
        assert shared.log_weights.tolist() == pytest.approx(here.log_weights.tolist())
        # Each problem is charged its own tokens, not the batch's.
        assert shared.cost.tokens_generated == here.cost.tokens_generated > 0


def test_ray_options_need_a_dataset_on_ray(tmp_path):
    dataset = write_dataset(tmp_path, [{"input": "a"}])
    assert_fails(
        toy("--workers", 2, "--dataset", dataset, "--out", tmp_path / "o"),
        "need --executor ray",
        code=2,
    )
    assert_fails(toy("--executor", "ray", "--input", "a"), "problems of a --dataset", code=2)


def test_dataset_accepts_question_field(tmp_path):
    dataset = write_dataset(tmp_path, [{"question": "q", "answer": "q0"}, {"input": "i"}])
    result = toy("--dataset", dataset, "--particles", 5, "--out", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    answers = [p["map_answer"] for p in json.loads(result.stdout)["problems"]]
    assert answers[0].startswith("q") and answers[1].startswith("i")


# --- ppl report ----------------------------------------------------------------------------


def test_report_rerenders_run_and_dataset(tmp_path):
    assert toy("--particles", 10, "--runs", 2, "--out", tmp_path / "run", "-q").exit_code == 0
    (tmp_path / "run" / "report.html").unlink()
    result = invoke("report", tmp_path / "run")
    assert result.exit_code == 0 and "wrote" in result.stdout
    assert '<table id="summary">' in (tmp_path / "run" / "report.html").read_text()
    elsewhere = invoke("report", tmp_path / "run", "--out", tmp_path / "copy.html", "--json")
    assert json.loads(elsewhere.stdout)["report"] == str(tmp_path / "copy.html")
    assert 'href="run/result.json"' in (tmp_path / "copy.html").read_text()

    dataset = write_dataset(tmp_path, [{"input": "a"}, {"input": "b"}])
    assert (
        toy("--dataset", dataset, "--particles", 4, "--out", tmp_path / "ds", "-q").exit_code == 0
    )
    (tmp_path / "ds" / "report.html").unlink()
    assert invoke("report", tmp_path / "ds").exit_code == 0
    page = (tmp_path / "ds" / "report.html").read_text()
    assert "problems finished</td><td>2 of 2" in page


def test_report_errors(tmp_path):
    assert_fails(invoke("report", tmp_path / "missing"), "does not exist", code=2)
    assert_fails(invoke("report", tmp_path), "holds no result.json")
    bad = invoke("report", tmp_path, "--json")
    assert bad.exit_code == 1 and json.loads(bad.stdout)["type"] == "ReportError"


# --- error paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "gibbs"], "unknown method 'gibbs'; available: importance, smc"),
        (
            ["--model", "gpt"],
            "unknown model 'gpt'; use default, hf:DIR, openai:URL, file.py:factory or none",
        ),
        (["--model", "hf:/no/such/dir"], "model directory '/no/such/dir'"),
        (["--param", "ess_threshold"], "--param must look like KEY=VALUE"),
        (["--param", "temperature=2"], "method 'smc' has no parameter 'temperature'"),
        (["--param", "num_particles=2"], "set num_particles with --particles"),
        (["--input-json", "{oops"], "--input-json is not valid JSON"),
        (["--input-json", "3"], "--input-json must be a JSON array"),
        (["--input-json", '{"seed": 1}'], "clash with method parameters"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_options(tmp_path, args, message):
    assert_fails(toy(*args, "--out", tmp_path), message)


def test_method_known_but_not_installed(tmp_path):
    missing = [m for m in ("beam", "mh", "particle_gibbs") if not hasattr(inference, m)]
    if not missing:
        pytest.skip("every known method is installed")
    result = toy("--method", missing[0], "--out", tmp_path)
    assert_fails(result, f"method {missing[0]!r} is not available in this installation")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nowhere.py:f", "program file 'nowhere.py' does not exist"),
        (
            f"{PROGRAMS}:missing",
            "no function 'missing'; it defines: broken, fragile, fragile_letters, letters, "
            "no_answer, toy, two_choices",
        ),
        (f"{PROGRAMS}:NOT_CALLABLE", "NOT_CALLABLE is not callable (it is a int)"),
        (str(PROGRAMS), "must be path/to/file.py:function or a .toml recipe"),
        ("nowhere.toml", "recipe file 'nowhere.toml' does not exist"),
    ],
    ids=["no-file", "no-function", "not-callable", "no-function-name", "no-recipe"],
)
def test_bad_targets(tmp_path, target, message):
    result = invoke("run", target, "--model", "none", "--out", tmp_path)
    assert_fails(result, message)


def test_target_that_fails_to_import(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def f(lm):\n    return (\n")
    result = invoke("run", f"{broken}:f", "--model", "none", "--out", tmp_path / "out")
    assert_fails(result, f"importing '{broken}' failed: SyntaxError")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("program = [", "is not valid TOML"),
        ('program = "x.py:f"\nparticle = 3', "unknown key(s) particle"),
        ('method = "smc"', "names no program"),
        ('program = "x.py:f"\nparticles = "many"', "particles must be a int"),
        ('program = "x.py:f"\ninput = 3', "input must be a string or a table"),
        ('program = "x.py:f"\ninput = "a"\ndataset = "d.jsonl"', "has both input and dataset"),
    ],
    ids=["toml", "unknown-key", "no-program", "bad-type", "bad-input", "input-and-dataset"],
)
def test_bad_recipes(tmp_path, body, message):
    result = invoke("run", write_recipe(tmp_path, body), "--out", tmp_path / "out")
    assert_fails(result, message)


def test_conflicting_inputs_are_a_usage_error(tmp_path):
    result = toy("--input", "a", "--dataset", tmp_path / "d.jsonl", "--out", tmp_path)
    assert result.exit_code == 2
    assert "give at most one of --input, --input-json and --dataset" in result.stderr


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = toy("--out", blocker / "sub")
    assert_fails(result, f"cannot write to output directory '{blocker / 'sub'}'")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (None, "dataset file"),
        (["{bad"], "problems.jsonl:1 is not valid JSON"),
        (["[1, 2]"], "problems.jsonl:1: each line must be a JSON object"),
        (['{"answer": 1}'], "problems.jsonl:1: needs a 'question' or 'input' field"),
        (["", "  "], "holds no problems"),
    ],
    ids=["missing", "json", "not-object", "no-question", "empty"],
)
def test_bad_datasets(tmp_path, lines, message):
    path = tmp_path / "problems.jsonl"
    if lines is not None:
        path.write_text("\n".join(lines))
    assert_fails(toy("--dataset", path, "--out", tmp_path / "out"), message)


def test_program_error_inside_a_particle_shows_its_trace(tmp_path):
    result = invoke(
        "run", f"{PROGRAMS}:broken", "--input", "hi", "--model", "none", "--out", tmp_path
    )
    assert_fails(
        result,
        "Error: program 'broken' raised ValueError: math domain error "
        "(while running program 'broken' for particle 0)",
        "Trace of the particle so far (3 sites):",
        "x [sample] = tensor(",
        "f [factor] = ",
        "y [sample] = tensor(",
    )
    as_json = invoke(
        "run", f"{PROGRAMS}:broken", "--input", "hi", "--model", "none", "--out", tmp_path, "--json"
    )
    data = json.loads(as_json.stdout)
    assert as_json.exit_code == 1 and data["type"] == "ParticleError"
    assert [line.split(" ")[0] for line in data["trace"]] == ["x", "f", "y"]


def test_debug_shows_the_traceback(tmp_path):
    result = invoke(
        "run",
        f"{PROGRAMS}:broken",
        "--input",
        "hi",
        "--model",
        "none",
        "--out",
        tmp_path,
        "--debug",
    )
    assert result.exit_code == 1
    assert isinstance(result.exception, ppl.ParticleError)
    assert isinstance(result.exception.__cause__, ValueError)
    assert [s.name for s in result.exception.sites] == ["x", "f", "y"]


def test_runtime_errors_outside_the_program_are_one_line(tmp_path):
    result = invoke("run", f"{PROGRAMS}:no_answer", "--model", "none", "--out", tmp_path)
    assert_fails(result, "program 'no_answer' returned without calling ppl.answer")
    assert len(result.stderr.strip().splitlines()) == 1


def test_wrong_program_arguments_are_reported(tmp_path):
    result = toy("--input-json", '{"colour": 1}', "--out", tmp_path)
    assert_fails(result, "program 'toy' raised TypeError:", "unexpected keyword argument 'colour'")


def test_unexpected_errors_are_one_line_with_a_hint(tmp_path):
    result = toy("--param", "ess_threshold=abc", "--out", tmp_path)
    assert_fails(result, "Error: TypeError: ", "(rerun with --debug for the traceback)")
    assert len(result.stderr.strip().splitlines()) == 1
