"""Inference engines over reasoning programs; each returns a ``ppl.Posterior``."""

# ppl re-exports the engines from their modules: importing it first lets either
# package be imported first (a Ray worker starts from inference.executors).
import ppl  # noqa: F401
from inference.beam import beam
from inference.conformal import (
    Abstention,
    AnswerSets,
    CalibrationData,
    SampleBudget,
    from_posteriors,
    load_calibration,
    load_runs,
)
from inference.executors import DatasetRun, load_results, run_dataset
from inference.importance import importance
from inference.mcmc import mh, parallel_tempering, particle_gibbs
from inference.resampling import RESAMPLERS
from inference.runs import run
from inference.smc import smc

__all__ = [
    "RESAMPLERS",
    "Abstention",
    "AnswerSets",
    "CalibrationData",
    "DatasetRun",
    "SampleBudget",
    "beam",
    "from_posteriors",
    "importance",
    "load_calibration",
    "load_results",
    "load_runs",
    "mh",
    "parallel_tempering",
    "particle_gibbs",
    "run",
    "run_dataset",
    "smc",
]
