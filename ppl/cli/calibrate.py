"""``ppl calibrate``: turn a dataset run into a calibration file that ``ppl run`` applies.

Examples::

    ppl run prog.py:solve --dataset cal.jsonl --method importance --out runs/cal
    ppl calibrate --runs runs/cal --method answer-sets --alpha 0.1 --out calib.json
    ppl calibrate --runs runs/cal --method abstention --alpha 0.2 --delta 0.1 --out abstain.json
    ppl calibrate --runs runs/cal --method budget --alpha 0.2 --rule agreement --out budget.json
    ppl calibrate --runs runs/cal --method stopping --alpha 0.05 --out stop.json
    ppl run prog.py:solve --dataset heldout.jsonl --calibration calib.json --out runs/heldout
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from inference.conformal import (
    PROCEDURES,
    Abstention,
    AnswerSets,
    Calibration,
    SampleBudget,
    StoppingRule,
    save_calibration,
)
from ppl.cli.output import output_options
from ppl.cli.report import rundir
from ppl.cli.report.rundir import load_runs

METHODS = ("answer-sets", "abstention", "budget", "stopping")


@click.command("calibrate")
@click.option(
    "--runs",
    "runs_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Output directory of a `ppl run --dataset` run whose dataset has answers.",
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="answer-sets",
    show_default=True,
    help="answer-sets: conformal sets; abstention: answer above a Learn-then-Test "
    "threshold; budget: how many samples to draw; stopping: self-consistency that stops "
    "once the leading answer is sure enough.",
)
@click.option(
    "--alpha",
    type=float,
    default=0.1,
    show_default=True,
    help="answer-sets: miscoverage; abstention: target error rate among answered; "
    "budget: target miss rate; stopping: allowed accuracy loss against the full budget.",
)
@click.option(
    "--delta",
    type=float,
    default=0.1,
    show_default=True,
    help="abstention, budget, stopping: allowed chance that the calibration draw fails the target.",
)
@click.option(
    "--procedure",
    type=click.Choice(PROCEDURES),
    help="abstention, budget, stopping: the Learn-then-Test procedure. [default: "
    "split-start for abstention, fixed-sequence for budget and stopping]",
)
@click.option(
    "--unit",
    type=click.Choice(["particle", "run"]),
    default="particle",
    show_default=True,
    help="budget, stopping: a draw is a particle (importance sampling) or an independent "
    "run's MAP answer (ppl run --runs K, any engine, e.g. smc).",
)
@click.option(
    "--score",
    type=click.Choice(["lac", "aps"]),
    default="lac",
    show_default=True,
    help="answer-sets: non-conformity score.",
)
@click.option(
    "--confidence",
    default="map-probability",
    show_default=True,
    help="abstention: 'map-probability' or the name of a numeric ppl.memo site (a verifier score).",
)
@click.option(
    "--rule",
    type=click.Choice(["fixed", "agreement"]),
    default="fixed",
    show_default=True,
    help="budget: a fixed number of samples, or stop once that many agree.",
)
@click.option(
    "--max-samples",
    type=click.IntRange(min=1),
    help="budget, stopping: draws available per problem. [default: the fewest of a run]",
)
@click.option(
    "--randomized/--no-randomized",
    default=True,
    show_default=True,
    help="Randomize where counts are whole numbers (answer-sets: ties among the calibration "
    "scores; abstention, budget, stopping: the binomial p-values), to hit the level "
    "exactly and gain power; --no-randomized for a result fixed by the data alone.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the randomization and of the split (abstention, budget, stopping).",
)
@click.option(
    "--evaluate",
    "evaluate_dir",
    type=click.Path(exists=True, file_okay=False),
    help="Another dataset run (held-out problems) to report the calibration's coverage on.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write the calibration (JSON).",
)
@output_options
def calibrate(
    runs_dir: str,
    method: str,
    alpha: float,
    delta: float,
    score: str,
    confidence: str,
    procedure: str | None,
    unit: str,
    rule: str,
    max_samples: int | None,
    randomized: bool,
    seed: int,
    evaluate_dir: str | None,
    out: str,
    output,
) -> None:
    """Calibrate a decision rule on the problems of a dataset run (--runs) and save it.

    Every finished problem of the run counts; its dataset line must have
    an answer. Answers match after normalization (numbers compare as
    numbers). The file records what the rule guarantees; apply it with
    `ppl run ... --calibration FILE`.
    """
    data = load_runs(runs_dir)
    calibration: Calibration
    randomness = {"randomized": randomized, "seed": seed}
    testing = {**randomness, **({"procedure": procedure} if procedure else {})}
    if method == "answer-sets":
        calibration = AnswerSets(alpha, score=score, **randomness)
    elif method == "abstention":
        calibration = Abstention(alpha, delta, confidence=confidence, **testing)
    elif method == "budget":
        calibration = SampleBudget(
            alpha, delta, rule=rule, max_samples=max_samples, unit=unit, **testing
        )
    else:
        calibration = StoppingRule(alpha, delta, max_samples=max_samples, unit=unit, **testing)
    calibration.calibrate(data)
    result = _save(calibration, method, data, runs_dir, out, output)
    if evaluate_dir is not None:
        result["evaluation"] = _evaluate(calibration, evaluate_dir, output)
    output.info(f"wrote {out}")
    output.result(result)


def _save(calibration: Calibration, method: str, data, runs_dir: str, out: str, output):
    """Write the calibration file, print what it guarantees; return the JSON result."""
    save_calibration(
        calibration,
        out,
        source=str(runs_dir),
        problems=len(data),
        accuracy=data.accuracy,
        sampled_rate=data.sampled_rate,
        created=time.strftime("%Y-%m-%d %H:%M:%S %z"),
        command=" ".join(sys.argv),
    )
    result: dict[str, Any] = {
        "out": out,
        "method": method,
        "problems": len(data),
        "accuracy": data.accuracy,
        "sampled_rate": data.sampled_rate,
        "calibration": _facts(calibration),
        "guarantee": calibration.guarantee(),
    }
    output.info(
        f"calibrated {method} on {len(data)} problems of {runs_dir} (MAP accuracy "
        f"{data.accuracy:.3f}; a right answer sampled in {data.sampled_rate:.3f})"
    )
    for key, value in result["calibration"].items():
        output.info(f"  {key}: {_text(value)}")
    output.info(f"  guarantee: {result['guarantee']}")
    return result


def _evaluate(calibration: Calibration, evaluate_dir: str, output) -> dict[str, Any]:
    """Coverage (or risk, or misses) of the calibration on held-out problems."""
    heldout = load_runs(evaluate_dir)
    evaluation = calibration.evaluate(heldout).to_dict()
    output.info(f"on {len(heldout)} held-out problems of {evaluate_dir}:")
    for key, value in evaluation.items():
        output.info(f"  {key}: {_text(value)}")
    return {"runs": evaluate_dir, **evaluation}


def apply_to_saved_run(directory: str | Path, calibration: Calibration) -> None:
    """Decide on a finished run directory's saved posterior; record it in its ``result.json``.

    This is how ``ppl run --dataset ... --calibration FILE`` covers problems a
    previous run already finished. The randomisation seed is the problem's seed.

    Example:
        >>> sets = AnswerSets(alpha=0.1).calibrate(cal)
        >>> apply_to_saved_run("runs/cal/problems/00003", sets)
        >>> rundir.read_result("runs/cal/problems/00003")["calibration"]["labels"]
        ["'3'", "'7'", "'4'"]
    """
    saved = rundir.load_run(directory)
    if saved.posterior is None:
        return
    seed = saved.metadata.get("problem_seed", saved.metadata.get("seed", 0))
    decision = calibration.predict(saved.posterior, seed=seed)
    rundir.write_json(
        Path(directory) / rundir.RESULT_FILE, {**saved.result, "calibration": decision.to_dict()}
    )


def summary_line(summary: dict[str, Any]) -> str:
    """One line on how a dataset run's calibrated decisions did (``rundir.calibration_summary``).

    Example:
        >>> summary_line({"method": "answer-sets", "problems": 40, "coverage": 0.9})
        'calibrated answer-sets on 40 problems: coverage 0.900'
    """
    shown = {
        "coverage": "coverage",
        "mean_set_size": "mean set size",
        "answer_rate": "answer rate",
        "risk": "error rate among answered",
        "miss_rate": "miss rate",
        "mean_samples": "mean samples drawn",
    }
    parts = [
        f"{name} {'n/a' if summary[key] is None else f'{summary[key]:.3f}'}"
        for key, name in shown.items()
        if key in summary
    ]
    return f"calibrated {summary['method']} on {summary['problems']} problems: " + ", ".join(parts)


def _facts(calibration: Calibration) -> dict[str, Any]:
    if isinstance(calibration, AnswerSets):
        return {
            "alpha": calibration.alpha,
            "score": calibration.score,
            "threshold": calibration.threshold,
            "attainable_coverage": calibration.attainable_coverage,
        }
    if isinstance(calibration, Abstention):
        return {
            "risk": calibration.risk,
            "delta": calibration.delta,
            "confidence": calibration.confidence,
            "procedure": calibration.procedure,
            "threshold": calibration.threshold,
            "answer_rate": calibration.answer_rate,
            "calibration_risk": calibration.calibration_risk,
        }
    if isinstance(calibration, StoppingRule):
        return {
            "epsilon": calibration.epsilon,
            "delta": calibration.delta,
            "unit": calibration.unit,
            "procedure": calibration.procedure,
            "threshold": calibration.threshold,
            "max_samples": calibration.max_samples,
            "calibration_loss_rate": calibration.loss_rate,
            "mean_samples": calibration.mean_samples,
            "samples_saved": calibration.samples_saved,
        }
    return {
        "epsilon": calibration.epsilon,
        "delta": calibration.delta,
        "rule": calibration.rule,
        "unit": calibration.unit,
        "procedure": calibration.procedure,
        "parameter": calibration.parameter,
        "feasible": calibration.feasible,
        "max_samples": calibration.max_samples,
        "calibration_miss_rate": calibration.calibration_miss_rate,
        "mean_samples": calibration.mean_samples,
        "samples_saved": calibration.samples_saved,
    }


def _text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
