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

import functools
import importlib.util
import inspect
import json
import os
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ppl.errors import ParticleError, RecipeError
from ppl.handlers import RecordMessenger, Suspend
from ppl.primitives import Program

# Method name -> the engine parameter that ``--particles`` sets. A method is
# available when the ``inference`` package defines a function of that name.
METHODS: dict[str, str] = {
    "importance": "num_particles",
    "smc": "num_particles",
    "beam": "beam_width",
    "dvts": "num_subtrees",
    "particle_gibbs": "num_particles",
    "mh": "num_steps",
    "parallel_tempering": "num_steps",
}
MODELS = "default, hf:DIR, openai:URL or none"
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


def load_recipe(path: str | Path) -> RunSpec:
    """Read a TOML recipe; relative ``program`` and ``dataset`` paths are resolved against it.

    Example:
        >>> spec = load_recipe("examples/recipes/lipogram.toml")  # doctest: +SKIP
        >>> spec.method, spec.particles                           # doctest: +SKIP
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
    """The methods this installation provides, in table order.

    Example:
        >>> available_methods()[:2]
        ['importance', 'smc']
    """
    import inference

    return [name for name in METHODS if callable(getattr(inference, name, None))]


def resolve_method(name: str, parameters: dict[str, Any]) -> tuple[Callable, str]:
    """The engine called ``name`` and the parameter ``--particles`` sets; checks ``parameters``.

    Example:
        >>> engine, size = resolve_method("smc", {"ess_threshold": 0.3})
        >>> engine.__name__, size
        ('smc', 'num_particles')
    """
    import inference

    if name not in METHODS:
        raise RecipeError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    engine = getattr(inference, name, None)
    if not callable(engine):
        raise RecipeError(
            f"method {name!r} is not available in this installation; "
            f"available: {', '.join(available_methods())}"
        )
    keyword_only = [
        p
        for p in inspect.signature(engine).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "seed"
    ]
    accepted = [p.name for p in keyword_only]
    size = METHODS[name]
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
    return engine, size


def check_model(spec: str) -> None:
    """Validate a model spec without loading anything.

    Example:
        >>> check_model("hf:/models/smollm2")  # no error: the directory is checked on loading
    """
    kind, colon, rest = spec.partition(":")
    if spec in ("default", "none"):
        return
    if kind in ("hf", "openai") and colon and rest:
        return
    raise RecipeError(f"unknown model {spec!r}; use {MODELS}")


def load_model(spec: str):
    """The LM named by ``spec``: ``default`` (embedded), ``hf:DIR``, ``openai:URL`` or ``none``.

    Example:
        >>> lm = load_model("hf:/models/smollm2")  # doctest: +SKIP
    """
    import models

    check_model(spec)
    if spec == "none":
        return None
    if spec == "default":
        return models.default_lm()
    kind, _, rest = spec.partition(":")
    if kind == "hf":
        if not Path(rest).is_dir():
            raise RecipeError(f"model directory {rest!r} (from --model {spec}) does not exist")
        try:
            return models.TransformersLM.from_pretrained(rest)
        except (OSError, ValueError) as error:
            raise RecipeError(f"cannot load a model from {rest!r}: {error}") from None
    backend = getattr(models, "OpenAILM", None)
    if backend is None:
        raise RecipeError(
            f"--model {spec}: the OpenAI-compatible backend is not available in this "
            "installation; use --model default or hf:DIR"
        )
    return backend(rest)


def load_program(target: str) -> Program:
    """The program named by ``path/to/file.py:function``.

    The returned program reports an exception raised inside a particle as a
    ``ParticleError`` carrying that particle's trace so far.

    Example:
        >>> program = load_program("examples/lipogram.py:lipogram")  # doctest: +SKIP
    """
    file, colon, function = target.rpartition(":")
    if not colon or not file or not function:
        raise RecipeError(f"target {target!r} must be path/to/file.py:function or a .toml recipe")
    path = Path(file)
    if not path.is_file():
        raise RecipeError(f"program file {file!r} does not exist")
    module = _import_file(path)
    found = getattr(module, function, None)
    if found is None:
        defined = sorted(
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and (
                isinstance(value, Program)
                or (inspect.isfunction(value) and value.__module__ == module.__name__)
            )
        )
        raise RecipeError(
            f"{file} has no function {function!r}; it defines: {', '.join(defined) or 'none'}"
        )
    if not callable(found):
        raise RecipeError(f"{file}:{function} is not callable (it is a {type(found).__name__})")
    return _reporting_particle_errors(found)


def _import_file(path: Path):
    name = f"ppl_target_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RecipeError(f"cannot import {str(path)!r}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # The program's own directory is importable while it loads, so it can import
    # helper modules that sit beside it.
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise RecipeError(
            f"importing {str(path)!r} failed: {type(error).__name__}: {error}"
        ) from error
    finally:
        sys.path.remove(str(path.parent.resolve()))
    return module


def _reporting_particle_errors(found: Callable) -> Program:
    program = found if isinstance(found, Program) else Program(found)
    fn = program.fn

    @functools.wraps(fn)
    def reporting(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (Suspend, ParticleError):
            raise
        except Exception as error:
            raise ParticleError(
                f"program {program.name!r} raised {type(error).__name__}: {error}",
                _sites_so_far(),
            ) from error

    return Program(reporting)


def _sites_so_far() -> tuple:
    """The sites the innermost running particle has visited (its trace so far)."""
    from pyro.poutine.runtime import _PYRO_STACK

    for handler in reversed(_PYRO_STACK):
        if isinstance(handler, RecordMessenger):
            return tuple(handler.sites)
    return ()


def _expect(value, kind: type, key: str, where: str):
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise RecipeError(f"{where}: {key} must be a {kind.__name__}, got {value!r}")
    return value
