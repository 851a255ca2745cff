"""Particle filtering with its_hub and with pplscale, side by side on one model.

Both filter the easiest arithmetic suite (``ppl.tasks.arithmetic``) line by
line on the embedded model, from one process and one loaded copy of it:

- the same sampler: temperature 0.7, top-k 50, a step ends at a newline or
  after 24 tokens, at most 3 lines, a line containing "Answer" ends the
  solution, and a reply the model closes early goes on at the next line;
- the same step reward: ``examples/particle_filtering.py:step_reward`` (1 when
  the newest line's equations hold, else 0.05), turned into log-odds by each
  library;
- resampling after every line, and the final answer read from the particle of
  largest final weight (its_hub's ``argmax`` selection); ours also reports the
  weighted vote.

its_hub 1.2.0 runs its ``ParticleFiltering`` with a local implementation of
its ``AbstractLanguageModel`` over our backend (one batched ``sample_steps``
call per round), and of its ``AbstractProcessRewardModel`` over the step
reward. It is installed with ``pip install --no-deps its-hub==1.2.0`` into
``.bench-venv/its_hub``, a virtual environment whose ``.pth`` file adds the
running interpreter's site-packages, so both libraries share torch and the
model; the script re-executes itself there on first use.

Run: ``python bench/vs_its_hub.py --problems 20 --budgets 4,8,16``
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import sysconfig
import time
import venv
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

from particle_filtering import INSTRUCTIONS, particle_filter, step_reward  # noqa: E402

import ppl  # noqa: E402
from ppl.answers import extract_answer  # noqa: E402
from ppl.cli.tasks import arithmetic  # noqa: E402
from ppl.lm import StepRequest  # noqa: E402

ITS_HUB_VENV = ROOT / ".bench-venv" / "its_hub"
MAX_LINES = 3
MAX_TOKENS = 24


def ensure_its_hub() -> None:
    """Re-execute in the its_hub venv (created on first use) unless its_hub imports here."""
    try:
        import its_hub  # noqa: F401
    except ImportError:
        python = ITS_HUB_VENV / "bin" / "python"
        if not python.exists():
            click.echo(f"installing its-hub==1.2.0 into {ITS_HUB_VENV} (first run only)...")
            venv.create(ITS_HUB_VENV, with_pip=True)
            site = subprocess.run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            Path(site, "shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
            pip = [str(python), "-m", "pip", "install", "-q", "--no-deps", "its-hub==1.2.0"]
            subprocess.run(pip, check=True)
        os.execv(str(python), [str(python), *sys.argv])


def its_hub_adapters(lm, seed: int):
    """its_hub's LM and process reward model, implemented over our backend and step reward."""
    from its_hub.api import AbstractLanguageModel, AbstractProcessRewardModel

    seeds = np.random.default_rng(seed)

    class BackendLM(AbstractLanguageModel):
        async def agenerate(self, messages, stop=None, **kwargs):
            batch = [messages] if not isinstance(messages[0], list) else messages
            requests = [
                StepRequest(
                    ppl.Chat(m[0].content, assistant=m[1].content if len(m) > 1 else ""),
                    stop=(stop,),
                    max_tokens=kwargs.get("max_completion_tokens") or MAX_TOKENS,
                    temperature=kwargs["temperature"],
                    top_k=50,
                )
                for m in batch
            ]
            results = lm.sample_steps(requests, seed=int(seeds.integers(2**31)))
            keep = kwargs.get("include_stop_str_in_output", False)
            texts = [r.text if keep else r.text.removesuffix(stop) for r in results]
            responses = [{"role": "assistant", "content": text} for text in texts]
            return responses if batch is messages else responses[0]

    class StepReward(AbstractProcessRewardModel):
        def score(self, prompt, steps):
            return [step_reward(prompt, tuple(text.rstrip("\n").split("\n"))) for text in steps]

        async def ascore(self, prompt, steps):
            return self.score(prompt, steps)

    return BackendLM(), StepReward()


def run_its_hub(lm, question: str, budget: int, seed: int) -> str | None:
    from its_hub.core.algorithms.particle_gibbs import ParticleFiltering
    from its_hub.core.lms.step_generation import StepGeneration

    random.seed(seed)  # its_hub resamples with the global generators
    np.random.seed(seed)
    backend, reward = its_hub_adapters(lm, seed)
    # its_hub stops a particle once it has max_steps steps before the new one.
    steps = StepGeneration(MAX_LINES - 1, step_token="\n", stop_token="Answer", temperature=0.7)
    pf = ParticleFiltering(steps, reward, final_response_selection="argmax")
    prompt = f"{INSTRUCTIONS}\n\nQuestion: {question}"
    return extract_answer(pf.infer(backend, prompt, budget)["content"])


def run_ours(lm, question: str, budget: int, seed: int) -> tuple[str | None, str | None]:
    posterior = particle_filter(lm, question, budget, seed)
    if posterior.is_empty:
        return None, None
    return posterior.best_of_n_answer(), posterior.map_answer()


@click.command()
@click.option("--problems", default=20, show_default=True, help="First N arithmetic problems.")
@click.option("--budgets", default="4,8,16", show_default=True, help="Particles per run.")
@click.option("--seed", default=0, show_default=True)
def main(problems: int, budgets: str, seed: int) -> None:
    """Accuracy, tokens generated and wall time of both particle filters at each budget."""
    ensure_its_hub()
    import its_hub

    import models

    lm = models.default_lm()
    task = arithmetic(problems)
    click.echo(f"its_hub {its_hub.__version__}; {len(task)} problems, seed {seed}")
    click.echo(f"{'method':<26} {'budget':>6} {'accuracy':>8} {'tokens/problem':>14} {'wall s':>8}")
    for budget in [int(b) for b in budgets.split(",")]:
        tally = {"its_hub (argmax)": [], "pplscale (argmax)": [], "pplscale (weighted vote)": []}
        cost = {"its_hub": [0, 0.0], "pplscale": [0, 0.0]}
        for index, problem in enumerate(task):
            run_seed = seed * 100_003 + index
            for name, run in (("its_hub", run_its_hub), ("pplscale", run_ours)):
                tokens, started = lm.stats.tokens_generated, time.perf_counter()
                answers = run(lm, problem.question, budget, run_seed)
                cost[name][0] += lm.stats.tokens_generated - tokens
                cost[name][1] += time.perf_counter() - started
                if name == "its_hub":
                    tally["its_hub (argmax)"].append(task.is_correct(problem, answers))
                else:
                    tally["pplscale (argmax)"].append(task.is_correct(problem, answers[0]))
                    tally["pplscale (weighted vote)"].append(task.is_correct(problem, answers[1]))
        for method, correct in tally.items():
            tokens, wall = cost[method.split()[0]]
            click.echo(
                f"{method:<26} {budget:>6} {np.mean(correct):>8.3f} "
                f"{tokens / len(task):>14.1f} {wall:>8.1f}"
            )


if __name__ == "__main__":
    main()
