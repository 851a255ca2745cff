"""Inference engines over reasoning programs; each returns a ``ppl.Posterior``."""

from inference.beam import beam, dvts
from inference.conformal import (
    Abstention,
    AnswerSets,
    CalibrationData,
    SampleBudget,
    ScoreCalibration,
    fit_score_calibration,
    from_posteriors,
    load_calibration,
    load_runs,
)
from inference.executors import DatasetRun, load_results, map_problems, run_dataset
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
    "DatasetRun",
    "Guide",
    "LogitBiasProposal",
    "SampleBudget",
    "ScoreCalibration",
    "TwistHead",
    "beam",
    "dvts",
    "fit_score_calibration",
    "from_posteriors",
    "guided",
    "importance",
    "learned_twist",
    "load_calibration",
    "load_results",
    "load_runs",
    "map_problems",
    "mh",
    "parallel_tempering",
    "particle_gibbs",
    "run",
    "run_dataset",
    "smc",
    "svi",
    "train_logit_bias",
    "train_twist",
]
