"""Verifiers, reward models and confidence scorers: how good reasoning steps are.

Example:
    >>> from models.verifiers import ProgrammaticVerifier
    >>> calculator = ProgrammaticVerifier.calculator(aggregate="min")
    >>> calculator.score("What is 2 + 3 * 4?", ["3 * 4 = 12\\n", "2 + 12 = 14\\n"])
    1.0
"""

from models.verifiers.base import (
    AGGREGATIONS,
    TRANSFORMS,
    Verifier,
    aggregate_scores,
    as_steps,
    to_log_weight,
)
from models.verifiers.confidence import (
    Confidence,
    group_confidences,
    lowest_group_confidence,
    mean_confidence,
    self_certainty,
    tail_confidence,
    token_confidences,
    trace_top_logprobs,
)
from models.verifiers.lm_judge import LMJudge
from models.verifiers.prm import PRM
from models.verifiers.programmatic import ProgrammaticVerifier, calculator_check, equations

__all__ = [
    "AGGREGATIONS",
    "Confidence",
    "LMJudge",
    "PRM",
    "ProgrammaticVerifier",
    "TRANSFORMS",
    "Verifier",
    "aggregate_scores",
    "as_steps",
    "calculator_check",
    "equations",
    "group_confidences",
    "lowest_group_confidence",
    "mean_confidence",
    "self_certainty",
    "tail_confidence",
    "token_confidences",
    "to_log_weight",
    "trace_top_logprobs",
]
