"""``ppl bench``: accuracy against compute for inference methods on a task suite.

Every (engine, budget, seed, problem) run is appended to ``DIR/runs.jsonl``
as soon as it finishes, in one write, so an interrupted benchmark continues
where it stopped: a rerun of the same command skips finished runs. Methods
that read the same engine run share it (``importance``, ``majority``,
``best_of_n`` and ``weighted_majority`` all read one importance run).
When every run is done, ``results.csv``, ``results.json`` and
``accuracy.png`` summarize accuracy with 95% intervals against the budget
and against tokens generated per problem.

The program is called as ``program(lm, question)``; its ``ppl.answer`` is
judged by the task (see ``ppl.tasks``).
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import importlib.util
import io
import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from ppl.errors import EmptyPosteriorError, InvalidArgumentError, PPLError
from ppl.posterior import Posterior
from ppl.tasks import Problem, Task, load_task
from ppl.trace import Site, Trace

# Each method reads its prediction from one engine run.
METHODS = {
    "importance": "importance",
    "majority": "importance",
    "best_of_n": "importance",
    "weighted_majority": "importance",
    "smc": "smc",
    "beam": "beam",
    "dvts": "dvts",
}
VERIFIER_METHODS = ("best_of_n", "weighted_majority")
RUNS_FILE = "runs.jsonl"
CONFIG_FILE = "config.json"
Z_95 = 1.959963984540054


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


# --- loading ---------------------------------------------------------------------------


def load_target(target: str) -> Any:
    """The object named by ``path/to/file.py:name`` or ``package.module:name``.

    Example:
        >>> program = load_target("examples/arithmetic_steps.py:arithmetic")  # doctest: +SKIP
    """
    location, _, name = target.rpartition(":")
    if not location or not name:
        raise InvalidArgumentError(f"target {target!r} must look like path/to/file.py:name")
    if location.endswith(".py") or Path(location).is_file():
        path = Path(location)
        if not path.is_file():
            raise InvalidArgumentError(f"target file {path} does not exist")
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        module_name = f"_ppl_target_{path.stem}_{digest}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            raise InvalidArgumentError(f"cannot import {location!r}: {error}") from None
    if not hasattr(module, name):
        raise InvalidArgumentError(f"{location} has no attribute {name!r}")
    return getattr(module, name)


def load_model(spec: str):
    """``embedded`` (the default model), a local model directory, or a ``file.py:factory``."""
    from models import TransformersLM, default_lm

    if spec == "embedded":
        return default_lm()
    if Path(spec).is_dir():
        return TransformersLM.from_pretrained(spec)
    if ":" in spec:
        return load_target(spec)()
    raise InvalidArgumentError(
        f"unknown model {spec!r}: use 'embedded', a local model directory or file.py:factory"
    )


def load_verifier(spec: str | None, lm):
    """``calculator``, ``judge`` (an outcome-level LM judge on the same weights),
    ``prm:PATH``, or a ``file.py:name`` holding a verifier or a function returning one."""
    from models import TransformersLM
    from models.verifiers import PRM, LMJudge, ProgrammaticVerifier, Verifier

    if spec is None:
        return None
    if spec == "calculator":
        return ProgrammaticVerifier.calculator()
    if spec == "judge":
        return LMJudge(TransformersLM(lm.model, lm.tokenizer), level="outcome")
    if spec.startswith("prm:"):
        return PRM(spec[4:])
    verifier = load_target(spec)
    if not isinstance(verifier, Verifier) and callable(verifier):
        verifier = verifier()
    if not isinstance(verifier, Verifier):
        raise InvalidArgumentError(f"{spec} is not a verifier (models.verifiers.Verifier)")
    return verifier


# --- one run ---------------------------------------------------------------------------


def run_seed(base_seed: int, seed_index: int, problem_index: int) -> int:
    """The engine seed of one run; shared by all engines and budgets (common random numbers)."""
    state = np.random.SeedSequence([base_seed, seed_index, problem_index]).generate_state(2)
    return int(state[0]) << 31 | int(state[1]) >> 1


def run_engine(
    engine: str, program, lm, question: str, budget: int, seed: int, verifier, expansions: int
) -> Posterior:
    """One engine run on one question with ``budget`` particles (beam, dvts: children per round)."""
    from inference import beam, dvts, importance, smc

    if engine == "importance":
        return importance(program, lm, question, num_particles=budget, seed=seed)
    if engine == "smc":
        return smc(program, lm, question, num_particles=budget, seed=seed)
    score = verifier.trace_scorer(question) if verifier is not None else "likelihood"
    num_expansions = min(expansions, budget)
    width = max(1, budget // num_expansions)
    if engine == "dvts":
        return dvts(
            program,
            lm,
            question,
            num_subtrees=width,
            num_expansions=num_expansions,
            seed=seed,
            score=score,
        )
    return beam(
        program,
        lm,
        question,
        beam_width=width,
        num_expansions=num_expansions,
        seed=seed,
        score=score,
    )


def predictions(
    engine: str, posterior: Posterior, task: Task, problem: Problem, verifier
) -> tuple[dict[str, str | None], dict[str, float]]:
    """Each method's normalized answer from one engine run, and the verifier's cost."""
    canonical = [task.canonical(answer) for answer in posterior.answers]
    view = Posterior(
        [Trace((Site("answer", "answer", answer),)) for answer in canonical],
        posterior.log_weights,
    )
    views: dict[str, Callable[[], Any]]
    cost = {"verifier_calls": 0, "verifier_tokens_scored": 0, "verifier_seconds": 0.0}
    if engine == "importance":
        views = {"importance": view.map_answer, "majority": view.majority_answer}
        if verifier is not None:
            started, calls = time.perf_counter(), verifier.calls
            scored_before = _tokens_scored(verifier)
            scores = verifier.score_batch(
                [(problem.question, [s.value for s in t.steps]) for t in posterior.particles]
            )
            cost = {
                "verifier_calls": verifier.calls - calls,
                "verifier_tokens_scored": _tokens_scored(verifier) - scored_before,
                "verifier_seconds": time.perf_counter() - started,
            }
            views["best_of_n"] = lambda: view.best_of_n_answer(scores)
            views["weighted_majority"] = lambda: view.weighted_majority_answer(scores)
    elif engine == "smc":
        views = {"smc": view.map_answer}
    else:
        views = {engine: view.best_of_n_answer}
    answers = {}
    for method, read in views.items():
        try:
            answers[method] = read()
        except EmptyPosteriorError:
            answers[method] = None
    return answers, cost


def _tokens_scored(verifier) -> int:
    stats = getattr(getattr(verifier, "lm", None), "stats", None)
    return stats.tokens_scored if stats is not None else 0


# --- the run log -----------------------------------------------------------------------


def read_runs(path: Path) -> list[dict]:
    """Finished runs; a partly written last line (an interrupted write) is cut off."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        with path.open("r+b") as handle:
            handle.truncate(complete)
    records = []
    for number, line in enumerate(data[:complete].decode().splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise InvalidArgumentError(
                f"{path}:{number} is not a run record; the file is corrupt (delete it to "
                "start over)"
            ) from None
    return records


def append_run(path: Path, record: dict) -> None:
    """Append one record in a single write and flush it to disk."""
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = 0
        while written < len(line):
            written += os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def run_key(record: dict) -> tuple:
    return (record["engine"], record["budget"], record["seed"], record["problem"])


# --- summaries -------------------------------------------------------------------------


def wilson_interval(p: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``p`` observed over ``n`` trials.

    Example:
        >>> [round(x, 4) for x in wilson_interval(0.5, 10)]
        [0.2366, 0.7634]
    """
    if n < 1:
        return (math.nan, math.nan)
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, center - half), min(1.0, center + half))


def summarize(
    records: list[dict], methods: Sequence[str], budgets: Sequence[int], seeds: int
) -> list[dict]:
    """One row per (method, budget): accuracy, its 95% interval, and cost per problem.

    Each problem's accuracy is averaged over seeds first; the Wilson interval
    over problems is then conservative, since a mean of outcomes in [0, 1]
    with mean p has variance at most p (1 - p).
    """
    by_run = {run_key(r): r for r in records}
    rows = []
    for method in methods:
        engine = METHODS[method]
        for budget in budgets:
            cell = [r for (e, b, s, _), r in by_run.items() if e == engine and b == budget]
            cell = [r for r in cell if r["seed"] < seeds and method in r["correct"]]
            per_problem: dict[str, list[float]] = defaultdict(list)
            per_seed: dict[int, list[float]] = defaultdict(list)
            for r in cell:
                per_problem[r["problem"]].append(float(r["correct"][method]))
                per_seed[r["seed"]].append(float(r["correct"][method]))
            accuracy = float(np.mean([np.mean(v) for v in per_problem.values()]))
            low, high = wilson_interval(accuracy, len(per_problem))
            verifier_cost = method in VERIFIER_METHODS
            rows.append(
                {
                    "method": method,
                    "budget": budget,
                    "accuracy": accuracy,
                    "ci_low": low,
                    "ci_high": high,
                    "problems": len(per_problem),
                    "seeds": len(per_seed),
                    "tokens_generated_per_problem": _mean(cell, "tokens_generated"),
                    "tokens_scored_per_problem": _mean(cell, "tokens_scored")
                    + (_mean(cell, "verifier_tokens_scored") if verifier_cost else 0.0),
                    "lm_calls_per_problem": _mean(cell, "lm_calls"),
                    "verifier_calls_per_problem": _mean(cell, "verifier_calls")
                    + (_mean(cell, "external_verifier_calls") if verifier_cost else 0.0),
                    "wall_seconds_per_problem": _mean(cell, "wall_seconds")
                    + (_mean(cell, "verifier_seconds") if verifier_cost else 0.0),
                    "accuracy_per_seed": [float(np.mean(per_seed[s])) for s in sorted(per_seed)],
                }
            )
    return rows


def _mean(records: list[dict], field: str) -> float:
    return float(np.mean([r[field] for r in records])) if records else math.nan


def write_outputs(out: Path, config: BenchConfig, rows: list[dict], title: str) -> None:
    """``results.csv``, ``results.json`` and ``accuracy.png``, each replaced atomically."""
    columns = [k for k in rows[0] if k != "accuracy_per_seed"]
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    _replace(out / "results.csv", text.getvalue().encode())
    summary = {
        "config": asdict(config),
        "interval": "Wilson 95% over problems, per-problem accuracy averaged over seeds",
        "results": rows,
    }
    _replace(out / "results.json", json.dumps(summary, indent=2).encode())
    _replace(out / "accuracy.png", plot(rows, title))


def plot(rows: list[dict], title: str) -> bytes:
    """PNG of accuracy against budget (log x) and against tokens generated per problem."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ppl.report.plots import png_bytes

    figure = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(figure)
    by_budget, by_tokens = figure.subplots(1, 2, sharey=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for index, method in enumerate(methods):
        series = sorted((r for r in rows if r["method"] == method), key=lambda r: r["budget"])
        accuracy = np.array([r["accuracy"] for r in series])
        errors = np.array(
            [
                [a - r["ci_low"] for a, r in zip(accuracy, series, strict=True)],
                [r["ci_high"] - a for a, r in zip(accuracy, series, strict=True)],
            ]
        )
        # Nudge each method sideways so equal accuracies do not hide each other.
        nudge = 2 ** (0.04 * (index - (len(methods) - 1) / 2))
        budgets = [r["budget"] * nudge for r in series]
        tokens = [max(r["tokens_generated_per_problem"], 1e-9) for r in series]
        by_budget.errorbar(budgets, accuracy, yerr=errors, marker="o", capsize=3, label=method)
        by_tokens.errorbar(tokens, accuracy, yerr=errors, marker="o", capsize=3, label=method)
    by_budget.set_xscale("log", base=2)
    by_budget.set_xlabel("budget (particles; beam, dvts: children per round)")
    by_tokens.set_xscale("log")
    by_tokens.set_xlabel("tokens generated per problem")
    by_budget.set_ylabel("accuracy (95% Wilson interval)")
    by_budget.set_ylim(-0.02, 1.02)
    by_budget.legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    return png_bytes(figure, dpi=110)


def _replace(path: Path, data: bytes) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_bytes(data)
    os.replace(staging, path)


def fit_scaling_laws(
    rows: list[dict], out: Path, target: float, confidence: float, seed: int
) -> dict[str, dict]:
    """Fit ``inference.budget.fit_scaling_law`` to each method's accuracy against budget.

    Successes and trials pool problems and seeds at each budget. Writes
    ``scaling_law.json`` (per method: parameters with 95% intervals, NUTS
    diagnostics, predictions at 2x, 4x and 16x the largest budget with 90%
    intervals, and the budget reaching ``target`` with probability
    ``confidence``) and one ``scaling_law_METHOD.png`` per method.
    """
    from inference.budget import fit_scaling_law

    by_method: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    fits = {}
    for method, series in by_method.items():
        series = sorted(series, key=lambda r: r["budget"])
        if len(series) < 2:
            raise InvalidArgumentError(
                f"--fit needs two budgets or more; {method} has {len(series)}"
            )
        budgets = [r["budget"] for r in series]
        trials = [r["problems"] * r["seeds"] for r in series]
        successes = [round(r["accuracy"] * t) for r, t in zip(series, trials, strict=True)]
        fit = fit_scaling_law(budgets, successes, trials, seed=seed)
        unseen = [2 * budgets[-1], 4 * budgets[-1], 16 * budgets[-1]]
        band = fit.predict(unseen)
        max_budget = 2**16
        planning = {
            "target_accuracy": target,
            "confidence": confidence,
            "max_budget": max_budget,
            "required_budget": fit.required_budget(target, confidence, max_budget=max_budget),
            "predictions": [
                {"budget": float(b), "mean": float(m), "low": float(lo), "high": float(hi)}
                for b, m, lo, hi in zip(
                    band["budget"], band["mean"], band["low"], band["high"], strict=True
                )
            ],
        }
        fits[method] = {**fit.summary(planning), "diagnostics_ok": fit.diagnostics.ok()}
        fit.plot(out / f"scaling_law_{method}.png", title=f"{method}: accuracy vs budget")
    _replace(out / "scaling_law.json", json.dumps(fits, indent=2).encode())
    return fits


# --- the command -----------------------------------------------------------------------


def task_fingerprint(task: Task) -> str:
    digest = hashlib.sha256()
    for problem in task:
        digest.update(json.dumps([problem.id, problem.question, problem.answers]).encode())
    return digest.hexdigest()[:16]


def check_config(out: Path, config: BenchConfig) -> None:
    """Record the config in ``out``, or refuse to mix runs of a different one."""
    path = out / CONFIG_FILE
    if path.exists():
        recorded = json.loads(path.read_text())
        differing = [k for k, v in asdict(config).items() if recorded.get(k) != v]
        if differing:
            raise InvalidArgumentError(
                f"{out} holds runs of a different benchmark (differs in {', '.join(differing)}); "
                "use another --out directory"
            )
    else:
        _replace(path, json.dumps(asdict(config), indent=2).encode())


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
    help="'embedded', a local model directory, or file.py:factory.",
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
    progress,
):
    """Accuracy against compute for inference methods on a task suite.

    Writes DIR/results.csv, DIR/results.json and DIR/accuracy.png (accuracy vs
    budget and vs tokens, 95% Wilson intervals over problems). Each finished
    run is appended to DIR/runs.jsonl; rerunning the command skips them.

    Example: ppl bench --task arithmetic --program examples/arithmetic_steps.py:arithmetic
    --budgets 1,2,4,8 --out bench/arithmetic
    """
    from tqdm import tqdm

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
        out.mkdir(parents=True, exist_ok=True)
        check_config(out, config)
        records = read_runs(out / RUNS_FILE)
        program = load_target(program_target)
        if not callable(program):
            raise InvalidArgumentError(f"{program_target} is not callable")
        lm = load_model(model)
        scorer = load_verifier(verifier, lm)
    except PPLError as error:
        raise click.ClickException(str(error)) from None

    finished = {run_key(r) for r in records}
    engines = list(dict.fromkeys(METHODS[m] for m in methods))
    todo = [
        (engine, budget, s, index, problem)
        for s in range(seeds)
        for budget in budgets
        for engine in engines
        for index, problem in enumerate(task)
        if (engine, budget, s, problem.id) not in finished
    ]
    total = len(engines) * len(budgets) * seeds * len(task)
    bar = tqdm(
        total=total,
        initial=total - len(todo),
        unit="run",
        disable=not progress,
        file=sys.stderr,
        desc="bench",
    )
    runs_path = out / RUNS_FILE
    for engine, budget, s, index, problem in todo:
        bar.set_postfix_str(f"{engine} budget={budget} seed={s}", refresh=False)
        started = time.perf_counter()
        try:
            posterior = run_engine(
                engine,
                program,
                lm,
                problem.question,
                budget,
                run_seed(seed, s, index),
                scorer,
                beam_expansions,
            )
            answers, verifier_cost = predictions(engine, posterior, task, problem, scorer)
        except BaseException as error:
            bar.close()
            error.add_note(
                f"bench stopped at {engine} budget={budget} seed={s} problem {problem.id!r}; "
                f"finished runs are kept in {runs_path}: rerun the command to continue"
            )
            raise
        cost = posterior.cost
        record = {
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
            "wall_seconds": time.perf_counter() - started - verifier_cost["verifier_seconds"],
        }
        append_run(runs_path, record)
        records.append(record)
        bar.update()
    bar.close()

    rows = summarize(records, methods, budgets, seeds)
    title = f"{task.name}: {len(task)} problems, {seeds} seed{'s' if seeds > 1 else ''}"
    write_outputs(out, config, rows, title)
    click.echo(f"{len(todo)} runs computed, {total - len(todo)} reused; {len(task)} problems")
    click.echo(
        f"{'method':<18} {'budget':>6} {'accuracy':>8}  {'95% CI':<15} {'tokens/problem':>14}"
    )
    for row in rows:
        interval = f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
        click.echo(
            f"{row['method']:<18} {row['budget']:>6} {row['accuracy']:>8.3f}  {interval:<15} "
            f"{row['tokens_generated_per_problem']:>14.1f}"
        )
    click.echo(f"wrote results.csv, results.json, accuracy.png to {out}")
    if fit_law:
        fits = fit_scaling_laws(rows, out, target_accuracy, confidence, seed)
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


if __name__ == "__main__":
    bench()
