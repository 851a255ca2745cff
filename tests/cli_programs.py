"""Programs for the ``ppl`` command-line tests (loaded by path, as users' files are)."""

import math

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
def letters(lm, prefix: str, length: int = 3):
    """One token per step after ``prefix``; tokens containing 'e' are rejected."""
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


def not_a_program_constant():
    return 1


NOT_CALLABLE = 42
