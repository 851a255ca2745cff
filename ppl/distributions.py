"""``LMStep``: one reasoning step as a Pyro distribution over text."""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

from ppl.errors import InvalidArgumentError
from ppl.lm import LM, Context, ScoreRequest, StepRequest
from ppl.values import Chat, Step


def make_request(
    context: Context, stop, max_tokens: int, temperature: float, logits_processor=None
) -> StepRequest:
    """The normalized request of a step; its hash identifies the step on replay."""
    return StepRequest(
        context=context if isinstance(context, Chat) else str(context),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        max_tokens=max_tokens,
        temperature=float(temperature),
        logits_processor=logits_processor,
    )


class LMStep(TorchDistribution):
    """Distribution over the next step of text that ``lm`` writes after ``context``.

    Sampling draws tokens at ``temperature`` until a stop string, EOS or
    ``max_tokens``; the target density is always the temperature-1 model, and
    inference engines weight by ``log p - log q`` to correct the proposal.
    ``log_prob`` scores a given ``Step`` (its ``token_ids``) with the model.

    Example:
        >>> d = LMStep(lm, "The sky is", stop=(".",), max_tokens=8)  # doctest: +SKIP
        >>> s = d.sample(); d.log_prob(s)                            # doctest: +SKIP
    """

    arg_constraints: dict = {}
    support = constraints.real  # text has no torch support; declared for Pyro's checks
    has_rsample = False

    def __init__(
        self,
        lm: LM,
        context: Context,
        *,
        stop: tuple[str, ...] | list[str] = ("\n",),
        max_tokens: int = 64,
        temperature: float = 1.0,
        logits_processor=None,
    ):
        if not isinstance(context, str | Chat):
            raise InvalidArgumentError(
                f"step context must be a str or ppl.Chat, got {type(context).__name__}"
            )
        if not (isinstance(max_tokens, int) and max_tokens >= 1):
            raise InvalidArgumentError(f"max_tokens must be a positive int, got {max_tokens!r}")
        if not temperature > 0:
            raise InvalidArgumentError(
                f"temperature must be > 0 (the proposal must cover the model), got {temperature!r}"
            )
        if logits_processor is not None:
            try:
                hash(logits_processor)
            except TypeError as error:
                raise InvalidArgumentError(
                    "logits_processor must be callable and hashable, got "
                    f"{type(logits_processor).__name__}"
                ) from error
            if not callable(logits_processor):
                raise InvalidArgumentError(
                    f"logits_processor must be callable, got {logits_processor!r}"
                )
        request = make_request(context, stop, max_tokens, temperature, logits_processor)
        if not all(isinstance(s, str) and s for s in request.stop):
            raise InvalidArgumentError(f"stop must be a tuple of non-empty strings, got {stop!r}")
        if not hasattr(lm, "sample_steps"):
            raise InvalidArgumentError(f"lm must be a backend with sample_steps, got {lm!r}")
        self.lm = lm
        self.request = request
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size(), validate_args=False)

    def sample(self, sample_shape=()) -> Step:
        if tuple(sample_shape) != ():
            raise InvalidArgumentError("LMStep draws one step at a time")
        (result,) = self.lm.sample_steps([self.request])
        return Step(
            result.text, token_ids=result.token_ids, logp=result.logp, finished=result.finished
        )

    def log_prob(self, value: Step) -> torch.Tensor:
        if not isinstance(value, Step):
            raise InvalidArgumentError(
                f"LMStep.log_prob needs a Step (it scores token ids), got {type(value).__name__}"
            )
        (logp,) = self.lm.score_steps([ScoreRequest(self.request.context, value.token_ids)])
        return torch.tensor(logp)
