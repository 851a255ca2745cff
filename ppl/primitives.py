"""The primitives of reasoning programs.

Outside inference they simply run: ``step`` asks the model for text, ``sample``
draws, factors are ignored. Under an inference engine they become sites of a
trace that the engine replays, weights and resamples.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.distributions import Unit
from pyro.poutine.runtime import am_i_wrapped, effectful

from ppl.distributions import LMStep, make_request
from ppl.errors import InvalidArgumentError
from ppl.handlers.replay_messenger import record_factor_fast, replay_fast
from ppl.lm import LM, Context, LogitsProcessor
from ppl.values import Step


def step(
    name: str,
    lm: LM,
    context: Context,
    *,
    stop: tuple[str, ...] = ("\n",),
    max_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    proposal_temperature: float | None = None,
    logits_processor: LogitsProcessor | None = None,
    top_logprobs: int = 0,
) -> Step:
    """Ask ``lm`` for one reasoning step after ``context``.

    Generation stops after the token that completes a stop string, at EOS, or
    after ``max_tokens`` tokens; ``stop=()`` means no stop string. A ``str``
    context is tokenized as raw text, a ``ppl.Chat`` with the chat template.

    The step's distribution is the model as practitioners sample it: per
    token, the softmax of ``logits / temperature``, truncated to the ``top_k``
    most likely tokens and the ``top_p`` nucleus, renormalised (``ppl.sampler``).
    ``proposal_temperature`` and ``logits_processor`` (e.g.
    ``models.BannedTokens``) shape the proposal only, and engines weight each
    step by ``log p - log q``. ``temperature=1, proposal_temperature=T`` keeps
    the untempered model as the target and samples at ``T``.
    ``top_logprobs=k`` records, per generated token, the ``k`` largest
    log-probabilities of the target in ``Step.top_logprobs`` (confidence signals).

    Example:
        >>> @ppl.program
        ... def haiku(lm):
        ...     line = ppl.step("line", lm, "Rain:\\n", max_tokens=16, temperature=0.7)
        ...     ppl.answer(line.strip())
    """
    # Replays build nothing: the request is hashed only on a site's first replay.
    recorded = replay_fast(
        name,
        "step",
        lambda: hash(
            make_request(
                context,
                stop,
                max_tokens,
                logits_processor=logits_processor,
                **_sampling(temperature, top_k, top_p, proposal_temperature, top_logprobs),
            )
        ),
    )
    if recorded is not None:
        return recorded.value
    _check_name(name)
    dist = LMStep(
        lm,
        context,
        stop=stop,
        max_tokens=max_tokens,
        logits_processor=logits_processor,
        **_sampling(temperature, top_k, top_p, proposal_temperature, top_logprobs),
    )
    return pyro.sample(name, dist, infer={"ppl_kind": "step"})


def _sampling(temperature, top_k, top_p, proposal_temperature, top_logprobs) -> dict:
    return {
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "proposal_temperature": proposal_temperature,
        "top_logprobs": top_logprobs,
    }


def sample(name: str, fn, *, proposal=None):
    """Draw from a Pyro distribution ``fn``; with ``proposal``, draw from it and weight.

    Example:
        >>> @ppl.program
        ... def pick():
        ...     ppl.answer(int(ppl.sample("strategy", dist.Categorical(torch.ones(3)))))
        >>> sorted(ppl.importance(pick, num_particles=32, seed=0).answer_distribution())
        [0, 1, 2]
    """
    recorded = replay_fast(name, "sample")
    if recorded is not None:
        return recorded.value
    _check_name(name)
    infer = {"ppl_kind": "sample"}
    if proposal is not None:
        infer["ppl_proposal"] = proposal
    return pyro.sample(name, fn, infer=infer)


def factor(name: str, log_weight) -> None:
    """Multiply the program's density by ``exp(log_weight)`` (a verifier, reward, prior).

    Example:
        >>> @ppl.program
        ... def graded():
        ...     heads = int(ppl.sample("flip", dist.Bernoulli(0.5)))
        ...     ppl.factor("verifier", math.log(0.9 if heads else 0.1))
        ...     ppl.answer(heads)
        >>> round(ppl.importance(graded, num_particles=400, seed=0).answer_distribution()[1], 1)
        0.9
    """
    if replay_fast(name, "factor") is None:
        _check_name(name)
        _factor(name, _log_factor(log_weight, name), "factor")


def condition(name: str, ok) -> None:
    """Keep only executions where ``ok`` is true (a hard constraint).

    Example:
        >>> @ppl.program
        ... def heads_only():
        ...     heads = int(ppl.sample("flip", dist.Bernoulli(0.5)))
        ...     ppl.condition("heads", heads == 1)
        ...     ppl.answer(heads)
        >>> ppl.importance(heads_only, num_particles=16, seed=0).answer_distribution()
        {1: 1.0}
    """
    if replay_fast(name, "condition") is None:
        _check_name(name)
        _factor(name, 0.0 if bool(ok) else -math.inf, "condition")


def observe(name: str, fn, value) -> None:
    """Condition on ``value`` having been drawn from distribution ``fn``.

    Example:
        >>> @ppl.program
        ... def positive_mean():
        ...     mu = ppl.sample("mu", dist.Normal(0.0, 1.0))
        ...     ppl.observe("score", dist.Normal(mu, 1.0), torch.tensor(2.0))
        ...     ppl.answer(bool(mu > 0))
        >>> post = ppl.importance(positive_mean, num_particles=1000, seed=0)
        >>> round(post.answer_distribution()[True], 1)  # P(mu > 0 | score) = 0.92
        0.9
    """
    # Outside inference an observation has no effect.
    if am_i_wrapped() and replay_fast(name, "observe") is None:
        _check_name(name)
        pyro.sample(name, fn, obs=value, infer={"ppl_kind": "observe"})


def _identity(value):
    return value


_twist = effectful(_identity, type="ppl_twist")
_answer = effectful(_identity, type="ppl_answer")


@effectful(type="ppl_memo")
def _memo(fn, *args):
    return fn(*args)


def twist(log_psi) -> None:
    """Set the particle's intermediate potential to ``log_psi``.

    SMC adds ``log_psi_t - log_psi_{t-1}`` at each call and removes the last
    potential when the program ends, so twists guide resampling without
    changing the target.

    Example:
        >>> @ppl.program
        ... def guided():
        ...     heads = int(ppl.sample("flip", dist.Bernoulli(0.5)))
        ...     ppl.twist(math.log(0.9 if heads else 0.1))  # steers resampling only
        ...     ppl.sample("again", dist.Bernoulli(0.5))
        ...     ppl.answer(heads)
        >>> round(ppl.smc(guided, num_particles=500, seed=0).answer_distribution()[1], 1)
        0.5
    """
    if replay_fast(None, "twist") is None:
        _twist(_log_factor(log_psi, "twist"), name=None)


def memo(name: str, fn: Callable, *args, batch: Callable[[list], list] | None = None) -> Any:
    """Call ``fn(*args)`` once per particle and record the result.

    Re-executions of the program replay the recorded result instead of calling
    ``fn`` again, so verifiers, tools and judges run once per trace.
    ``batch``, if given, computes many calls at once:
    ``batch([args_1, args_2, ...]) == [fn(*args_1), fn(*args_2), ...]``.
    Importance sampling and SMC then make one ``batch`` call for all the
    particles that reach the site in a round (a reward model scores them in
    one forward pass); other engines call ``fn``. Calls are grouped by
    ``batch`` itself, so pass the same function (or a bound method of the
    same object) in every particle, not a lambda made inside the program.

    Example:
        >>> calls = []
        >>> def is_even(x):
        ...     calls.append(x)
        ...     return x % 2 == 0
        >>> @ppl.program
        ... def checked():
        ...     x = int(ppl.sample("x", dist.Categorical(torch.ones(4))))
        ...     ppl.condition("even", ppl.memo("check", is_even, x))
        ...     ppl.sample("more", dist.Bernoulli(0.5))
        ...     ppl.answer(x)
        >>> post = ppl.smc(checked, num_particles=8, seed=0)
        >>> len(calls)  # once per particle, though SMC re-executes the program
        8
    """
    recorded = replay_fast(name, "memo")
    if recorded is not None:
        return recorded.value
    _check_name(name)
    if batch is None:
        return _memo(fn, *args, name=name)
    if not callable(batch):
        raise InvalidArgumentError(f"batch must be callable, got {type(batch).__name__}")
    return _memo(fn, *args, name=name, infer={"ppl_batch": batch})


def answer(value) -> Any:
    """Declare the program's quantity of interest; it must be hashable.

    Example:
        >>> sorted(set(ppl.importance(coin, num_particles=16, seed=0).answers))  # coin's answers
        [0, 1]
    """
    try:
        hash(value)
    except TypeError as error:
        raise InvalidArgumentError(
            f"ppl.answer needs a hashable value (str, int, tuple...), got {type(value).__name__}"
        ) from error
    recorded = replay_fast("answer", "answer")
    return recorded.value if recorded is not None else _answer(value, name="answer")


class Program:
    """A reasoning program: a Python function whose randomness goes through ppl primitives.

    Calling it runs it once, forwards, with factors ignored. Inference engines
    take it as their first argument.

    Example:
        >>> @ppl.program
        ... def coin():
        ...     x = ppl.sample("x", dist.Bernoulli(0.5))
        ...     ppl.answer(int(x))
        >>> posterior = ppl.importance(coin, num_particles=8, seed=0)
    """

    def __init__(self, fn: Callable):
        if not callable(fn):
            raise InvalidArgumentError(f"@ppl.program needs a function, got {fn!r}")
        self.fn = fn
        self.name = getattr(fn, "__qualname__", repr(fn))
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<ppl.program {self.name}>"


def program(fn: Callable) -> Program:
    """Mark ``fn`` as a reasoning program (see ``Program``)."""
    return fn if isinstance(fn, Program) else Program(fn)


def _check_name(name) -> None:
    # Checked when a site is new: a replayed name equals its recorded, checked, one.
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"site names must be non-empty strings, got {name!r}")
    if name == "answer":
        raise InvalidArgumentError(
            "site name 'answer' is reserved for ppl.answer; give this site another name"
        )


def _log_factor(value, name: str) -> float:
    result = float(value) if isinstance(value, int | float) else float(torch.as_tensor(value).sum())
    if math.isnan(result) or result == math.inf:
        raise InvalidArgumentError(f"log weight at site {name!r} is {result}; use -inf to reject")
    return result


def _factor(name: str, log_factor: float, kind: str) -> None:
    if not am_i_wrapped():  # outside inference a factor has no effect
        return
    if record_factor_fast(name, kind, log_factor):
        return
    unit = Unit(torch.tensor(log_factor))
    infer = {"ppl_kind": kind, "ppl_log_factor": log_factor}
    pyro.sample(name, unit, obs=unit.sample(), infer=infer)
