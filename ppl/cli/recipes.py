"""Run specifications: what ``ppl run`` runs, from a TOML recipe and command-line options.

A recipe names a program, an inference method and its parameters, a model,
and the program's input or a dataset::

    # examples/recipes/lipogram.toml
    program = "../lipogram.py:lipogram"   # relative to the recipe file
    method = "smc"
    particles = 16
    model = "default"
    seed = 0

    [parameters]                          # extra keyword arguments of the method
    ess_threshold = 0.5

    [input]                               # the program's arguments after the LM
    args = ["Here is a short story about a cat. The cat"]

Keys: ``program`` (required), ``method``, ``particles``, ``runs``, ``seed``,
``model``, ``parameters``, ``input`` (a string, or a table with ``args`` and
``kwargs``), ``dataset`` (a JSONL file, relative to the recipe) and ``out``
(relative to the working directory).

Programs take the LM as their first positional argument:
``program(lm, *args, **kwargs)``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import time
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from inference.population import Problem, run_problems
from inference.registry import ENGINES, Engine
from inference.runs import run
from ppl.errors import RecipeError
from ppl.posterior import Posterior

RECIPE_KEYS = (
    "program",
    "method",
    "particles",
    "runs",
    "seed",
    "model",
    "parameters",
    "input",
    "dataset",
    "out",
)


@dataclass(frozen=True)
class RunSpec:
    """Everything ``ppl run`` needs; ``merged`` combines a recipe with command-line options.

    Example:
        >>> spec = RunSpec(program="examples/lipogram.py:lipogram", particles=8)
        >>> spec.method, spec.model
        ('smc', 'default')
    """

    program: str
    method: str = "smc"
    particles: int = 16
    runs: int = 1
    seed: int = 0
    model: str = "default"
    parameters: dict[str, Any] = field(default_factory=dict)
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    out: str | None = None
    recipe: str | None = None

    @property
    def name(self) -> str:
        """A short name for the run: the recipe's stem, else the program's function name."""
        if self.recipe:
            return Path(self.recipe).stem
        return self.program.rpartition(":")[2] or "run"

    def merged(self, **options) -> RunSpec:
        """A copy with every option that is not None replacing the recipe's value."""
        return replace(self, **{k: v for k, v in options.items() if v is not None})

    def fingerprint(self) -> str:
        """Identifies the run configuration, so a resumed run never mixes configurations.

        Example:
            >>> RunSpec("a.py:f").fingerprint() == RunSpec("a.py:f", seed=1).fingerprint()
            False
        """
        data = {k: v for k, v in self.metadata().items() if k not in ("recipe", "dataset")}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    def metadata(self) -> dict[str, Any]:
        """JSON-friendly description of the run, for result files and reports."""
        return {
            "program": self.program,
            "method": self.method,
            "particles": self.particles,
            "runs": self.runs,
            "seed": self.seed,
            "model": self.model,
            "parameters": self.parameters,
            "args": self.args,
            "kwargs": self.kwargs,
            "dataset": self.dataset,
            "recipe": self.recipe,
        }


def run_metadata(spec: RunSpec) -> dict[str, Any]:
    """``spec.metadata()`` with when and by which command the run was made."""
    return {
        **spec.metadata(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join(sys.argv),
    }


def infer(spec: RunSpec, engine: Engine, program, lm, args, kwargs, seed: int) -> Posterior:
    """Run ``engine`` on ``program(lm, *args, **kwargs)`` as ``spec`` says (``spec.runs`` runs).

    One run gives the same posterior as calling the engine with that seed.
    """
    method_kwargs = {engine.size_parameter: spec.particles, **spec.parameters, **kwargs}
    if spec.runs == 1:
        return engine.fn(program, lm, *args, seed=seed, **method_kwargs)
    return run(engine.fn, program, lm, *args, num_runs=spec.runs, seed=seed, **method_kwargs)


# Engines whose runs on many problems can share one running batch, with the
# settings that sharing supports (inference.population.run_problems).
PACKED_SETTINGS = {"importance": (), "smc": ("resample", "ess_threshold")}


def packed_infer(spec: RunSpec, engine: Engine, program, lm, max_rows: int):
    """A function running many problems' ``infer`` in one running batch, or None if it cannot.

    The function takes ``[(args, kwargs, seed), ...]`` and ``on_result(k,
    posterior)``, called as each problem finishes with the posterior ``infer``
    gives it alone. Engines other than importance and SMC, several runs per
    problem, and SMC with rejuvenation run one problem at a time.
    """
    settings = dict(spec.parameters)
    if settings.get("rejuvenation_steps") == 0:
        del settings["rejuvenation_steps"]
    allowed = PACKED_SETTINGS.get(engine.name)
    if allowed is None or spec.runs != 1 or not set(settings) <= set(allowed):
        return None

    def infer_many(runs, on_result) -> None:
        problems = [Problem(program, (lm, *args), kwargs, seed) for args, kwargs, seed in runs]
        run_problems(
            engine.name,
            problems,
            num_particles=spec.particles,
            max_rows=max_rows,
            on_result=on_result,
            **settings,
        )

    return infer_many


def load_recipe(path: str | Path) -> RunSpec:
    """Read a TOML recipe; relative ``program`` and ``dataset`` paths are resolved against it.

    Example:
        >>> spec = load_recipe("examples/recipes/lipogram.toml")
        >>> spec.method, spec.particles
        ('smc', 16)
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(f"cannot read recipe {str(path)!r}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"recipe {str(path)!r} is not valid TOML: {error}") from None
    unknown = sorted(set(data) - set(RECIPE_KEYS))
    if unknown:
        raise RecipeError(
            f"recipe {str(path)!r} has unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(RECIPE_KEYS)}"
        )
    if "program" not in data:
        raise RecipeError(f"recipe {str(path)!r} names no program (program = 'file.py:function')")
    where = f"recipe {str(path)!r}"
    program = _expect(data["program"], str, "program", where)
    file, _, function = program.rpartition(":")
    if file and not Path(file).is_absolute():
        program = f"{Path(os.path.normpath(path.parent / file)).as_posix()}:{function}"
    args, kwargs = parse_input(data.get("input"), where)
    dataset = data.get("dataset")
    if dataset is not None:
        if "input" in data:
            raise RecipeError(f"{where} has both input and dataset; keep one")
        dataset = _expect(dataset, str, "dataset", where)
        if not Path(dataset).is_absolute():
            dataset = Path(os.path.normpath(path.parent / dataset)).as_posix()
    return RunSpec(
        program=program,
        method=_expect(data.get("method", "smc"), str, "method", where),
        particles=_expect(data.get("particles", 16), int, "particles", where),
        runs=_expect(data.get("runs", 1), int, "runs", where),
        seed=_expect(data.get("seed", 0), int, "seed", where),
        model=_expect(data.get("model", "default"), str, "model", where),
        parameters=_expect(data.get("parameters", {}), dict, "parameters", where),
        args=args,
        kwargs=kwargs,
        dataset=dataset,
        out=_expect(data.get("out"), str, "out", where) if "out" in data else None,
        recipe=str(path),
    )


def parse_input(value, where: str) -> tuple[list[Any], dict[str, Any]]:
    """A program input as ``(args, kwargs)``: a string is one argument; a table has both.

    Example:
        >>> parse_input({"args": ["The cat"], "kwargs": {"max_tokens": 8}}, "recipe")
        (['The cat'], {'max_tokens': 8})
    """
    if value is None:
        return [], {}
    if isinstance(value, str):
        return [value], {}
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"args", "kwargs"})
        if unknown:
            raise RecipeError(f"{where}: input has unknown key(s) {', '.join(unknown)}")
        args = _expect(value.get("args", []), list, "input.args", where)
        kwargs = _expect(value.get("kwargs", {}), dict, "input.kwargs", where)
        return list(args), dict(kwargs)
    raise RecipeError(f"{where}: input must be a string or a table with args/kwargs")


def parse_input_json(text: str) -> tuple[list[Any], dict[str, Any]]:
    """``--input-json``: a JSON array gives positional arguments, an object keyword arguments.

    Example:
        >>> parse_input_json('["The cat", 12]'), parse_input_json('{"max_tokens": 12}')
        ((['The cat', 12], {}), ([], {'max_tokens': 12}))
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise RecipeError(f"--input-json is not valid JSON: {error}") from None
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        return [], value
    raise RecipeError("--input-json must be a JSON array (arguments) or object (keyword arguments)")


def parse_parameter(text: str) -> tuple[str, Any]:
    """``--param KEY=VALUE``; VALUE is read as JSON when it parses, else as a string.

    Example:
        >>> parse_parameter("ess_threshold=0.3"), parse_parameter("resample=multinomial")
        (('ess_threshold', 0.3), ('resample', 'multinomial'))
    """
    key, equals, raw = text.partition("=")
    if not equals or not key.strip():
        raise RecipeError(f"--param must look like KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def available_methods() -> list[str]:
    """The methods this installation provides, in registry order.

    Example:
        >>> available_methods()[:2]
        ['importance', 'smc']
    """
    return list(ENGINES)


def resolve_method(name: str, parameters: dict[str, Any]) -> Engine:
    """The engine called ``name``, after checking ``parameters`` against its keywords.

    Example:
        >>> engine = resolve_method("smc", {"ess_threshold": 0.3})
        >>> engine.fn.__name__, engine.size_parameter
        ('smc', 'num_particles')
    """
    if name not in ENGINES:
        raise RecipeError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    engine = ENGINES[name]
    keyword_only = [
        p
        for p in inspect.signature(engine.fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "seed"
    ]
    accepted = [p.name for p in keyword_only]
    size = engine.size_parameter
    for key in parameters:
        if key == size:
            raise RecipeError(f"set {key} with --particles (or `particles` in a recipe)")
        if key not in accepted:
            raise RecipeError(
                f"method {name!r} has no parameter {key!r}; its parameters: "
                f"{', '.join(p for p in accepted if p != size) or 'none'}"
            )
    missing = [
        p.name
        for p in keyword_only
        if p.default is inspect.Parameter.empty and p.name != size and p.name not in parameters
    ]
    if missing:
        raise RecipeError(
            f"method {name!r} needs "
            + ", ".join(f"--param {key}=VALUE" for key in missing)
            + " (or a [parameters] entry in a recipe)"
        )
    return engine


def _expect(value, kind: type, key: str, where: str):
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise RecipeError(f"{where}: {key} must be a {kind.__name__}, got {value!r}")
    return value
