"""What the ``ppl`` commands load by name: Python objects from files, and language models.

``load_target("path/to/file.py:name")`` (or ``package.module:name``) imports
the file and returns the object; ``load_program`` also makes exceptions inside
a particle report that particle's trace. ``load_model`` takes one set of model
names, shared by ``ppl run`` and ``ppl bench``:

- ``default``: the embedded model (``embedded`` is another name for it);
- ``hf:DIR``: a local transformers model (a bare existing ``DIR`` also works);
- ``openai:URL``: an OpenAI-compatible server;
- ``file.py:factory``: whatever ``factory()`` returns;
- ``none``: no model (programs that make no ``ppl.step`` calls).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ppl.errors import ParticleError, RecipeError
from ppl.handlers import RecordMessenger, Suspend
from ppl.primitives import Program

MODELS = "default, hf:DIR, openai:URL, file.py:factory or none"


def load_target(target: str) -> Any:
    """The object named by ``path/to/file.py:name`` or ``package.module:name``.

    A file's own directory is importable while it loads, so it can import the
    helper modules beside it.

    Example:
        >>> load_target("examples/lipogram.py:lipogram").name
        'lipogram'
    """
    location, colon, name = target.rpartition(":")
    if not colon or not location or not name:
        raise RecipeError(f"target {target!r} must look like path/to/file.py:name")
    if location.endswith(".py") or Path(location).is_file():
        module = _import_file(Path(location))
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            raise RecipeError(f"cannot import {location!r}: {error}") from None
    if not hasattr(module, name):
        defined = ", ".join(_defined(module)) or "none"
        raise RecipeError(f"{location} has no function {name!r}; it defines: {defined}")
    return getattr(module, name)


def load_program(target: str) -> Program:
    """The program named by ``path/to/file.py:function``.

    The returned program reports an exception raised inside a particle as a
    ``ParticleError`` carrying that particle's trace so far.

    Example:
        >>> load_program("examples/lipogram.py:lipogram").name
        'lipogram'
    """
    file, colon, function = target.rpartition(":")
    if not colon or not file or not function:
        raise RecipeError(f"target {target!r} must be path/to/file.py:function or a .toml recipe")
    if not Path(file).is_file():
        raise RecipeError(f"program file {file!r} does not exist")
    found = load_target(target)
    if not callable(found):
        raise RecipeError(f"{file}:{function} is not callable (it is a {type(found).__name__})")
    return _reporting_particle_errors(found)


def check_model(spec: str) -> None:
    """Validate a model name without loading anything.

    Example:
        >>> check_model("hf:/models/smollm2")  # no error: the directory is checked on loading
        >>> check_model("gpt")
        Traceback (most recent call last):
        ...
        ppl.errors.RecipeError: unknown model 'gpt'; use default, hf:DIR, openai:URL, \
file.py:factory or none
    """
    kind, colon, rest = spec.partition(":")
    if spec in ("default", "embedded", "none") or Path(spec).is_dir():
        return
    if kind in ("hf", "openai") and colon and rest:
        return
    if spec.rpartition(":")[0].endswith(".py"):
        return
    raise RecipeError(f"unknown model {spec!r}; use {MODELS}")


def load_model(spec: str):
    """The LM named by ``spec`` (see the module docstring), or None for ``none``.

    Example:
        >>> load_model("none") is None
        True
    """
    import models

    check_model(spec)
    if spec == "none":
        return None
    if spec in ("default", "embedded"):
        return models.default_lm()
    kind, _, rest = spec.partition(":")
    if kind == "openai":
        return models.OpenAILM(rest)
    if kind == "hf" or Path(spec).is_dir():
        directory = rest if kind == "hf" else spec
        if not Path(directory).is_dir():
            raise RecipeError(f"model directory {directory!r} (from --model {spec}) does not exist")
        try:
            return models.TransformersLM.from_pretrained(directory)
        except (OSError, ValueError) as error:
            raise RecipeError(f"cannot load a model from {directory!r}: {error}") from None
    factory = load_target(spec)
    if not callable(factory):
        raise RecipeError(f"--model {spec}: {type(factory).__name__} is not a model factory")
    return factory()


def portable_model(spec: str) -> str:
    """The same model name with absolute paths, for workers that start in another directory.

    Example:
        >>> portable_model("default"), portable_model("hf:/models/smollm2")
        ('default', 'hf:/models/smollm2')
    """
    kind, _, rest = spec.partition(":")
    if kind == "hf":
        return f"hf:{Path(rest).resolve()}"
    if Path(spec).is_dir():
        return str(Path(spec).resolve())
    file, colon, name = spec.rpartition(":")
    if colon and file.endswith(".py"):
        return f"{Path(file).resolve()}:{name}"
    return spec


def _import_file(path: Path):
    if not path.is_file():
        raise RecipeError(f"file {str(path)!r} does not exist")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"_ppl_target_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RecipeError(f"cannot import {str(path)!r}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    directory = str(path.parent.resolve())
    sys.path.insert(0, directory)
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise RecipeError(
            f"importing {str(path)!r} failed: {type(error).__name__}: {error}"
        ) from error
    finally:
        sys.path.remove(directory)
    return module


def _defined(module) -> list[str]:
    """The programs and functions a module defines itself, for error messages."""
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (
            isinstance(value, Program)
            or (inspect.isfunction(value) and value.__module__ == module.__name__)
        )
    )


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
