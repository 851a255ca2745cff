"""Inference engines over reasoning programs; each returns a ``ppl.Posterior``."""

# ppl re-exports the engines from their modules: importing it first lets either
# package be imported first (a Ray worker starts from inference.executors).
import ppl  # noqa: F401
from inference.beam import beam
from inference.executors import DatasetRun, load_results, run_dataset
from inference.importance import importance
from inference.mcmc import mh, parallel_tempering, particle_gibbs
from inference.resampling import RESAMPLERS
from inference.runs import run
from inference.smc import smc
from inference.variational import Guide, TwistHead, guided, learned_twist, svi, train_twist

__all__ = [
    "RESAMPLERS",
    "DatasetRun",
    "Guide",
    "TwistHead",
    "beam",
    "guided",
    "importance",
    "learned_twist",
    "load_results",
    "mh",
    "parallel_tempering",
    "particle_gibbs",
    "run",
    "run_dataset",
    "smc",
    "svi",
    "train_twist",
]
