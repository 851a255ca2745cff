"""Bayesian calibration of verifier scores: a hierarchical logistic model fitted with NUTS.

A verifier's score is rarely the probability that the answer it scores is
right, and how far off it is depends on the kind of problem. With scores
``s_i`` of answers from problem family ``f_i`` and whether each answer was
right, ``fit_score_calibration`` fits

    P(correct | s, f) = sigmoid(a_f + b_f * logit(s))
    a_f = mu_a + sigma_a * z_a[f],  b_f = mu_b + sigma_b * z_b[f],  z ~ Normal(0, 1)
    mu_a ~ Normal(0, 1.5), mu_b ~ Normal(1, 1), sigma_a, sigma_b ~ HalfNormal(1)

(non-centred partial pooling: families with few problems borrow strength
from the others; the prior is centred on the raw score being calibrated,
``a = 0, b = 1``). Without families it is one logistic regression with
the ``mu`` priors. The posterior predictive mean is the calibrated score;
a family not seen in the fit gets the population level, a new family's
``(a, b)`` drawn from ``Normal(mu, sigma)`` at each posterior draw.

``ScoreCalibration.confidence(site)`` makes the calibrated score of a
``ppl.memo`` site a confidence for ``Abstention`` (or ``confidence_of``).
The Learn-then-Test guarantee holds for any confidence fixed before the
calibration problems are scored, so fit the score calibration on problems
disjoint from the ones ``Abstention`` is calibrated on: reusing them makes
the confidence depend on the calibration errors and voids the guarantee.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.conformal.data import confidence_of
from inference.nuts import NutsDiagnostics, run_nuts
from ppl.errors import CalibrationError, InvalidArgumentError
from ppl.posterior import Posterior

# Scores of exactly 0 or 1 are common; clipping keeps their logits finite (+-9.2).
EPSILON = 1e-4
# Saved files keep at most this many posterior draws (thinned evenly).
MAX_SAVED_DRAWS = 1000
KIND = "pplscale-score-calibration"
FORMAT_VERSION = 1


def score_logit(scores) -> np.ndarray:
    """``logit(s)`` with ``s`` clipped to ``[1e-4, 1 - 1e-4]``."""
    s = np.clip(np.asarray(scores, dtype=float), EPSILON, 1 - EPSILON)
    return np.log(s) - np.log1p(-s)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass
class ScoreCalibration:
    """Posterior of a (hierarchical) logistic calibration of scores; see ``fit_score_calibration``.

    ``samples`` holds the posterior draws: ``a`` and ``b`` (``[draws,
    families]``; one column when fitted without families), and for a
    hierarchical fit ``mu_a``, ``sigma_a``, ``mu_b``, ``sigma_b`` and the
    population-level draws ``a_new``, ``b_new`` used for unseen families.
    ``families`` are the family labels in column order (``None`` without
    families); labels compare as strings.

    Example (``calibration`` from ``fit_score_calibration``'s example: two
    chains of 300 draws, families ``even`` and ``odd``):
        >>> calibration.families, calibration.samples["a"].shape
        (('even', 'odd'), (600, 2))
    """

    samples: dict[str, np.ndarray]
    families: tuple[str, ...] | None
    diagnostics: NutsDiagnostics
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def hierarchical(self) -> bool:
        return self.families is not None

    @property
    def num_draws(self) -> int:
        return len(self.samples["a"])

    def parameters(self, family: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Posterior draws of ``(a, b)`` for ``family``: its own, or the population's.

        ``family=None`` or a family the fit did not see gives the population
        level (a new family's parameters). Without families every call gives
        the one fitted ``(a, b)``, and naming a family is an error.
        """
        if not self.hierarchical:
            if family is not None:
                raise InvalidArgumentError(
                    f"this calibration was fitted without families; got family {family!r}"
                )
            return self.samples["a"][:, 0], self.samples["b"][:, 0]
        if family is not None and str(family) in self.families:
            j = self.families.index(str(family))
            return self.samples["a"][:, j], self.samples["b"][:, j]
        return self.samples["a_new"], self.samples["b_new"]

    def draws(self, score, family: Any = None) -> np.ndarray:
        """Posterior draws of ``P(correct | score, family)``: ``[draws, len(score)]``."""
        x = score_logit(_check_scores(np.atleast_1d(np.asarray(score, dtype=float)), "score"))
        a, b = self.parameters(family)
        return _sigmoid(a[:, None] + b[:, None] * x[None, :])

    def predict(self, score, family: Any = None):
        """The calibrated score: posterior predictive ``P(correct | score, family)``.

        A float for a scalar ``score``, an array for an array.

        Example (on even problems a low score is almost never right, a high one almost always):
            >>> calibration.predict([0.1, 0.9], family="even").round(1)
            array([0., 1.])
        """
        mean = self.draws(score, family).mean(axis=0)
        return float(mean[0]) if np.ndim(score) == 0 else mean

    def interval(self, score, family: Any = None, level: float = 0.9):
        """Central ``level`` credible interval of ``P(correct | score, family)``.

        A ``(low, high)`` pair of floats for a scalar ``score``, of arrays for
        an array. For an unseen family it includes the spread between families.

        Example:
            >>> low, high = calibration.interval(0.6, family="odd")
            >>> low < 0.1, round(high, 1)
            (True, 0.5)
        """
        if not 0 < level < 1:
            raise InvalidArgumentError(f"level must be in (0, 1), got {level!r}")
        draws = self.draws(score, family)
        tail = (1 - level) / 2
        low, high = np.quantile(draws, tail, axis=0), np.quantile(draws, 1 - tail, axis=0)
        if np.ndim(score) == 0:
            return float(low[0]), float(high[0])
        return low, high

    def check(self, max_r_hat: float = 1.05, min_ess: float = 100.0) -> None:
        """Raise ``FitDiagnosticsError`` unless R-hat, ESS and divergences look healthy.

        Example (no fit of 600 draws has an effective sample size of 10,000):
            >>> calibration.check(min_ess=10_000)
            Traceback (most recent call last):
                ...
            ppl.errors.FitDiagnosticsError: NUTS fit is unreliable: ... (want >= 10000), ...
        """
        self.diagnostics.check(max_r_hat, min_ess)

    def confidence(self, site: str, family: Any = None) -> CalibratedScore:
        """The calibrated score of memo site ``site`` as a confidence (see ``CalibratedScore``).

        Example:
            >>> from inference.conformal import Abstention
            >>> Abstention(0.2, confidence=calibration.confidence("check.score", "odd"))
            <Abstention risk=0.2 delta=0.1 threshold=None>
        """
        return CalibratedScore(self, site, family)

    # --- persistence ---------------------------------------------------------
    def to_dict(self, max_draws: int = MAX_SAVED_DRAWS) -> dict[str, Any]:
        """JSON-ready: the posterior draws (thinned evenly to ``max_draws``), diagnostics, data."""
        step = max(1, math.ceil(self.num_draws / max_draws))
        return {
            "kind": KIND,
            "format": FORMAT_VERSION,
            "families": None if self.families is None else list(self.families),
            "samples": {name: v[::step].tolist() for name, v in self.samples.items()},
            "diagnostics": dict(self.diagnostics.__dict__),
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreCalibration:
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise CalibrationError("not a score calibration (write one with ScoreCalibration.save)")
        if data.get("format") != FORMAT_VERSION:
            raise CalibrationError(f"unsupported score calibration format {data.get('format')!r}")
        try:
            families = data["families"]
            samples = {name: np.asarray(v, dtype=float) for name, v in data["samples"].items()}
            needed = {"a", "b"} | ({"a_new", "b_new"} if families is not None else set())
            width = 1 if families is None else len(families)
            if not needed <= set(samples) or samples["a"].shape != (len(samples["a"]), width):
                raise ValueError("posterior draws are missing or misshapen")
            return cls(
                samples,
                None if families is None else tuple(str(f) for f in families),
                NutsDiagnostics(**data["diagnostics"]),
                dict(data["data"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CalibrationError(f"score calibration is corrupt: {error!r}") from None

    def save(self, path: str | Path, max_draws: int = MAX_SAVED_DRAWS) -> None:
        """Write the calibration as JSON (at most ``max_draws`` posterior draws).

        Example:
            >>> calibration.save("verifier_calibration.json", max_draws=100)
            >>> ScoreCalibration.load("verifier_calibration.json").num_draws
            100
        """
        Path(path).write_text(json.dumps(self.to_dict(max_draws)))

    @classmethod
    def load(cls, path: str | Path) -> ScoreCalibration:
        """Read a calibration written by ``save``.

        Example (the draws come back as saved):
            >>> calibration.save("verifier_calibration.json")
            >>> loaded = ScoreCalibration.load("verifier_calibration.json")
            >>> loaded.families, bool(np.allclose(loaded.samples["a"], calibration.samples["a"]))
            (('even', 'odd'), True)
        """
        try:
            data = json.loads(Path(path).read_text())
        except OSError as error:
            raise CalibrationError(f"cannot read {path}: {error.strerror}") from None
        except json.JSONDecodeError as error:
            raise CalibrationError(f"{path} is not valid JSON: {error}") from None
        return cls.from_dict(data)

    def __repr__(self) -> str:
        families = "none" if self.families is None else len(self.families)
        return (
            f"<ScoreCalibration families={families} draws={self.num_draws} "
            f"max_r_hat={self.diagnostics.max_r_hat:.3f}>"
        )


@dataclass(frozen=True, eq=False)
class CalibratedScore:
    """A confidence: the calibrated score of a ``ppl.memo`` site, ``Posterior -> float``.

    Its value on a posterior is ``calibration.predict(confidence_of(posterior,
    site), family)``: the verifier score of the MAP answer, mapped to the
    posterior predictive probability that it is right. Give it as
    ``Abstention(confidence=...)`` (``Abstention`` saves and loads it with
    the calibration) or to ``confidence_of``.

    The Learn-then-Test guarantee of ``Abstention`` holds only if the
    calibration was fitted on problems disjoint from (and independent of)
    the problems ``Abstention`` is calibrated on; fit it on a separate split.

    Example (``calibration`` from ``fit_score_calibration``'s example, fitted on
    ``cal``; the rule is calibrated on ``heldout``, other problems, at the
    population level since it mixes both families):
        >>> from inference.conformal import Abstention
        >>> rule = Abstention(0.2, confidence=calibration.confidence("check.score"))
        >>> round(rule.calibrate(heldout).threshold, 1)
        0.4
    """

    calibration: ScoreCalibration
    site: str
    family: Any = None

    def __post_init__(self):
        if not isinstance(self.site, str) or not self.site:
            raise InvalidArgumentError(f"site must be a memo site name, got {self.site!r}")
        self.calibration.parameters(self.family)  # a family needs a hierarchical fit

    @property
    def name(self) -> str:
        family = "" if self.family is None else f", family {self.family}"
        return f"{self.site} (Bayes-calibrated{family})"

    def __call__(self, posterior: Posterior) -> float:
        return float(self.calibration.predict(confidence_of(posterior, self.site), self.family))

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "family": None if self.family is None else str(self.family),
            "calibration": self.calibration.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibratedScore:
        return cls(ScoreCalibration.from_dict(data["calibration"]), data["site"], data["family"])


def fit_score_calibration(
    scores: Sequence[float],
    correct: Sequence[bool],
    families: Sequence[Any] | None = None,
    *,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    seed: int = 0,
) -> ScoreCalibration:
    """Fit ``P(correct | score, family) = sigmoid(a_f + b_f * logit(score))`` with NUTS.

    ``scores[i]`` in ``[0, 1]`` is a verifier's score of answer ``i``,
    ``correct[i]`` whether it was right and ``families[i]`` (optional) its
    problem family; families are partially pooled (see the module
    docstring). Both outcomes must occur. ``num_chains`` chains run one
    after another, each ``num_warmup`` adaptation steps then ``num_samples``
    draws; ``seed`` fixes them. Check the fit with ``check()``.

    Example (the verifier score of each MAP answer of ``cal``, whose problems
    fall in two families; on odd ones the verifier gives wrong answers 0.6,
    so a score of 0.6 there is calibrated down):
        >>> scores = [confidence_of(e.posterior, "check.score") for e in cal]
        >>> correct = [e.posterior.map_answer() in e.acceptable for e in cal]
        >>> families = ["odd" if a % 2 else "even" for (a, _), _ in problems[:40]]
        >>> calibration = fit_score_calibration(scores, correct, families,
        ...                                     num_warmup=300, num_samples=300)
        >>> d = calibration.diagnostics  # check() also wants no divergent transitions
        >>> d.max_r_hat < 1.05, d.min_ess > 100
        (True, True)
        >>> 0.2 < calibration.predict(0.6, family="odd") < 0.3
        True
    """
    scores = _check_scores(np.asarray(scores, dtype=float), "scores")
    y = np.asarray(correct)
    if y.shape != scores.shape:
        raise InvalidArgumentError(
            f"correct must have one entry per score: {len(scores)} scores, shape {y.shape}"
        )
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise InvalidArgumentError("correct must hold booleans (or 0/1)")
        y = y.astype(bool)
    if y.all() or not y.any():
        raise InvalidArgumentError(
            "correct holds a single class (all right or all wrong): a calibration needs both"
        )
    if not (isinstance(num_chains, int) and num_chains >= 1):
        raise InvalidArgumentError(f"num_chains must be an int >= 1, got {num_chains!r}")
    x = score_logit(scores)
    y = y.astype(np.int32)
    data: dict[str, Any] = {"num_observations": len(y), "accuracy": float(y.mean())}

    if families is None:
        samples, diagnostics = run_nuts(
            _flat_model, (x, y), ("a", "b"), num_warmup, num_samples, num_chains, seed
        )
        draws = {"a": samples["a"][:, None], "b": samples["b"][:, None]}
        return ScoreCalibration(draws, None, diagnostics, data)

    labels = [str(f) for f in families]
    if len(labels) != len(y):
        raise InvalidArgumentError(
            f"families must have one entry per score: {len(y)} scores, {len(labels)} families"
        )
    names = tuple(sorted(set(labels)))
    index = np.array([names.index(f) for f in labels], dtype=np.int32)
    data["families"] = {f: int((index == j).sum()) for j, f in enumerate(names)}

    latent = ("mu_a", "mu_b", "sigma_a", "sigma_b", "z_a", "z_b")
    samples, diagnostics = run_nuts(
        _hierarchical_model,
        (x, index, len(names), y),
        latent,
        num_warmup,
        num_samples,
        num_chains,
        seed,
    )
    # A new family's parameters at each posterior draw (fixed here so predictions repeat).
    rng = np.random.default_rng(seed)
    count = len(samples["mu_a"])
    samples["a_new"] = samples["mu_a"] + samples["sigma_a"] * rng.standard_normal(count)
    samples["b_new"] = samples["mu_b"] + samples["sigma_b"] * rng.standard_normal(count)
    keep = ("a", "b", "mu_a", "mu_b", "sigma_a", "sigma_b", "a_new", "b_new")
    return ScoreCalibration({k: samples[k] for k in keep}, names, diagnostics, data)


# Module-level models: JAX reuses their compiled code across fits.
def _flat_model(x, y):
    import numpyro
    import numpyro.distributions as nd

    a = numpyro.sample("a", nd.Normal(0.0, 1.5))
    b = numpyro.sample("b", nd.Normal(1.0, 1.0))
    numpyro.sample("correct", nd.Bernoulli(logits=a + b * x), obs=y)


def _hierarchical_model(x, index, num_families, y):
    import numpyro
    import numpyro.distributions as nd

    mu_a = numpyro.sample("mu_a", nd.Normal(0.0, 1.5))
    mu_b = numpyro.sample("mu_b", nd.Normal(1.0, 1.0))
    sigma_a = numpyro.sample("sigma_a", nd.HalfNormal(1.0))
    sigma_b = numpyro.sample("sigma_b", nd.HalfNormal(1.0))
    with numpyro.plate("families", num_families):
        z_a = numpyro.sample("z_a", nd.Normal(0.0, 1.0))
        z_b = numpyro.sample("z_b", nd.Normal(0.0, 1.0))
    a = numpyro.deterministic("a", mu_a + sigma_a * z_a)
    b = numpyro.deterministic("b", mu_b + sigma_b * z_b)
    numpyro.sample("correct", nd.Bernoulli(logits=a[index] + b[index] * x), obs=y)


def _check_scores(scores: np.ndarray, name: str) -> np.ndarray:
    if scores.ndim != 1 or not len(scores):
        raise InvalidArgumentError(f"{name} must be a non-empty 1-d array of numbers in [0, 1]")
    if not np.isfinite(scores).all() or (scores < 0).any() or (scores > 1).any():
        bad = scores[~(np.isfinite(scores) & (scores >= 0) & (scores <= 1))]
        raise InvalidArgumentError(f"{name} must lie in [0, 1]; got {bad[:3].tolist()}")
    return scores


__all__ = ["CalibratedScore", "ScoreCalibration", "fit_score_calibration"]
