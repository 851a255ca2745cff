"""How the ``ppl`` subcommands report: messages, one JSON result, progress bars, failures.

Failures exit with status 1 and a one-line reason (a JSON object with
``--json``); ``--debug`` shows the traceback instead. An exception inside a
particle is shown with that particle's trace so far.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from ppl.errors import ParticleError, PPLError

TRACE_LINES = 20


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
        message = reason(error)
        sites = error.sites if isinstance(error, ParticleError) else ()
        if self.as_json:
            click.echo(
                json.dumps(
                    {
                        "error": message,
                        "type": type(error).__name__,
                        "trace": [site_text(site) for site in sites],
                    }
                )
            )
        else:
            click.echo(f"Error: {message}", err=True)
            if sites:
                shown = f", the last {TRACE_LINES}" if len(sites) > TRACE_LINES else ""
                click.echo(f"Trace of the particle so far ({len(sites)} sites{shown}):", err=True)
                for site in sites[-TRACE_LINES:]:
                    click.echo(f"  {site_text(site)}", err=True)
        sys.exit(1)


def reason(error: Exception, *, hint: bool = True) -> str:
    """A one-line reason for ``error``; other than ours, with its type and a ``--debug`` hint.

    Example:
        >>> reason(ppl.RecipeError("recipe 'x.toml' does not exist"))
        "recipe 'x.toml' does not exist"
        >>> reason(KeyError("q"))
        "KeyError: 'q' (rerun with --debug for the traceback)"
    """
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    notes = [n for n in getattr(error, "__notes__", ()) if n.startswith("while running")]
    if notes:
        text += f" ({notes[0]})"
    if not isinstance(error, PPLError | OSError):
        text = f"{type(error).__name__}: {text}"
        if hint:
            text += " (rerun with --debug for the traceback)"
    return text


def site_text(site) -> str:
    """One line for a site of a particle's trace: name, kind, value and log weight."""
    value = repr(str(site.value)) if isinstance(site.value, str) else repr(site.value)
    if len(value) > 80:
        value = value[:77] + "..."
    return f"{site.name} [{site.kind}] = {value}   log weight {site.log_weight:.3f}"
