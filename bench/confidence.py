"""Majority voting against confidence-filtered, early-stopped voting at equal budget.

On the arithmetic suite with the embedded model, every problem is solved
with ``--samples`` traces of one program (one calculation per line, sampled
at temperature 0.7 and top-k 50, ``top_logprobs`` recorded, no verifier):

- ``majority``: ``ppl.importance`` and the unweighted vote;
- ``deepconf keep=K``: ``ppl.importance`` with ``early_stop=ConfidenceStop``
  (``--warmup`` warm-up traces, threshold at their ``1 - K`` quantile of the
  lowest group confidence over ``--window`` tokens) and the
  confidence-weighted vote (``ppl.confidence_vote``).

Both start the same number of traces from the same seeds, so the warm-up
traces are the majority run's first traces; tokens are those the LM
generated. It prints accuracy and tokens per method, and the share of
tokens saved against majority voting. See ``bench/README.md``.

Run: ``OMP_NUM_THREADS=1 python bench/confidence.py --problems 8 --samples 16``
"""

from __future__ import annotations

import time

import click

import ppl
from models.verifiers import Confidence
from ppl.answers import extract_answer
from ppl.cli.tasks import arithmetic

INSTRUCTIONS = (
    "Solve the problem with one calculation per line, then give the result "
    "on a line 'Answer: N'. Example:\n"
    "Question: What is 2 + 5?\n2 + 5 = 7\nAnswer: 7"
)


@ppl.program
def solve(lm, question: str, max_lines: int = 3, top_logprobs: int = 5):
    chat = ppl.Chat(f"{INSTRUCTIONS}\n\nQuestion: {question}")
    for i in range(max_lines):
        line = ppl.step(
            f"line_{i}",
            lm,
            chat,
            stop=("\n",),
            max_tokens=24,
            temperature=0.7,
            top_k=50,
            top_logprobs=top_logprobs,
        )
        chat = chat + line
        if line.finished or "answer" in line.lower():
            break
    ppl.answer(extract_answer(chat.assistant))


def _vote(posterior, method: str, window: int):
    if method == "majority":
        return posterior.majority_answer()
    shares = ppl.confidence_vote(posterior, Confidence("lowest_group", window=window))
    return max(shares, key=shares.__getitem__)


@click.command()
@click.option("--problems", default=8, show_default=True)
@click.option("--samples", default=16, show_default=True, help="Traces started per problem.")
@click.option("--warmup", default=4, show_default=True, help="Warm-up traces (DeepConf N_init).")
@click.option("--window", default=16, show_default=True, help="Group window in tokens.")
@click.option("--keep", "keeps", default="0.9,0.5", show_default=True)
@click.option("--seed", default=0, show_default=True)
def main(problems, samples, warmup, window, keeps, seed):
    """Print accuracy and generated tokens of majority and DeepConf-style voting."""
    import models

    lm = models.default_lm()
    task = arithmetic(problems, seed=seed)
    methods = {"majority": None} | {
        f"deepconf keep={k}": ppl.ConfidenceStop(warmup, keep=float(k), window=window)
        for k in keeps.split(",")
    }
    totals = {name: [0, 0, 0.0] for name in methods}  # correct, tokens, seconds
    for k, problem in enumerate(task):
        for name, rule in methods.items():
            start = time.perf_counter()
            post = ppl.importance(
                solve, lm, problem.question, num_particles=samples, seed=seed + k, early_stop=rule
            )
            answer = _vote(post, "majority" if rule is None else "deepconf", window)
            totals[name][0] += task.is_correct(problem, answer)
            totals[name][1] += post.cost.tokens_generated
            totals[name][2] += time.perf_counter() - start
        click.echo(f"problem {k}: " + ", ".join(f"{n} {t[0]}" for n, t in totals.items()))
    base_tokens = totals["majority"][1]
    click.echo(f"\n{problems} problems x {samples} samples, warm-up {warmup}, window {window}")
    click.echo(f"{'method':>18} {'accuracy':>9} {'tokens':>7} {'saved':>6} {'seconds':>8}")
    for name, (correct, tokens, seconds) in totals.items():
        saved = 1 - tokens / base_tokens
        click.echo(f"{name:>18} {correct / problems:9.3f} {tokens:7d} {saved:6.1%} {seconds:8.1f}")


if __name__ == "__main__":
    main()
