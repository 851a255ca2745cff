"""The engine registry: names, size parameters, lookup errors and its doctests."""

import doctest
import inspect

import pytest

import inference
from inference import registry
from inference.registry import ENGINES, get_engine
from ppl.errors import InvalidArgumentError


def test_registry_lists_every_engine_in_order():
    assert list(ENGINES) == [
        "importance",
        "smc",
        "beam",
        "dvts",
        "particle_gibbs",
        "mh",
        "parallel_tempering",
    ]
    for name, engine in ENGINES.items():
        assert engine.name == name
        assert engine.fn is getattr(inference, name)
        parameters = inspect.signature(engine.fn).parameters
        assert parameters[engine.size_parameter].kind is inspect.Parameter.KEYWORD_ONLY
        assert "seed" in parameters
    assert [n for n, e in ENGINES.items() if not e.exact] == ["beam", "dvts"]


def test_registry_cannot_be_changed():
    with pytest.raises(TypeError):
        ENGINES["greedy"] = ENGINES["beam"]


@pytest.mark.parametrize("name", ["gibbs", None, ""])
def test_unknown_engine_names_the_available_ones(name):
    with pytest.raises(InvalidArgumentError, match="available: importance, smc, beam, dvts"):
        get_engine(name)


def test_registry_doctests():
    result = doctest.testmod(registry, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 4 and result.failed == 0
