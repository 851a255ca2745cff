"""Objects the docstring examples use, so that they run as tests (``make test``).

``lm`` is a tiny randomly initialised llama over the characters ``a b c e``
(see ``tests/tiny.py``), ``program`` a two-step program over it, ``post``
its SMC posterior, and ``coin`` a program of one biased coin flip.
"""

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch

import models
import ppl
from tests.tiny import make_tiny_lm


@ppl.program
def two_letters(lm, prompt: str):
    """Two one-letter steps; a condition rules out ``e``; the answer is the letters."""
    text = prompt
    for i in range(2):
        letter = ppl.step(f"letter_{i}", lm, text, stop=(), max_tokens=1)
        ppl.condition(f"no_e_{i}", "e" not in letter)
        text += letter
    ppl.answer(text[len(prompt) :])


@ppl.program
def coin():
    """One biased coin flip (heads with probability 0.3); the answer is 1 for heads."""
    ppl.answer(int(ppl.sample("flip", dist.Bernoulli(0.3)).item()))


@pytest.fixture(autouse=True)
def _doctest_objects(request, doctest_namespace):
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    lm = make_tiny_lm()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from threads on a busy machine
    doctest_namespace.update(
        ppl=ppl,
        models=models,
        dist=dist,
        torch=torch,
        math=math,
        np=np,
        lm=lm,
        program=two_letters,
        coin=coin,
        post=ppl.smc(two_letters, lm, "a", num_particles=8, seed=0),
    )
    yield
    torch.set_num_threads(threads)
