"""Variational methods: learned twists for SMC, and SVI over a program's meta-choices.

See ``inference.variational.twists`` (``TwistHead``, ``learned_twist``,
``train_twist``, ``TwistedProposal``) and ``inference.variational.svi``
(``Guide``, ``svi``, ``guided``).
"""

from inference.variational.svi import (
    Categorical,
    Guide,
    LogNormal,
    Normal,
    SVIResult,
    guided,
    svi,
)
from inference.variational.twists import (
    TwistData,
    TwistedProposal,
    TwistHead,
    collect_twist_data,
    fit_twist,
    learned_twist,
    train_twist,
)

__all__ = [
    "Categorical",
    "Guide",
    "LogNormal",
    "Normal",
    "SVIResult",
    "TwistData",
    "TwistHead",
    "TwistedProposal",
    "collect_twist_data",
    "fit_twist",
    "guided",
    "learned_twist",
    "svi",
    "train_twist",
]
