"""NUTS for the small NumPyro models of budgets and score calibration, with diagnostics.

``run_nuts`` samples a model and reports the largest split R-hat, the
smallest bulk ESS and the number of divergent transitions
(``NutsDiagnostics``); ``check()`` raises when they say the fit is unreliable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ppl.errors import FitDiagnosticsError, InvalidArgumentError


@dataclass
class NutsDiagnostics:
    """NUTS diagnostics of a fit: largest split R-hat, smallest bulk ESS, divergences."""

    max_r_hat: float
    min_ess: float
    divergences: int
    num_chains: int
    num_samples: int

    def ok(self, max_r_hat: float = 1.05, min_ess: float = 100.0) -> bool:
        return self.max_r_hat <= max_r_hat and self.min_ess >= min_ess and self.divergences == 0

    def check(self, max_r_hat: float = 1.05, min_ess: float = 100.0) -> None:
        """Raise ``FitDiagnosticsError`` unless R-hat, ESS and divergences look healthy."""
        if not self.ok(max_r_hat, min_ess):
            raise FitDiagnosticsError(
                f"NUTS fit is unreliable: max R-hat {self.max_r_hat:.3f} (want <= {max_r_hat}), "
                f"min ESS {self.min_ess:.0f} (want >= {min_ess}), {self.divergences} "
                "divergences; run more warm-up and samples, or more chains"
            )


def run_nuts(
    model,
    args: tuple,
    latent: Sequence[str],
    num_warmup: int,
    num_samples: int,
    num_chains: int,
    seed: int,
) -> tuple[dict[str, np.ndarray], NutsDiagnostics]:
    """Sample a NumPyro ``model(*args)`` with NUTS; return flat draws and their diagnostics.

    Chains run one after another. ``latent`` names the sites whose split
    R-hat and bulk ESS the diagnostics report (the worst entry of a vector
    site). The draws of every site, deterministic ones included, come back
    with chains concatenated: ``[num_chains * num_samples, ...]``.

    Example:
        >>> import numpyro, numpyro.distributions as nd
        >>> def model(y):
        ...     mu = numpyro.sample("mu", nd.Normal(0.0, 10.0))
        ...     numpyro.sample("y", nd.Normal(mu, 1.0), obs=y)
        >>> draws, diagnostics = run_nuts(model, (np.array([1.0, 3.0]),), ["mu"], 200, 200, 2, 0)
        >>> draws["mu"].shape, bool(abs(draws["mu"].mean() - 2.0) < 0.3), diagnostics.divergences
        ((400,), True, 0)
    """
    import jax
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
    from numpyro.infer import MCMC, NUTS

    for name, value in (("num_warmup", num_warmup), ("num_samples", num_samples)):
        if not (isinstance(value, int) and value >= 10):
            raise InvalidArgumentError(f"{name} must be an int >= 10, got {value!r}")
    mcmc = MCMC(
        NUTS(model),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="sequential",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(seed), *args, extra_fields=("diverging",))
    grouped = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    r_hats, ess = [], []
    for name in latent:
        chains = grouped[name]
        # Vector-valued latents (one entry per group) count by their worst entry.
        if num_chains * num_samples >= 4:
            r_hats.append(float(np.max(split_gelman_rubin(chains))))
        ess.append(float(np.min(effective_sample_size(chains))))
    diverging = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    diagnostics = NutsDiagnostics(max(r_hats), min(ess), diverging, num_chains, num_samples)
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in grouped.items()}
    return flat, diagnostics
