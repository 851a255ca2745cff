"""``PRM``: a local Hugging Face process reward model scoring every step in one forward pass."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from models.verifiers.base import Verifier
from ppl.errors import InvalidArgumentError, VerifierError

KINDS = ("token-classification", "step-tag")


class PRM(Verifier):
    """A process reward model loaded from a local directory.

    The input is ``question + question_separator``, then each step followed
    by ``step_separator``. Each piece is tokenized on its own, so a
    separator's tokens never merge with step text. Step ``k`` is scored at
    its separator's last token, or at the last ``step_tag`` token inside the
    separator when ``step_tag`` is given:

    - ``token-classification`` models (``AutoModelForTokenClassification``):
      the softmax probability of label ``positive_label`` there (the sigmoid
      for single-label heads);
    - ``step-tag`` models (causal LMs trained to predict a verdict token at a
      tag, Math-Shepherd style): ``P(positive_token)`` normalized over
      ``{positive_token, negative_token}`` from the logits at that position.

    ``kind`` is read from the config's architecture when not given. All
    solutions of a batch go through the model together, ``batch_size`` at a
    time, right-padded with an attention mask.

    Example (``model_dir`` holds a tiny random llama over ``a b c e``, used here as a
    step-tag PRM whose verdict tokens are ``a`` and ``b``; a Math-Shepherd model
    takes ``PRM(path, step_separator=" ки\\n", step_tag="ки")``):
        >>> prm = PRM(model_dir, step_separator="c", positive_token="a", negative_token="b")
        >>> [[round(p, 2) for p in row] for row in prm.step_scores([("ab", ["ba", "ca"])])]
        [[0.66, 0.9]]
    """

    def __init__(
        self,
        path: str | Path,
        *,
        kind: str | None = None,
        aggregate: str = "min",
        step_separator: str = "\n",
        question_separator: str = "\n",
        step_tag: str | None = None,
        positive_label: int = 1,
        positive_token: str = "+",
        negative_token: str = "-",
        batch_size: int = 16,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
    ):
        super().__init__(level="step", aggregate=aggregate)
        path = Path(path)
        if not (path / "config.json").is_file():
            raise VerifierError(f"{path} is not a local Hugging Face model directory")
        transformers.utils.logging.disable_progress_bar()
        if kind is None:
            kind = _kind_of(AutoConfig.from_pretrained(path, local_files_only=True))
        if kind not in KINDS:
            raise InvalidArgumentError(f"unknown PRM kind {kind!r}; choose one of {KINDS}")
        if not step_separator:
            raise InvalidArgumentError("step_separator must be a non-empty string")
        if batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be positive, got {batch_size!r}")
        self.kind = kind
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        token_classifier = kind == "token-classification"
        auto = AutoModelForTokenClassification if token_classifier else AutoModelForCausalLM
        self.model = auto.from_pretrained(path, dtype=dtype, local_files_only=True).to(device)
        self.model.eval()
        self.device = device
        self.batch_size = batch_size
        self.question_separator = question_separator
        self.separator_ids = self._encode(step_separator)
        if not self.separator_ids:
            raise VerifierError(f"step_separator {step_separator!r} encodes to no tokens")
        self.score_offset = self._score_offset(step_separator, step_tag)
        if kind == "token-classification":
            self.positive_label = self._checked_label(positive_label)
        else:
            self.verdict_ids = [
                self._single_token(positive_token, "positive_token"),
                self._single_token(negative_token, "negative_token"),
            ]
        bos = self.tokenizer.bos_token_id
        self.prefix_ids = [bos] if bos is not None else []
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else 0

    def _score_offset(self, step_separator: str, step_tag: str | None) -> int:
        """Where in the separator a step's score is read: at ``step_tag``, else its last token."""
        if step_tag is None:
            return len(self.separator_ids) - 1
        tag = self._single_token(step_tag, "step_tag")
        if tag not in self.separator_ids:
            raise VerifierError(
                f"step_tag {step_tag!r} does not occur in the tokenized step_separator "
                f"{step_separator!r}"
            )
        return len(self.separator_ids) - 1 - self.separator_ids[::-1].index(tag)

    def _checked_label(self, positive_label: int) -> int:
        num_labels = self.model.config.num_labels
        if num_labels > 1 and not 0 <= positive_label < num_labels:
            raise InvalidArgumentError(
                f"positive_label {positive_label} is not a label of this {num_labels}-label model"
            )
        return positive_label

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _single_token(self, text: str, what: str) -> int:
        ids = self._encode(text)
        if len(ids) != 1:
            raise VerifierError(f"{what} {text!r} must be one token for this tokenizer, got {ids}")
        return ids[0]

    def _layout(self, question: str, steps: tuple[str, ...]) -> tuple[list[int], list[int]]:
        """Token ids of one solution and the position scored for each step."""
        ids = self.prefix_ids + self._encode(question + self.question_separator)
        positions = []
        for step in steps:
            ids += self._encode(step)
            positions.append(len(ids) + self.score_offset)
            ids += self.separator_ids
        return ids, positions

    @torch.inference_mode()
    def _probabilities(self, items, *, last_only):
        layouts = [self._layout(question, steps) for question, steps in items]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        results: list[list[float]] = []
        for start in range(0, len(layouts), self.batch_size):
            chunk = layouts[start : start + self.batch_size]
            width = max(len(ids) for ids, _ in chunk)
            if limit is not None and width > limit:
                raise VerifierError(
                    f"a solution is {width} tokens long; this PRM takes at most {limit}"
                )
            input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (ids, _) in enumerate(chunk):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            logits = self.model(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
            ).logits.float()
            for row, (_, positions) in enumerate(chunk):
                scores = self._step_probabilities(logits[row, positions]).tolist()
                results.append(scores[-1:] if last_only else scores)
        return results

    def _step_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        if self.kind == "step-tag":
            return torch.softmax(logits[:, self.verdict_ids], dim=-1)[:, 0]
        if logits.shape[-1] == 1:
            return torch.sigmoid(logits[:, 0])
        return torch.softmax(logits, dim=-1)[:, self.positive_label]


def _kind_of(config) -> str:
    """A token classifier's config names it; any other model reads a verdict after a step tag."""
    architectures = config.architectures or []
    token_classifier = any(a.endswith("ForTokenClassification") for a in architectures)
    return "token-classification" if token_classifier else "step-tag"
