"""Budgets: Bayesian scaling-law fits of accuracy against compute, and sample-size planning.

Two NumPyro models, both fitted with NUTS:

- ``fit_scaling_law``: the exponentiated power law of repeated sampling,
  ``accuracy(k) = exp(-alpha * k ** -beta)`` (``log accuracy`` is a power law in
  the budget ``k``, as coverage is in "Large Language Monkeys"), with
  ``successes_k ~ Binomial(trials_k, accuracy(k))`` at each measured budget.
- ``fit_beta_success``: per-problem success probabilities
  ``p_i ~ Beta(mu * kappa, (1 - mu) * kappa)`` from single-sample outcomes
  ``s_i ~ Binomial(n_i, p_i)`` (marginally beta-binomial). Coverage, the
  chance that at least one of ``k`` samples is correct, is then
  ``1 - E[(1 - p) ** k] = 1 - B(a, b + k) / B(a, b)``.

Both give posterior predictions at unseen budgets with credible intervals,
and ``required_budget(target, confidence)``: the smallest budget whose
accuracy (coverage) is at least ``target`` with posterior probability at
least ``confidence``. Each fit keeps its NUTS diagnostics (largest split
R-hat, smallest effective sample size, number of divergent transitions);
``check()`` raises when they say the fit is unreliable.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from inference.nuts import NutsDiagnostics, run_nuts
from ppl.errors import FitDiagnosticsError, InvalidArgumentError


@dataclass
class _Fit(abc.ABC):
    samples: dict[str, np.ndarray]
    diagnostics: NutsDiagnostics
    data: dict[str, list] = field(default_factory=dict)

    def check(self, max_r_hat: float = 1.05, min_ess: float = 100.0) -> None:
        """Raise ``FitDiagnosticsError`` unless R-hat, ESS and divergences look healthy.

        Example (``fit`` from ``fit_scaling_law``'s example):
            >>> fit.check()
            >>> fit.check(min_ess=10_000)
            Traceback (most recent call last):
                ...
            ppl.errors.FitDiagnosticsError: NUTS fit is unreliable: ... (want >= 10000), ...
        """
        self.diagnostics.check(max_r_hat, min_ess)

    @abc.abstractmethod
    def curve(self, budgets) -> np.ndarray:
        """Posterior draws of the curve at ``budgets``: ``[num_draws, len(budgets)]``."""

    def predict(self, budgets: Sequence[float], interval: float = 0.9) -> dict[str, np.ndarray]:
        """Posterior mean and central ``interval`` of the curve at each budget.

        Example (``fit`` from ``fit_scaling_law``'s example):
            >>> fit.predict([64, 128])["mean"].round(1)
            array([0.8, 0.9])
        """
        if not 0 < interval < 1:
            raise InvalidArgumentError(f"interval must be in (0, 1), got {interval!r}")
        draws = self.curve(_budgets(budgets))
        tail = (1 - interval) / 2
        return {
            "budget": np.asarray(budgets, dtype=float),
            "mean": draws.mean(0),
            "low": np.quantile(draws, tail, axis=0),
            "high": np.quantile(draws, 1 - tail, axis=0),
        }

    def required_budget(
        self, target: float, confidence: float = 0.9, max_budget: int = 2**20
    ) -> int | None:
        """Smallest budget ``k`` with ``P(curve(k) >= target | data) >= confidence``.

        ``None`` when even ``max_budget`` does not reach it (e.g. the target is
        above what the fitted curve can reach with that confidence).

        Example (``fit`` from ``fit_scaling_law``'s example; about a hundred samples):
            >>> 90 < fit.required_budget(0.8, confidence=0.9) < 150
            True
        """
        if not 0 < target < 1:
            raise InvalidArgumentError(f"target must be in (0, 1), got {target!r}")
        if not 0 < confidence < 1:
            raise InvalidArgumentError(f"confidence must be in (0, 1), got {confidence!r}")

        def reaches(k: int) -> bool:
            return float((self.curve([k])[:, 0] >= target).mean()) >= confidence

        # The curve increases with the budget: double, then bisect.
        high = 1
        while not reaches(high):
            if high >= max_budget:
                return None
            high = min(2 * high, max_budget)
        low = high // 2
        while high - low > 1:
            middle = (low + high) // 2
            if reaches(middle):
                high = middle
            else:
                low = middle
        return high

    def interval(self, name: str, interval: float = 0.95) -> tuple[float, float]:
        """Central posterior interval of parameter ``name``."""
        tail = (1 - interval) / 2
        values = self.samples[name]
        return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))

    def summary(self, planning: dict | None = None) -> dict:
        """JSON-ready: parameter means and 95% intervals, diagnostics, data."""
        out = {
            "parameters": {
                name: {"mean": float(v.mean()), "interval_95": list(self.interval(name))}
                for name, v in self.samples.items()
            },
            "diagnostics": self.diagnostics.__dict__,
            "data": self.data,
        }
        if planning:
            out["planning"] = planning
        return out


@dataclass
class ScalingLawFit(_Fit):
    """Posterior of ``accuracy(k) = exp(-alpha * k ** -beta)``; see ``fit_scaling_law``."""

    def curve(self, budgets) -> np.ndarray:
        k = _budgets(budgets)
        alpha = self.samples["alpha"][:, None]
        beta = self.samples["beta"][:, None]
        return np.exp(-alpha * k[None, :] ** -beta)


@dataclass
class BetaSuccessFit(_Fit):
    """Posterior of a per-problem Beta success model; its curve is coverage (pass@k)."""

    def curve(self, budgets) -> np.ndarray:
        from scipy.special import betaln

        k = _budgets(budgets)
        a = self.samples["a"][:, None]
        b = self.samples["b"][:, None]
        return 1.0 - np.exp(betaln(a, b + k[None, :]) - betaln(a, b))


def fit_scaling_law(
    budgets: Sequence[float],
    successes: Sequence[int],
    trials: Sequence[int],
    *,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    seed: int = 0,
) -> ScalingLawFit:
    """Fit ``accuracy(k) = exp(-alpha * k ** -beta)`` to measured accuracies with NUTS.

    ``successes[i]`` of ``trials[i]`` runs at budget ``budgets[i]`` were
    correct (problems x seeds). Priors: ``log alpha ~ Normal(0, 2)``,
    ``log beta ~ Normal(-1, 1)``. ``num_chains`` chains run one after
    another, each ``num_warmup`` adaptation steps then ``num_samples`` draws;
    ``seed`` fixes them.

    Example (a small fit, 500 draws per chain; extrapolated to 64 and 128 samples):
        >>> fit = fit_scaling_law([1, 2, 4, 8], [30, 42, 55, 63], [100] * 4,
        ...                       num_warmup=200, num_samples=500)
        >>> fit.check()
        >>> fit.predict([64, 128])["mean"].round(1), round(fit.required_budget(0.8), -2)
        (array([0.8, 0.9]), 100)
    """
    k, s, n = _check_counts(budgets, successes, trials)
    if len(np.unique(k)) < 2:
        raise InvalidArgumentError("a scaling law needs accuracies at two budgets or more")

    def model(k, n, s=None):
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as nd

        log_alpha = numpyro.sample("log_alpha", nd.Normal(0.0, 2.0))
        log_beta = numpyro.sample("log_beta", nd.Normal(-1.0, 1.0))
        alpha = numpyro.deterministic("alpha", jnp.exp(log_alpha))
        beta = numpyro.deterministic("beta", jnp.exp(log_beta))
        # log accuracy = -alpha k^-beta; as a logit: log p - log(1 - p), computed stably.
        log_p = -alpha * k**-beta
        logits = log_p - jnp.log(-jnp.expm1(log_p))
        numpyro.sample("successes", nd.Binomial(n, logits=logits), obs=s)

    samples, diagnostics = run_nuts(
        model, (k, n, s), ("log_alpha", "log_beta"), num_warmup, num_samples, num_chains, seed
    )
    data = {"budgets": k.tolist(), "successes": s.tolist(), "trials": n.tolist()}
    return ScalingLawFit({n_: samples[n_] for n_ in ("alpha", "beta")}, diagnostics, data)


def fit_beta_success(
    successes: Sequence[int],
    trials: Sequence[int],
    *,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    seed: int = 0,
) -> BetaSuccessFit:
    """Fit per-problem success probabilities ``p_i ~ Beta(a, b)`` to single-sample outcomes.

    ``successes[i]`` of ``trials[i]`` independent samples for problem ``i``
    were correct. ``a = mu * kappa``, ``b = (1 - mu) * kappa`` with
    ``mu ~ Uniform(0, 1)`` and ``log kappa ~ Normal(1, 1.5)``. Its curve is
    coverage at ``k`` samples (pass@k). Chains, warm-up, draws and seed are
    as in ``fit_scaling_law``.

    Example (a small fit; problems that almost never succeed make 90% coverage
    cost tens of thousands of samples; compiling this model's NUTS takes about 15 s):
        >>> fit = fit_beta_success([3, 0, 10, 1], [10] * 4,
        ...                        num_warmup=200, num_samples=300)
        >>> fit.check()
        >>> fit.predict([1, 8])["mean"].round(1), fit.required_budget(0.9, 0.8) > 10_000
        (array([0.4, 0.7]), True)
    """
    _, s, n = _check_counts(np.ones(len(successes)), successes, trials)

    def model(n, s=None):
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as nd

        mu = numpyro.sample("mu", nd.Uniform(0.0, 1.0))
        log_kappa = numpyro.sample("log_kappa", nd.Normal(1.0, 1.5))
        kappa = jnp.exp(log_kappa)
        a = numpyro.deterministic("a", mu * kappa)
        b = numpyro.deterministic("b", (1 - mu) * kappa)
        numpyro.sample("successes", nd.BetaBinomial(a, b, n), obs=s)

    samples, diagnostics = run_nuts(
        model, (n, s), ("mu", "log_kappa"), num_warmup, num_samples, num_chains, seed
    )
    data = {"successes": s.tolist(), "trials": n.tolist()}
    return BetaSuccessFit({n_: samples[n_] for n_ in ("a", "b", "mu")}, diagnostics, data)


def _budgets(budgets) -> np.ndarray:
    k = np.asarray(budgets, dtype=float).reshape(-1)
    if k.size == 0 or not np.all(np.isfinite(k)) or np.any(k <= 0):
        raise InvalidArgumentError(f"budgets must be positive numbers, got {budgets!r}")
    return k


def _check_counts(budgets, successes, trials):
    k = _budgets(budgets)
    s = np.asarray(successes)
    n = np.asarray(trials)
    if not (len(k) == len(s) == len(n)):
        raise InvalidArgumentError(
            f"budgets, successes and trials must have one entry each per measurement; got "
            f"{len(k)}, {len(s)}, {len(n)}"
        )
    if (
        not np.all(np.equal(np.mod(s, 1), 0))
        or not np.all(np.equal(np.mod(n, 1), 0))
        or np.any(n < 1)
        or np.any(s < 0)
        or np.any(s > n)
    ):
        raise InvalidArgumentError(
            "successes and trials must be whole numbers with 0 <= successes <= trials, trials >= 1"
        )
    return k, s.astype(np.int32), n.astype(np.int32)


__all__ = [
    "BetaSuccessFit",
    "FitDiagnosticsError",
    "NutsDiagnostics",
    "ScalingLawFit",
    "fit_beta_success",
    "fit_scaling_law",
]
