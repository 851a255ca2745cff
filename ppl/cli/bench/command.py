"""The ``ppl bench`` command: run every method at every budget, then summarize."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
from tqdm import tqdm

from ppl.cli.bench.engines import (
    METHODS,
    VERIFIER_METHODS,
    load_verifier,
    packs,
    predictions,
    run_engine,
    run_packed,
    run_seed,
)
from ppl.cli.bench.summary import fit_scaling_laws, summarize, write_outputs
from ppl.cli.loading import MODELS, load_model, load_target
from ppl.cli.store import RunStore
from ppl.cli.tasks import Problem, Task, load_task
from ppl.errors import InvalidArgumentError, PPLError

RUNS_DIR = "runs"
RUNS_LAYOUT = RUNS_DIR + "/{key}.json"


@dataclass(frozen=True)
class BenchConfig:
    """What identifies a benchmark: runs recorded under one config are reused by a rerun."""

    task: str
    program: str
    model: str
    verifier: str | None
    num_problems: int | None
    task_seed: int
    seed: int
    beam_expansions: int
    task_fingerprint: str


def task_fingerprint(task: Task) -> str:
    digest = hashlib.sha256()
    for problem in task:
        digest.update(json.dumps([problem.id, problem.question, problem.answers]).encode())
    return digest.hexdigest()[:16]


def _int_list(ctx, param, value: str) -> list[int]:
    try:
        numbers = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("give comma-separated integers, e.g. 1,2,4,8") from None
    if not numbers or min(numbers) < 1:
        raise click.BadParameter("give positive integers, e.g. 1,2,4,8")
    return sorted(set(numbers))


def _method_list(ctx, param, value: str) -> list[str]:
    methods = [m.strip() for m in value.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise click.BadParameter(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    return list(dict.fromkeys(methods))


@click.command("bench")
@click.option(
    "--task",
    "task_spec",
    required=True,
    help="JSONL file, BIG-bench task.json, or arithmetic[:operations=N,digits=M].",
)
@click.option(
    "--program",
    "program_target",
    required=True,
    help="Reasoning program as path/to/file.py:fn, called as fn(lm, question).",
)
@click.option(
    "--methods",
    default="importance,majority,beam,smc",
    show_default=True,
    callback=_method_list,
    help=f"Comma-separated, from {', '.join(METHODS)}.",
)
@click.option(
    "--budgets",
    default="1,2,4,8,16,32",
    show_default=True,
    callback=_int_list,
    help="Particles per run (beam, dvts: children per round).",
)
@click.option(
    "--seeds",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Independent runs per problem and budget.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Output directory; rerunning into it continues an interrupted benchmark.",
)
@click.option(
    "--model",
    default="embedded",
    show_default=True,
    help=f"Language model: {MODELS} ('embedded' is 'default').",
)
@click.option(
    "--verifier",
    default=None,
    help="calculator, judge, prm:PATH or file.py:name; enables best_of_n, "
    "weighted_majority and verifier-scored beam and dvts.",
)
@click.option(
    "--num-problems",
    type=click.IntRange(min=1),
    default=None,
    help="Use the first N problems (arithmetic: generate N, default 20).",
)
@click.option("--task-seed", default=0, show_default=True, help="Seed of generated tasks.")
@click.option("--seed", default=0, show_default=True, help="Base seed of the engine runs.")
@click.option(
    "--beam-expansions",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Children per beam; beam width (dvts: subtrees) is budget // expansions.",
)
@click.option(
    "--fit",
    "fit_law",
    is_flag=True,
    help="Fit a Bayesian scaling law (NUTS) per method: writes scaling_law.json and "
    "scaling_law_METHOD.png with predictions at unseen budgets.",
)
@click.option(
    "--target-accuracy",
    default=0.9,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="With --fit: plan the budget that reaches this accuracy.",
)
@click.option(
    "--confidence",
    default=0.9,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="With --fit: posterior probability the planned budget must reach the target with.",
)
@click.option(
    "--rows",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rows of the running batch that importance and SMC runs of several problems "
    "share; 1 runs one problem at a time. Results do not depend on it.",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def bench(
    task_spec,
    program_target,
    methods,
    budgets,
    seeds,
    out_dir,
    model,
    verifier,
    num_problems,
    task_seed,
    seed,
    beam_expansions,
    fit_law,
    target_accuracy,
    confidence,
    rows,
    progress,
):
    """Accuracy against compute for inference methods on a task suite.

    Writes DIR/results.csv, DIR/results.json and DIR/accuracy.png (accuracy vs
    budget and vs tokens, 95% Wilson intervals over problems). Each finished
    run is saved under DIR/runs/; rerunning the command skips them. Importance
    and SMC runs of one budget and seed on many problems share one running
    batch of up to --rows rows, each saved as soon as it finishes.

    Example: ppl bench --task arithmetic --program examples/arithmetic_steps.py:arithmetic
    --budgets 1,2,4,8 --out bench/arithmetic
    """
    needs_verifier = [m for m in methods if m in VERIFIER_METHODS]
    if needs_verifier and verifier is None:
        raise click.UsageError(f"method(s) {needs_verifier} need --verifier")
    try:
        task = load_task(task_spec, num_problems=num_problems, seed=task_seed)
        ids = [p.id for p in task]
        if len(set(ids)) != len(ids):
            raise InvalidArgumentError(f"task {task.name!r} has duplicate problem ids")
        config = BenchConfig(
            task_spec,
            program_target,
            model,
            verifier,
            num_problems,
            task_seed,
            seed,
            beam_expansions,
            task_fingerprint(task),
        )
        out = Path(out_dir)
        store = RunStore(out, layout=RUNS_LAYOUT)
        store.check_config(asdict(config))
        program = load_target(program_target)
        if not callable(program):
            raise InvalidArgumentError(f"{program_target} is not callable")
        lm = load_model(model)
        scorer = load_verifier(verifier, lm)
    except PPLError as error:
        raise click.ClickException(str(error)) from None
    engines = list(dict.fromkeys(METHODS[m] for m in methods))
    context = _Context(task, config, program, lm, scorer, rows)
    records, computed = _run_all(store, engines, budgets, seeds, context, progress)
    rows = summarize(records, methods, budgets, seeds)
    title = f"{task.name}: {len(task)} problems, {seeds} seed{'s' if seeds > 1 else ''}"
    write_outputs(out, config, rows, title)
    _print_table(rows, computed, len(records) - computed, len(task), out)
    if fit_law:
        fits = fit_scaling_laws(rows, out, target_accuracy, confidence, seed)
        _print_fits(fits, target_accuracy, confidence, out)


@dataclass(frozen=True)
class _Context:
    """What every run of one benchmark needs."""

    task: Task
    config: BenchConfig
    program: object
    lm: object
    scorer: object
    rows: int


def _run_all(store, engines, budgets, seeds, context: _Context, progress):
    """Run every (engine, budget, seed, problem) not yet in ``store``; return all records.

    Also returns how many runs were computed now. Each record is saved as soon
    as its run finishes, so an interrupted benchmark loses no finished run.
    """
    todo = [
        (engine, budget, s, index, problem)
        for s in range(seeds)
        for budget in budgets
        for engine in engines
        for index, problem in enumerate(context.task)
    ]
    records = {key: store.load(key) for key in (_key(e, b, s, p) for e, b, s, _, p in todo)}
    todo = [run for run in todo if records[_key(run[0], run[1], run[2], run[4])] is None]
    groups: dict[tuple[str, int, int], list[tuple[int, Problem]]] = {}
    for engine, budget, s, index, problem in todo:
        groups.setdefault((engine, budget, s), []).append((index, problem))
    bar = tqdm(
        total=len(records),
        initial=len(records) - len(todo),
        unit="run",
        disable=not progress,
        file=sys.stderr,
        desc="bench",
    )

    def save(engine, budget, s, problem, record) -> None:
        key = _key(engine, budget, s, problem)
        store.save(key, record)
        records[key] = record
        bar.update()

    for (engine, budget, s), problems in groups.items():
        bar.set_postfix_str(f"{engine} budget={budget} seed={s}", refresh=False)
        try:
            _run_group(engine, budget, s, problems, context, save)
        except BaseException as error:
            bar.close()
            error.add_note(
                f"bench stopped at {engine} budget={budget} seed={s}; finished runs are kept "
                f"in {store.directory / RUNS_DIR}: rerun the command to continue"
            )
            raise
    bar.close()
    return list(records.values()), len(todo)


def _run_group(engine, budget, s, problems, context: _Context, save) -> None:
    """Run ``engine`` at ``budget`` and seed ``s`` on ``problems``, saving each record."""
    seeds = [run_seed(context.config.seed, s, index) for index, _ in problems]
    if packs(engine) and context.rows > 1:

        def on_result(k: int, posterior) -> None:
            problem = problems[k][1]
            wall = posterior.cost.wall_seconds  # from its admission to its end
            record = _record(engine, budget, s, problem, posterior, context, wall)
            save(engine, budget, s, problem, record)

        runs = [
            (problem.question, seed) for (_, problem), seed in zip(problems, seeds, strict=True)
        ]
        run_packed(engine, context.program, context.lm, runs, budget, context.rows, on_result)
        return
    for (_, problem), seed in zip(problems, seeds, strict=True):
        started = time.perf_counter()
        try:
            posterior = run_engine(
                engine,
                context.program,
                context.lm,
                problem.question,
                budget,
                seed,
                context.scorer,
                context.config.beam_expansions,
            )
        except BaseException as error:
            error.add_note(f"while running problem {problem.id!r}")
            raise
        wall = time.perf_counter() - started
        save(
            engine,
            budget,
            s,
            problem,
            _record(engine, budget, s, problem, posterior, context, wall),
        )


def _record(engine, budget, s, problem, posterior, context: _Context, wall: float) -> dict:
    """One engine run on one problem, as the record the store keeps.

    ``wall`` is the engine's time on the problem (from its admission to its
    end when problems share a batch); verifier scoring is timed apart.
    """
    task = context.task
    answers, verifier_cost = predictions(engine, posterior, task, problem, context.scorer)
    cost = posterior.cost
    return {
        "engine": engine,
        "budget": budget,
        "seed": s,
        "problem": problem.id,
        "answers": answers,
        "correct": {m: task.is_correct(problem, a) for m, a in answers.items()},
        "tokens_generated": cost.tokens_generated,
        "tokens_scored": cost.tokens_scored,
        "tokens_prefilled": cost.tokens_prefilled,
        "lm_calls": cost.lm_calls,
        "verifier_calls": cost.verifier_calls,
        "external_verifier_calls": verifier_cost["verifier_calls"],
        "verifier_tokens_scored": verifier_cost["verifier_tokens_scored"],
        "verifier_seconds": verifier_cost["verifier_seconds"],
        "coverage": verifier_cost["coverage"],
        "verified_coverage": verifier_cost["verified_coverage"],
        "wall_seconds": wall,
    }


def _key(engine: str, budget: int, seed: int, problem: Problem) -> str:
    # Problem ids are free text; a digest of the id keeps the file name safe.
    digest = hashlib.sha256(str(problem.id).encode()).hexdigest()[:16]
    return f"{engine}-b{budget}-s{seed}-{digest}"


def _print_table(rows, computed: int, reused: int, num_problems: int, out: Path) -> None:
    click.echo(f"{computed} runs computed, {reused} reused; {num_problems} problems")
    click.echo(
        f"{'method':<18} {'budget':>6} {'accuracy':>8}  {'95% CI':<15} {'tokens/problem':>14} "
        f"{'coverage':>8} {'verified':>8}"
    )
    for row in rows:
        interval = f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
        click.echo(
            f"{row['method']:<18} {row['budget']:>6} {row['accuracy']:>8.3f}  {interval:<15} "
            f"{row['tokens_generated_per_problem']:>14.1f} {row['coverage']:>8.3f} "
            f"{row['verified_coverage']:>8.3f}"
        )
    click.echo(f"wrote results.csv, results.json, accuracy.png to {out}")


def _print_fits(fits: dict, target_accuracy: float, confidence: float, out: Path) -> None:
    for method, fit in fits.items():
        plan = fit["planning"]
        needed = plan["required_budget"]
        predicted = plan["predictions"][-1]
        click.echo(
            f"{method}: accuracy at budget {predicted['budget']:g} predicted "
            f"{predicted['mean']:.3f} [{predicted['low']:.3f}, {predicted['high']:.3f}]; "
            f"budget for {target_accuracy:g} with probability {confidence:g}: "
            f"{needed if needed is not None else 'beyond ' + str(plan['max_budget'])}"
            + ("" if fit["diagnostics_ok"] else "  (NUTS diagnostics poor; see json)")
        )
    click.echo(f"wrote scaling_law.json and scaling_law_*.png to {out}")
