"""Bayesian calibration of verifier scores (``inference.conformal.bayes``): parameter recovery on
synthetic families, calibration against the raw score, NUTS diagnostics, the population-level
fallback, persistence, and its use as the confidence of ``Abstention``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

import inference
import ppl
from inference.conformal import (
    Abstention,
    CalibratedScore,
    CalibrationData,
    ScoreCalibration,
    confidence_of,
    fit_score_calibration,
    from_posteriors,
    load_calibration,
    save_calibration,
)
from inference.conformal import bayes as bayes_module
from ppl.errors import CalibrationError, FitDiagnosticsError, InvalidArgumentError

# Five families whose verifiers are miscalibrated in different ways (a = 0, b = 1 is calibrated).
FAMILIES = ("algebra", "counting", "geometry", "logic", "probability")
TRUE_A = np.array([-1.0, -0.4, 0.0, 0.5, 1.0])
TRUE_B = np.array([0.5, 1.5, 0.8, 2.0, 1.2])
PER_FAMILY = 160
WARMUP = SAMPLES = 300


def true_probability(scores, family: np.ndarray) -> np.ndarray:
    x = bayes_module.score_logit(scores)
    return 1 / (1 + np.exp(-(TRUE_A[family] + TRUE_B[family] * x)))


def synthetic(per_family: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    family = np.repeat(np.arange(len(FAMILIES)), per_family)
    scores = rng.beta(1.5, 1.5, size=len(family))
    correct = rng.random(len(family)) < true_probability(scores, family)
    return scores, correct, family


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    scores, correct, family = synthetic(PER_FAMILY, rng)
    labels = [FAMILIES[f] for f in family]
    calibration = fit_score_calibration(
        scores, correct, labels, num_warmup=WARMUP, num_samples=SAMPLES, seed=0
    )
    return calibration, rng


def misses_allowed(count: int, level: float) -> int:
    """Misses of ``count`` independent ``level`` intervals exceeded with probability < 1%."""
    return int(binom.ppf(0.99, count, 1 - level))


def test_hierarchical_fit_has_healthy_nuts_and_recovers_family_parameters(fitted):
    calibration, _ = fitted
    d = calibration.diagnostics
    # 600 draws: the population scales mix slowest, at an ESS of about 80-190 over data seeds.
    assert d.max_r_hat < 1.05 and d.divergences == 0 and d.min_ess > 50
    assert (d.num_chains, d.num_samples) == (2, SAMPLES)
    calibration.check(min_ess=50)
    assert calibration.families == FAMILIES
    assert calibration.num_draws == 2 * SAMPLES
    assert calibration.data["families"] == dict.fromkeys(FAMILIES, PER_FAMILY)
    misses = 0
    for j in range(len(FAMILIES)):
        for name, truth in (("a", TRUE_A[j]), ("b", TRUE_B[j])):
            low, high = np.quantile(calibration.samples[name][:, j], [0.025, 0.975])
            misses += not low < truth < high
    assert misses <= misses_allowed(2 * len(FAMILIES), 0.95)
    # The true probabilities at a low and a high score, per family.
    misses = 0
    for j, family in enumerate(FAMILIES):
        for score in (0.25, 0.8):
            low, high = calibration.interval(score, family, level=0.9)
            misses += not low < true_probability(score, np.array(j)) < high
    assert misses <= misses_allowed(2 * len(FAMILIES), 0.9)


def test_calibrated_scores_beat_raw_scores_on_held_out_problems(fitted):
    calibration, rng = fitted
    scores, correct, family = synthetic(800, rng)
    predicted = np.empty(len(scores))
    for j, name in enumerate(FAMILIES):
        predicted[family == j] = calibration.predict(scores[family == j], name)
    # Paired Brier differences: better by more than three standard errors.
    difference = (predicted - correct) ** 2 - (scores - correct) ** 2
    se = difference.std(ddof=1) / math.sqrt(len(difference))
    assert difference.mean() + 3 * se < 0
    # Against the true probabilities (no outcome noise): far closer than the raw score.
    truth = true_probability(scores, family)
    assert np.mean((predicted - truth) ** 2) < 0.2 * np.mean((scores - truth) ** 2)
    # Reliability: in each decile of the calibrated score, the observed accuracy is within
    # three binomial standard errors of the mean prediction.
    edges = np.quantile(predicted, np.linspace(0, 1, 11))
    bins = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, 9)
    for k in range(10):
        inside = bins == k
        p = predicted[inside].mean()
        tolerance = 3 * math.sqrt(p * (1 - p) / inside.sum()) + 0.02
        assert abs(correct[inside].mean() - p) < tolerance, k


def test_unseen_family_falls_back_to_the_population(fitted):
    calibration, _ = fitted
    grid = np.array([0.1, 0.5, 0.9])
    population = calibration.predict(grid)
    assert np.array_equal(calibration.predict(grid, "topology"), population)
    a, b = calibration.samples["a_new"], calibration.samples["b_new"]
    expected = (1 / (1 + np.exp(-(a[:, None] + b[:, None] * bayes_module.score_logit(grid))))).mean(
        0
    )
    np.testing.assert_allclose(population, expected, rtol=1e-12)
    # A new family is less certain than any family seen in the fit.
    low, high = calibration.interval(0.9, "topology")
    for family in FAMILIES:
        f_low, f_high = calibration.interval(0.9, family)
        assert high - low > f_high - f_low
    # The population means are those of the true family parameters, within their posterior.
    for name, truth in (("mu_a", TRUE_A.mean()), ("mu_b", TRUE_B.mean())):
        low, high = np.quantile(calibration.samples[name], [0.025, 0.975])
        assert low < truth < high, name
    assert isinstance(calibration.predict(0.3, "topology"), float)


def test_save_and_load_round_trip(fitted, tmp_path):
    calibration, _ = fitted
    calibration.save(tmp_path / "cal.json")
    loaded = ScoreCalibration.load(tmp_path / "cal.json")
    assert loaded.families == calibration.families
    assert loaded.diagnostics == calibration.diagnostics and loaded.data == calibration.data
    grid = np.linspace(0, 1, 7)
    for family in (*FAMILIES, None):
        np.testing.assert_array_equal(
            loaded.predict(grid, family), calibration.predict(grid, family)
        )
        assert loaded.interval(0.6, family) == calibration.interval(0.6, family)
    # Thinned to at most 100 draws: every 6th, predictions within Monte Carlo error.
    calibration.save(tmp_path / "thin.json", max_draws=100)
    thin = ScoreCalibration.load(tmp_path / "thin.json")
    assert thin.num_draws == 100
    np.testing.assert_array_equal(thin.samples["a"], calibration.samples["a"][::6])
    np.testing.assert_allclose(
        thin.predict(grid, "logic"), calibration.predict(grid, "logic"), atol=0.03
    )
    (tmp_path / "bad.json").write_text('{"kind": "something else"}')
    with pytest.raises(CalibrationError, match="not a score calibration"):
        ScoreCalibration.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(CalibrationError, match="not valid JSON"):
        ScoreCalibration.load(tmp_path / "broken.json")
    data = calibration.to_dict()
    del data["samples"]["b_new"]
    with pytest.raises(CalibrationError, match="corrupt"):
        ScoreCalibration.from_dict(data)


def test_fit_without_families_and_failing_diagnostics():
    rng = np.random.default_rng(3)
    scores = rng.beta(1.5, 1.5, size=500)
    truth = 1 / (1 + np.exp(-(-0.5 + 2.0 * bayes_module.score_logit(scores))))
    correct = rng.random(500) < truth
    calibration = fit_score_calibration(
        scores, correct, num_warmup=WARMUP, num_samples=SAMPLES, seed=1
    )
    calibration.check()
    assert calibration.families is None
    for name, value in (("a", -0.5), ("b", 2.0)):
        low, high = np.quantile(calibration.samples[name][:, 0], [0.005, 0.995])
        assert low < value < high, name
    with pytest.raises(InvalidArgumentError, match="without families"):
        calibration.predict(0.5, "algebra")
    # Demanding more effective samples than were drawn fails the check.
    with pytest.raises(FitDiagnosticsError, match="ESS"):
        calibration.check(min_ess=10 * 2 * SAMPLES)


def test_bad_input_gives_clear_errors():
    scores, correct = [0.2, 0.9, 0.6], [False, True, True]
    with pytest.raises(InvalidArgumentError, match="one entry per score"):
        fit_score_calibration(scores, correct[:2])
    with pytest.raises(InvalidArgumentError, match="one entry per score"):
        fit_score_calibration(scores, correct, ["x", "y"])
    with pytest.raises(InvalidArgumentError, match=r"lie in \[0, 1\]"):
        fit_score_calibration([0.2, 1.3, 0.6], correct)
    with pytest.raises(InvalidArgumentError, match=r"lie in \[0, 1\]"):
        fit_score_calibration([0.2, math.nan, 0.6], correct)
    with pytest.raises(InvalidArgumentError, match="single class"):
        fit_score_calibration(scores, [True, True, True])
    with pytest.raises(InvalidArgumentError, match="booleans"):
        fit_score_calibration(scores, [0, 2, 1])
    with pytest.raises(InvalidArgumentError, match="non-empty"):
        fit_score_calibration([], [])
    with pytest.raises(InvalidArgumentError, match="num_chains"):
        fit_score_calibration(scores, correct, num_chains=0)
    with pytest.raises(InvalidArgumentError, match="num_warmup"):
        fit_score_calibration(scores, correct, num_warmup=2)


# --- as the confidence of Abstention ---------------------------------------------------------


@ppl.program
def verified(lm, score: float):
    """One candidate answer and its verifier score."""
    ppl.memo("verifier", lambda s: s, score)
    ppl.answer("A")


def verified_problems(count: int, rng):
    """Posteriors whose MAP answer is right with the true probability of its family's law."""
    family = rng.integers(len(FAMILIES), size=count)
    scores = rng.beta(1.5, 1.5, size=count)
    right = rng.random(count) < true_probability(scores, family)
    pairs = [
        (ppl.importance(verified, None, float(s), num_particles=2, seed=i), "A" if r else "B")
        for i, (s, r) in enumerate(zip(scores, right, strict=True))
    ]
    return from_posteriors(pairs), family


def test_calibrated_score_as_abstention_confidence(fitted, tmp_path):
    calibration, _ = fitted
    # LTT calibration problems are disjoint from (drawn after) the score calibration's data.
    rng = np.random.default_rng(21)
    data, family = verified_problems(400, rng)
    logic = CalibrationData(
        tuple(e for e, f in zip(data, family, strict=True) if FAMILIES[f] == "logic")
    )
    confidence = calibration.confidence("verifier", "logic")
    post = logic[0].posterior
    raw = confidence_of(post, "verifier")
    assert confidence_of(post, confidence) == pytest.approx(calibration.predict(raw, "logic"))
    rule = Abstention(0.2, 0.1, confidence=confidence).calibrate(logic)
    assert math.isfinite(rule.threshold) and rule.calibration_risk <= 0.2
    # Held out: risk among answered within binomial error of the target.
    held_scores = rng.beta(1.5, 1.5, size=20000)
    held_right = rng.random(20000) < true_probability(held_scores, np.array(3))
    result = rule.evaluate_arrays(calibration.predict(held_scores, "logic"), held_right)
    assert result.answer_rate > 0.3
    assert result.risk <= 0.2 + 3 * math.sqrt(0.2 * 0.8 / result.num_answered)
    decision = rule.predict(post)
    assert decision.details["confidence"] == "verifier (Bayes-calibrated, family logic)"
    assert decision.details["value"] == pytest.approx(calibration.predict(raw, "logic"))
    # Saved with its calibration; the loaded rule decides the same.
    save_calibration(rule, tmp_path / "abstain.json")
    loaded = load_calibration(tmp_path / "abstain.json")
    assert isinstance(loaded.confidence, CalibratedScore) and loaded.threshold == rule.threshold
    for example in logic[:20]:
        assert loaded.predict(example.posterior) == rule.predict(example.posterior)

    # Any function of the posterior works as a confidence, but only a calibrated score saves.
    def raw_score(posterior):
        return confidence_of(posterior, "verifier")

    by_function = Abstention(0.2, 0.1, confidence=raw_score).calibrate(logic)
    assert by_function.predict(post).details["confidence"] == "raw_score"
    with pytest.raises(CalibrationError, match="cannot be saved"):
        by_function.to_dict()
    with pytest.raises(CalibrationError, match="must return a number"):
        confidence_of(post, lambda p: "high")
    with pytest.raises(InvalidArgumentError, match="without families"):
        ScoreCalibration(
            {"a": np.zeros((4, 1)), "b": np.ones((4, 1))}, None, calibration.diagnostics
        ).confidence("verifier", "logic")


def test_exports():
    assert inference.fit_score_calibration is fit_score_calibration
    assert inference.ScoreCalibration is ScoreCalibration
