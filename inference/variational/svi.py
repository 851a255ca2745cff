"""SVI over a program's meta-choices, and the fitted guide as an importance proposal.

A program's ``ppl.sample`` sites (prompt template, strategy, temperature,
number of steps) are its meta-choices ``m``; its LM steps and factors define
the posterior ``pi(m) ∝ p(m) * E_p[L | m]`` over them, ``L`` the product of the
program's factors. A ``Guide`` is a mean-field family ``q_phi(m)`` over named
sites (Pyro distributions with torch parameters). ``svi`` fits it by
stochastic gradient steps, each from one batched importance run of the
program with the guide as proposal (``guided``): the meta-choices are drawn
from ``q_phi`` and weighted by ``log p - log q``, the rest of the program runs
as usual, so each particle's log weight ``w`` is ``log p(m) - log q(m)`` plus
its likelihood (and the LM steps' own corrections).

Objectives:

- ``"inclusive"`` (default; reweighted wake-sleep's wake update): minimises
  ``KL(pi || q_phi)`` with the gradient ``-sum_k w~_k grad log q_phi(m_k)``,
  ``w~`` the self-normalised weights. Its fixed point is ``q = pi`` as the
  number of particles grows, for any likelihood, hard conditions included.
- ``"elbo"``: maximises the ELBO ``E_q[w]`` with the score-function
  (REINFORCE) gradient and a leave-one-out baseline (the mean of the other
  particles' ``w``). Its optimum is ``q(m) ∝ p(m) exp(E_p[log L | m])``, the
  posterior when the likelihood is a function of the meta-choices; it needs
  every particle's likelihood to be positive.

Whatever the fit, ``importance(guided(program, guide), ...)`` stays exact:
the guide only changes the proposal and the weights correct for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from torch import nn

from inference.importance import importance
from ppl.errors import InvalidArgumentError
from ppl.primitives import Program, program
from ppl.runtime import as_program


class Categorical(nn.Module):
    """A guide family over ``{0, ..., num_categories - 1}``, starting uniform.

    Example:
        >>> Categorical(3).distribution().probs.tolist()
        [0.3333333432674408, 0.3333333432674408, 0.3333333432674408]
    """

    def __init__(self, num_categories: int):
        super().__init__()
        if not (isinstance(num_categories, int) and num_categories >= 2):
            raise InvalidArgumentError(
                f"num_categories must be an int >= 2, got {num_categories!r}"
            )
        self.logits = nn.Parameter(torch.zeros(num_categories))

    def distribution(self) -> dist.Distribution:
        return dist.Categorical(logits=self.logits)


class Normal(nn.Module):
    """A guide family over the reals: ``Normal(loc, scale)``, starting at ``(loc, scale)``.

    Example:
        >>> Normal(0.0, 2.0).distribution().stddev.item()
        2.0
    """

    def __init__(self, loc: float = 0.0, scale: float = 1.0):
        super().__init__()
        if not scale > 0:
            raise InvalidArgumentError(f"scale must be > 0, got {scale!r}")
        self.loc = nn.Parameter(torch.tensor(float(loc)))
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def distribution(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.log_scale.exp())


class LogNormal(Normal):
    """A guide family over positive reals (temperatures, rates): ``exp`` of a ``Normal``.

    Example:
        >>> LogNormal(0.0, 0.5).distribution().support
        GreaterThan(lower_bound=0.0)
    """

    def distribution(self) -> dist.Distribution:
        return dist.LogNormal(self.loc, self.log_scale.exp())


class Guide(nn.Module):
    """A mean-field guide: one family per named ``ppl.sample`` site.

    Sites of the program that the guide does not name keep the program's own
    proposal. Parameters are torch parameters (``guide.parameters()``);
    ``guide.distribution(name)`` is the Pyro distribution at a site.

    Example:
        >>> guide = Guide(strategy=Categorical(3), temperature=LogNormal(0.0, 0.3))
        >>> sorted(guide.site_names)
        ['strategy', 'temperature']
    """

    def __init__(self, **sites: nn.Module):
        super().__init__()
        if not sites:
            raise InvalidArgumentError("a Guide needs at least one site, e.g. Guide(x=Normal())")
        for name, family in sites.items():
            if not hasattr(family, "distribution"):
                raise InvalidArgumentError(
                    f"guide site {name!r} needs a family (Categorical, Normal, LogNormal), "
                    f"got {type(family).__name__}"
                )
        self.sites = nn.ModuleDict(sites)

    @property
    def site_names(self) -> list[str]:
        return list(self.sites.keys())

    def distribution(self, name: str) -> dist.Distribution:
        return self.sites[name].distribution()

    def log_prob(self, values: dict[str, object]) -> torch.Tensor:
        """``log q(values)`` with gradients with respect to the guide's parameters."""
        return sum(
            self.distribution(name).log_prob(torch.as_tensor(value)).sum()
            for name, value in values.items()
        )

    def probabilities(self, name: str) -> dict[int, float]:
        """The guide's probability of each category at a ``Categorical`` site.

        Example:
            >>> Guide(k=Categorical(2)).probabilities("k")
            {0: 0.5, 1: 0.5}
        """
        family = self.sites[name]
        if not isinstance(family, Categorical):
            raise InvalidArgumentError(f"guide site {name!r} is not Categorical")
        with torch.no_grad():
            return {i: float(p) for i, p in enumerate(family.distribution().probs)}


class _GuideMessenger(Messenger):
    # Innermost handler: it sees a new sample site before escape does, and
    # names the guide's distribution as the site's proposal.
    def __init__(self, guide: Guide):
        super().__init__()
        self.guide = guide

    def _pyro_sample(self, msg) -> None:
        name = msg["name"]
        if msg["infer"].get("ppl_kind") == "sample" and name in self.guide.sites:
            with torch.no_grad():
                proposal = self.guide.distribution(name)
            msg["infer"] = {**msg["infer"], "ppl_proposal": proposal}


def guided(prog: Callable, guide: Guide) -> Program:
    """``prog`` with ``guide``'s distributions as the proposals of its named sample sites.

    Engines weight those sites by ``log p - log q``, so any engine run on the
    guided program targets the same posterior as on ``prog``.

    Example:
        >>> @ppl.program
        ... def choose():
        ...     ppl.answer(ppl.sample("x", dist.Categorical(torch.tensor([0.9, 0.1]))).item())
        >>> guide = Guide(x=Categorical(2))
        >>> post = ppl.importance(guided(choose, guide), num_particles=400, seed=0)
        >>> round(post.answer_distribution()[1], 1)
        0.1
    """
    if not isinstance(guide, Guide):
        raise InvalidArgumentError(f"guided needs a Guide, got {type(guide).__name__}")
    inner = as_program(prog)

    def run(*args, **kwargs):
        with _GuideMessenger(guide):
            return inner.fn(*args, **kwargs)

    run.__qualname__ = f"guided({inner.name})"
    return program(run)


@dataclass
class SVIResult:
    """What ``svi`` did: the fitted guide, and per step the loss and the ESS of its particles."""

    guide: Guide
    losses: list[float] = field(default_factory=list)
    ess: list[float] = field(default_factory=list)


def svi(
    prog: Callable,
    *args,
    guide: Guide,
    num_steps: int,
    num_particles: int = 32,
    objective: str = "inclusive",
    learning_rate: float = 0.05,
    final_learning_rate: float | None = None,
    seed: int | None = None,
    **kwargs,
) -> SVIResult:
    """Fit ``guide`` to the posterior over ``prog``'s meta-choices; returns an ``SVIResult``.

    Each of ``num_steps`` Adam steps draws ``num_particles`` particles from
    ``guided(prog, guide)`` (one batched importance run) and follows the
    ``objective``'s gradient (see the module docstring). The learning rate
    decays geometrically from ``learning_rate`` to ``final_learning_rate``
    (default a tenth of it), which settles the stochastic iterates.

    Example (the posterior over ``strategy`` is ``(0.1, 0.3, 0.6)``):
        >>> @ppl.program
        ... def choose():
        ...     strategy = int(ppl.sample("strategy", dist.Categorical(torch.ones(3) / 3)))
        ...     ppl.factor("works", math.log([0.1, 0.3, 0.6][strategy]))
        ...     ppl.answer(strategy)
        >>> guide = Guide(strategy=Categorical(3))
        >>> result = svi(choose, guide=guide, num_steps=20, num_particles=16, learning_rate=0.3,
        ...              seed=0)
        >>> {k: round(p, 2) for k, p in guide.probabilities("strategy").items()}
        {0: 0.07, 1: 0.25, 2: 0.68}
    """
    if objective not in ("inclusive", "elbo"):
        raise InvalidArgumentError(f"objective must be 'inclusive' or 'elbo', got {objective!r}")
    if not isinstance(guide, Guide):
        raise InvalidArgumentError(f"svi needs a Guide, got {type(guide).__name__}")
    if not (isinstance(num_steps, int) and num_steps >= 1):
        raise InvalidArgumentError(f"num_steps must be a positive int, got {num_steps!r}")
    if not (isinstance(num_particles, int) and num_particles >= 2):
        raise InvalidArgumentError(f"num_particles must be an int >= 2, got {num_particles!r}")
    final = learning_rate / 10 if final_learning_rate is None else final_learning_rate
    guided_prog = guided(prog, guide)
    optimizer = torch.optim.Adam(guide.parameters(), lr=learning_rate)
    decay = (final / learning_rate) ** (1 / max(num_steps - 1, 1))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, decay)
    seeds = np.random.SeedSequence(seed).generate_state(num_steps, dtype=np.uint64)
    result = SVIResult(guide)
    for step in range(num_steps):
        posterior = importance(
            guided_prog, *args, num_particles=num_particles, seed=int(seeds[step]), **kwargs
        )
        log_weights = torch.as_tensor(np.asarray(posterior.log_weights), dtype=torch.float32)
        log_q = torch.stack([guide.log_prob(_guided_values(t, guide)) for t in posterior.particles])
        if objective == "inclusive":
            if not torch.isfinite(log_weights).any():
                raise InvalidArgumentError(
                    f"svi step {step}: every particle has weight zero; use more particles or a "
                    "guide that covers the program's accepted choices"
                )
            normalized = torch.softmax(log_weights, dim=0)
            loss = -(normalized * log_q).sum()
        else:
            if not torch.isfinite(log_weights).all():
                raise InvalidArgumentError(
                    f"svi step {step}: a particle has likelihood zero, so the ELBO is -inf; "
                    "use objective='inclusive' for programs with hard conditions"
                )
            total = log_weights.sum()
            baseline = (total - log_weights) / (num_particles - 1)
            loss = -((log_weights - baseline) * log_q).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        result.losses.append(loss.item())
        result.ess.append(float(posterior.ess))
    return result


def _guided_values(trace, guide: Guide) -> dict[str, object]:
    return {s.name: s.value for s in trace.sites if s.kind == "sample" and s.name in guide.sites}


__all__ = [
    "Categorical",
    "Guide",
    "LogNormal",
    "Normal",
    "SVIResult",
    "guided",
    "svi",
]
