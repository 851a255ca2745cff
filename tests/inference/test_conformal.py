"""Statistical tests of the calibrated decisions in ``inference.conformal``.

Coverage, risk control and miss rates are checked over many random
calibration draws of synthetic problems whose exact answers are known;
tolerances come from the number of draws. Vote-share posteriors make the
scores discrete, so ties are everywhere.
"""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch

import inference
import ppl
from inference import conformal
from inference.conformal import (
    Abstention,
    AnswerSets,
    SampleBudget,
    answers_match,
    from_posteriors,
    load_calibration,
    save_calibration,
)
from inference.conformal import ltt as ltt_module
from ppl.errors import CalibrationError, InvalidArgumentError

SPLITS = 200


def vote_posteriors(num_problems: int, *, answers: int = 6, votes: int = 10, seed: int = 0):
    """Problems with a true answer distribution ``pi``; the posterior is the vote share of draws.

    The right answer is drawn from ``pi`` too, so calibration and test
    problems are exchangeable. Vote shares are multiples of 1/votes: ties.
    """
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.full(answers, 0.7), size=num_problems)
    labels = (rng.random((num_problems, 1)) > pi.cumsum(axis=1)).sum(axis=1)
    counts = np.stack([rng.multinomial(votes, p) for p in pi])
    return counts / votes, labels


# --- answer sets -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def vote_pool():
    return vote_posteriors(3000, seed=1)


@pytest.mark.parametrize("score", ["lac", "aps"])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_answer_set_coverage_is_one_minus_alpha_with_ties(vote_pool, score, alpha):
    probabilities, labels = vote_pool
    rng = np.random.default_rng(7)
    coverage, sizes, tied = [], [], []
    for split in range(SPLITS):
        order = rng.permutation(len(labels))
        calibration, test = order[:1000], order[1000:]
        sets = AnswerSets(alpha, score=score, seed=split)
        sets.calibrate_arrays(probabilities[calibration], labels[calibration])
        result = sets.evaluate_arrays(probabilities[test], labels[test], seed=split)
        coverage.append(result.coverage)
        sizes.append(result.mean_set_size)
        tied.append(1 - len(np.unique(sets.calibration_scores)) / sets.num_calibration)
    # Smoothed conformal p-values are exactly uniform: mean coverage is 1 - alpha.
    assert abs(np.mean(coverage) - (1 - alpha)) <= 0.02
    # Exact up to the split-to-split noise (sd of a mean over 200 splits).
    se = np.std(coverage) / math.sqrt(SPLITS)
    assert abs(np.mean(coverage) - (1 - alpha)) <= 4 * se + 1e-3
    assert 1 <= np.mean(sizes) < 6
    if score == "lac":
        assert np.mean(tied) > 0.9  # vote shares: almost every calibration score is tied


def test_without_randomization_lac_coverage_overshoots(vote_pool):
    probabilities, labels = vote_pool
    rng = np.random.default_rng(3)
    alpha, exact, conservative = 0.1, [], []
    for split in range(50):
        order = rng.permutation(len(labels))
        calibration, test = order[:1000], order[1000:]
        for randomized, out in ((True, exact), (False, conservative)):
            sets = AnswerSets(alpha, randomized=randomized, seed=split)
            sets.calibrate_arrays(probabilities[calibration], labels[calibration])
            out.append(sets.evaluate_arrays(probabilities[test], labels[test]).coverage)
    assert abs(np.mean(exact) - 0.9) < 0.01
    assert np.mean(conservative) > 0.9 + 0.02


def test_lac_threshold_matches_conformal_quantile():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    sets = AnswerSets(0.2).calibrate_arrays(np.stack([1 - scores, scores], axis=1), [0] * 9)
    # ceil((9 + 1) * 0.8) = 8th smallest score.
    assert sets.threshold == pytest.approx(0.8)
    assert AnswerSets(0.05).calibrate_arrays([[0.5, 0.5]] * 9, [0] * 9).threshold == math.inf
    # Answers scoring below the threshold are always in, above never.
    members = sets.predict_arrays(np.array([[0.25, 0.75], [0.15, 0.85]]) + 0.0)
    assert members.tolist() == [[True, True], [False, True]]


# --- posteriors from an engine: the coverage cap ---------------------------------------

PRIOR = torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05])


@ppl.program
def guess(lm, tilt: float):
    """Five answers; ``tilt`` moves posterior mass towards later answers."""
    x = ppl.sample("x", dist.Categorical(PRIOR))
    ppl.factor("tilt", tilt * float(x))
    ppl.memo("score", lambda v: 1.0 - 0.15 * v, int(x))
    ppl.answer(f"{int(x)}")


def exact_guess_posterior(tilt: float) -> np.ndarray:
    weights = PRIOR.numpy() * np.exp(tilt * np.arange(5))
    return weights / weights.sum()


def engine_problems(num_problems: int, num_particles: int, seed: int):
    """Importance posteriors of ``guess``; the expected answer is drawn from the exact posterior."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(num_problems):
        tilt = float(rng.uniform(-3.0, 3.0))
        expected = str(rng.choice(5, p=exact_guess_posterior(tilt)))
        post = ppl.importance(guess, None, tilt, num_particles=num_particles, seed=seed * 10**5 + i)
        pairs.append((post, expected))
    return from_posteriors(pairs)


@pytest.fixture(scope="module")
def engine_data():
    return engine_problems(600, num_particles=6, seed=0)


def test_coverage_on_engine_posteriors_is_capped_by_sampling(engine_data):
    sampled = engine_data.sampled_rate
    assert 0.55 < sampled < 0.75  # six particles often miss the right answer
    coverage = {}
    for alpha in (0.1, 0.4):
        values = []
        for split in range(40):
            calibration, test = engine_data.split(300, seed=split)
            sets = AnswerSets(alpha, score="aps", seed=split).calibrate(calibration)
            values.append(sets.evaluate(test).coverage)
            if alpha == 0.1:
                # More than alpha of the problems never sampled a right answer.
                assert sets.threshold == math.inf
                assert sets.predict(test[0].posterior).notes
        coverage[alpha] = np.mean(values)
    # alpha = 0.1 is out of reach: sets are every sampled answer, coverage the hit rate.
    assert coverage[0.1] == pytest.approx(sampled, abs=0.02)
    assert coverage[0.4] == pytest.approx(0.6, abs=0.03)


def test_predict_gives_a_set_with_its_guarantee(engine_data):
    calibration, test = engine_data.split(300, seed=0)
    sets = AnswerSets(0.4).calibrate(calibration)
    post = test[0].posterior
    decision = sets.predict(post, seed=3)
    distribution = post.answer_distribution()
    assert set(decision.answers) <= set(distribution)
    assert decision.probabilities == tuple(distribution[a] for a in decision.answers)
    assert list(decision.answers) == sorted(decision.answers, key=lambda a: -distribution[a])
    assert "0.60" in decision.guarantee and "capped" in decision.guarantee
    assert decision.details["calibration problems"] == 300
    assert decision == sets.predict(post, seed=3)
    assert "answer set (60% coverage)" in decision.text()
    json.dumps(decision.to_dict())


# --- abstention (Learn-then-Test) -------------------------------------------------------

# Confidence is a vote share k/10; the MAP answer is right with probability CORRECT[k].
SHARES = np.arange(1, 11) / 10
SHARE_PROBABILITY = np.array([0.02, 0.08, 0.12, 0.12, 0.12, 0.1, 0.1, 0.1, 0.1, 0.14])
CORRECT = np.array([0.1, 0.2, 0.35, 0.5, 0.6, 0.7, 0.78, 0.85, 0.9, 0.95])


def exact_risk(threshold: float) -> float:
    """Error rate among answered problems of the rule 'answer when share >= threshold'."""
    answered = SHARES >= threshold - 1e-12
    if not answered.any():
        return 0.0
    mass = SHARE_PROBABILITY[answered]
    return float(np.sum(mass * (1 - CORRECT[answered])) / mass.sum())


def draw_abstention(num_problems: int, rng) -> tuple[np.ndarray, np.ndarray]:
    k = rng.choice(10, size=num_problems, p=SHARE_PROBABILITY)
    return SHARES[k], rng.random(num_problems) < CORRECT[k]


@pytest.mark.parametrize(
    ("procedure", "starts"),
    [
        ("fixed-sequence", 1),
        ("fixed-sequence", 4),
        ("bonferroni", None),
        ("fallback", None),
        ("pareto", None),
        ("split-start", None),
    ],
)
def test_abstention_controls_risk_among_answered(procedure, starts):
    risk, delta = 0.15, 0.1
    rng = np.random.default_rng(11)
    violations, answer_rates = [], []
    for _ in range(SPLITS):
        rule = Abstention(risk, delta, procedure=procedure, starts=starts, seed=len(violations))
        rule.calibrate_arrays(*draw_abstention(400, rng))
        violations.append(exact_risk(rule.threshold) > risk)
        answered = SHARES >= rule.threshold - 1e-12
        answer_rates.append(SHARE_PROBABILITY[answered].sum())
    # Binomial sampling tolerance on the violation frequency over 200 splits.
    assert np.mean(violations) <= delta + 3 * math.sqrt(delta * (1 - delta) / SPLITS)
    # Not vacuous: the best valid threshold (0.7, risk 0.123) answers 44%, the next 34%.
    minimum = {1: 0.28, 4: 0.18, None: 0.0}[starts]
    minimum = {"pareto": 0.18, "split-start": 0.2, "fallback": 0.05}.get(procedure, minimum)
    assert np.mean(answer_rates) > minimum


def test_abstention_realised_risk_on_held_out_problems():
    rng = np.random.default_rng(5)
    rule = Abstention(0.15, 0.1).calibrate_arrays(*draw_abstention(2000, rng))
    result = rule.evaluate_arrays(*draw_abstention(20000, rng))
    assert result.risk <= 0.15
    assert result.answer_rate == pytest.approx(
        SHARE_PROBABILITY[SHARES >= rule.threshold - 1e-12].sum(), abs=0.015
    )
    assert result.risk == pytest.approx(exact_risk(rule.threshold), abs=0.015)
    assert rule.calibration_risk <= 0.15


def test_abstention_with_too_little_data_abstains_on_everything():
    rule = Abstention(0.05, 0.1).calibrate_arrays([0.9, 0.8, 0.95], [True, True, True])
    assert rule.threshold == math.inf and rule.answer_rate == 0.0
    assert not rule.answers([1.0]).any()


def test_abstention_on_posteriors_with_a_verifier_score(engine_data):
    calibration, test = engine_data.split(400, seed=1)
    # Importance weights make a wrong answer look certain when the right one was never
    # sampled, so the posterior mass certifies nothing at 30%; the verifier score does.
    by_mass = Abstention(0.3, 0.1).calibrate(calibration)
    by_score = Abstention(0.3, 0.1, confidence="score").calibrate(calibration)
    assert by_mass.threshold == math.inf and by_mass.evaluate(test).num_answered == 0
    assert math.isfinite(by_score.threshold) and by_score.calibration_risk <= 0.3
    result = by_score.evaluate(test)
    assert result.answer_rate > 0.2
    assert result.risk <= 0.3 + 3 * math.sqrt(0.3 * 0.7 / result.num_answered)
    for rule in (by_mass, by_score):
        decision = rule.predict(test[0].posterior)
        assert decision.abstained == (not decision.answers)
        assert "error rate among answered problems is <= 0.30" in decision.guarantee
    post = test[0].posterior
    # The verifier score of the MAP answer "k" is 1 - 0.15 k.
    expected = 1 - 0.15 * int(post.map_answer())
    assert conformal.confidence_of(post, "score") == pytest.approx(expected)
    with pytest.raises(CalibrationError, match="missing"):
        conformal.confidence_of(post, "nope")


# --- sample budgets ---------------------------------------------------------------------

MAX_SAMPLES = 12


def draw_sampling(num_problems: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Answer 0 is right; a problem is solved by each sample with probability p.

    4% of problems are never solved (p = 0); wrong answers are 1..3.
    """
    p = rng.beta(1.2, 1.0, size=num_problems) * (rng.random(num_problems) > 0.04)
    right = rng.random((num_problems, MAX_SAMPLES)) < p[:, None]
    wrong = rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1], size=(num_problems, MAX_SAMPLES))
    return np.where(right, 0, wrong), right


def reference_play(answers, right, rule: str, parameter: int):
    """Samples drawn and miss indicators, by a direct loop over samples."""
    num_problems = len(answers)
    used = np.full(num_problems, MAX_SAMPLES)
    counts = np.zeros((num_problems, 4), dtype=int)
    stopped = np.zeros(num_problems, dtype=bool)
    for j in range(MAX_SAMPLES):
        counts[np.arange(num_problems), answers[:, j]] += 1
        now = (j + 1 == parameter) if rule == "fixed" else counts.max(axis=1) >= parameter
        newly = now & ~stopped
        used[newly] = j + 1
        stopped |= newly
    found = np.array([right[i, : used[i]].any() for i in range(num_problems)])
    return used, ~found


@pytest.fixture(scope="module")
def sampling_pool():
    return draw_sampling(40000, np.random.default_rng(2))


@pytest.mark.parametrize("rule", ["fixed", "agreement"])
def test_budget_miss_rate_bound_holds(sampling_pool, rule):
    epsilon, delta = 0.15, 0.1
    answers, right = sampling_pool
    true_miss = {
        m: reference_play(answers, right, rule, m)[1].mean() for m in range(1, MAX_SAMPLES + 1)
    }
    rng = np.random.default_rng(4)
    violations, saved = [], []
    for _ in range(SPLITS):
        budget = SampleBudget(epsilon, delta, rule=rule)
        budget.calibrate_arrays(*draw_sampling(300, rng))
        violations.append(true_miss[budget.parameter] > epsilon)
        saved.append(budget.samples_saved)
    assert np.mean(violations) <= delta + 3 * math.sqrt(delta * (1 - delta) / SPLITS)
    # Savings against always drawing 12: substantial, and reported on held-out data.
    assert np.mean(saved) > 0.25
    result = budget.evaluate_arrays(answers, right)
    used, missed = reference_play(answers, right, rule, budget.parameter)
    assert result.miss_rate == pytest.approx(missed.mean())
    assert result.mean_samples == pytest.approx(used.mean())
    assert result.samples_saved == pytest.approx(1 - used.mean() / MAX_SAMPLES)


def test_infeasible_budget_says_so():
    answers = np.zeros((100, 4), dtype=int)
    right = np.zeros((100, 4), dtype=bool)
    right[:50] = True
    budget = SampleBudget(0.1, 0.1).calibrate_arrays(answers, right)
    assert not budget.feasible and budget.parameter == 4
    assert budget.guarantee().startswith("none")


def test_budget_on_importance_runs(engine_data):
    calibration, test = engine_data.split(400, seed=2)
    budget = SampleBudget(0.45, 0.1, rule="agreement").calibrate(calibration)
    assert budget.max_samples == 6 and budget.feasible
    post = test[0].posterior
    decision = budget.predict(post)
    drawn = decision.details["samples drawn"]
    assert set(decision.answers) == set(post.answers[:drawn])
    assert drawn == budget.stop(np.array([int(a) for a in post.answers]))
    assert sum(decision.probabilities) == pytest.approx(1.0)
    result = budget.evaluate(test)
    assert result.miss_rate <= 0.45 + 3 * math.sqrt(0.45 * 0.55 / len(test))


# --- Learn-then-Test building blocks ----------------------------------------------------


def test_binomial_pvalue_is_valid_under_the_null():
    rng = np.random.default_rng(0)
    losses = rng.binomial(50, 0.2, size=20000)
    pvalues = ltt_module.binomial_pvalues(losses, 50, 0.2)
    assert np.mean(pvalues <= 0.1) <= 0.1
    assert ltt_module.binomial_pvalues(0, 0, 0.2) == 1.0


def test_select_walks_fixed_sequences_and_bonferroni():
    p = np.array([[0.5, 0.01, 0.01, 0.5, 0.01], [0.01, 0.01, 0.01, 0.01, 0.01]])
    assert ltt_module.select(p, 0.05).tolist() == [-1, 4]
    assert ltt_module.select(p, 0.05, starts=5).tolist() == [4, 4]
    assert ltt_module.select(p, 0.05, "bonferroni").tolist() == [4, 4]
    assert ltt_module.select(p, 0.04, "bonferroni").tolist() == [-1, -1]
    # Fallback: levels 0.01 each; a rejection passes its level on, a failure does not.
    assert ltt_module.select(p, 0.05, "fallback").tolist() == [4, 4]
    carried = [0.01, 0.015, 0.5, 0.5, 0.5]
    assert ltt_module.select(carried, 0.05, "fallback").item() == 1
    assert ltt_module.select(carried, 0.05, "bonferroni").item() == 0
    with pytest.raises(InvalidArgumentError):
        ltt_module.select(p, 0.05, "holm")
    with pytest.raises(InvalidArgumentError, match="learn_then_test"):
        ltt_module.select(p, 0.05, "pareto")


# --- data, files, errors ----------------------------------------------------------------


def test_answers_match_normalizes():
    assert answers_match("31.0", "31") and answers_match(" $1,000 ", 1000)
    assert not answers_match("30", "31") and not answers_match(None, "31")
    assert answers_match("Paris.", ["paris", "Lyon"])


@pytest.mark.parametrize(
    "calibration",
    [
        AnswerSets(0.1, score="aps", seed=4),
        Abstention(0.2, 0.05, procedure="bonferroni"),
        SampleBudget(0.2, 0.1, rule="agreement"),
    ],
)
def test_calibration_files_round_trip(engine_data, tmp_path, calibration):
    calibration.calibrate(engine_data)
    path = tmp_path / "calib.json"
    save_calibration(calibration, path, source="test")
    loaded = load_calibration(path)
    assert type(loaded) is type(calibration)
    assert json.loads(path.read_text())["provenance"] == {"source": "test"}
    for example in engine_data.examples[:20]:
        before = calibration.predict(example.posterior, seed=1).to_dict()
        assert json.dumps(loaded.predict(example.posterior, seed=1).to_dict()) == json.dumps(before)


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(InvalidArgumentError, match="alpha"):
        AnswerSets(1.5)
    with pytest.raises(InvalidArgumentError, match="score"):
        AnswerSets(0.1, score="raps")
    with pytest.raises(InvalidArgumentError, match="labels"):
        AnswerSets(0.1).calibrate_arrays([[0.5, 0.5]], [2])
    with pytest.raises(CalibrationError, match="not calibrated"):
        AnswerSets(0.1).predict_arrays([[1.0]])
    with pytest.raises(InvalidArgumentError, match="decreasing"):
        Abstention(0.1, thresholds=[0.1, 0.5])
    with pytest.raises(InvalidArgumentError, match="correct"):
        Abstention(0.1).calibrate_arrays([0.5, 0.6], [1, 0])
    with pytest.raises(InvalidArgumentError, match="rule"):
        SampleBudget(0.1, rule="sometimes")
    with pytest.raises(CalibrationError, match="pair"):
        from_posteriors([("not a posterior", "1")])
    with pytest.raises(CalibrationError, match="no finished problems"):
        from_posteriors([])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CalibrationError, match="not a calibration file"):
        load_calibration(tmp_path / "bad.json")
    with pytest.raises(CalibrationError, match="cannot read"):
        load_calibration(tmp_path / "missing.json")


def test_public_api_is_exported():
    assert inference.AnswerSets is AnswerSets and inference.load_calibration is load_calibration
    assert ppl.errors.CalibrationError is CalibrationError


# The other conformal modules' examples use the objects of the root conftest.py; the
# doctest collection of `make test` runs them.
@pytest.mark.parametrize("module", [ltt_module])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
