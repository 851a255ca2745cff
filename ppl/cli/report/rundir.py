"""Saved runs: the directory ``ppl run`` writes and ``ppl report`` reads.

One run::

    result.json        metadata, diagnostics, MAP answer and the posterior itself
    posterior.nc       ArviZ InferenceData (``az.from_netcdf``)
    genealogy.graphml  the particle genealogy
    report.html        the self-contained report

A dataset run keeps one such directory per problem under ``problems/``
(without ``report.html``, which ``ppl report`` renders on demand) and a
``result.json`` of kind ``"dataset"`` with one row per finished problem.
Every file is written to a temporary name and renamed, and ``result.json``
is written last, so a directory with a ``result.json`` is complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.conformal import CalibrationData, calibration_example
from ppl.answers import answers_match
from ppl.cli.report import html
from ppl.cli.report.genealogy import write_graphml
from ppl.cli.store import RunStore
from ppl.diagnostics import Diagnostics, diagnose
from ppl.errors import CalibrationError, InvalidArgumentError, ReportError, SerializationError
from ppl.files import write_atomic
from ppl.inference_data import to_inference_data
from ppl.posterior import Posterior
from ppl.serialization import decode, encode

FORMAT_VERSION = 1
RESULT_FILE = "result.json"
POSTERIOR_FILE = "posterior.nc"
GENEALOGY_FILE = "genealogy.graphml"
REPORT_FILE = "report.html"
PROBLEMS_DIR = "problems"


def ensure_writable(directory: str | Path) -> Path:
    """Create ``directory`` if needed and check that files can be written in it.

    Example:
        >>> ensure_writable("runs/lipogram")
        PosixPath('runs/lipogram')
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ReportError(
            f"cannot write to output directory {str(directory)!r}: {reason}"
        ) from None
    return directory


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (``-inf`` as ``-Infinity``, as ``Posterior.save`` does).

    Example:
        >>> write_json(Path("result.json"), {"format": 1, "log_evidence": -math.inf})
        >>> print(Path("result.json").read_text())
        {
         "format": 1,
         "log_evidence": -Infinity
        }
    """
    write_atomic(path, json.dumps(data, indent=1))


@dataclass(frozen=True)
class SavedRun:
    """What a run directory holds: the posterior (None if it could not be saved) and metadata."""

    directory: Path
    posterior: Posterior | None
    metadata: dict[str, Any]
    result: dict[str, Any]


def save_run(
    posterior: Posterior,
    directory: str | Path,
    *,
    metadata: Mapping[str, Any],
    title: str | None = None,
    report: bool = True,
    decision=None,
) -> Diagnostics:
    """Write a run directory for ``posterior`` and return its diagnostics.

    ``metadata`` (program, method, model, seed, input...) must be
    JSON-friendly. If the posterior holds values JSON cannot store, the
    other files are still written and ``result.json`` says why the posterior
    is missing. ``decision`` (an ``inference.conformal.Decision``) is a
    calibrated decision about this run: it is saved under ``calibration``
    in ``result.json`` and shown in the report.

    Example:
        >>> diagnostics = save_run(post, "runs/two_letters", metadata={"program": "two_letters"})
        >>> diagnostics.answers[0].answer, sorted(os.listdir("runs/two_letters"))
        ('ca', ['genealogy.graphml', 'posterior.nc', 'report.html', 'result.json'])
    """
    directory = ensure_writable(directory)
    diagnostics = diagnose(posterior)
    idata = None
    files = [RESULT_FILE, GENEALOGY_FILE]
    try:
        idata = to_inference_data(posterior)
    except InvalidArgumentError as error:
        diagnostics.notes.append(f"no {POSTERIOR_FILE}: {error}")
    if idata is not None:
        write_atomic(directory / POSTERIOR_FILE, lambda p: idata.to_netcdf(str(p)))
        files.insert(1, POSTERIOR_FILE)
    write_atomic(directory / GENEALOGY_FILE, lambda p: write_graphml(posterior.genealogy, p))
    result: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "kind": "run",
        "metadata": dict(metadata),
        "map_answer": None,
        "map_answer_label": None,
        "diagnostics": diagnostics.to_dict(),
        "posterior": None,
        "posterior_error": None,
        "calibration": decision.to_dict() if decision is not None else None,
    }
    if diagnostics.answers:
        best = diagnostics.answers[0]
        result["map_answer_label"] = best.label
        try:
            result["map_answer"] = encode(best.answer, "the MAP answer")
        except SerializationError as error:
            result["posterior_error"] = str(error)
    try:
        result["posterior"] = posterior.to_dict()
    except SerializationError as error:
        result["posterior_error"] = str(error)
        diagnostics.notes.append(f"the posterior could not be saved: {error}")
        result["diagnostics"] = diagnostics.to_dict()
    if report:
        page = html.run_report(
            posterior,
            diagnostics,
            title=title or str(metadata.get("program", "pplscale run")),
            metadata=metadata,
            files=files,
            idata=idata,
            calibration=result["calibration"],
        )
        write_atomic(directory / REPORT_FILE, page)
    write_json(directory / RESULT_FILE, result)
    return diagnostics


def read_result(directory: str | Path) -> dict[str, Any]:
    """The ``result.json`` of a saved run or dataset run; ``ReportError`` if there is none.

    Example:
        >>> result = read_result("runs/demo")
        >>> result["kind"], result["map_answer"], result["diagnostics"]["warnings"]
        ('run', 'ca', [])
    """
    path = Path(directory) / RESULT_FILE
    if not Path(directory).is_dir():
        raise ReportError(f"{str(directory)!r} is not a directory")
    if not path.is_file():
        raise ReportError(
            f"{str(directory)!r} holds no {RESULT_FILE}: it is not a finished `ppl run` directory"
        )
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ReportError(f"cannot read {path}: {error}") from None
    if not isinstance(result, dict) or result.get("format") != FORMAT_VERSION:
        raise ReportError(f"{path} is not a result file of this pplscale version")
    return result


def load_run(directory: str | Path) -> SavedRun:
    """Read a run directory written by ``save_run``.

    Example:
        >>> saved = load_run("runs/demo")
        >>> saved.posterior.map_answer(), saved.metadata
        ('ca', {'program': 'two_letters'})
    """
    result = read_result(directory)
    if result.get("kind") != "run":
        raise ReportError(f"{str(directory)!r} holds a {result.get('kind')!r} result, not a run")
    posterior = None
    if result.get("posterior") is not None:
        try:
            posterior = Posterior.from_dict(result["posterior"])
        except (KeyError, TypeError, ValueError, SerializationError) as error:
            raise ReportError(
                f"the posterior in {directory}/{RESULT_FILE} is corrupt: {error}"
            ) from None
    return SavedRun(Path(directory), posterior, result.get("metadata", {}), result)


def write_run_report(directory: str | Path, output: str | Path | None = None) -> Path:
    """Render ``report.html`` of a saved run (or ``output``) from its ``result.json``.

    Example:
        >>> write_run_report("runs/demo")
        PosixPath('runs/demo/report.html')
    """
    saved = load_run(directory)
    if saved.posterior is None:
        raise ReportError(
            f"{directory} has no saved posterior to report on: "
            f"{saved.result.get('posterior_error')}"
        )
    output = Path(output) if output is not None else saved.directory / REPORT_FILE
    ensure_writable(output.parent)
    diagnostics = diagnose(saved.posterior)
    try:
        idata = to_inference_data(saved.posterior)
    except InvalidArgumentError:
        idata = None
    files = [
        f for f in (RESULT_FILE, POSTERIOR_FILE, GENEALOGY_FILE) if (saved.directory / f).exists()
    ]
    page = html.run_report(
        saved.posterior,
        diagnostics,
        title=str(saved.metadata.get("program", "pplscale run")),
        metadata=saved.metadata,
        files=[os.path.relpath(saved.directory / f, output.parent) for f in files],
        idata=idata,
        calibration=saved.result.get("calibration"),
    )
    write_atomic(output, page)
    return output


def problem_store(directory: str | Path) -> RunStore:
    """The resumable store of a dataset run: ``problems/NNNNN/result.json`` per problem.

    Example:
        >>> problem_store("runs/ds").path(problem_key(3)).as_posix()
        'runs/ds/problems/00003/result.json'
    """
    return RunStore(directory, layout=f"{PROBLEMS_DIR}/{{key}}/{RESULT_FILE}")


def problem_key(index: int) -> str:
    """The key of problem ``index`` in ``problem_store``: its zero-padded index."""
    return f"{index:05d}"


def problem_dir(directory: str | Path, index: int) -> Path:
    """The directory of problem ``index`` of a dataset run.

    Example:
        >>> problem_dir("runs/ds", 3).as_posix()
        'runs/ds/problems/00003'
    """
    return problem_store(directory).path(problem_key(index)).parent


def problem_row(index: int, result: Mapping[str, Any]) -> dict[str, Any]:
    """The summary row of one finished problem (see ``html.dataset_report``).

    Example:
        >>> row = problem_row(3, read_result(problem_dir("runs/cal", 3)))
        >>> row["input"], row["map_answer"], row["expected"], row["correct"]
        ('3 2', '3', '5', False)
    """
    diagnostics = result["diagnostics"]
    metadata = result["metadata"]
    best = diagnostics["answers"][0] if diagnostics["answers"] else None
    expected = metadata.get("expected")
    correct = None
    if expected is not None:
        correct = best is not None and str(result["map_answer"]).strip() == str(expected).strip()
    return {
        "index": index,
        "input": metadata.get("input_text", ""),
        "answer": best["answer"] if best else None,
        "map_answer": result["map_answer"],
        "probability": best["probability"] if best else None,
        "lower": best["lower"] if best else None,
        "upper": best["upper"] if best else None,
        "expected": expected,
        "correct": correct,
        "ess": diagnostics["ess"],
        "pareto_k": diagnostics["pareto_k"],
        "max_rhat": diagnostics["max_rhat"],
        "warnings": len(diagnostics["warnings"]),
        "link": f"{PROBLEMS_DIR}/{problem_key(index)}/{RESULT_FILE}",
        "calibration": _calibrated_row(result.get("calibration"), expected),
    }


def _calibrated_row(decision: Mapping[str, Any] | None, expected: Any) -> dict[str, Any] | None:
    """A problem's calibrated decision, and whether it holds the expected answer."""
    if decision is None:
        return None
    answers = decision["answers"]
    found = None
    if expected is not None and answers is not None:
        found = any(answers_match(decode(a), expected) for a in answers)
    return {
        "method": decision["method"],
        "headline": decision["headline"],
        "labels": decision["labels"],
        "abstained": decision["abstained"],
        "drawn": decision["details"].get("samples drawn"),
        "contains_expected": found,
        "guarantee": decision["guarantee"],
    }


def calibration_summary(rows: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """How the calibrated decisions of a dataset run did against the expected answers.

    Answer sets: coverage (the set holds an expected answer), mean set size
    and empty-set rate; abstention: answer rate and error rate among
    answered; budget: miss rate and mean samples drawn. None when no
    problem had a calibration applied.

    Example:
        >>> summary = calibration_summary(read_result("runs/heldout")["problems"])
        >>> summary["method"], summary["problems"], round(summary["coverage"], 3)
        ('answer-sets', 12, 0.833)
        >>> calibration_summary(read_result("runs/cal")["problems"]) is None  # none applied
        True
    """
    decided = [r["calibration"] for r in rows if r.get("calibration")]
    if not decided:
        return None
    judged = [d for d in decided if d["contains_expected"] is not None]
    method = decided[0]["method"]
    summary: dict[str, Any] = {
        "method": method,
        "problems": len(decided),
        "judged": len(judged),
        "guarantee": decided[0]["guarantee"],
    }
    hits = [d["contains_expected"] for d in judged]
    if method == "answer-sets":
        sizes = [len(d["labels"]) for d in decided]
        summary["coverage"] = float(np.mean(hits)) if hits else None
        summary["mean_set_size"] = float(np.mean(sizes))
        summary["empty_rate"] = float(np.mean([s == 0 for s in sizes]))
    elif method == "abstention":
        answered = [d for d in judged if not d["abstained"]]
        summary["answer_rate"] = float(np.mean([not d["abstained"] for d in decided]))
        summary["answered"] = len(answered)
        summary["risk"] = (
            float(np.mean([not d["contains_expected"] for d in answered])) if answered else None
        )
    else:
        summary["miss_rate"] = float(np.mean([not h for h in hits])) if hits else None
        summary["mean_samples"] = float(np.mean([d["drawn"] for d in decided]))
    return summary


def save_dataset_summary(
    directory: str | Path, *, metadata: Mapping[str, Any], total: int, report: bool = True
) -> dict[str, Any]:
    """Collect the finished problems' rows into ``result.json`` (and ``report.html``).

    Example:
        >>> summary = save_dataset_summary("runs/cal", metadata={"program": "add"}, total=13)
        >>> summary["finished"], summary["total"], read_result("runs/cal")["finished"]
        (12, 13, 12)
    """
    directory = Path(directory)
    store = problem_store(directory)
    rows = []
    for index in range(total):
        result = store.load(problem_key(index))
        if result is not None:
            rows.append(problem_row(index, result))
    summary = {
        "format": FORMAT_VERSION,
        "kind": "dataset",
        "metadata": dict(metadata),
        "total": total,
        "finished": len(rows),
        "problems": rows,
        "calibration": calibration_summary(rows),
    }
    if report:
        write_dataset_report(directory, summary)
    write_json(directory / RESULT_FILE, summary)
    return summary


def write_dataset_report(
    directory: str | Path, summary: Mapping[str, Any], output: str | Path | None = None
) -> Path:
    """Render the dataset report from a dataset summary.

    Example:
        >>> write_dataset_report("runs/cal", read_result("runs/cal"))
        PosixPath('runs/cal/report.html')
    """
    directory = Path(directory)
    output = Path(output) if output is not None else directory / REPORT_FILE
    rows = []
    for row in summary["problems"]:
        link = problem_dir(directory, row["index"])
        target = link / REPORT_FILE if (link / REPORT_FILE).exists() else link / RESULT_FILE
        rows.append({**row, "link": os.path.relpath(target, output.parent)})
    page = html.dataset_report(
        rows,
        title=str(summary["metadata"].get("program", "pplscale dataset run")),
        metadata=summary["metadata"],
        total=summary["total"],
        calibration=summary.get("calibration"),
    )
    write_atomic(output, page)
    return output


def load_runs(
    directory: str | Path, *, judge: Callable[[Any, Any], bool] = answers_match
) -> CalibrationData:
    """Calibration data (``inference.conformal``) from a ``ppl run --dataset`` directory.

    Every finished problem counts, in index order; each needs the dataset's
    expected answer (an ``answer`` or ``target`` field) and a saved posterior.

    Example:
        >>> data = load_runs("runs/cal")
        >>> len(data), data.accuracy, data.sampled_rate
        (12, 0.75, 1.0)
    """
    directory = Path(directory)
    problems = directory / PROBLEMS_DIR
    if not problems.is_dir():
        raise CalibrationError(
            f"{str(directory)!r} has no {PROBLEMS_DIR}/ directory: give the --out "
            "directory of a `ppl run --dataset` run"
        )
    examples = []
    for path in sorted(p for p in problems.iterdir() if p.is_dir()):
        if not (path / RESULT_FILE).is_file():
            continue
        try:
            saved = load_run(path)
        except ReportError as error:
            raise CalibrationError(str(error)) from None
        if saved.posterior is None:
            raise CalibrationError(
                f"{path} has no saved posterior ({saved.result.get('posterior_error')})"
            )
        expected = saved.metadata.get("expected")
        if expected is None:
            raise CalibrationError(
                f"{path} has no expected answer: calibration needs an 'answer' field on every "
                "line of the dataset"
            )
        examples.append(calibration_example(saved.posterior, expected, judge, str(path)))
    if not examples:
        raise CalibrationError(
            f"{directory}/{PROBLEMS_DIR} hold no finished problems to calibrate on"
        )
    return CalibrationData(tuple(examples))
