"""pplscale: reasoning programs over language models, and inference engines to run them.

Example:
    >>> import ppl, models
    >>> lm = models.default_lm()  # doctest: +SKIP
    >>> @ppl.program
    ... def no_e(lm, prompt):
    ...     text = prompt
    ...     for i in range(4):
    ...         word = ppl.step(f"w{i}", lm, text, stop=(" ",), max_tokens=6)
    ...         ppl.condition(f"ok{i}", "e" not in word.lower())
    ...         text += word
    ...     ppl.answer(text)
    >>> ppl.smc(no_e, lm, "The", num_particles=16, seed=0).summary()  # doctest: +SKIP
"""

from inference.beam import beam, dvts
from inference.conformal import Abstention, AnswerSets, SampleBudget
from inference.importance import importance
from inference.mcmc import mh, parallel_tempering, particle_gibbs
from inference.runs import run
from inference.smc import smc
from inference.variational import (
    Guide,
    LogitBiasProposal,
    TwistHead,
    guided,
    learned_twist,
    svi,
)
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

__all__ = [
    "LM",
    "Abstention",
    "AnswerSets",
    "BackendError",
    "BadResponse",
    "CalibrationError",
    "CapabilityError",
    "Chat",
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
