"""Many problems in one running batch give each the posterior it gets alone."""

import pytest
from tiny import make_tiny_lm

import ppl
from inference.population import Population, Problem, run_problems

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@ppl.program
def continue_text(lm, prompt):
    first = ppl.step("first", lm, prompt, stop=("c",), max_tokens=3)
    ppl.factor("more_b", 0.7 * first.count("b"))
    second = ppl.step("second", lm, prompt + first, stop=(), max_tokens=2)
    ppl.answer(str(first) + "|" + str(second))


PROMPTS = ["ab", "cab", "b", "aab", "ca"]


def _view(posterior):
    return posterior.answers, posterior.log_weights.round(6).tolist(), posterior.method


@pytest.mark.parametrize(("method", "max_rows"), [("smc", 8), ("importance", 5), ("smc", 64)])
def test_packed_problems_match_one_at_a_time(method, max_rows):
    lm = make_tiny_lm(seed=3)
    problems = [Problem(continue_text, (lm, p), seed=10 + k) for k, p in enumerate(PROMPTS)]
    engine = getattr(ppl, method)
    options = {"ess_threshold": 1.0} if method == "smc" else {}
    alone_lm = make_tiny_lm(seed=3)
    alone = [
        engine(continue_text, alone_lm, p, num_particles=4, seed=10 + k, **options)
        for k, p in enumerate(PROMPTS)
    ]
    packed = run_problems(method, problems, num_particles=4, max_rows=max_rows, **options)
    assert [_view(p) for p in packed] == [_view(p) for p in alone]
    if max_rows >= 8:  # several problems shared passes: fewer passes than one after another
        assert lm.stats.forward_calls < alone_lm.stats.forward_calls


def test_ended_particles_free_their_rows_for_the_next_problem():
    """With room for 6 rows, the next problem of 4 starts once 2 particles have ended."""
    steps_per_pass = {}
    for max_rows in (4, 6):
        lm = make_tiny_lm(seed=3)
        batch = lm._running_batch()
        advance = batch.advance
        counts = steps_per_pass[max_rows] = []

        def counting_advance(advance=advance, counts=counts, batch=batch):
            counts.append(len(batch.steps))
            return advance()

        batch.advance = counting_advance
        problems = [Problem(continue_text, (lm, p), seed=10 + k) for k, p in enumerate(PROMPTS)]
        run_problems("importance", problems, num_particles=4, max_rows=max_rows)
    # Importance sampling never revives an ended particle, so the cap holds exactly.
    assert max(steps_per_pass[6]) == 6 and max(steps_per_pass[4]) == 4
    assert len(steps_per_pass[6]) < len(steps_per_pass[4])


@ppl.program
def mostly_rejected(lm, prompt):
    first = ppl.step("first", lm, prompt, stop=("c",), max_tokens=4)
    ppl.condition("keep", "b" in first)
    second = ppl.step("second", lm, prompt + first, stop=(), max_tokens=4)
    ppl.answer(str(second))


def test_resampling_revives_rows_within_one_extra_problem(monkeypatch):
    """Rejected particles free rows that resampling may refill: one extra problem at most."""
    running, most = set(), []
    init, finish = Population.init, Population.finish

    def counted_init(self):
        running.add(id(self))
        most.append(len(running))
        init(self)

    def counted_finish(self):
        running.discard(id(self))
        return finish(self)

    monkeypatch.setattr(Population, "init", counted_init)
    monkeypatch.setattr(Population, "finish", counted_finish)
    lm = make_tiny_lm(seed=3)
    prompts = PROMPTS * 2
    problems = [Problem(mostly_rejected, (lm, p), seed=k) for k, p in enumerate(prompts)]
    packed = run_problems("smc", problems, num_particles=4, max_rows=8, ess_threshold=1.0)
    monkeypatch.undo()
    alone_lm = make_tiny_lm(seed=3)
    alone = [
        ppl.smc(mostly_rejected, alone_lm, p, num_particles=4, seed=k, ess_threshold=1.0)
        for k, p in enumerate(prompts)
    ]
    assert [_view(p) for p in packed] == [_view(p) for p in alone]
    # Rows were freed and reused (a third problem ran beside two), but never a fourth.
    assert max(most) == 8 // 4 + 1


def test_bad_packing_settings_are_clear_errors():
    with pytest.raises(ppl.InvalidArgumentError, match="'importance' or 'smc'"):
        run_problems("beam", [], num_particles=2)
    with pytest.raises(ppl.InvalidArgumentError, match="max_rows"):
        run_problems("smc", [], num_particles=2, max_rows=0)


def _counters(cost):
    return (
        cost.tokens_generated,
        cost.tokens_prefilled,
        cost.tokens_scored,
        cost.lm_calls,
        cost.verifier_calls,
    )


def _alone(method, prompts, options):
    lm = make_tiny_lm(seed=3)
    engine = getattr(ppl, method)
    posts = [
        engine(continue_text, lm, p, num_particles=4, seed=10 + k, **options)
        for k, p in enumerate(prompts)
    ]
    return lm, posts


@pytest.mark.parametrize("method", ["smc", "importance"])
def test_one_row_at_a_time_costs_what_runs_alone_cost(method):
    options = {"ess_threshold": 1.0} if method == "smc" else {}
    _, alone = _alone(method, PROMPTS, options)
    lm = make_tiny_lm(seed=3)
    problems = [Problem(continue_text, (lm, p), seed=10 + k) for k, p in enumerate(PROMPTS)]
    packed = run_problems(method, problems, num_particles=4, max_rows=1, **options)
    assert [_counters(p.cost) for p in packed] == [_counters(p.cost) for p in alone]
    assert all(p.cost.tokens_generated > 0 for p in packed)


@pytest.mark.parametrize("method", ["smc", "importance"])
def test_packed_costs_are_each_problems_own(method):
    options = {"ess_threshold": 1.0} if method == "smc" else {}
    _, alone = _alone(method, PROMPTS, options)
    lm = make_tiny_lm(seed=3)
    problems = [Problem(continue_text, (lm, p), seed=10 + k) for k, p in enumerate(PROMPTS)]
    finished = []
    packed = run_problems(
        method,
        problems,
        num_particles=4,
        max_rows=64,
        on_result=lambda k, post: finished.append((k, post)),
        **options,
    )
    # Every problem ran with every other in the batch, yet is charged its own tokens,
    # speculative tokens of cancelled steps included, and nothing is charged twice.
    assert [p.cost.tokens_generated for p in packed] == [p.cost.tokens_generated for p in alone]
    assert sum(p.cost.tokens_generated for p in packed) == lm.stats.tokens_generated
    assert sum(p.cost.tokens_prefilled for p in packed) == lm.stats.tokens_prefilled
    assert [p.cost.verifier_calls for p in packed] == [p.cost.verifier_calls for p in alone]
    assert all(0 < p.cost.lm_calls <= lm.stats.sample_calls for p in packed)
    assert sorted(k for k, _ in finished) == list(range(len(PROMPTS)))
    assert all(packed[k] is post for k, post in finished)
