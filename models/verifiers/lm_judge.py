"""``LMJudge``: a language model asked "is this correct? Yes/No", read from its probabilities."""

from __future__ import annotations

import math

from models.verifiers.base import Verifier
from ppl.errors import VerifierError
from ppl.lm import LM, Context, ScoreRequest
from ppl.values import Chat

STEP_TEMPLATE = (
    "Question: {question}\n\nSolution so far:\n{solution}\n\n"
    "Is the last step of this solution correct? Answer Yes or No."
)
OUTCOME_TEMPLATE = (
    "Question: {question}\n\nProposed solution:\n{solution}\n\n"
    "Is this solution correct? Answer Yes or No."
)


class LMJudge(Verifier):
    """P(Yes) / (P(Yes) + P(No)) of a language model asked whether a solution is correct.

    The question is ``template.format(question=..., solution=..., step=...)``,
    where ``solution`` is the steps so far concatenated verbatim and ``step``
    the one being judged. With ``chat=True`` it is the user message of a
    ``ppl.Chat`` (the model's chat template applies and the answer starts
    the assistant turn); otherwise it is raw text. Both ``yes`` and ``no``
    are scored as continuations of it, for every step of every solution, in
    one batched ``lm.score_steps`` call; nothing is sampled. Multi-token
    answers are scored by their full log-probability.

    The backend must tokenize (``lm.encode(context)``, as ``TransformersLM``
    does) to turn ``yes``/``no`` into token ids. Inside a program, give the
    judge its own backend sharing the weights, e.g.
    ``LMJudge(TransformersLM(lm.model, lm.tokenizer))``, so its scoring does not
    evict the particles' KV cache.

    Example (a judge over ``lm``, a tiny random llama whose letters ``a`` and ``b`` stand
    for ``Yes`` and ``No``; with an instruction-tuned model keep the defaults, e.g.
    ``LMJudge(models.default_lm(), level="outcome")``):
        >>> judge = LMJudge(lm, level="outcome", template="{question}c{solution}",
        ...                 chat=False, yes="a", no="b")
        >>> round(judge.score("ab", ["ba", "ca"]), 2)
        0.73
    """

    def __init__(
        self,
        lm: LM,
        *,
        level: str = "step",
        aggregate: str = "min",
        template: str | None = None,
        chat: bool = True,
        system: str | None = None,
        yes: str = "Yes",
        no: str = "No",
    ):
        super().__init__(level=level, aggregate=aggregate)
        if not callable(getattr(lm, "encode", None)):
            raise VerifierError(
                f"LMJudge needs a backend that tokenizes (an encode(context) method); "
                f"{type(lm).__name__} has none"
            )
        if not yes or not no or yes == no:
            raise VerifierError(
                f"yes and no must be distinct non-empty strings, got {yes!r}, {no!r}"
            )
        self.lm = lm
        self.template = template or (STEP_TEMPLATE if level == "step" else OUTCOME_TEMPLATE)
        self.chat = chat
        self.system = system
        self.yes = yes
        self.no = no

    def prompt(self, question: str, steps: tuple[str, ...]) -> Context:
        """The context asking whether the last of ``steps`` (or the whole solution) is correct."""
        text = self.template.format(
            question=question, solution="".join(steps), step=steps[-1] if steps else ""
        )
        return Chat(text, system=self.system) if self.chat else text

    def _probabilities(self, items, *, last_only):
        contexts: list[Context] = []
        counts = []
        for question, steps in items:
            if self.level == "outcome":
                ends = [len(steps)]
            else:
                ends = [len(steps)] if last_only and steps else range(1, len(steps) + 1)
            contexts += [self.prompt(question, steps[:end]) for end in ends]
            counts.append(len(ends))
        requests = []
        for context in contexts:
            requests.append(ScoreRequest(context, self._continuation(context, self.yes)))
            requests.append(ScoreRequest(context, self._continuation(context, self.no)))
        log_probs = self.lm.score_steps(requests) if requests else []
        # P(Yes) / (P(Yes) + P(No)) = sigmoid(log P(Yes) - log P(No)).
        probabilities = [
            1.0 / (1.0 + math.exp(min(log_no - log_yes, 700.0)))
            for log_yes, log_no in zip(log_probs[0::2], log_probs[1::2], strict=True)
        ]
        results, start = [], 0
        for count in counts:
            results.append(probabilities[start : start + count])
            start += count
        return results

    def _continuation(self, context: Context, answer: str) -> tuple[int, ...]:
        """Token ids of ``answer`` after ``context``, as the model would tokenize them together."""
        prefix = self.lm.encode(context)
        full = self.lm.encode(context + answer)
        if full[: len(prefix)] != prefix or len(full) == len(prefix):
            raise VerifierError(
                f"the answer {answer!r} does not tokenize as a continuation of the judge's "
                "prompt (it merges with the prompt's last token or encodes to nothing); "
                "change yes/no or end the template with a separator"
            )
        return full[len(prefix) :]
