"""Programs for the ``ppl`` command-line tests (loaded by path, as users' files are)."""

import math
from pathlib import Path

import pyro.distributions as dist
import torch

import ppl

PRIOR = torch.tensor([0.2, 0.3, 0.5])
LOG_FACTOR = torch.tensor([0.0, -1.0, -2.0])


@ppl.program
def toy(lm, label: str = "x", bias: float = 0.0):
    """LM-free: a categorical choice reweighted by a factor; exact posterior known."""
    x = ppl.sample("x", dist.Categorical(PRIOR))
    ppl.factor("f", LOG_FACTOR[x] + bias * int(x))
    ppl.memo("score", lambda v: v / 2, int(x))
    ppl.answer(f"{label}{int(x)}")


@ppl.program
def two_choices(lm, label: str = "x"):
    """Two random choices with a factor between them, so SMC can resample once."""
    x = ppl.sample("x", dist.Categorical(PRIOR))
    ppl.factor("f", LOG_FACTOR[x])
    y = ppl.sample("y", dist.Bernoulli(0.5))
    ppl.answer(f"{label}{int(x)}{int(y)}")


@ppl.program
def letters(lm, prefix: str, length: int = 3):
    """One token per step after ``prefix``; tokens containing 'e' are rejected."""
    _spell(lm, prefix, length)


@ppl.program
def fragile_letters(lm, prefix: str, fail_marker: str):
    """Like ``letters``, but fails while the file ``fail_marker`` exists (an interrupted run)."""
    if Path(fail_marker).exists():
        raise RuntimeError("failing on purpose")
    _spell(lm, prefix, 3)


def _spell(lm, prefix: str, length: int) -> None:
    text = ""
    for i in range(length):
        token = ppl.step(f"t{i}", lm, prefix + text, stop=(), max_tokens=1)
        ppl.condition(f"no_e{i}", "e" not in token)
        text += token
    ppl.answer(text)


@ppl.program
def broken(lm, text: str):
    """Fails in its second round: the error must name the particle and its trace."""
    x = ppl.sample("x", dist.Categorical(PRIOR))
    ppl.factor("f", LOG_FACTOR[x])
    ppl.sample("y", dist.Bernoulli(0.5))
    ppl.answer(math.log(int(x) - int(x)) + len(text))


@ppl.program
def fragile(lm, label: str, fail_marker: str):
    """Like ``toy``, but fails while the file ``fail_marker`` exists (an interrupted run)."""
    if Path(fail_marker).exists() and label != "a":
        raise RuntimeError("failing on purpose")
    x = ppl.sample("x", dist.Categorical(PRIOR))
    ppl.factor("f", LOG_FACTOR[x])
    ppl.answer(f"{label}{int(x)}")


@ppl.program
def no_answer(lm):
    ppl.sample("x", dist.Categorical(PRIOR))


NOT_CALLABLE = 42
