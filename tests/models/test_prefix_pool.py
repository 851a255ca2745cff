"""Rows that leave the batch keep their prefixes in the pool, and returning contexts find them."""

import pytest
from tiny import make_tiny_lm

from models.kv_batch import KVBatch
from models.prefix_pool import PrefixPool
from models.processors import BannedTokens
from ppl.lm import StepRequest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONTEXTS = ["abcab", "cabca", "bbacb"]


def _batch(tokens: list[tuple[int, ...]]) -> KVBatch:
    batch = KVBatch.empty(num_layers=1, num_rows=len(tokens), device="cpu")
    batch.tokens = list(tokens)
    return batch


def test_the_pool_drops_its_oldest_rows_first():
    pool = PrefixPool(max_rows=3)
    pool.add(_batch([(1,), (2,)]))
    pool.add(_batch([(3,), (4,)]))
    assert pool.tokens == [(2,), (3,), (4,)]
    part, row = pool.locate(1)
    assert part.tokens[row] == (3,)
    pool.add(_batch([(5,), (6,), (7,), (8,)]))
    assert pool.tokens == [(6,), (7,), (8,)]
    with pytest.raises(IndexError):
        pool.locate(3)


def _continue(lm, first):
    requests = [
        StepRequest(c + r.text, stop=(), max_tokens=3) for c, r in zip(CONTEXTS, first, strict=True)
    ]
    return lm.sample_steps(requests, seed=2)


def test_a_context_whose_row_left_the_batch_copies_its_prefix_from_the_pool():
    lm = make_tiny_lm(seed=8)
    first = lm.sample_steps([StepRequest(c, stop=(), max_tokens=6) for c in CONTEXTS], seed=0)
    # One unrelated context needs one row: the three rows leave the batch for the pool.
    lm.sample_steps([StepRequest("e", stop=(), max_tokens=2)], seed=1)
    assert lm._batch.num_rows == 1 and len(lm._pool.tokens) == 3
    before = lm.stats.tokens_prefilled
    pooled = _continue(lm, first)
    # Each continuation feeds only its last token: the rest comes from the pool.
    assert lm.stats.tokens_prefilled - before == len(CONTEXTS)
    fresh_lm = make_tiny_lm(seed=8)
    fresh = _continue(fresh_lm, first)
    lengths = [len(c + r.text) for c, r in zip(CONTEXTS, first, strict=True)]
    assert fresh_lm.stats.tokens_prefilled == sum(lengths)  # one token per character
    assert [r.token_ids for r in pooled] == [r.token_ids for r in fresh]
    for a, b in zip(pooled, fresh, strict=True):
        assert a.logp == pytest.approx(b.logp, abs=1e-4)


def test_without_a_pool_the_same_continuations_are_prefilled_again():
    lm = make_tiny_lm(seed=8)
    lm._pool.max_rows = 0
    first = lm.sample_steps([StepRequest(c, stop=(), max_tokens=6) for c in CONTEXTS], seed=0)
    lm.sample_steps([StepRequest("e", stop=(), max_tokens=2)], seed=1)
    before = lm.stats.tokens_prefilled
    _continue(lm, first)
    lengths = [len(c + r.text) for c, r in zip(CONTEXTS, first, strict=True)]
    assert lm.stats.tokens_prefilled - before == sum(lengths)


def test_a_long_new_context_is_prefilled_aside_instead_of_padding_every_row():
    lm = make_tiny_lm(seed=9)
    shapes = []
    forward = lm._forward

    def recording(batch, input_ids, positions, num_logits):
        shapes.append(tuple(input_ids.shape))
        return forward(batch, input_ids, positions, num_logits)

    lm._forward = recording
    # Long decoding contexts give the batch enough columns to take the new one.
    contexts = [c * 8 for c in CONTEXTS] * 4
    no_eos = BannedTokens([0])  # the decoding steps run to their token limit
    decoding = lm.submit(
        [StepRequest(c, stop=(), max_tokens=8, logits_processor=no_eos) for c in contexts],
        range(12),
    )
    ended = dict(lm.advance())
    long_context = "abcabcabcaabbccaabcabcbbacbacbac"
    shapes.clear()
    (late,) = lm.submit([StepRequest(long_context, stop=(), max_tokens=3)], [5])
    ended.update(lm.advance())
    # The new context's uncached tokens ran on its own row (it shares a few with a
    # decoding row); the feed then gave every row one position.
    assert shapes[0][0] == 1 and shapes[0][1] > 20
    assert shapes[1] == (13, 1)
    while lm.busy:
        ended.update(lm.advance())
    assert set(decoding) | {late} == set(ended)
    alone = make_tiny_lm(seed=9)
    (ticket,) = alone.submit([StepRequest(long_context, stop=(), max_tokens=3)], [5])
    by_itself = dict(alone.advance())
    while alone.busy:
        by_itself.update(alone.advance())
    assert ended[late].token_ids == by_itself[ticket].token_ids
    assert ended[late].logp == pytest.approx(by_itself[ticket].logp, abs=1e-4)
