"""The ``ppl`` command line: run reasoning programs and render their reports.

Examples::

    ppl run examples/recipes/lipogram.toml --out runs/lipogram
    ppl run examples/lipogram.py:lipogram --input "The cat" --method smc --particles 32
    ppl run prog.py:solve --dataset problems.jsonl --runs 4 --out runs/solve
    ppl run prog.py:solve --dataset problems.jsonl --executor ray --workers 8
    ppl report runs/lipogram

Exit status: 0 on success, 1 when the run fails (the reason is one line on
stderr, or a JSON object with ``--json``), 2 for command-line usage errors.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

import ppl
from inference.conformal import load_calibration
from ppl import calibrate_cli
from ppl.errors import ParticleError, PPLError, RecipeError
from ppl.harness import bench
from ppl.lm import ForwardingLM
from ppl.recipes import (
    MODELS,
    RunSpec,
    available_methods,
    check_model,
    load_model,
    load_program,
    load_recipe,
    parse_input_json,
    parse_parameter,
    resolve_method,
)
from ppl.report import rundir

TRACE_LINES = 20


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pplscale", prog_name="ppl")
def main() -> None:
    """pplscale: run reasoning programs over language models and report how sure they are.

    A program is a Python function whose first argument is the LM, as in
    def solve(lm, question). "ppl run" runs an inference method on it and
    writes result.json, posterior.nc (ArviZ), genealogy.graphml and a
    self-contained report.html; "ppl report" re-renders the report of a saved
    run; "ppl bench" measures accuracy against compute for several methods on
    a task suite; "ppl calibrate" turns dataset runs into calibrated decisions
    (answer sets, abstention, sample budgets) that "ppl run --calibration"
    applies. See "ppl COMMAND --help".
    """


def output_options(command: Callable) -> Callable:
    """The ``--quiet``, ``--json`` and ``--debug`` options shared by subcommands.

    Failures exit with status 1 and a one-line reason (a JSON object with
    ``--json``); ``--debug`` shows the traceback instead.
    """

    @click.option("--quiet", "-q", is_flag=True, help="Print nothing on success; no progress bars.")
    @click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print one JSON object (results or error) on stdout.",
    )
    @click.option("--debug", is_flag=True, help="Show the full traceback when something fails.")
    @functools.wraps(command)
    def wrapper(*args, quiet: bool, as_json: bool, debug: bool, **kwargs):
        output = Output(quiet=quiet, as_json=as_json)
        try:
            return command(*args, output=output, **kwargs)
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            click.echo("Error: interrupted (a dataset run resumes where it stopped)", err=True)
            sys.exit(130)
        except Exception as error:
            if debug:
                raise
            output.fail(error)

    return wrapper


class Output:
    """Where a subcommand's messages, results and progress bars go."""

    def __init__(self, *, quiet: bool, as_json: bool):
        self.quiet = quiet
        self.as_json = as_json

    def info(self, message: str) -> None:
        if not self.quiet and not self.as_json:
            click.echo(message)

    def result(self, data: dict[str, Any]) -> None:
        if self.as_json:
            click.echo(json.dumps(data))

    def progress(self, *, enabled: bool = True, **kwargs):
        """A tqdm bar on stderr; off with --quiet or when stderr is not a terminal."""
        from tqdm.auto import tqdm

        off = self.quiet or not enabled
        return tqdm(file=sys.stderr, disable=True if off else None, **kwargs)

    def fail(self, error: Exception) -> None:
        message = _reason(error)
        sites = error.sites if isinstance(error, ParticleError) else ()
        if self.as_json:
            click.echo(
                json.dumps(
                    {
                        "error": message,
                        "type": type(error).__name__,
                        "trace": [_site_text(site) for site in sites],
                    }
                )
            )
        else:
            click.echo(f"Error: {message}", err=True)
            if sites:
                shown = f", the last {TRACE_LINES}" if len(sites) > TRACE_LINES else ""
                click.echo(f"Trace of the particle so far ({len(sites)} sites{shown}):", err=True)
                for site in sites[-TRACE_LINES:]:
                    click.echo(f"  {_site_text(site)}", err=True)
        sys.exit(1)


def _reason(error: Exception, *, hint: bool = True) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    notes = [n for n in getattr(error, "__notes__", ()) if n.startswith("while running")]
    if notes:
        text += f" ({notes[0]})"
    if not isinstance(error, PPLError | OSError):
        text = f"{type(error).__name__}: {text}"
        if hint:
            text += " (rerun with --debug for the traceback)"
    return text


def _site_text(site) -> str:
    value = repr(str(site.value)) if isinstance(site.value, str) else repr(site.value)
    if len(value) > 80:
        value = value[:77] + "..."
    return f"{site.name} [{site.kind}] = {value}   log weight {site.log_weight:.3f}"


@main.command()
@click.argument("target")
@click.option("--input", "input_text", help="Text passed to the program after the LM.")
@click.option(
    "--input-json",
    help="Program arguments after the LM as JSON: an array (positional) or object (keywords).",
)
@click.option(
    "--dataset",
    type=click.Path(dir_okay=False),
    help="JSONL file, one problem per line with a 'question' or 'input' field (optional "
    "'answer'); each result is saved as soon as it finishes, and a rerun resumes.",
)
@click.option(
    "--method",
    help=f"Inference method: {', '.join(available_methods())}. [default: smc]",
)
@click.option(
    "--particles",
    type=click.IntRange(min=1),
    help="Particles per run (beam width for beam, subtrees for dvts). [default: 16]",
)
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    help="Independent runs, pooled; needed for R-hat and log-evidence SE. [default: 1]",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="With --dataset: run problems in this process, or on Ray workers "
    "(pip install 'pplscale[ray]').",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="With --executor ray: Ray workers, each loading its own model. [default: 2]",
)
@click.option(
    "--ray-address",
    help="With --executor ray: the cluster to join ('auto', or HOST:PORT); "
    "default: a local cluster started for the run.",
)
@click.option("--model", help=f"Language model: {MODELS}. [default: default]")
@click.option("--seed", type=int, help="Random seed. [default: 0]")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra method parameter, e.g. --param ess_threshold=0.3 (repeatable).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Output directory. [default: runs/NAME-TIMESTAMP]",
)
@click.option(
    "--calibration",
    "calibration_path",
    type=click.Path(exists=True, dir_okay=False),
    help="A file from `ppl calibrate`: report the calibrated answer set, answer-or-abstain "
    "decision or sample budget, with its guarantee.",
)
@output_options
def run(
    target: str,
    input_text: str | None,
    input_json: str | None,
    dataset: str | None,
    method: str | None,
    particles: int | None,
    runs: int | None,
    executor: str,
    workers: int | None,
    ray_address: str | None,
    model: str | None,
    seed: int | None,
    params: Sequence[str],
    out: str | None,
    calibration_path: str | None,
    output: Output,
) -> None:
    """Run TARGET, a program (path/to/file.py:function) or a TOML recipe.

    The program is called as program(LM, *inputs). Options given here
    override the recipe's. Writes result.json, posterior.nc, genealogy.graphml
    and report.html to --out.
    """
    if sum(x is not None for x in (input_text, input_json, dataset)) > 1:
        raise click.UsageError("give at most one of --input, --input-json and --dataset")
    if executor == "local" and (workers is not None or ray_address is not None):
        raise click.UsageError("--workers and --ray-address need --executor ray")
    if target.endswith(".toml"):
        spec = load_recipe(target)
    else:
        spec = RunSpec(program=target)
    spec = spec.merged(method=method, particles=particles, runs=runs, model=model, seed=seed)
    if input_text is not None:
        spec = spec.merged(args=[input_text], kwargs={}, dataset=None)
    elif input_json is not None:
        args, kwargs = parse_input_json(input_json)
        spec = spec.merged(args=args, kwargs=kwargs, dataset=None)
    elif dataset is not None:
        spec = spec.merged(args=[], kwargs={}, dataset=dataset)
    if params:
        spec = spec.merged(parameters={**spec.parameters, **dict(map(parse_parameter, params))})
    out_dir = Path(out or spec.out or f"runs/{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")

    engine, size = resolve_method(spec.method, spec.parameters)
    check_model(spec.model)
    clashes = sorted(set(spec.kwargs) & {size, "seed", "num_runs", *spec.parameters})
    if clashes:
        raise RecipeError(
            f"program keyword argument(s) {', '.join(clashes)} clash with method parameters"
        )
    problems = _read_dataset(Path(spec.dataset)) if spec.dataset else None
    if executor == "ray" and problems is None:
        raise click.UsageError("--executor ray spreads the problems of a --dataset over workers")
    calibration = load_calibration(calibration_path) if calibration_path else None
    rundir.ensure_writable(out_dir)
    program = load_program(spec.program)
    lm = None if executor == "ray" else load_model(spec.model)

    def infer(args: list[Any], kwargs: dict[str, Any], seed: int, bar) -> ppl.Posterior:
        call_lm = lm if lm is None or bar is None else _ProgressLM(lm, bar)
        return _infer(spec, engine, size, program, call_lm, args, kwargs, seed)

    if problems is None:
        # Population engines make one batched LM call per round: count those.
        rounds = output.progress(desc=f"{spec.method} rounds", unit="round", enabled=lm is not None)
        with rounds as bar:
            posterior = infer(spec.args, spec.kwargs, spec.seed, bar)
        decision = calibration.predict(posterior, seed=spec.seed) if calibration else None
        diagnostics = rundir.save_run(
            posterior,
            out_dir,
            metadata=_metadata(spec),
            title=spec.program.rpartition(":")[2],
            decision=decision,
        )
        output.info(diagnostics.text())
        if decision is not None:
            output.info("\n" + decision.text())
        output.info(
            f"\nwrote {out_dir / rundir.REPORT_FILE} (and result.json, posterior.nc, "
            "genealogy.graphml)"
        )
        best = diagnostics.answers[0] if diagnostics.answers else None
        output.result(
            {
                "out": str(out_dir),
                "map_answer": best.label if best else None,
                "diagnostics": diagnostics.to_dict(),
                "calibration": decision.to_dict() if decision else None,
            }
        )
        return
    placement = _Placement(executor, workers or 2, ray_address)
    summary = _run_dataset(spec, problems, out_dir, infer, placement, output, calibration)
    output.result({"out": str(out_dir), **summary})


def _infer(spec: RunSpec, engine, size: str, program, lm, args, kwargs, seed: int):
    method_kwargs = {size: spec.particles, **spec.parameters, **kwargs}
    if spec.runs == 1:
        return engine(program, lm, *args, seed=seed, **method_kwargs)
    return ppl.run(engine, program, lm, *args, num_runs=spec.runs, seed=seed, **method_kwargs)


@dataclass(frozen=True)
class _Placement:
    """Where a dataset's problems run: here, or on Ray workers."""

    executor: str
    workers: int
    ray_address: str | None


def _run_dataset(
    spec: RunSpec,
    problems,
    out_dir: Path,
    infer,
    placement: _Placement,
    output: Output,
    calibration=None,
) -> dict:
    """Run every problem not already finished in ``out_dir``; save each as it finishes."""
    metadata = _metadata(spec)
    pending: dict[int, dict[str, Any]] = {}  # index -> the problem as a worker runs it
    problem_metadata: dict[int, dict[str, Any]] = {}
    for index, (args, kwargs, expected) in enumerate(problems):
        directory = rundir.problem_dir(out_dir, index)
        problem_spec = spec.merged(args=args, kwargs=kwargs, dataset=None)
        fingerprint = _fingerprint(problem_spec)
        if (directory / rundir.RESULT_FILE).is_file():
            previous = rundir.read_result(directory)
            if previous.get("metadata", {}).get("fingerprint") != fingerprint:
                raise RecipeError(
                    f"{directory} holds the result of a different run (other program, "
                    "options or dataset); use another --out"
                )
            if calibration is not None:
                calibrate_cli.apply_to_saved_run(directory, calibration)
            continue
        seed = int(np.random.SeedSequence([spec.seed, index]).generate_state(1)[0])
        pending[index] = {"args": args, "kwargs": kwargs, "seed": seed}
        problem_metadata[index] = {
            **_metadata(problem_spec),
            "dataset": spec.dataset,
            "index": index,
            "problem_seed": seed,
            "input_text": " ".join(map(str, args)) or json.dumps(kwargs),
            "expected": expected,
            "fingerprint": fingerprint,
        }
    skipped = len(problems) - len(pending)
    done = 0
    failed: dict[int, _ProblemFailure] = {}
    with output.progress(
        total=len(problems), initial=skipped, desc="problems", unit="problem"
    ) as bar:

        def save(index: int, posterior: ppl.Posterior) -> None:
            nonlocal done
            directory = rundir.problem_dir(out_dir, index)
            problem_seed = pending[index]["seed"]
            decision = calibration.predict(posterior, seed=problem_seed) if calibration else None
            rundir.save_run(
                posterior,
                directory,
                metadata=problem_metadata[index],
                report=False,
                decision=decision,
            )
            done += 1
            bar.update(1)

        if placement.executor == "local":
            for index, problem in pending.items():
                save(index, infer(problem["args"], problem["kwargs"], problem["seed"], None))
        else:
            failed = _run_on_ray(spec, pending, placement, save)
    summary = rundir.save_dataset_summary(out_dir, metadata=metadata, total=len(problems))
    judged = [r for r in summary["problems"] if r["correct"] is not None]
    accuracy = sum(r["correct"] for r in judged) / len(judged) if judged else None
    output.info(
        f"{summary['finished']} of {len(problems)} problems finished ({done} run now, "
        f"{skipped} already done)"
        + (f"; exact-match accuracy {accuracy:.3f}" if accuracy is not None else "")
    )
    if summary["calibration"]:
        output.info(calibrate_cli.summary_line(summary["calibration"]))
    output.info(f"wrote {out_dir / rundir.REPORT_FILE} and {out_dir / rundir.RESULT_FILE}")
    if failed:
        first, failure = min(failed.items())
        error = PPLError(
            f"{len(failed)} of {len(problems)} problems failed (the others are saved; a rerun "
            f"retries only the failed ones); problem {first}: {failure.reason}"
        )
        for index, failure in sorted(failed.items()):
            error.add_note(f"problem {index} on its worker:\n{failure.traceback}")
        raise error
    return {
        "total": len(problems),
        "finished": summary["finished"],
        "run_now": done,
        "already_done": skipped,
        "accuracy": accuracy,
        "calibration": summary["calibration"],
        "problems": [
            {k: r[k] for k in ("index", "map_answer", "probability", "expected", "correct")}
            for r in summary["problems"]
        ],
    }


@dataclass(frozen=True)
class _ProblemFailure:
    """Why a problem failed on a worker: a one-line reason and the worker's traceback."""

    reason: str
    traceback: str


def _run_on_ray(
    spec: RunSpec, pending, placement: _Placement, save: Callable[[int, ppl.Posterior], None]
) -> dict[int, _ProblemFailure]:
    """Run the pending problems on Ray workers; save each posterior here as it arrives.

    Returns the failed problems by index.
    """
    from inference.executors import map_problems

    # Workers may start elsewhere: give them absolute paths to the program and model.
    program_file, _, function = spec.program.rpartition(":")
    worker_spec = spec.merged(program=f"{Path(program_file).resolve()}:{function}")
    kind, _, rest = spec.model.partition(":")
    if kind == "hf":
        worker_spec = worker_spec.merged(model=f"hf:{Path(rest).resolve()}")
    failed: dict[int, _ProblemFailure] = {}

    def on_result(key: str, outcome) -> None:
        if isinstance(outcome, _ProblemFailure):
            failed[int(key)] = outcome
        else:
            save(int(key), outcome)

    def on_error(key: str, message: str) -> None:
        # The worker died or could not be built (e.g. the model failed to load).
        reason = message.strip().splitlines()[-1] if message.strip() else "the worker failed"
        failed[int(key)] = _ProblemFailure(reason, message)

    map_problems(
        [(str(index), problem) for index, problem in pending.items()],
        functools.partial(_problem_runner, worker_spec),
        on_result,
        on_error,
        executor="ray",
        workers=placement.workers,
        ray_address=placement.ray_address,
        ray_init={"log_to_driver": False},
    )
    return failed


def _problem_runner(spec: RunSpec) -> Callable[[dict], ppl.Posterior | _ProblemFailure]:
    """Built once per Ray worker: its own program and model, then one problem per call."""
    engine, size = resolve_method(spec.method, spec.parameters)
    program = load_program(spec.program)
    lm = load_model(spec.model)

    def run_one(problem: dict) -> ppl.Posterior | _ProblemFailure:
        try:
            return _infer(
                spec, engine, size, program, lm, problem["args"], problem["kwargs"], problem["seed"]
            )
        except Exception as error:
            return _ProblemFailure(_reason(error, hint=False), traceback.format_exc())

    return run_one


def _read_dataset(path: Path) -> list[tuple[list[Any], dict[str, Any], Any]]:
    """Problems of a JSONL file as ``(args, kwargs, expected answer)``.

    A line is an object with ``question`` or ``input`` (the program's argument
    after the LM) or with ``args``/``kwargs``; ``answer`` or ``target`` is the
    expected answer.
    """
    if not path.is_file():
        raise RecipeError(f"dataset file {str(path)!r} does not exist")
    problems = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise RecipeError(f"{where} is not valid JSON: {error}") from None
        if not isinstance(record, dict):
            raise RecipeError(f"{where}: each line must be a JSON object")
        expected = record.get("answer", record.get("target"))
        if "args" in record or "kwargs" in record:
            args, kwargs = record.get("args", []), record.get("kwargs", {})
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise RecipeError(f"{where}: args must be a list and kwargs an object")
            problems.append((args, kwargs, expected))
        elif "question" in record or "input" in record:
            problems.append(([record.get("question", record.get("input"))], {}, expected))
        else:
            raise RecipeError(f"{where}: needs a 'question' or 'input' field (or args/kwargs)")
    if not problems:
        raise RecipeError(f"dataset file {str(path)!r} holds no problems")
    return problems


def _metadata(spec: RunSpec) -> dict[str, Any]:
    return {
        **spec.metadata(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join(sys.argv),
    }


def _fingerprint(spec: RunSpec) -> str:
    """Identifies a problem's run configuration, so a resumed run never mixes configurations."""
    data = {k: v for k, v in spec.metadata().items() if k not in ("recipe", "dataset")}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


class _ProgressLM(ForwardingLM):
    """Forwards to an LM and advances a progress bar once per batched sampling call.

    Population engines make one ``sample_steps`` call per round, so the bar
    counts rounds and shows how many particles were still stepping.
    """

    def __init__(self, lm, bar):
        super().__init__(lm)
        self._bar = bar

    def sample_steps(self, requests, *, seed=None):
        results = super().sample_steps(requests, seed=seed)
        self._bar.set_postfix(particles=len(requests), refresh=False)
        self._bar.update(1)
        return results


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Where to write the report. [default: DIRECTORY/report.html]",
)
@output_options
def report(directory: str, out: str | None, output: Output) -> None:
    """Render DIRECTORY/report.html from a saved run (or dataset run) of `ppl run`.

    The page is self-contained (figures embedded): a summary table, warnings,
    answers with intervals, per-run diagnostics, and plots of the answers,
    ESS per step, weights, ranks across runs and the particle genealogy.
    """
    result = rundir.read_result(directory)
    if result.get("kind") == "dataset":
        path = rundir.write_dataset_report(directory, result, out)
        warnings = [
            f"problem {r['index']}: {r['warnings']} warning(s)"
            for r in result["problems"]
            if r["warnings"]
        ]
    else:
        path = rundir.write_run_report(directory, out)
        warnings = result["diagnostics"]["warnings"]
        for warning in warnings:
            output.info(f"warning: {warning}")
    output.info(f"wrote {path}")
    output.result({"report": str(path), "warnings": warnings})


main.add_command(bench)
main.add_command(calibrate_cli.calibrate_command(output_options))

if __name__ == "__main__":
    main()
