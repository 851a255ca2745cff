"""``report.html`` in a real browser: headless Chromium loads it without console errors.

The test set-up installs Debian's ``chromium`` package when it is missing and
the tests run as root; otherwise these tests are skipped with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import cli_programs
import pyro.distributions as dist
import pytest
import torch
from browser import chromium_or_reason, load_page
from click.testing import CliRunner

import ppl
from ppl.cli import main
from ppl.cli.report import save_run

PAGE_FACTS = """JSON.stringify({
  summaryRows: [...document.querySelectorAll('#summary tbody tr')].map(
      r => [...r.cells].map(c => c.textContent)),
  images: [...document.images].map(i => ({complete: i.complete, width: i.naturalWidth})),
  title: document.title,
})"""


@pytest.fixture(scope="module")
def chromium() -> str:
    path, reason = chromium_or_reason()
    if path is None:
        pytest.skip(reason)
    return path


@ppl.program
def letters(lm, prefix: str):
    text = ""
    for i in range(3):
        token = ppl.step(f"t{i}", lm, prefix + text, stop=(), max_tokens=1)
        ppl.condition(f"no_e{i}", "e" not in token)
        text += token
    ppl.answer(text)


def test_harness_sees_console_errors_and_broken_images(chromium, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>bad</title></head><body>'
        '<table id="summary"><tbody><tr><td>a</td></tr></tbody></table>'
        '<img src="data:image/png;base64,AAAA">'
        "<script>console.error('boom'); missingFunction();</script></body></html>"
    )
    load = load_page(chromium, page, PAGE_FACTS)
    assert any("boom" in e for e in load.errors)
    assert any("missingFunction" in e for e in load.errors)
    assert load.values["images"] == [{"complete": True, "width": 0}]


def test_run_report_loads_cleanly(chromium, tmp_path, tiny_lm):
    post = ppl.run("smc", letters, tiny_lm, "ab", num_runs=3, num_particles=12, seed=0)
    save_run(post, tmp_path, metadata={"program": "letters"}, title="letters <report>")
    load = load_page(chromium, tmp_path / "report.html", PAGE_FACTS)
    assert load.errors == []
    facts = load.values
    assert facts["title"] == "letters <report>"
    rows = dict(facts["summaryRows"])
    assert rows["MAP answer"] == repr(post.map_answer())
    assert rows["method"] == "smc: 3 run(s), 36 particles in all"
    assert len(facts["images"]) == 5
    assert all(image["complete"] and image["width"] > 0 for image in facts["images"])


def test_dataset_report_loads_cleanly(chromium, tmp_path):
    programs = Path(cli_programs.__file__)
    dataset = tmp_path / "problems.jsonl"
    dataset.write_text(
        "\n".join(json.dumps({"input": label, "answer": f"{label}0"}) for label in "abc")
    )
    result = CliRunner().invoke(
        main,
        [
            "run",
            f"{programs}:toy",
            "--model",
            "none",
            "--dataset",
            str(dataset),
            "--particles",
            "20",
            "--out",
            str(tmp_path / "out"),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    load = load_page(chromium, tmp_path / "out" / "report.html", PAGE_FACTS)
    assert load.errors == []
    rows = dict(load.values["summaryRows"])
    assert rows["problems finished"] == "3 of 3"


def test_empty_posterior_report_loads_cleanly(chromium, tmp_path):
    @ppl.program
    def never():
        ppl.sample("x", dist.Categorical(torch.ones(2)))
        ppl.condition("impossible", False)
        ppl.answer(0)

    save_run(ppl.importance(never, num_particles=4, seed=0), tmp_path, metadata={})
    load = load_page(chromium, tmp_path / "report.html", PAGE_FACTS)
    assert load.errors == []
    assert dict(load.values["summaryRows"])["MAP answer"] == "none (empty posterior)"
    assert all(image["width"] > 0 for image in load.values["images"])
