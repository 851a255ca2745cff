"""``ppl run --dataset``: every problem of a JSONL file, each saved as it finishes.

Each problem gets its own run directory (``problems/NNNNN/``, see
``ppl.cli.report.rundir``) and its own seed drawn from the run's seed and its
index. A rerun into the same directory skips the problems already finished
with the same configuration and retries the others; problems run in this
process or on Ray workers (``--executor ray``).
"""

from __future__ import annotations

import functools
import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ppl.cli import calibrate
from ppl.cli.executors import map_problems
from ppl.cli.loading import load_model, load_program, portable_model
from ppl.cli.output import Output, reason
from ppl.cli.recipes import RunSpec, infer, resolve_method, run_metadata
from ppl.cli.report import rundir
from ppl.errors import PPLError, RecipeError
from ppl.posterior import Posterior

Infer = Callable[[list, dict, int, Any], Posterior]
InferMany = Callable[[list[tuple[list, dict, int]], Callable[[int, Posterior], None]], None]


@dataclass(frozen=True)
class Placement:
    """Where a dataset's problems run: here, or on Ray workers."""

    executor: str
    workers: int
    ray_address: str | None


def run_dataset(
    spec: RunSpec,
    problems,
    out_dir: Path,
    infer_one: Infer,
    placement: Placement,
    output: Output,
    calibration=None,
    infer_many: InferMany | None = None,
) -> dict:
    """Run every problem not already finished in ``out_dir``; save each as it finishes.

    ``infer_one(args, kwargs, seed, progress_bar)`` runs one problem;
    ``infer_many`` (``ppl.cli.recipes.packed_infer``), if given, runs the
    local problems together in one running batch. Returns the JSON summary
    that ``ppl run --json`` prints.
    """
    pending = _pending(spec, problems, out_dir, calibration)
    skipped = len(problems) - len(pending)
    done = 0
    with output.progress(
        total=len(problems), initial=skipped, desc="problems", unit="problem"
    ) as bar:

        def save(index: int, posterior: Posterior) -> None:
            nonlocal done
            problem = pending[index]
            decision = calibration.predict(posterior, seed=problem["seed"]) if calibration else None
            directory = rundir.problem_dir(out_dir, index)
            rundir.save_run(
                posterior, directory, metadata=problem["metadata"], report=False, decision=decision
            )
            done += 1
            bar.update(1)

        failed: dict[int, _ProblemFailure] = {}
        if placement.executor == "local" and infer_many is not None:
            indices = list(pending)
            runs = [(pending[i]["args"], pending[i]["kwargs"], pending[i]["seed"]) for i in indices]
            infer_many(runs, lambda k, posterior: save(indices[k], posterior))
        elif placement.executor == "local":
            for index, problem in pending.items():
                save(index, infer_one(problem["args"], problem["kwargs"], problem["seed"], None))
        else:
            failed = _run_on_ray(spec, pending, placement, save)
    summary = rundir.save_dataset_summary(out_dir, metadata=run_metadata(spec), total=len(problems))
    accuracy = _report(summary, len(problems), done, skipped, out_dir, output)
    if failed:
        raise _failure(failed, len(problems))
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


def _pending(spec: RunSpec, problems, out_dir: Path, calibration) -> dict[int, dict[str, Any]]:
    """The problems still to run, by index, as a worker runs them (with their metadata).

    A finished problem must have the same configuration; a calibration given
    now is applied to it.
    """
    store = rundir.problem_store(out_dir)
    pending: dict[int, dict[str, Any]] = {}
    for index, (args, kwargs, expected) in enumerate(problems):
        problem_spec = spec.merged(args=args, kwargs=kwargs, dataset=None)
        fingerprint = problem_spec.fingerprint()
        previous = store.load(rundir.problem_key(index))
        if previous is not None:
            if previous.get("metadata", {}).get("fingerprint") != fingerprint:
                raise RecipeError(
                    f"{rundir.problem_dir(out_dir, index)} holds the result of a different run "
                    "(other program, options or dataset); use another --out"
                )
            if calibration is not None:
                calibrate.apply_to_saved_run(rundir.problem_dir(out_dir, index), calibration)
            continue
        seed = int(np.random.SeedSequence([spec.seed, index]).generate_state(1)[0])
        metadata = {
            **run_metadata(problem_spec),
            "dataset": spec.dataset,
            "index": index,
            "problem_seed": seed,
            "input_text": " ".join(map(str, args)) or json.dumps(kwargs),
            "expected": expected,
            "fingerprint": fingerprint,
        }
        pending[index] = {"args": args, "kwargs": kwargs, "seed": seed, "metadata": metadata}
    return pending


def _report(summary, total: int, done: int, skipped: int, out_dir: Path, output: Output):
    """Print how many problems finished and their accuracy; return the accuracy (or None)."""
    judged = [r for r in summary["problems"] if r["correct"] is not None]
    accuracy = sum(r["correct"] for r in judged) / len(judged) if judged else None
    output.info(
        f"{summary['finished']} of {total} problems finished ({done} run now, "
        f"{skipped} already done)"
        + (f"; exact-match accuracy {accuracy:.3f}" if accuracy is not None else "")
    )
    if summary["calibration"]:
        output.info(calibrate.summary_line(summary["calibration"]))
    output.info(f"wrote {out_dir / rundir.REPORT_FILE} and {out_dir / rundir.RESULT_FILE}")
    return accuracy


def _failure(failed: dict[int, _ProblemFailure], total: int) -> PPLError:
    first, failure = min(failed.items())
    error = PPLError(
        f"{len(failed)} of {total} problems failed (the others are saved; a rerun "
        f"retries only the failed ones); problem {first}: {failure.reason}"
    )
    for index, failure in sorted(failed.items()):
        error.add_note(f"problem {index} on its worker:\n{failure.traceback}")
    return error


@dataclass(frozen=True)
class _ProblemFailure:
    """Why a problem failed on a worker: a one-line reason and the worker's traceback."""

    reason: str
    traceback: str


def _run_on_ray(
    spec: RunSpec, pending, placement: Placement, save: Callable[[int, Posterior], None]
) -> dict[int, _ProblemFailure]:
    """Run the pending problems on Ray workers; save each posterior here as it arrives.

    Returns the failed problems by index.
    """
    # Workers may start elsewhere: give them absolute paths to the program and model.
    program_file, _, function = spec.program.rpartition(":")
    worker_spec = spec.merged(
        program=f"{Path(program_file).resolve()}:{function}", model=portable_model(spec.model)
    )
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
        [
            (str(index), {k: problem[k] for k in ("args", "kwargs", "seed")})
            for index, problem in pending.items()
        ],
        functools.partial(_problem_runner, worker_spec),
        on_result,
        on_error,
        executor="ray",
        workers=placement.workers,
        ray_address=placement.ray_address,
        ray_init={"log_to_driver": False},
    )
    return failed


def _problem_runner(spec: RunSpec) -> Callable[[dict], Posterior | _ProblemFailure]:
    """Built once per Ray worker: its own program and model, then one problem per call."""
    engine = resolve_method(spec.method, spec.parameters)
    program = load_program(spec.program)
    lm = load_model(spec.model)

    def run_one(problem: dict) -> Posterior | _ProblemFailure:
        try:
            return infer(
                spec, engine, program, lm, problem["args"], problem["kwargs"], problem["seed"]
            )
        except Exception as error:
            return _ProblemFailure(reason(error, hint=False), traceback.format_exc())

    return run_one


def read_dataset(path: Path) -> list[tuple[list[Any], dict[str, Any], Any]]:
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
