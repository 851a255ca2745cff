"""pplscale: reasoning programs over language models, and inference engines to run them.

Example (``lm`` is a backend: ``models.default_lm()`` loads the embedded
SmolLM2-135M-Instruct; here it is a tiny model over the letters a, b, c, e):
    >>> import ppl
    >>> @ppl.program
    ... def no_e(lm, prompt):
    ...     text = prompt
    ...     for i in range(4):
    ...         word = ppl.step(f"w{i}", lm, text, stop=(" ",), max_tokens=6)
    ...         ppl.condition(f"ok{i}", "e" not in word.lower())
    ...         text += word
    ...     ppl.answer(text)
    >>> post = ppl.smc(no_e, lm, "a", num_particles=16, seed=0)
    >>> all("e" not in answer for answer in post.answer_distribution())
    True
    >>> print(post.summary())  # doctest: +ELLIPSIS
    answer       prob  count
    'aca'       0.182      2
    ...
    method        smc   runs 1   particles 16
    ESS           11.00
    ...
"""

import importlib

from ppl.distributions import LMStep
from ppl.errors import (
    BackendError,
    BadResponse,
    CalibrationError,
    CapabilityError,
    DuplicateSiteError,
    EmptyPosteriorError,
    FitDiagnosticsError,
    InvalidArgumentError,
    MissingAnswerError,
    ModelNotInstalledError,
    ParticleError,
    PPLError,
    ProgramError,
    RecipeError,
    ReplayDivergenceError,
    ReportError,
    SerializationError,
    ServerUnavailable,
    ServerUnreachable,
    TaskFormatError,
    VerifierError,
)
from ppl.lm import LM, ScoreRequest, StepRequest, StepResult
from ppl.posterior import Cost, Posterior
from ppl.primitives import (
    Program,
    answer,
    condition,
    factor,
    memo,
    observe,
    program,
    sample,
    step,
    twist,
)
from ppl.trace import Site, Trace
from ppl.values import Chat, Step

# Engines and calibrated decisions live in ``inference``, which imports the core:
# they are loaded on first use, so importing the core loads no engine.
_LAZY = {
    "beam": "inference.beam",
    "dvts": "inference.beam",
    "importance": "inference.importance",
    "smc": "inference.smc",
    "run": "inference.runs",
    "mh": "inference.mcmc",
    "parallel_tempering": "inference.mcmc",
    "particle_gibbs": "inference.mcmc",
    "Abstention": "inference.conformal",
    "AnswerSets": "inference.conformal",
    "SampleBudget": "inference.conformal",
    "ConfidenceStop": "inference.confidence",
    "confidence_vote": "inference.confidence",
    "Guide": "inference.variational",
    "LogitBiasProposal": "inference.variational",
    "TwistHead": "inference.variational",
    "guided": "inference.variational",
    "learned_twist": "inference.variational",
    "svi": "inference.variational",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ppl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "LM",
    "Abstention",
    "AnswerSets",
    "BackendError",
    "BadResponse",
    "CalibrationError",
    "CapabilityError",
    "Chat",
    "ConfidenceStop",
    "Cost",
    "DuplicateSiteError",
    "EmptyPosteriorError",
    "FitDiagnosticsError",
    "Guide",
    "InvalidArgumentError",
    "LMStep",
    "LogitBiasProposal",
    "MissingAnswerError",
    "ModelNotInstalledError",
    "PPLError",
    "ParticleError",
    "Posterior",
    "Program",
    "ProgramError",
    "RecipeError",
    "SampleBudget",
    "ReplayDivergenceError",
    "ReportError",
    "ScoreRequest",
    "SerializationError",
    "ServerUnavailable",
    "ServerUnreachable",
    "Site",
    "Step",
    "StepRequest",
    "StepResult",
    "TaskFormatError",
    "Trace",
    "TwistHead",
    "VerifierError",
    "answer",
    "beam",
    "condition",
    "confidence_vote",
    "dvts",
    "factor",
    "guided",
    "importance",
    "learned_twist",
    "memo",
    "mh",
    "observe",
    "parallel_tempering",
    "particle_gibbs",
    "program",
    "run",
    "sample",
    "smc",
    "step",
    "svi",
    "twist",
]
