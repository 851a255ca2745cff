"""Top log-probabilities of steps survive pickling, JSON, replay, resampling and saving."""

import pickle

import pytest
from tiny import make_tiny_lm

import ppl
from ppl.errors import InvalidArgumentError
from ppl.serialization import decode, encode
from ppl.values import Step

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_step_round_trips_keep_top_logprobs():
    step = Step("a", token_ids=(1, 2), logp=-1.0, top_logprobs=[(-0.1, -2.0), (-0.3, -1.5)])
    for back in (pickle.loads(pickle.dumps(step)), decode(encode(step, "x"))):
        assert back.top_logprobs == step.top_logprobs and back.logp == step.logp


@ppl.program
def three_lines(lm):
    text = "ab"
    for i in range(3):
        line = ppl.step(f"line_{i}", lm, text, stop=("c",), max_tokens=3, top_logprobs=2)
        ppl.factor(f"short_{i}", -0.5 * len(line))
        text += line
    ppl.answer(text[2:4])


def test_top_logprobs_survive_resampling_replay_and_saving(tmp_path):
    lm = make_tiny_lm(seed=1)
    posterior = ppl.smc(three_lines, lm, num_particles=8, ess_threshold=1.0, seed=0)
    assert sum(r.resampled for r in posterior.rounds[0]) >= 1
    posterior.save(tmp_path / "run.json")
    loaded = ppl.Posterior.load(tmp_path / "run.json")
    for trace, back in zip(posterior.particles, loaded.particles, strict=True):
        for site, saved in zip(trace.steps, back.steps, strict=True):
            rows = site.value.top_logprobs
            assert len(rows) == len(site.value.token_ids) and all(len(r) == 2 for r in rows)
            assert saved.value.top_logprobs == rows  # JSON keeps floats exactly
    # Re-executing a trace replays its recorded steps, top log-probabilities included.
    trace = posterior.particles[0]
    replayed = ppl.runtime.execute(three_lines, (lm,), {}, trace).trace
    assert [s.value.top_logprobs for s in replayed.steps] == [
        s.value.top_logprobs for s in trace.steps
    ]


def test_bad_top_logprobs_are_rejected():
    lm = make_tiny_lm(seed=1)
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(InvalidArgumentError, match="top_logprobs"):
            ppl.LMStep(lm, "ab", top_logprobs=bad)


def test_mh_rescore_never_keeps_stale_top_logprobs():
    """Re-scoring renews logp but not the top-k, so MH draws such steps again."""
    lm = make_tiny_lm(seed=1)
    posterior = ppl.mh(three_lines, lm, num_steps=12, num_chains=2, proposal="rescore", seed=0)
    fresh = make_tiny_lm(seed=1)
    for trace in posterior.particles:
        context = "ab"
        for site in trace.steps:
            request = ppl.StepRequest(context, stop=("c",), max_tokens=3, top_logprobs=2)
            ids = list(fresh.encode(context))
            assert len(site.value.top_logprobs) == len(site.value.token_ids)
            for i, row in enumerate(site.value.top_logprobs):
                prefix = ids + list(site.value.token_ids[:i])
                log_p = fresh.next_token_logprobs([fresh.decode(prefix)])[0]
                expected = log_p.topk(request.top_logprobs).values.tolist()
                assert row == pytest.approx(expected, abs=1e-4)
            context += site.value
