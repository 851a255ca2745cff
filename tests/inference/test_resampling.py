"""Tests of the resampling schemes in ``inference.resampling``."""

from __future__ import annotations

import numpy as np
import pytest

import ppl
from inference.resampling import RESAMPLERS, get_resampler

SCHEMES = sorted(RESAMPLERS)
R = 4000  # resampling calls per statistical test

# N = 5. N * w = [2.5, 1.25, 0.75, 0.5, 0]: every scheme is random here.
SKEWED = np.array([0.5, 0.25, 0.15, 0.1, 0.0])
# N * w = [2, 1, 1, 1, 0]: residual resampling is deterministic here (all copies
# come from floor(N w)), so its offspring counts have zero variance.
INTEGRAL = np.array([0.4, 0.2, 0.2, 0.2, 0.0])


def offspring_counts(scheme: str, weights: np.ndarray, seed: int = 0) -> np.ndarray:
    """(R, N) array: how many offspring each particle got in each of R calls."""
    resample = RESAMPLERS[scheme]
    rng = np.random.default_rng(seed)
    n = len(weights)
    return np.stack([np.bincount(resample(weights, rng), minlength=n) for _ in range(R)])


class MaxUniform:
    """A stand-in Generator whose uniforms are all the largest double below 1.

    ``Generator.random`` draws from [0, 1), so this is a legal (if unlikely) output.
    """

    value = np.nextafter(1.0, 0.0)

    def random(self, size=None):
        return self.value if size is None else np.full(size, self.value)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_output_shape_dtype_and_range(scheme, n):
    rng = np.random.default_rng(123)
    for _ in range(20):
        weights = rng.dirichlet(np.ones(n))
        indices = RESAMPLERS[scheme](weights, rng)
        assert isinstance(indices, np.ndarray)
        assert indices.shape == (n,)
        assert np.issubdtype(indices.dtype, np.integer)
        assert indices.min() >= 0
        assert indices.max() < n


@pytest.mark.parametrize("scheme", SCHEMES)
def test_degenerate_weight_selects_only_that_particle(scheme):
    weights = np.zeros(6)
    weights[3] = 1.0
    indices = RESAMPLERS[scheme](weights, np.random.default_rng(0))
    assert indices.tolist() == [3] * 6


@pytest.mark.parametrize("scheme", SCHEMES)
def test_zero_weight_particles_never_selected(scheme):
    rng = np.random.default_rng(7)
    n = 12
    for _ in range(500):
        weights = rng.dirichlet(np.ones(n))
        dead = rng.random(n) < 0.5
        dead[rng.integers(n)] = False  # at least one survivor
        weights[dead] = 0.0
        weights /= weights.sum()
        indices = RESAMPLERS[scheme](weights, rng)
        assert not dead[indices].any(), (weights, indices)
    # Zero weights in first, middle and last position.
    weights = np.array([0.0, 0.3, 0.0, 0.7, 0.0])
    counts = offspring_counts(scheme, weights, seed=1)
    assert counts[:, [0, 2, 4]].sum() == 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_trailing_zero_weight_never_selected_despite_rounding(scheme):
    weights = np.array([0.1] * 10 + [0.0])
    assert np.cumsum(weights)[-2] < 1.0  # the rounding this test is about
    indices = RESAMPLERS[scheme](weights, MaxUniform())
    assert 10 not in indices.tolist()


@pytest.mark.parametrize("weights", [SKEWED, INTEGRAL], ids=["skewed", "integral"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_unbiased_offspring_counts(scheme, weights):
    counts = offspring_counts(scheme, weights)
    n = len(weights)
    assert (counts.sum(axis=1) == n).all()
    mean = counts.mean(axis=0)
    # Standard error of each mean from the sample spread. When a particle's
    # count never varies (zero-weight particles, and every particle under
    # residual resampling of INTEGRAL) the sample std is 0 and the mean must
    # equal N w_i exactly; the floor keeps the 4-SE band from collapsing to a
    # floating-point equality test while still failing any real bias.
    se = np.maximum(counts.std(axis=0, ddof=1) / np.sqrt(R), 1e-3)
    assert np.all(np.abs(mean - n * weights) <= 4 * se), (mean, n * weights, se)


@pytest.mark.parametrize("scheme", ["systematic", "stratified", "residual"])
def test_variance_not_above_multinomial(scheme):
    multinomial_var = offspring_counts("multinomial", SKEWED, seed=11).var(axis=0, ddof=1)
    scheme_var = offspring_counts(scheme, SKEWED, seed=12).var(axis=0, ddof=1)
    # Multinomial's per-particle variance is N w (1 - w); the sample agrees.
    n = len(SKEWED)
    np.testing.assert_allclose(multinomial_var, n * SKEWED * (1 - SKEWED), rtol=0.1, atol=1e-12)
    assert np.all(scheme_var <= multinomial_var), (scheme_var, multinomial_var)
    assert scheme_var.sum() < multinomial_var.sum()


def test_residual_deterministic_for_integral_weights():
    counts = offspring_counts("residual", INTEGRAL)
    assert (counts == np.array([2, 1, 1, 1, 0])).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_seed_same_indices(scheme):
    weights = np.array([0.05, 0.4, 0.3, 0.25])
    first = RESAMPLERS[scheme](weights, np.random.default_rng(99))
    second = RESAMPLERS[scheme](weights, np.random.default_rng(99))
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_get_resampler_returns_registered_scheme(scheme):
    assert get_resampler(scheme) is RESAMPLERS[scheme]


def test_get_resampler_unknown_name_lists_options():
    with pytest.raises(ppl.InvalidArgumentError) as info:
        get_resampler("bogus")
    message = str(info.value)
    assert "bogus" in message
    for scheme in SCHEMES:
        assert scheme in message


def test_smc_rejects_unknown_scheme():
    import pyro.distributions as dist
    import torch

    @ppl.program
    def coin():
        x = ppl.sample("x", dist.Bernoulli(torch.tensor(0.5)))
        ppl.answer(int(x))

    with pytest.raises(ppl.InvalidArgumentError, match="multinomial"):
        ppl.smc(coin, num_particles=4, resample="bogus", seed=0)
