"""Immutable values that flow through reasoning programs: ``Step`` and ``Chat``."""

from __future__ import annotations

from dataclasses import dataclass


class Step(str):
    """Text of one generated reasoning step, with its provenance.

    A ``Step`` is a ``str``; ``Step + str`` and ``str + Step`` give plain text.

    Attributes:
        token_ids: the generated token ids, including a final EOS if one was drawn.
        logp: log-probability of ``token_ids`` under the step's target (its sampler).
        finished: True when the model emitted EOS.
        top_logprobs: per generated token, the largest log-probabilities of the
            step's target distribution (its sampler: temperature, top-k, top-p) in
            decreasing order; tokens outside the sampler's support are omitted, so
            a tuple may hold fewer than requested. Empty unless requested.

    Example:
        >>> s = Step("Hello", token_ids=(1, 2), logp=-3.5, finished=False)
        >>> s + " world", s.logp
        ('Hello world', -3.5)
    """

    token_ids: tuple[int, ...]
    logp: float
    finished: bool
    top_logprobs: tuple[tuple[float, ...], ...]

    def __new__(
        cls,
        text: str,
        *,
        token_ids=(),
        logp: float = 0.0,
        finished: bool = False,
        top_logprobs=(),
    ):
        self = super().__new__(cls, text)
        self.token_ids = tuple(int(t) for t in token_ids)
        self.logp = float(logp)
        self.finished = bool(finished)
        self.top_logprobs = tuple(tuple(float(x) for x in row) for row in top_logprobs)
        return self

    @classmethod
    def from_result(cls, result) -> Step:
        """The ``Step`` carrying a backend's ``StepResult``."""
        return cls(
            result.text,
            token_ids=result.token_ids,
            logp=result.logp,
            finished=result.finished,
            top_logprobs=result.top_logprobs,
        )

    def __repr__(self) -> str:
        return f"Step({str.__repr__(self)}, logp={self.logp:.3f}, finished={self.finished})"

    def __reduce__(self):
        return (
            _make_step,
            (str(self), self.token_ids, self.logp, self.finished, self.top_logprobs),
        )


def _make_step(text, token_ids, logp, finished, top_logprobs=()):
    return Step(text, token_ids=token_ids, logp=logp, finished=finished, top_logprobs=top_logprobs)


@dataclass(frozen=True, slots=True)
class Chat:
    """A chat context: system and user messages plus the assistant text so far.

    Backends render it with the tokenizer's chat template and continue the
    assistant message. ``chat + text`` returns a new ``Chat``.

    Example:
        >>> c = Chat("What is 2+3?", system="Be brief.") + "2+3"
        >>> (c + " = 5").assistant
        '2+3 = 5'
    """

    user: str
    system: str | None = None
    assistant: str = ""

    def __add__(self, text: str) -> Chat:
        if not isinstance(text, str):
            return NotImplemented
        return Chat(self.user, self.system, self.assistant + str(text))

    def messages(self) -> list[dict[str, str]]:
        """System and user messages in the ``[{"role", "content"}]`` form of chat templates."""
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return [*head, {"role": "user", "content": self.user}]
