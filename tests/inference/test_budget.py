"""NumPyro scaling-law and Beta success fits: parameter recovery, NUTS diagnostics, planning,
and ``ppl bench --fit``."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
import transformers
from click.testing import CliRunner
from scipy.special import betaln
from tiny import make_tiny_lm

from inference.budget import fit_beta_success, fit_scaling_law
from ppl.cli.bench.command import bench
from ppl.cli.bench.plots import scaling_law_figure
from ppl.errors import FitDiagnosticsError, InvalidArgumentError

ALPHA, BETA = 1.5, 0.5
BUDGETS = np.array([1, 2, 4, 8, 16, 32])


def law(k):
    return np.exp(-ALPHA * np.asarray(k, dtype=float) ** -BETA)


@pytest.fixture(scope="module")
def scaling_fit():
    rng = np.random.default_rng(0)
    trials = np.full(len(BUDGETS), 300)
    successes = rng.binomial(trials, law(BUDGETS))
    return fit_scaling_law(BUDGETS, successes, trials, num_warmup=300, num_samples=300, seed=0)


def test_scaling_law_recovers_known_parameters_with_healthy_nuts(scaling_fit, tmp_path):
    d = scaling_fit.diagnostics
    assert d.max_r_hat < 1.05 and d.divergences == 0 and d.min_ess > 100 and d.num_chains == 2
    scaling_fit.check()
    for name, true in (("alpha", ALPHA), ("beta", BETA)):
        low, high = scaling_fit.interval(name)
        assert low < true < high, name
    # Unseen budgets: the 90% band holds the true accuracy.
    band = scaling_fit.predict([64, 256])
    assert np.all(band["low"] < law([64, 256])) and np.all(law([64, 256]) < band["high"])
    assert scaling_law_figure(scaling_fit)[:4] == b"\x89PNG"


def test_required_budget_is_the_smallest_that_reaches_the_target(scaling_fit):
    needed = scaling_fit.required_budget(0.8, confidence=0.9)
    draws = scaling_fit.curve([needed - 1, needed])
    assert (draws[:, 1] >= 0.8).mean() >= 0.9 > (draws[:, 0] >= 0.8).mean()
    # The true law reaches 0.8 at k = (alpha / -log 0.8) ** (1 / beta) ~ 45; planning with
    # 90% confidence asks for about that.
    assert 20 < needed < 150
    assert scaling_fit.required_budget(0.999, confidence=0.9, max_budget=64) is None


def test_beta_success_model_recovers_coverage():
    rng = np.random.default_rng(1)
    a, b = 0.6, 1.4
    p = rng.beta(a, b, size=200)
    successes = rng.binomial(20, p)
    fit = fit_beta_success(successes, np.full(200, 20), num_warmup=300, num_samples=300, seed=0)
    fit.check()
    for name, true in (("a", a), ("b", b)):
        low, high = fit.interval(name)
        assert low < true < high, name
    k = np.array([1, 10, 100])
    coverage = 1 - np.exp(betaln(a, b + k) - betaln(a, b))
    band = fit.predict(k, interval=0.95)
    assert np.all(band["low"] < coverage) and np.all(coverage < band["high"])
    needed = fit.required_budget(0.8, confidence=0.9)
    assert (fit.curve([needed])[:, 0] >= 0.8).mean() >= 0.9


def test_diagnostics_and_bad_input_raise(scaling_fit):
    with pytest.raises(FitDiagnosticsError, match="R-hat"):
        scaling_fit.check(min_ess=10_000)
    with pytest.raises(InvalidArgumentError, match="two budgets"):
        fit_scaling_law([4, 4], [1, 2], [5, 5])
    with pytest.raises(InvalidArgumentError, match="successes <= trials"):
        fit_scaling_law([1, 2], [6, 2], [5, 5])
    with pytest.raises(InvalidArgumentError, match="one entry each"):
        fit_beta_success([1, 2], [5])


PROGRAM = """
import ppl


@ppl.program
def guess(lm, question):
    first = ppl.step("first", lm, question, stop=(), max_tokens=1)
    ppl.answer(str(first))
"""


def test_bench_fit_writes_predictions_and_plots(tmp_path):
    torch.set_num_threads(1)
    lm = make_tiny_lm(seed=0)
    transformers.utils.logging.disable_progress_bar()
    lm.model.save_pretrained(tmp_path / "model")
    lm.tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "program.py").write_text(textwrap.dedent(PROGRAM))
    questions = ["ab", "ba", "cab", "abc", "bca", "aab", "cc", "bb", "ca", "ac"]
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"question": q, "answer": q[-1]}) + "\n" for q in questions))
    out = tmp_path / "out"
    args = [
        "--task", str(task), "--program", f"{tmp_path / 'program.py'}:guess",
        "--model", str(tmp_path / "model"), "--methods", "importance", "--budgets", "1,2,4,8",
        "--out", str(out), "--no-progress", "--fit", "--target-accuracy", "0.5",
    ]  # fmt: skip
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    assert "importance: accuracy at budget 128 predicted" in result.output
    fits = json.loads((out / "scaling_law.json").read_text())
    fit = fits["importance"]
    rows = json.loads((out / "results.json").read_text())["results"]
    assert fit["data"]["budgets"] == [1.0, 2.0, 4.0, 8.0]
    assert fit["data"]["successes"] == [round(r["accuracy"] * 10) for r in rows]
    assert [p["budget"] for p in fit["planning"]["predictions"]] == [16.0, 32.0, 128.0]
    for prediction in fit["planning"]["predictions"]:
        assert 0 <= prediction["low"] <= prediction["mean"] <= prediction["high"] <= 1
    assert {"max_r_hat", "divergences", "min_ess"} <= set(fit["diagnostics"])
    assert (out / "scaling_law_importance.png").read_bytes()[:4] == b"\x89PNG"
