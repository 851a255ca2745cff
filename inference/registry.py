"""The engine registry: every inference engine by name, with the argument that sizes it.

One table serves every caller that picks an engine by name (``ppl.run``, the
``ppl`` command, recipes and the bench harness), so an engine is added in one
place. ``exact`` says whether the engine's weighted particles target the
program's posterior (search engines do not: their weights are scores).

Example:
    >>> from inference.registry import ENGINES, get_engine
    >>> list(ENGINES)[:3]
    ['importance', 'smc', 'beam']
    >>> get_engine("beam").size_parameter, get_engine("beam").exact
    ('beam_width', False)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from inference.beam import beam, dvts
from inference.importance import importance
from inference.mcmc import mh, parallel_tempering, particle_gibbs
from inference.smc import smc
from ppl.errors import InvalidArgumentError
from ppl.posterior import Posterior


@dataclass(frozen=True)
class Engine:
    """One inference engine: ``fn(program, *args, <size_parameter>=..., seed=..., **settings)``."""

    name: str
    fn: Callable[..., Posterior]
    size_parameter: str
    exact: bool


ENGINES: Mapping[str, Engine] = MappingProxyType(
    {
        engine.name: engine
        for engine in (
            Engine("importance", importance, "num_particles", exact=True),
            Engine("smc", smc, "num_particles", exact=True),
            Engine("beam", beam, "beam_width", exact=False),
            Engine("dvts", dvts, "num_subtrees", exact=False),
            Engine("particle_gibbs", particle_gibbs, "num_particles", exact=True),
            Engine("mh", mh, "num_steps", exact=True),
            Engine("parallel_tempering", parallel_tempering, "num_steps", exact=True),
        )
    }
)


def get_engine(name: str) -> Engine:
    """The engine called ``name``.

    Example:
        >>> get_engine("smc").size_parameter
        'num_particles'
        >>> get_engine("nuts")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ppl.errors.InvalidArgumentError: unknown method 'nuts'; available: importance, smc, ...
    """
    try:
        return ENGINES[name]
    except (KeyError, TypeError):
        raise InvalidArgumentError(
            f"unknown method {name!r}; available: {', '.join(ENGINES)}"
        ) from None
