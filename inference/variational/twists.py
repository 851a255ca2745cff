"""Learned twists: a small head on the LM's hidden states that estimates future success.

Twisted SMC targets ``pi_t(x_{1:t}) ∝ p(x_{1:t}) * factors so far * psi_t(x_{1:t})``
at round ``t``. Whatever the twists, the final potential is removed when a
program returns, so the posterior and the unbiasedness of ``exp(log_evidence)``
do not depend on them; what they change is the variance. The twist that
minimises it is ``psi_t(x_{1:t}) = E_p[L | x_{1:t}]``, the expected remaining
likelihood ``L`` (product of the program's later factors) under the model.
For a verifier that accepts or rejects, that is the probability that the
prefix still ends accepted.

``TwistHead`` estimates ``log psi`` from a step's features (the backend's
last-layer hidden state, see ``models.TokenLM.step_features``) with a linear
layer or a small MLP and a log-sigmoid output. ``train_twist`` fits it by
weighted logistic regression on rollouts: importance runs of the program
give, for each step, the prefix features and the likelihood the trace went on
to collect (a soft label in ``[0, 1]``); the minimiser of the cross-entropy
is the optimal twist above. ``learned_twist`` uses a head inside a program.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from inference.importance import importance
from inference.variational.checkpoints import load_checkpoint, save_checkpoint
from ppl.errors import CapabilityError, InvalidArgumentError
from ppl.lm import Context
from ppl.posterior import Posterior
from ppl.primitives import memo, twist
from ppl.trace import Trace
from ppl.values import Step

_FORMAT = "pplscale-twist-head/1"

# Site kinds whose log weight is part of the likelihood a twist predicts.
_LIKELIHOOD_KINDS = ("factor", "condition", "observe")
# Site kinds whose log weight is the proposal correction log p - log q.
_CHOICE_KINDS = ("step", "sample")

# While train_twist collects rollouts: (head being trained, features collected so far).
_COLLECTING: contextvars.ContextVar[tuple[TwistHead, list[torch.Tensor]] | None] = (
    contextvars.ContextVar("pplscale_twist_collection", default=None)
)


class TwistHead(nn.Module):
    """``log psi`` of a step from its features: log-sigmoid of a linear layer or 2-layer MLP.

    Features are standardised with the mean and scale of the training data
    (kept in the head), so heads train the same on models whose hidden states
    have very different norms. A fresh head gives ``log psi = log 1/2``
    everywhere, which leaves resampling unchanged.

    Example:
        >>> head = TwistHead(feature_size=64, hidden_size=32)
        >>> head.log_psi(torch.zeros(3, 64)).tolist()  # doctest: +ELLIPSIS
        [-0.693..., -0.693..., -0.693...]
    """

    def __init__(self, feature_size: int, hidden_size: int = 0, *, seed: int = 0):
        super().__init__()
        if not (isinstance(feature_size, int) and feature_size >= 1):
            raise InvalidArgumentError(f"feature_size must be a positive int, got {feature_size!r}")
        if not (isinstance(hidden_size, int) and hidden_size >= 0):
            raise InvalidArgumentError(
                f"hidden_size must be a non-negative int (0: linear), got {hidden_size!r}"
            )
        self.feature_size = feature_size
        self.hidden_size = hidden_size
        if hidden_size:
            self.net = nn.Sequential(
                nn.Linear(feature_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1)
            )
            # Initialise from ``seed``, not torch's global generator, so fits are reproducible.
            generator = torch.Generator().manual_seed(seed)
            bound = 1 / feature_size**0.5
            with torch.no_grad():
                for parameter in self.net[0].parameters():
                    parameter.uniform_(-bound, bound, generator=generator)
        else:
            self.net = nn.Sequential(nn.Linear(feature_size, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.register_buffer("feature_mean", torch.zeros(feature_size))
        self.register_buffer("feature_scale", torch.ones(feature_size))

    @classmethod
    def for_lm(cls, lm, hidden_size: int = 0, *, seed: int = 0) -> TwistHead:
        """A fresh head sized for ``lm``'s step features.

        Example:
            >>> head = TwistHead.for_lm(lm, hidden_size=16)
            >>> head.feature_size, head.hidden_size
            (64, 16)
        """
        return cls(_feature_size(lm), hidden_size, seed=seed)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The logit of success for each row of ``features`` (``[n, feature_size]``)."""
        if features.ndim != 2 or features.shape[1] != self.feature_size:
            raise InvalidArgumentError(
                f"this twist head reads {self.feature_size} features per step, got a tensor of "
                f"shape {tuple(features.shape)}; was it trained on another model?"
            )
        standardised = (features - self.feature_mean) / self.feature_scale
        return self.net(standardised).squeeze(-1)

    def log_psi(self, features: torch.Tensor) -> torch.Tensor:
        """``log psi`` for each row of ``features``: the log-probability of success."""
        return nn.functional.logsigmoid(self(features))

    def log_psi_candidates(self, hidden: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """``log psi`` of every candidate next token, ``[rows, vocab]``.

        Row ``r`` of ``hidden`` is the state that predicts the next token and
        ``embeddings`` (``[vocab, hidden]``) the input embeddings of the
        candidates: entry ``[r, v]`` equals ``log_psi`` of the features
        ``[hidden[r], embeddings[v]]``, computed without forming them.
        """
        size = hidden.shape[1]
        mean, scale = self.feature_mean, self.feature_scale
        state = (hidden - mean[:size]) / scale[:size]
        candidate = (embeddings - mean[size:]) / scale[size:]
        first = self.net[0]
        from_state = state @ first.weight[:, :size].T + first.bias  # [rows, out]
        from_candidate = candidate @ first.weight[:, size:].T  # [vocab, out]
        if not self.hidden_size:
            return nn.functional.logsigmoid(from_state + from_candidate.T)
        activation = torch.tanh(from_state[:, None, :] + from_candidate[None, :, :])
        return nn.functional.logsigmoid(self.net[2](activation).squeeze(-1))

    def proposal(self, lm) -> TwistedProposal:
        """The twisted proposal of this head on ``lm`` (one object per backend; see there).

        Example:
            >>> head = TwistHead.for_lm(lm)
            >>> proposal = head.proposal(lm)  # no_e passes it to its ppl.step calls
            >>> proposal is head.proposal(lm), type(proposal).__name__
            (True, 'TwistedProposal')
            >>> ppl.smc(no_e, lm, head, "a", proposal, num_particles=8, seed=0).map_answer()
            'ca'
        """
        proposals = self.__dict__.setdefault("_proposals", {})
        if id(lm) not in proposals:
            proposals[id(lm)] = TwistedProposal(self, lm)
        return proposals[id(lm)]

    def save(self, path: str | Path) -> None:
        """Write the head (sizes, weights, standardisation) to ``path``; see ``load``.

        Example:
            >>> head = TwistHead.for_lm(lm, hidden_size=16)
            >>> head.save("twist.pt")
        """
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        save_checkpoint(
            path,
            _FORMAT,
            {
                "feature_size": self.feature_size,
                "hidden_size": self.hidden_size,
                "state_dict": state,
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> TwistHead:
        """Read a head written by ``save``.

        Example:
            >>> head = TwistHead.for_lm(lm, hidden_size=16, seed=1)
            >>> head.save("twist.pt")
            >>> loaded = TwistHead.load("twist.pt")
            >>> loaded.hidden_size, torch.equal(loaded.net[0].weight, head.net[0].weight)
            (16, True)
        """
        data = load_checkpoint(path, _FORMAT, "a twist head")
        head = cls(int(data["feature_size"]), int(data["hidden_size"]))
        head.load_state_dict(data["state_dict"])
        return head.eval()


class TwistedProposal:
    """A logits processor drawing each token from ``p(v | prefix) * psi(prefix + v)``, normalised.

    This is the proposal twisted SMC pairs with its twists: when the step's
    twist is the same ``psi`` (``learned_twist`` with the same head after a
    one-token step), the incremental weight ``p/q * psi_t/psi_{t-1}`` no longer
    depends on the drawn token, and with the optimal twist it is constant.
    Backends weight by ``log p - log q`` as for any processor, so the target
    is unchanged. It reads the backend's hidden states (``uses_hidden_states``)
    and the input embeddings of the whole vocabulary, projected once when
    first used: train the head before proposing with it.

    Example:
        >>> head = TwistHead.for_lm(lm)
        >>> train_twist(head, no_e, lm, head, "a", num_particles=16, num_epochs=50, seed=0)
        TwistData(...)
        >>> proposal = TwistedProposal(head, lm)
        >>> ppl.importance(no_e, lm, None, "a", proposal, num_particles=8, seed=0).map_answer()
        'ca'
    """

    uses_hidden_states = True

    def __init__(self, head: TwistHead, lm):
        if head.feature_size != _feature_size(lm):
            raise InvalidArgumentError(
                f"this twist head reads {head.feature_size} features, but {type(lm).__name__}'s "
                f"steps have {_feature_size(lm)}; was it trained on another model?"
            )
        self.head = head
        self.lm = lm
        self._embeddings: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor, generated, hidden: torch.Tensor) -> torch.Tensor:
        if self._embeddings is None:
            with torch.inference_mode():
                ids = list(range(logits.shape[-1]))
                self._embeddings = self.lm._token_embeddings(ids).float().cpu()
        with torch.no_grad():
            log_psi = self.head.log_psi_candidates(hidden.float().cpu(), self._embeddings)
        return logits + log_psi.to(logits.device, logits.dtype)


def _feature_size(lm) -> int:
    if not hasattr(lm, "step_features"):
        raise CapabilityError(
            f"{type(lm).__name__} does not expose hidden states; learned twists need a local "
            "backend such as models.TransformersLM"
        )
    config = getattr(getattr(lm, "model", None), "config", None)
    if config is None or not hasattr(config, "hidden_size"):
        raise CapabilityError(f"cannot tell the hidden size of {type(lm).__name__}'s model")
    return 2 * int(config.hidden_size)


def _evaluate(head: TwistHead, lm, context: Context, token_ids: tuple[int, ...]):
    # Learned twists are why the backend keeps hidden states; turning it on here
    # makes every later step's features free (this one may need its own pass).
    if not getattr(lm, "keep_hidden_states", True):
        lm.keep_hidden_states = True
    features = lm.step_features([(context, token_ids)])
    with torch.no_grad():
        log_psi = float(head.log_psi(features)[0])
    collecting = _COLLECTING.get()
    if collecting is not None and collecting[0] is head:
        collected = collecting[1]
        collected.append(features[0])
        return (log_psi, len(collected) - 1)
    return log_psi


def learned_twist(name: str, head: TwistHead, lm, context: Context, step: Step) -> float:
    """Set the particle's twist to ``head``'s estimate of success after ``step``.

    ``context`` and ``step`` are the context and result of the ``ppl.step``
    just taken. The estimate is computed once per particle (recorded like a
    ``ppl.memo`` site named ``name``, so it counts as a verifier call) from
    the backend's step features; the first call turns on
    ``lm.keep_hidden_states``, after which features cost no forward pass.
    Place it before the step's own checks (``ppl.condition``): training
    examples come from the twist sites rollouts reach, and a head that never
    sees a failing step cannot learn to avoid it. Returns ``log psi``.

    Example:
        >>> @ppl.program
        ... def no_e(lm, head, prompt):
        ...     text = ""
        ...     for i in range(8):
        ...         token = ppl.step(f"t{i}", lm, prompt + text, stop=(), max_tokens=1)
        ...         ppl.learned_twist(f"psi{i}", head, lm, prompt + text, token)
        ...         text += token
        ...     ppl.condition("no_e", "e" not in text)
        ...     ppl.answer(text)
    """
    if not isinstance(head, TwistHead):
        raise InvalidArgumentError(f"learned_twist needs a TwistHead, got {type(head).__name__}")
    if not isinstance(step, Step):
        raise InvalidArgumentError(
            f"learned_twist at {name!r} needs the Step returned by ppl.step, got "
            f"{type(step).__name__}"
        )
    value = memo(name, _evaluate, head, lm, context, step.token_ids)
    log_psi = value[0] if isinstance(value, tuple) else value
    twist(log_psi)
    return log_psi


@dataclass
class TwistData:
    """Training examples for a twist head: one row per learned-twist site of each rollout.

    ``labels`` is the likelihood the rollout collected after that site (in
    ``[0, 1]``), ``weights`` the proposal correction of the choices after it
    (``exp(sum log p - log q)``; 1 when the program proposes from the model).
    """

    features: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def collect_twist_data(
    head: TwistHead,
    program: Callable,
    *args,
    num_particles: int,
    seed: int | None = None,
    outcome: Callable[[Trace], float] | None = None,
    **kwargs,
) -> TwistData:
    """Run ``importance`` on ``program``; each ``learned_twist`` site of ``head`` is an example.

    ``outcome(trace)``, if given, is the final likelihood of a rollout in
    ``[0, 1]``; by default it is the product of the factors, conditions and
    observations recorded after the twist site (which must then be at most 1,
    as verifier probabilities and hard constraints are).

    Example:
        >>> head = TwistHead.for_lm(lm)
        >>> data = collect_twist_data(head, no_e, lm, head, "a", num_particles=16, seed=0)
        >>> len(data), tuple(data.features.shape), data.labels.mean().item()  # 3 sites a rollout
        (48, (48, 64), 0.9375)
    """
    collected: list[torch.Tensor] = []
    token = _COLLECTING.set((head, collected))
    try:
        posterior = importance(program, *args, num_particles=num_particles, seed=seed, **kwargs)
    finally:
        _COLLECTING.reset(token)
    return _examples(posterior, collected, outcome)


def _examples(
    posterior: Posterior, collected: list[torch.Tensor], outcome: Callable | None
) -> TwistData:
    rows, labels, weights = [], [], []
    for trace in posterior.particles:
        sites = trace.sites
        final = None if outcome is None else _check_label(float(outcome(trace)), "outcome")
        for position, site in enumerate(sites):
            if site.kind != "memo" or not isinstance(site.value, tuple):
                continue
            after = sites[position + 1 :]
            if final is None:
                log_likelihood = sum(s.log_weight for s in after if s.kind in _LIKELIHOOD_KINDS)
                label = _check_label(math.exp(log_likelihood), f"likelihood after {site.name!r}")
            else:
                label = final
            log_correction = sum(s.log_weight for s in after if s.kind in _CHOICE_KINDS)
            rows.append(site.value[1])
            labels.append(label)
            weights.append(math.exp(log_correction))
    if not rows:
        raise InvalidArgumentError(
            "the rollouts reached no learned_twist site with this head; call "
            "ppl.learned_twist(name, head, lm, context, step) after the program's steps"
        )
    return TwistData(
        torch.stack([collected[i] for i in rows]),
        torch.tensor(labels, dtype=torch.float32),
        torch.tensor(weights, dtype=torch.float32),
    )


def _check_label(value: float, what: str) -> float:
    if not 0.0 <= value <= 1.0 + 1e-9:
        raise InvalidArgumentError(
            f"{what} is {value:.4g}; twists are trained on likelihoods in [0, 1] (verifier "
            "probabilities, conditions). Pass outcome=fn(trace) giving a success probability"
        )
    return min(value, 1.0)


def fit_twist(
    head: TwistHead,
    data: TwistData,
    *,
    num_epochs: int = 300,
    learning_rate: float = 0.02,
    weight_decay: float = 1e-4,
) -> list[float]:
    """Fit ``head`` to ``data`` by weighted cross-entropy (full batch, Adam); returns losses.

    The minimiser over all functions of the features is ``E_p[L | features]``,
    the optimal twist. Sets the head's feature standardisation from the data.

    Example:
        >>> head = TwistHead.for_lm(lm, hidden_size=16)
        >>> data = collect_twist_data(head, no_e, lm, head, "a", num_particles=16, seed=0)
        >>> losses = fit_twist(head, data, num_epochs=50)
        >>> round(losses[0], 3), losses[-1] < losses[0]
        (0.693, True)
    """
    if len(data) == 0:
        raise InvalidArgumentError("fit_twist needs at least one example")
    features = data.features.float()
    with torch.no_grad():
        head.feature_mean.copy_(features.mean(0))
        head.feature_scale.copy_(features.std(0, unbiased=False).clamp_min(1e-6))
    weights = data.weights / data.weights.mean()
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
    losses = []
    head.train()
    for _ in range(num_epochs):
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(
            head(features), data.labels, weight=weights
        )
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    head.eval()
    return losses


def train_twist(
    head: TwistHead,
    program: Callable,
    *args,
    num_particles: int,
    seed: int | None = None,
    num_epochs: int = 300,
    learning_rate: float = 0.02,
    outcome: Callable[[Trace], float] | None = None,
    **kwargs,
) -> TwistData:
    """Collect rollouts of ``program`` (importance sampling) and fit ``head`` on them.

    ``program`` must call ``ppl.learned_twist(name, head, lm, context, step)``
    with this ``head`` after the steps it should guide. Returns the training
    data (``fit_twist`` can refit on it).

    Example:
        >>> head = TwistHead.for_lm(lm, hidden_size=16)
        >>> data = train_twist(head, no_e, lm, head, "a", num_particles=16, num_epochs=50, seed=0)
        >>> len(data), data.labels.mean().item()
        (48, 0.9375)
        >>> ppl.smc(no_e, lm, head, "a", num_particles=8, seed=0).map_answer()
        'ca'
    """
    data = collect_twist_data(
        head, program, *args, num_particles=num_particles, seed=seed, outcome=outcome, **kwargs
    )
    fit_twist(head, data, num_epochs=num_epochs, learning_rate=learning_rate)
    return data


__all__ = [
    "TwistData",
    "TwistHead",
    "TwistedProposal",
    "collect_twist_data",
    "fit_twist",
    "learned_twist",
    "train_twist",
]
