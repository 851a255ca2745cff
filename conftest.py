"""Objects the docstring examples use, so that they run as tests (``make test``).

``lm`` is a tiny randomly initialised llama over the characters ``a b c e``
(see ``tests/tiny.py``), ``model_dir`` a directory where it is saved,
``server_url`` the address of an OpenAI-compatible server of it that answers
as vLLM does (``tests/openai_reference_server.py``, in a thread),
``program`` a two-step program over it, ``post`` its SMC posterior, ``coin`` a
program of one biased coin flip, ``no_e(lm, head, prompt, proposal)`` three
letters without ``e``, guided by a learned twist head and a logits processor
when given, and ``letters(lm, prompt)`` up to four letters with their top
log-probabilities (for confidences).

For calibrated decisions, ``add(a, b)`` is a noisy adder that stands in for a
solver (its ``check.score`` memo site is a verifier score), ``problems`` its
``((a, b), answer)`` pairs, and ``cal`` and ``heldout`` two sets of 40
problems (``inference.conformal.CalibrationData`` from importance posteriors).

Each example runs in a temporary directory that holds only a link to the
repository's ``examples/``. One whose text mentions ``runs/`` also finds
there the run directories ``ppl run`` writes:
``runs/demo`` (``post`` saved), ``runs/cal`` (a dataset run over 12 of
``problems``) and ``runs/heldout`` (12 others, with conformal answer sets
applied).

The NumPyro fits are built once, for the examples that use them: ``fit`` is
``fit_scaling_law``'s example fit and ``calibration`` ``fit_score_calibration``'s.
XLA's compilation cache, kept in a temporary directory for the session, lets a
fit that repeats a model on the same data skip its compilation.
"""

import fnmatch
import importlib.util
import math
import os
import re
import shutil
import tempfile

import numpy as np
import pyro.distributions as dist
import pytest
import torch

import models
import ppl
from tests.openai_reference_server import ReferenceServer
from tests.tiny import make_tiny_lm, save_tiny_model


@ppl.program
def two_letters(lm, prompt: str):
    """Two one-letter steps; a condition rules out ``e``; the answer is the letters."""
    text = prompt
    for i in range(2):
        letter = ppl.step(f"letter_{i}", lm, text, stop=(), max_tokens=1)
        ppl.condition(f"no_e_{i}", "e" not in letter)
        text += letter
    ppl.answer(text[len(prompt) :])


@ppl.program
def no_e(lm, head, prompt: str, proposal=None):
    """Three one-letter steps, drawn with ``proposal`` and twisted by ``head`` (either may be
    None); a condition rules out ``e``."""
    text = ""
    for i in range(3):
        letter = ppl.step(
            f"letter_{i}", lm, prompt + text, stop=(), max_tokens=1, logits_processor=proposal
        )
        if head is not None:
            ppl.learned_twist(f"psi_{i}", head, lm, prompt + text, letter)
        text += letter
    ppl.condition("no_e", "e" not in text)
    ppl.answer(text)


@ppl.program
def letters(lm, prompt: str):
    """Up to four letters with the top two log-probabilities of each; the answer is the first."""
    step = ppl.step("letters", lm, prompt, stop=(), max_tokens=4, top_logprobs=2)
    ppl.answer(step[:1])


@ppl.program
def coin():
    """One biased coin flip (heads with probability 0.3); the answer is 1 for heads."""
    ppl.answer(int(ppl.sample("flip", dist.Bernoulli(0.3)).item()))


def check_sum(a: int, b: int, answer: str) -> float:
    """A verifier score of ``answer`` to ``a + b``; it is fooled on odd ``a``."""
    return 0.9 if int(answer) == a + b else (0.6 if a % 2 else 0.1)


@ppl.program
def add(a: int, b: int):
    """``a + b``, or off by one or two with a slip probability that grows with ``a % 5``."""
    slip = 0.22 * (a % 5)
    probs = torch.tensor([slip / 4, slip / 4, 1 - slip, slip / 4, slip / 4])
    answer = str(a + b + int(ppl.sample("offset", dist.Categorical(probs)).item()) - 2)
    ppl.memo("check.score", check_sum, a, b, answer)
    ppl.answer(answer)


PROBLEMS = [((a, 3 * a % 7), str(a + 3 * a % 7)) for a in range(80)]


def _posterior(index: int) -> ppl.Posterior:
    (a, b), _ = PROBLEMS[index]
    return ppl.importance(add, a, b, num_particles=8, seed=index)


@pytest.fixture(scope="session")
def _calibration_sets():
    from inference.conformal import from_posteriors

    pairs = [(_posterior(i), PROBLEMS[i][1]) for i in range(len(PROBLEMS))]
    return from_posteriors(pairs[:40]), from_posteriors(pairs[40:])


def _save_dataset(directory, indices, calibration=None) -> None:
    """What ``ppl run --dataset`` writes: one run directory per problem, then the summary."""
    from ppl.cli.report import rundir

    for index, problem in enumerate(indices):
        (a, b), expected = PROBLEMS[problem]
        posterior = _posterior(problem)
        metadata = {"program": "add", "method": "importance", "index": index}
        metadata |= {"problem_seed": problem, "input_text": f"{a} {b}", "expected": expected}
        decision = calibration.predict(posterior, seed=problem) if calibration else None
        rundir.save_run(
            posterior,
            rundir.problem_dir(directory, index),
            metadata=metadata,
            report=False,
            decision=decision,
        )
    rundir.save_dataset_summary(
        directory, metadata={"program": "add"}, total=len(indices), report=False
    )


@pytest.fixture(scope="session")
def _saved_runs(tmp_path_factory, _calibration_sets):
    """Build the run directories once, only for the examples that read them."""
    built = {}

    def build():
        if not built:
            from inference.conformal import AnswerSets
            from ppl.cli.report import save_run

            root = tmp_path_factory.mktemp("saved") / "runs"
            save_run(
                _post(make_tiny_lm()),
                root / "demo",
                metadata={"program": "two_letters"},
                report=False,
            )
            _save_dataset(root / "cal", range(12))
            sets = AnswerSets(alpha=0.2).calibrate(_calibration_sets[0])
            _save_dataset(root / "heldout", range(40, 52), calibration=sets)
            built["root"] = root
        return built["root"]

    return build


def _post(lm) -> ppl.Posterior:
    return ppl.smc(two_letters, lm, "a", num_particles=8, seed=0)


_JAX_CACHE = pytest.StashKey[str]()


def pytest_configure(config):
    # Set before JAX is first imported (every module imports it lazily).
    directory = tempfile.mkdtemp(prefix="pplscale-jax-")
    config.stash[_JAX_CACHE] = directory
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", directory)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if isinstance(item, pytest.DoctestItem) and (missing := _missing_requirements(item)):
            reason = f"needs {'; '.join(missing)}: `make test-integration` installs and runs it"
            item.add_marker(pytest.mark.skip(reason=reason))


def _missing_requirements(item) -> list[str]:
    """What an example needs, by its module's ``__doctest_requires__``, that is missing.

    ``__doctest_requires__`` maps patterns of names in the module (``"*"``:
    every example) to what those examples need: top-level package names, or
    callables that raise when what they look for (a built server) is missing.
    """
    globs = item.dtest.globs
    name = item.dtest.name.removeprefix(globs["__name__"] + ".")
    needed = [
        requirement
        for pattern, requirements in globs.get("__doctest_requires__", {}).items()
        if fnmatch.fnmatch(name, pattern)
        for requirement in requirements
    ]
    return [reason for requirement in needed if (reason := _missing(requirement))]


def _missing(requirement) -> str | None:
    if isinstance(requirement, str):
        return None if importlib.util.find_spec(requirement) else requirement
    try:
        requirement()
    except Exception as error:  # the requirement's own message says what is missing
        return str(error)
    return None


def pytest_unconfigure(config):
    shutil.rmtree(config.stash.get(_JAX_CACHE, ""), ignore_errors=True)


def _scaling_fit():
    from inference.budget import fit_scaling_law

    return fit_scaling_law(
        [1, 2, 4, 8], [30, 42, 55, 63], [100] * 4, num_warmup=200, num_samples=500
    )


def _score_calibration(cal):
    from inference.conformal.bayes import fit_score_calibration
    from inference.conformal.data import confidence_of

    scores = [confidence_of(e.posterior, "check.score") for e in cal]
    correct = [e.posterior.map_answer() in e.acceptable for e in cal]
    families = ["odd" if a % 2 else "even" for (a, _), _ in PROBLEMS[:40]]
    return fit_score_calibration(scores, correct, families, num_warmup=300, num_samples=300)


@pytest.fixture(scope="session")
def _nuts_fits(_calibration_sets):
    """``fit`` and ``calibration`` by name, each built on first use."""
    built = {}

    def get(name):
        if name not in built:
            cal = _calibration_sets[0]
            built[name] = _scaling_fit() if name == "fit" else _score_calibration(cal)
        return built[name]

    return get


@pytest.fixture(scope="session")
def _model_dir(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("tiny_model")
    save_tiny_model(directory)
    return str(directory)


@pytest.fixture(scope="session")
def _server_url():
    server = ReferenceServer(make_tiny_lm())
    yield server.url
    server.stop()


def _fits_used(request) -> dict:
    """The fits an example reads (``fit.`` or ``calibration.`` in its source)."""
    source = "".join(example.source for example in request.node.dtest.examples)
    names = [name for name in ("fit", "calibration") if re.search(rf"\b{name}\.", source)]
    return {name: request.getfixturevalue("_nuts_fits")(name) for name in names}


@pytest.fixture(autouse=True)
def _doctest_objects(request, doctest_namespace):
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    directory = request.getfixturevalue("tmp_path")
    (directory / "examples").symlink_to(request.config.rootpath / "examples")
    if "runs/" in request.node.dtest.docstring:
        shutil.copytree(request.getfixturevalue("_saved_runs")(), directory / "runs")
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.chdir(directory)
    cal, heldout = request.getfixturevalue("_calibration_sets")
    if "model_dir" in request.node.dtest.docstring:
        doctest_namespace["model_dir"] = request.getfixturevalue("_model_dir")
    if "server_url" in request.node.dtest.docstring:
        doctest_namespace["server_url"] = request.getfixturevalue("_server_url")
    lm = make_tiny_lm()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from threads on a busy machine
    doctest_namespace.update(
        ppl=ppl,
        models=models,
        dist=dist,
        torch=torch,
        math=math,
        np=np,
        lm=lm,
        program=two_letters,
        coin=coin,
        no_e=no_e,
        letters=letters,
        post=_post(lm),
        add=add,
        problems=PROBLEMS,
        cal=cal,
        heldout=heldout,
        **_fits_used(request),
    )
    yield
    torch.set_num_threads(threads)
