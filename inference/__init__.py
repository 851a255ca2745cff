"""Inference engines over reasoning programs; each returns a ``ppl.Posterior``."""

from inference.beam import beam
from inference.importance import importance
from inference.resampling import RESAMPLERS
from inference.runs import run
from inference.smc import smc

__all__ = ["RESAMPLERS", "beam", "importance", "run", "smc"]
