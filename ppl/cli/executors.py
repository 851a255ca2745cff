"""Many problems, one result file each: in this process or on Ray workers.

``run_dataset`` runs a function over a dataset of problems and writes each
finished problem's result to ``out_dir/<id>.json`` as soon as it finishes,
atomically (a temporary file renamed into place), so an interrupted run loses
nothing it had finished and a rerun skips those problems. A problem whose run
raises is recorded in ``out_dir/<id>.error.json`` and retried by the next run;
it never stops the others.

With ``executor="ray"`` problems go to ``workers`` Ray actors (a local
cluster, or an existing one with ``ray_address``); each actor calls
``make_runner`` once, so it builds its own backend (an ``OpenAILM`` client
pointed at a shared server, or a local model), and results stream back to
this process, which writes them as they arrive. Ray is an optional extra:
``pip install 'pplscale[ray]'``.
"""

from __future__ import annotations

import os
import re
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ppl.cli.store import RunStore
from ppl.errors import InvalidArgumentError, ModelNotInstalledError, SerializationError

Runner = Callable[[Mapping], object]

# The Ray example needs Ray, which only the integration tier installs (read by the root conftest).
__doctest_requires__ = {"map_problems": ["ray"]}
_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


@dataclass
class DatasetRun:
    """What one ``run_dataset`` call did; ids are strings."""

    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when every problem of the dataset now has a result."""
        return not self.failed


def run_dataset(
    problems: Sequence[Mapping],
    make_runner: Callable[[], Runner],
    *,
    out_dir: str | os.PathLike,
    executor: str = "local",
    workers: int = 1,
    ray_address: str | None = None,
    ray_init: Mapping | None = None,
) -> DatasetRun:
    """Run every unfinished problem; write each result to ``out_dir/<id>.json`` as it finishes.

    ``problems`` are JSON-like mappings; a problem's id is its ``"id"`` (a
    string or int made of letters, digits, ``.``, ``_``, ``-``), else its
    position. ``make_runner()`` returns ``run_one(problem) -> result`` (a
    JSON-serializable value); it is called once per worker and, for Ray, must
    pickle (a module-level function does). ``executor="local"`` runs the
    problems one after another in this process (``workers=1``);
    ``executor="ray"`` runs them on ``workers`` Ray actors, on a local cluster
    started for the call or on the cluster at ``ray_address``
    (``"auto"`` for the one this machine belongs to); ``ray_init`` adds
    keyword arguments to ``ray.init``.

    Example (``make_runner`` would build its backend here, such as an
    ``OpenAILM`` client of a shared server; ``add`` needs none; ``map_problems``
    shows Ray workers):
        >>> def make_runner():
        ...     def run_one(problem):
        ...         post = ppl.importance(add, problem["a"], problem["b"], num_particles=8, seed=0)
        ...         return {"answer": post.map_answer(), "log_evidence": post.log_evidence}
        ...     return run_one
        >>> problems = [{"id": "q1", "a": 2, "b": 3}, {"id": "q2", "a": 4, "b": 5}]
        >>> run_dataset(problems, make_runner, out_dir="results")
        DatasetRun(finished=['q1', 'q2'], skipped=[], failed={})
        >>> run_dataset(problems, make_runner, out_dir="results")  # a rerun skips them
        DatasetRun(finished=[], skipped=['q1', 'q2'], failed={})
    """
    store = RunStore(out_dir)
    keyed = _keyed(problems)
    _check_executor(executor, workers)
    store.directory.mkdir(parents=True, exist_ok=True)
    run = DatasetRun()
    pending = []
    for key, problem in keyed:
        if _finished(store, key) is not None:
            run.skipped.append(key)
        else:
            pending.append((key, problem))

    def finish(key: str, result) -> None:
        try:
            store.save(key, {"id": key, "result": result})
        except SerializationError as error:
            fail(key, f"{error}\n")
            return
        run.finished.append(key)

    def fail(key: str, message: str) -> None:
        store.save_error(key, {"id": key, "error": message})
        run.failed[key] = message

    map_problems(
        pending,
        make_runner,
        finish,
        fail,
        executor=executor,
        workers=workers,
        ray_address=ray_address,
        ray_init=ray_init,
    )
    return run


def map_problems(
    tasks: Sequence[tuple[str, Mapping]],
    make_runner: Callable[[], Runner],
    on_result: Callable[[str, object], None],
    on_error: Callable[[str, str], None],
    *,
    executor: str = "local",
    workers: int = 1,
    ray_address: str | None = None,
    ray_init: Mapping | None = None,
) -> None:
    """Run each ``(key, problem)`` task; report each outcome in this process as it arrives.

    The engine under ``run_dataset`` for callers that store results their own
    way (``ppl run --dataset`` writes a run directory per problem).
    ``on_result(key, result)`` gets what ``run_one(problem)`` returned (for
    Ray, after a round trip through pickle); ``on_error(key, message)`` gets
    the traceback text of a problem that raised, or why its Ray actor died.
    Neither is called concurrently, and one failing problem never stops the
    others. ``executor``, ``workers``, ``ray_address`` and ``ray_init`` are as
    for ``run_dataset``.

    Example:
        >>> tasks = [("a", {"x": 2}), ("b", {"x": 3})]
        >>> def make_runner():
        ...     return lambda problem: problem["x"] ** 2
        >>> answers = {}
        >>> map_problems(tasks, make_runner, answers.__setitem__, print)
        >>> answers
        {'a': 4, 'b': 9}

    On a local Ray cluster of two workers, started for the call (Ray pickles
    a function defined here by value, so it travels to the workers):
        >>> on_ray = {}
        >>> map_problems(tasks, make_runner, on_ray.__setitem__, print, executor="ray", workers=2)
        >>> dict(sorted(on_ray.items()))
        {'a': 4, 'b': 9}
    """
    _check_executor(executor, workers)
    if executor == "local":
        _run_local(tasks, make_runner, on_result, on_error)
    else:
        _run_ray(
            tasks, make_runner, on_result, on_error, workers, ray_address, dict(ray_init or {})
        )


def _check_executor(executor: str, workers: int) -> None:
    if executor not in ("local", "ray"):
        raise InvalidArgumentError(f"executor must be 'local' or 'ray', got {executor!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidArgumentError(f"workers must be a positive int, got {workers!r}")
    if executor == "local" and workers != 1:
        raise InvalidArgumentError(
            f"executor='local' runs problems one at a time in this process (workers=1), got "
            f"workers={workers}; use executor='ray' for parallel workers"
        )


def load_results(out_dir: str | os.PathLike) -> dict[str, object]:
    """The results written by ``run_dataset``, by problem id.

    Example:
        >>> def make_runner():
        ...     return lambda problem: {"answer": str(problem["a"] + problem["b"])}
        >>> _ = run_dataset([{"id": "q17", "a": 40, "b": 2}], make_runner, out_dir="results")
        >>> load_results("results")
        {'q17': {'answer': '42'}}
    """
    store = RunStore(out_dir)
    results = {}
    for key in store:
        record = _finished(store, key)
        if record is not None:
            results[record["id"]] = record["result"]
    return results


class _Worker:
    """Holds one runner (and so one backend) for the problems sent to it."""

    def __init__(self, make_runner: Callable[[], Runner]):
        self.run_one = make_runner()

    def run(self, problem: Mapping) -> tuple[bool, object]:
        try:
            return True, self.run_one(problem)
        except Exception:
            return False, traceback.format_exc()


def _run_local(pending, make_runner, finish, fail) -> None:
    if not pending:
        return
    worker = _Worker(make_runner)
    for key, problem in pending:
        ok, value = worker.run(problem)
        if ok:
            finish(key, value)
        else:
            fail(key, value)


def _run_ray(pending, make_runner, finish, fail, workers, address, init_kwargs) -> None:
    if not pending:
        return
    try:
        import ray
    except ImportError as error:
        raise ModelNotInstalledError(
            "executor='ray' needs Ray: pip install 'pplscale[ray]'"
        ) from error
    started = not ray.is_initialized()
    if started:
        init_kwargs.setdefault("include_dashboard", False)
        if address is None:
            init_kwargs.setdefault("num_cpus", workers)
        ray.init(address=address, **init_kwargs)
    actor_class = ray.remote(num_cpus=1)(_Worker)
    actors = [actor_class.remote(make_runner) for _ in range(min(workers, len(pending)))]
    try:
        idle = list(actors)
        queue = deque(pending)
        in_flight: dict = {}
        while queue or in_flight:
            while queue and idle:
                actor = idle.pop()
                key, problem = queue.popleft()
                in_flight[actor.run.remote(dict(problem))] = (actor, key)
            (ready,), _ = ray.wait(list(in_flight), num_returns=1)
            actor, key = in_flight.pop(ready)
            try:
                ok, value = ray.get(ready)
            except ray.exceptions.RayError as error:
                # The actor itself died (or its runner could not be built):
                # record the problem and replace the actor.
                fail(key, f"{type(error).__name__}: {error}")
                ray.kill(actor)
                actors.remove(actor)
                actor = actor_class.remote(make_runner)
                actors.append(actor)
            else:
                (finish if ok else fail)(key, value)
            idle.append(actor)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()


def _keyed(problems: Sequence[Mapping]) -> list[tuple[str, Mapping]]:
    keyed, seen = [], set()
    for index, problem in enumerate(problems):
        if not isinstance(problem, Mapping):
            raise InvalidArgumentError(
                f"problem {index} is a {type(problem).__name__}; problems must be mappings"
            )
        raw = problem.get("id", index)
        key = str(raw)
        if isinstance(raw, bool) or not isinstance(raw, str | int) or not _SAFE_ID.fullmatch(key):
            raise InvalidArgumentError(
                f"problem {index} has id {raw!r}; ids must be strings or ints made of letters, "
                "digits, '.', '_' and '-' (not starting with '.'), since they name result files"
            )
        if key in seen:
            raise InvalidArgumentError(f"problem id {key!r} appears more than once")
        seen.add(key)
        keyed.append((key, problem))
    return keyed


def _finished(store: RunStore, key: str) -> dict | None:
    """The record of a finished problem, or None when it is missing or unreadable."""
    record = store.load(key)
    return record if record is not None and "result" in record else None
