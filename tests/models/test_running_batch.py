"""The running batch of TokenLM: steps join mid-decode, leave, and draw from their own streams."""

import pytest
import torch
from tiny import make_tiny_lm

import ppl
from ppl.lm import StepRequest
from ppl.slots import BatchedSlots

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONTEXTS = ["ab", "ca", "abc", "b", "aab", "cc"]


def _requests():
    return [StepRequest(c, stop=("e",), max_tokens=6) for c in CONTEXTS]


def _alone(seed_lm: int, requests, seeds):
    """Each request decoded on its own, in a fresh backend."""
    results = []
    for request, seed in zip(requests, seeds, strict=True):
        lm = make_tiny_lm(seed=seed_lm)
        (ticket,) = lm.submit([request], [seed])
        ended = []
        while lm.busy:
            ended += lm.advance()
        assert [t for t, _ in ended] == [ticket]
        results.append(ended[0][1])
    return results


def _staggered(lm, requests, seeds, every: int):
    """Submit one request every ``every`` passes while the earlier ones decode."""
    tickets, results, passes = {}, {}, 0
    pending = list(range(len(requests)))
    while pending or lm.busy:
        if pending and passes % every == 0:
            k = pending.pop(0)
            (ticket,) = lm.submit([requests[k]], [seeds[k]])
            tickets[ticket] = k
        results.update((tickets[t], r) for t, r in lm.advance())
        passes += 1
    return [results[k] for k in range(len(requests))]


def test_a_step_does_not_depend_on_when_it_joins_or_who_shares_the_pass():
    requests, seeds = _requests(), [11, 12, 13, 14, 15, 16]
    alone = _alone(3, requests, seeds)
    lm = make_tiny_lm(seed=3)
    together = lm.submit(requests, seeds)
    ended = {}
    while lm.busy:
        ended.update(lm.advance())
    assert [ended[t].token_ids for t in together] == [r.token_ids for r in alone]
    for every in (1, 2, 3):
        staggered = _staggered(make_tiny_lm(seed=3), requests, seeds, every)
        assert [r.token_ids for r in staggered] == [r.token_ids for r in alone]
        for a, b in zip(staggered, alone, strict=True):
            assert a.logp == pytest.approx(b.logp, abs=1e-4)
            assert a.logq == pytest.approx(b.logq, abs=1e-4)
    assert len({len(r.token_ids) for r in alone}) > 1  # the steps were ragged


def test_steps_that_join_reuse_the_cache_and_match_a_full_forward():
    lm = make_tiny_lm(seed=4)
    first = lm.sample_steps([StepRequest("ab", stop=("e",), max_tokens=6)] * 4, seed=0)
    prompts_before = lm.stats.tokens_prefilled
    continued = ["ab" + r.text for r in first]
    # Each continuation finds its own cached row: only the uncached tail is fed.
    lm.sample_steps([StepRequest(c, max_tokens=1) for c in continued], seed=1)
    assert lm.stats.tokens_prefilled - prompts_before <= 4
    scored = lm.score_steps([ppl.ScoreRequest(c, (1, 2)) for c in continued])
    fresh = make_tiny_lm(seed=4).score_steps([ppl.ScoreRequest(c, (1, 2)) for c in continued])
    assert scored == pytest.approx(fresh, abs=1e-4)


def test_scoring_while_steps_decode_keeps_them_exact():
    requests, seeds = _requests(), [21, 22, 23, 24, 25, 26]
    alone = _alone(5, requests, seeds)
    lm = make_tiny_lm(seed=5)
    tickets = lm.submit(requests, seeds)
    ended, passes = {}, 0
    while lm.busy:
        ended.update(lm.advance())
        passes += 1
        if passes % 2:
            lm.score_steps([ppl.ScoreRequest("abca", (1, 2, 3))])
            lm.next_token_logprobs(["cab"])
    assert [ended[t].token_ids for t in tickets] == [r.token_ids for r in alone]


def test_cancelled_steps_are_never_returned_and_free_their_rows():
    lm = make_tiny_lm(seed=6)
    tickets = lm.submit(_requests(), [1, 2, 3, 4, 5, 6])
    first = [t for t, _ in lm.advance()]
    cancelled = [t for t in tickets[:3] if t not in first]
    assert cancelled  # some cancelled steps were still decoding
    generated = lm.cancel(tickets[:3])
    # One pass drew one token of each live step; a step already returned counts 0.
    assert generated == [1 if t in cancelled else 0 for t in tickets[:3]]
    later = []
    while lm.busy:
        later += [t for t, _ in lm.advance()]
    assert not set(later) & set(tickets[:3])
    assert sorted(first + later) == sorted(set(first + later))
    assert set(tickets[3:]) <= set(first + later)


def test_sample_steps_returns_other_steps_at_the_next_advance():
    lm = make_tiny_lm(seed=7)
    (mine,) = lm.submit([StepRequest("ab", stop=(), max_tokens=8)], [3])
    others = lm.sample_steps([StepRequest("c", stop=(), max_tokens=2)] * 2, seed=0)
    assert len(others) == 2
    ended = []
    while lm.busy:
        ended += lm.advance()
    assert [t for t, _ in ended] == [mine]
    result = ended[0][1]
    assert len(result.token_ids) == 8 or result.finished


def test_batched_slots_serve_a_backend_without_a_running_batch():
    class Counting(ppl.lm.ForwardingLM):
        calls = 0

        def sample_steps(self, requests, *, seed=None):
            type(self).calls += 1
            return super().sample_steps(requests, seed=seed)

    slots = BatchedSlots(Counting(make_tiny_lm()))
    tickets = slots.submit(_requests()[:3], [1, 2, 3])
    assert slots.cancel(tickets[:1]) == [0]  # queued steps have generated nothing
    assert [t for t, _ in slots.advance()] == tickets[1:]
    assert Counting.calls == 1 and not slots.busy and slots.advance() == []


def test_uniform_streams_do_not_change_the_token_distribution():
    lm = make_tiny_lm(seed=1)
    request = StepRequest("ab", stop=(), max_tokens=1)
    results = lm.sample_steps([request] * 4000, seed=0)
    counts = torch.bincount(torch.tensor([r.token_ids[0] for r in results]), minlength=5)
    probs = lm.next_token_logprobs(["ab"])[0].exp()
    expected = 4000 * probs
    chi2 = float(((counts - expected) ** 2 / expected.clamp_min(1e-9)).sum())
    assert chi2 < 20.5  # chi-square, 4 degrees of freedom, p = 0.0004
