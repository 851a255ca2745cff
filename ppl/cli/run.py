"""``ppl run``: run a program or a recipe and write its run directory.

Examples::

    ppl run examples/recipes/lipogram.toml --out runs/lipogram
    ppl run examples/lipogram.py:lipogram --input "The cat" --method smc --particles 32
    ppl run prog.py:solve --dataset problems.jsonl --runs 4 --out runs/solve
    ppl run prog.py:solve --dataset problems.jsonl --executor ray --workers 8
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from inference.conformal import load_calibration
from inference.runtime import round_hooks
from ppl.cli.datasets import Placement, read_dataset, run_dataset
from ppl.cli.loading import MODELS, check_model, load_model, load_program
from ppl.cli.output import Output, output_options
from ppl.cli.recipes import (
    RunSpec,
    available_methods,
    infer,
    load_recipe,
    packed_infer,
    parse_input_json,
    parse_parameter,
    resolve_method,
    run_metadata,
)
from ppl.cli.report import rundir
from ppl.errors import RecipeError
from ppl.posterior import Posterior


@click.command()
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
@click.option(
    "--rows",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="With --dataset here: rows of the running batch that importance and SMC runs of "
    "several problems share; 1 runs one problem at a time. Results do not depend on it.",
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
    rows: int,
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
    spec = load_recipe(target) if target.endswith(".toml") else RunSpec(program=target)
    spec = spec.merged(method=method, particles=particles, runs=runs, model=model, seed=seed)
    spec = _with_inputs(spec, input_text, input_json, dataset, params)
    out_dir = Path(out or spec.out or f"runs/{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    engine = resolve_method(spec.method, spec.parameters)
    check_model(spec.model)
    _check_no_clash(spec, engine)
    problems = read_dataset(Path(spec.dataset)) if spec.dataset else None
    if executor == "ray" and problems is None:
        raise click.UsageError("--executor ray spreads the problems of a --dataset over workers")
    calibration = load_calibration(calibration_path) if calibration_path else None
    rundir.ensure_writable(out_dir)
    program = load_program(spec.program)
    lm = None if executor == "ray" else load_model(spec.model)

    def infer_one(args: list[Any], kwargs: dict[str, Any], seed: int, bar) -> Posterior:
        if lm is None or bar is None:
            return infer(spec, engine, program, lm, args, kwargs, seed)
        # The particle runtime reports its rounds; the LM stays unwrapped so
        # that steps join its running batch as soon as they are ready.
        with round_hooks(lambda event: _count_round(bar, event)):
            return infer(spec, engine, program, lm, args, kwargs, seed)

    if problems is None:
        rounds = output.progress(desc=f"{spec.method} rounds", unit="round", enabled=lm is not None)
        with rounds as bar:
            posterior = infer_one(spec.args, spec.kwargs, spec.seed, bar)
        _save_one(posterior, spec, out_dir, calibration, output)
        return
    placement = Placement(executor, workers or 2, ray_address)
    # Without a model there is no running batch to share.
    infer_many = (
        packed_infer(spec, engine, program, lm, rows) if lm is not None and rows > 1 else None
    )
    summary = run_dataset(
        spec, problems, out_dir, infer_one, placement, output, calibration, infer_many
    )
    output.result({"out": str(out_dir), **summary})


def _with_inputs(
    spec: RunSpec,
    input_text: str | None,
    input_json: str | None,
    dataset: str | None,
    params: Sequence[str],
) -> RunSpec:
    """The recipe with the command line's inputs (one of text, JSON or dataset) and parameters."""
    if input_text is not None:
        spec = spec.merged(args=[input_text], kwargs={}, dataset=None)
    elif input_json is not None:
        args, kwargs = parse_input_json(input_json)
        spec = spec.merged(args=args, kwargs=kwargs, dataset=None)
    elif dataset is not None:
        spec = spec.merged(args=[], kwargs={}, dataset=dataset)
    if params:
        spec = spec.merged(parameters={**spec.parameters, **dict(map(parse_parameter, params))})
    return spec


def _check_no_clash(spec: RunSpec, engine) -> None:
    clashes = sorted(
        set(spec.kwargs) & {engine.size_parameter, "seed", "num_runs", *spec.parameters}
    )
    if clashes:
        raise RecipeError(
            f"program keyword argument(s) {', '.join(clashes)} clash with method parameters"
        )


def _save_one(posterior: Posterior, spec: RunSpec, out_dir: Path, calibration, output) -> None:
    """Write one run's directory and print its diagnostics (and calibrated decision)."""
    decision = calibration.predict(posterior, seed=spec.seed) if calibration else None
    diagnostics = rundir.save_run(
        posterior,
        out_dir,
        metadata=run_metadata(spec),
        title=spec.program.rpartition(":")[2],
        decision=decision,
    )
    output.info(diagnostics.text())
    if decision is not None:
        output.info("\n" + decision.text())
    output.info(
        f"\nwrote {out_dir / rundir.REPORT_FILE} (and result.json, posterior.nc, genealogy.graphml)"
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


def _count_round(bar, event) -> None:
    bar.set_postfix(alive=int((event.log_weights > -np.inf).sum()), refresh=False)
    bar.update(1)
