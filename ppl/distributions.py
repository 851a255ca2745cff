"""``LMStep``: one reasoning step as a Pyro distribution over text."""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

from ppl.errors import InvalidArgumentError
from ppl.lm import LM, Context, StepRequest
from ppl.sampler import check_sampler
from ppl.values import Chat, Step


def make_request(
    context: Context,
    stop,
    max_tokens: int,
    temperature: float = 1.0,
    logits_processor=None,
    *,
    top_k: int | None = None,
    top_p: float | None = None,
    proposal_temperature: float | None = None,
    top_logprobs: int = 0,
) -> StepRequest:
    """The normalized request of a step; its hash identifies the step on replay.

    Settings that change nothing are dropped (``top_p=1``, a proposal
    temperature equal to the target's), so equal distributions get equal requests.

    Example:
        >>> r = make_request("Hi", "\\n", 8, 0.7, top_p=1.0, proposal_temperature=0.7)
        >>> r.stop, r.top_p, r.proposal_temperature
        (('\\n',), None, None)
    """
    temperature = float(temperature)
    if proposal_temperature is not None:
        proposal_temperature = float(proposal_temperature)
        if proposal_temperature == temperature:
            proposal_temperature = None
    return StepRequest(
        context=context if isinstance(context, Chat) else str(context),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        max_tokens=max_tokens,
        temperature=temperature,
        logits_processor=logits_processor,
        top_k=top_k,
        top_p=None if top_p is not None and top_p >= 1 else top_p,
        proposal_temperature=proposal_temperature,
        top_logprobs=top_logprobs,
    )


class LMStep(TorchDistribution):
    """Distribution over the next step of text that ``lm`` writes after ``context``.

    The density is the model as it is sampled: per token, softmax of
    ``logits / temperature`` truncated to ``top_k`` and the ``top_p`` nucleus
    (``ppl.sampler``), until a stop string, EOS or ``max_tokens``. Sampling
    draws from the proposal (``proposal_temperature``, ``logits_processor``;
    the density itself by default) and inference engines weight by
    ``log p - log q``. ``log_prob`` scores a given ``Step`` (its ``token_ids``).

    Example:
        >>> d = LMStep(lm, "ab", stop=("c",), max_tokens=4)
        >>> s = d.sample()  # a Step: its text, token ids and log-probability
        >>> math.isclose(d.log_prob(s).item(), s.logp, abs_tol=1e-4), len(s.token_ids) <= 4
        (True, True)
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
        top_k: int | None = None,
        top_p: float | None = None,
        proposal_temperature: float | None = None,
        top_logprobs: int = 0,
    ):
        if not isinstance(context, str | Chat):
            raise InvalidArgumentError(
                f"step context must be a str or ppl.Chat, got {type(context).__name__}"
            )
        if not (isinstance(max_tokens, int) and max_tokens >= 1):
            raise InvalidArgumentError(f"max_tokens must be a positive int, got {max_tokens!r}")
        check_sampler(temperature, top_k, top_p)
        if isinstance(top_logprobs, bool) or not (
            isinstance(top_logprobs, int) and top_logprobs >= 0
        ):
            raise InvalidArgumentError(
                f"top_logprobs must be an int >= 0 (log-probs kept per token), got {top_logprobs!r}"
            )
        if proposal_temperature is not None and not (
            isinstance(proposal_temperature, int | float) and proposal_temperature > 0
        ):
            raise InvalidArgumentError(
                "proposal_temperature must be > 0 (the proposal must cover the target), "
                f"got {proposal_temperature!r}"
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
        request = make_request(
            context,
            stop,
            max_tokens,
            temperature,
            logits_processor,
            top_k=top_k,
            top_p=top_p,
            proposal_temperature=proposal_temperature,
            top_logprobs=top_logprobs,
        )
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
        return Step.from_result(result)

    def log_prob(self, value: Step) -> torch.Tensor:
        if not isinstance(value, Step):
            raise InvalidArgumentError(
                f"LMStep.log_prob needs a Step (it scores token ids), got {type(value).__name__}"
            )
        (logp,) = self.lm.score_steps([self.request.score_request(value.token_ids)])
        return torch.tensor(logp)
