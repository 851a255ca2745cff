"""An amortised proposal: a learned logit bias trained by reweighted wake-sleep.

``LogitBiasProposal`` is a logits processor that adds a learned bias ``b``
(one entry per vocabulary token) to the model's next-token logits, so a step
draws each token from ``q_b(v | prefix) ∝ p(v | prefix) * exp(b_v)``. Backends
weight by ``log p - log q`` as for any processor: estimates stay exact whatever
the bias, and a finite bias covers every token the model can write.

``train_logit_bias`` fits ``b`` by the wake-phase update of reweighted
wake-sleep: each iteration runs ``importance`` on the program with the current
proposal, takes the self-normalised weights ``w~_i`` of the particles, and
takes one Adam step on ``-sum_i w~_i sum_t log q_b(x_t | prefix_t)`` over the
tokens of the particle's steps that used the proposal. That is a stochastic
gradient of ``KL(pi || q_b)`` with ``pi`` the program's posterior: tokens the
posterior never keeps (e.g. ones a constraint rejects) are pushed down, and
the variance of the evidence estimate drops. The model's log-probabilities at
the sampled positions are recomputed in batched passes that reuse cached
prefixes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from inference.importance import importance
from inference.variational.checkpoints import load_checkpoint, save_checkpoint
from ppl.errors import CapabilityError, InvalidArgumentError, SerializationError
from ppl.lm import Context, ForwardingLM, ScoreRequest, StepRequest
from ppl.sampler import proposal_log_probs, target_log_probs

_FORMAT = "pplscale-logit-bias/1"
# Log-probabilities materialised at once while recomputing a batch of positions.
_LOGPROB_BUDGET = 64 * 2**20


class LogitBiasProposal:
    """A logits processor drawing tokens from ``p(v | prefix) * exp(bias[v])``, normalised.

    A fresh proposal has a zero bias and draws from the model. Pass it as the
    ``logits_processor`` of the steps it should guide and fit it with
    ``train_logit_bias``. The bias is a leaf tensor (``bias``) that training
    updates in place; the object hashes by identity, as replay requires.

    Example:
        >>> proposal = LogitBiasProposal(5)
        >>> proposal(torch.zeros(1, 5), [[]]).tolist()
        [[0.0, 0.0, 0.0, 0.0, 0.0]]
        >>> proposal = LogitBiasProposal.for_lm(lm)  # no_e passes it to its ppl.step calls
        >>> ppl.smc(no_e, lm, None, "a", proposal, num_particles=8, seed=0).map_answer()
        'ca'
    """

    def __init__(self, vocab_size: int):
        if not (isinstance(vocab_size, int) and vocab_size >= 1):
            raise InvalidArgumentError(f"vocab_size must be a positive int, got {vocab_size!r}")
        self.vocab_size = vocab_size
        self.bias = torch.zeros(vocab_size, requires_grad=True)

    @classmethod
    def for_lm(cls, lm) -> LogitBiasProposal:
        """A zero-bias proposal sized for ``lm``'s vocabulary.

        Example:
            >>> LogitBiasProposal.for_lm(lm)
            LogitBiasProposal(5 tokens)
        """
        return cls(_vocab_size(lm))

    def __call__(self, logits: torch.Tensor, generated: Sequence[Sequence[int]]) -> torch.Tensor:
        self._check_width(logits.shape[-1])
        return logits.add_(self.bias.detach().to(logits.device, logits.dtype))

    def check_lm(self, lm) -> None:
        """Raise ``InvalidArgumentError`` unless this proposal's vocabulary is ``lm``'s."""
        self._check_width(_vocab_size(lm), f"{type(lm).__name__}'s ")

    def _check_width(self, width: int, whose: str = "the model's ") -> None:
        if width != self.vocab_size:
            raise InvalidArgumentError(
                f"this logit-bias proposal covers {self.vocab_size} tokens, but {whose}vocabulary "
                f"has {width}; was it trained on another model?"
            )

    def next_token_logprobs(self, lm, contexts: Sequence[Context]) -> torch.Tensor:
        """``log q`` of the next token after each context, ``[len(contexts), vocab]``.

        Example:
            >>> proposal = LogitBiasProposal.for_lm(lm)  # a zero bias: the model's own
            >>> proposal.next_token_logprobs(lm, ["ab"]).exp().round(decimals=3)
            tensor([[0.3900, 0.3960, 0.1070, 0.0910, 0.0170]])
        """
        self.check_lm(lm)
        log_p = lm.next_token_logprobs(list(contexts)).float().cpu()
        return torch.log_softmax(log_p + self.bias.detach(), dim=-1)

    def save(self, path: str | Path) -> None:
        """Write the bias to ``path``; see ``load``.

        Example:
            >>> proposal = LogitBiasProposal.for_lm(lm)
            >>> proposal.bias.data[4] = -3.0
            >>> proposal.save("no_e_bias.pt")
            >>> LogitBiasProposal.load("no_e_bias.pt").bias.tolist()
            [0.0, 0.0, 0.0, 0.0, -3.0]
        """
        save_checkpoint(
            path, _FORMAT, {"vocab_size": self.vocab_size, "bias": self.bias.detach().cpu().clone()}
        )

    @classmethod
    def load(cls, path: str | Path) -> LogitBiasProposal:
        """Read a proposal written by ``save``.

        Example:
            >>> LogitBiasProposal(5).save("no_e_bias.pt")
            >>> proposal = LogitBiasProposal.load("no_e_bias.pt")
            >>> proposal, proposal.bias.requires_grad
            (LogitBiasProposal(5 tokens), True)
        """
        data = load_checkpoint(path, _FORMAT, "a logit-bias proposal")
        bias = data["bias"]
        if not isinstance(bias, torch.Tensor) or bias.shape != (int(data["vocab_size"]),):
            raise SerializationError(f"{path} holds a bias that does not match its vocab_size")
        proposal = cls(int(data["vocab_size"]))
        with torch.no_grad():
            proposal.bias.copy_(bias)
        return proposal

    def __repr__(self) -> str:
        return f"LogitBiasProposal({self.vocab_size} tokens)"


@dataclass
class LogitBiasTraining:
    """What ``train_logit_bias`` saw: per iteration, the ESS of its importance run and the loss.

    The ESS is that of the particles drawn with the proposal as it was before
    the iteration's update.
    """

    ess: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def train_logit_bias(
    proposal: LogitBiasProposal,
    program: Callable,
    lm,
    *args,
    num_particles: int,
    num_iterations: int,
    learning_rate: float = 0.02,
    seed: int | None = None,
    **kwargs,
) -> LogitBiasTraining:
    """Fit ``proposal`` to ``program``'s posterior by reweighted wake-sleep.

    ``program`` is called as ``program(lm, *args, **kwargs)`` and must pass
    ``proposal`` as the ``logits_processor`` of the ``ppl.step`` calls it
    should guide, on ``lm`` (a local backend such as ``models.TransformersLM``).
    Each of ``num_iterations`` iterations is one importance run of
    ``num_particles`` particles and one Adam step (see the module docstring).
    Adam moves every entry of the bias by about ``learning_rate`` a step,
    tokens the particles rarely write included, so a large vocabulary wants a
    small rate and many iterations; a vocabulary of a few tokens can take 0.2.

    Example:
        >>> proposal = LogitBiasProposal.for_lm(lm)
        >>> history = train_logit_bias(proposal, no_e, lm, None, "a", proposal, num_particles=16,
        ...                            num_iterations=5, learning_rate=0.3, seed=0)
        >>> len(history.ess), lm.tokenizer.convert_ids_to_tokens(int(proposal.bias.argmin()))
        (5, 'e')
    """
    if not isinstance(proposal, LogitBiasProposal):
        raise InvalidArgumentError(
            f"train_logit_bias needs a LogitBiasProposal, got {type(proposal).__name__}"
        )
    if not hasattr(lm, "position_logprobs"):
        raise CapabilityError(
            f"{type(lm).__name__} cannot run logits processors; training a logit-bias proposal "
            "needs a local backend such as models.TransformersLM"
        )
    proposal.check_lm(lm)
    if not (isinstance(num_particles, int) and num_particles >= 2):
        raise InvalidArgumentError(f"num_particles must be an int >= 2, got {num_particles!r}")
    if not (isinstance(num_iterations, int) and num_iterations >= 1):
        raise InvalidArgumentError(f"num_iterations must be a positive int, got {num_iterations!r}")
    if not learning_rate > 0:
        raise InvalidArgumentError(f"learning_rate must be > 0, got {learning_rate!r}")
    optimizer = torch.optim.Adam([proposal.bias], lr=learning_rate)
    seeds = np.random.SeedSequence(seed).generate_state(num_iterations, dtype=np.uint64)
    history = LogitBiasTraining()
    for iteration in range(num_iterations):
        recording = _RecordingLM(lm, proposal)
        posterior = importance(
            program,
            recording,
            *args,
            num_particles=num_particles,
            seed=int(seeds[iteration]),
            **kwargs,
        )
        if posterior.is_empty:
            raise InvalidArgumentError(
                f"train_logit_bias iteration {iteration}: every particle has weight zero; use "
                "more particles"
            )
        if not recording.requests:
            raise InvalidArgumentError(
                "the program drew no step with this proposal on lm; pass it as "
                "ppl.step(..., logits_processor=proposal) on the lm given to train_logit_bias"
            )
        weights = torch.softmax(torch.as_tensor(posterior.log_weights, dtype=torch.float64), 0)
        tokens: list[tuple[float, StepRequest, tuple[int, ...]]] = []
        for weight, trace in zip(weights.tolist(), posterior.particles, strict=True):
            if weight == 0:
                continue  # contributes nothing; skip its forward pass
            for site in trace.steps:
                request = recording.requests.get(site.fingerprint)
                if request is not None:
                    tokens.append((weight, request, site.value.token_ids))
        optimizer.zero_grad()
        loss = _accumulate_gradient(proposal, lm, tokens)
        optimizer.step()
        history.ess.append(float(posterior.ess))
        history.losses.append(loss)
    return history


def _accumulate_gradient(
    proposal: LogitBiasProposal, lm, steps: list[tuple[float, StepRequest, tuple[int, ...]]]
) -> float:
    """Backpropagate ``-sum w log q_b(token | prefix)`` over the steps' tokens; return it.

    Steps are scored in chunks, each a batched pass over its positions, so the
    memory held is bounded whatever the number of steps.
    """
    per_chunk = max(1, _LOGPROB_BUDGET // (4 * proposal.vocab_size))
    total = 0.0
    chunk: list[tuple[float, StepRequest, tuple[int, ...]]] = []
    positions = 0
    for item in steps:
        chunk.append(item)
        positions += len(item[2])
        if positions >= per_chunk:
            total += _chunk_loss(proposal, lm, chunk)
            chunk, positions = [], 0
    if chunk:
        total += _chunk_loss(proposal, lm, chunk)
    return total


def _chunk_loss(proposal, lm, chunk) -> float:
    log_p = _position_logprobs(lm, [(request.context, ids) for _, request, ids in chunk])
    weights = torch.tensor([w for w, _, ids in chunk for _ in ids], dtype=torch.float32)
    requests = [r for _, r, ids in chunk for _ in ids]
    targets = torch.tensor([t for _, _, ids in chunk for t in ids], dtype=torch.long)
    # The proposal the backend samples from: biased logits at the proposal
    # temperature, on the support of the step's sampler.
    log_target = target_log_probs(log_p, [r.sampler for r in requests])
    scales = [r.proposal_scale for r in requests]
    log_q = proposal_log_probs(log_p + proposal.bias, scales, log_target)
    picked = log_q.gather(1, targets[:, None]).squeeze(1)
    loss = -(weights * picked).sum()
    loss.backward()
    return loss.item()


def _position_logprobs(lm, steps: list[tuple[Context, tuple[int, ...]]]) -> torch.Tensor:
    """The model's next-token log-probabilities before each token of each step.

    Rows follow the steps' tokens in order: ``[total tokens, vocab]``, on the CPU.
    """
    parts = lm.position_logprobs([ScoreRequest(context, ids) for context, ids in steps])
    # A plain tensor (not an inference-mode one), so the loss can backpropagate into the bias.
    return torch.cat(parts).clone()


class _RecordingLM(ForwardingLM):
    """``lm`` as seen by the program during training, noting the requests that use the proposal.

    A step site's fingerprint is the hash of its request: the requests kept
    here give each sampled step its context and temperature.
    """

    def __init__(self, lm, proposal: LogitBiasProposal):
        super().__init__(lm)
        self._proposal = proposal
        self._requests: dict[int, StepRequest] = {}

    @property
    def requests(self) -> dict[int, StepRequest]:
        return self._requests

    def sample_steps(self, requests, *, seed=None):
        for request in requests:
            if request.logits_processor is self._proposal:
                self._requests[hash(request)] = request
        return super().sample_steps(requests, seed=seed)


def _vocab_size(lm) -> int:
    size = getattr(lm, "vocab_size", None)
    if not isinstance(size, int):
        raise CapabilityError(
            f"cannot tell the vocabulary size of {type(lm).__name__}; logit-bias proposals need "
            "a local backend such as models.TransformersLM"
        )
    return size


__all__ = ["LogitBiasProposal", "LogitBiasTraining", "train_logit_bias"]
