"""Inference engines over reasoning programs; each returns a ``ppl.Posterior``."""

from inference.beam import beam, dvts
from inference.confidence import ConfidenceStop, confidence_vote
from inference.conformal import (
    Abstention,
    AnswerSets,
    CalibrationData,
    SampleBudget,
    ScoreCalibration,
    fit_score_calibration,
    from_posteriors,
    load_calibration,
)
from inference.importance import importance
from inference.mcmc import mh, parallel_tempering, particle_gibbs
from inference.resampling import RESAMPLERS
from inference.runs import run
from inference.smc import smc
from inference.variational import (
    Guide,
    LogitBiasProposal,
    TwistHead,
    guided,
    learned_twist,
    svi,
    train_logit_bias,
    train_twist,
)

__all__ = [
    "RESAMPLERS",
    "Abstention",
    "AnswerSets",
    "CalibrationData",
    "ConfidenceStop",
    "Guide",
    "LogitBiasProposal",
    "SampleBudget",
    "ScoreCalibration",
    "TwistHead",
    "beam",
    "confidence_vote",
    "dvts",
    "fit_score_calibration",
    "from_posteriors",
    "guided",
    "importance",
    "learned_twist",
    "load_calibration",
    "mh",
    "parallel_tempering",
    "particle_gibbs",
    "run",
    "smc",
    "svi",
    "train_logit_bias",
    "train_twist",
]
