"""Logits processors: proposals shaped token by token, with exact weights.

A processor changes only the proposal of a ``ppl.step``; backends report
``log q`` under the processed distribution, so the program's target is
untouched. Masking tokens is exact when every masked token would make the
program's own constraint fail: the proposal then still covers the target.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from ppl.errors import InvalidArgumentError


class BannedTokens:
    """A logits processor that gives the listed token ids zero proposal probability.

    Example (``lm``, a tiny model over ``a b c e``, often writes ``e``; banned, it never does):
        >>> ban_e = BannedTokens.from_predicate(lm, lambda text: "e" in text)
        >>> ban_e
        BannedTokens(1 tokens)
        >>> request = ppl.StepRequest("ae", stop=(), max_tokens=8)
        >>> [r.text for r in lm.sample_steps([request] * 4, seed=0)]
        ['eeeeeeec', 'caabbaaa', 'ebc', 'cbec']
        >>> banned = ppl.StepRequest("ae", stop=(), max_tokens=8, logits_processor=ban_e)
        >>> [r.text for r in lm.sample_steps([banned] * 4, seed=0)]
        ['cbb', 'bc', 'cac', 'bcb']
    """

    def __init__(self, token_ids: Iterable[int]):
        self.token_ids = tuple(sorted({int(t) for t in token_ids}))
        self._index = torch.tensor(self.token_ids, dtype=torch.long)

    @classmethod
    def from_predicate(cls, lm, banned: Callable[[str], bool]) -> BannedTokens:
        """Ban every token whose text satisfies ``banned``.

        Special tokens (EOS included) are judged by the text they add to a
        step, which is empty, so ending a step is never banned by a text rule.
        """
        tokenizer = lm.tokenizer
        special = set(tokenizer.all_special_ids)
        vocab_size = lm.vocab_size
        texts = tokenizer.batch_decode(
            [[token] for token in range(vocab_size)],
            skip_special_tokens=False,
            clean_up_tokenization_spaces=False,
        )
        ids = [
            token for token, text in enumerate(texts) if banned("" if token in special else text)
        ]
        if len(ids) == vocab_size:
            raise InvalidArgumentError("the predicate bans every token of the vocabulary")
        return cls(ids)

    def __call__(self, logits: torch.Tensor, generated: Sequence[Sequence[int]]) -> torch.Tensor:
        if self._index.device != logits.device:
            self._index = self._index.to(logits.device)
        logits.index_fill_(1, self._index, -torch.inf)
        return logits

    def __repr__(self) -> str:
        return f"BannedTokens({len(self.token_ids)} tokens)"
