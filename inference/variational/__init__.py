"""Variational methods: learned twists for SMC, and SVI over a program's meta-choices.

See ``inference.variational.twists`` (``TwistHead``, ``learned_twist``,
``train_twist``, ``TwistedProposal``), ``inference.variational.svi``
(``Guide``, ``svi``, ``guided``) and ``inference.variational.amortized``
(``LogitBiasProposal``, ``train_logit_bias``).
"""

from inference.variational.amortized import (
    LogitBiasProposal,
    LogitBiasTraining,
    train_logit_bias,
)
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
    "LogitBiasProposal",
    "LogitBiasTraining",
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
    "train_logit_bias",
    "train_twist",
]
