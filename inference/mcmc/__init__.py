"""MCMC over reasoning traces: trace MH, particle Gibbs, parallel tempering, resample-move."""

from inference.mcmc.mh import mh
from inference.mcmc.particle_gibbs import particle_gibbs
from inference.mcmc.rejuvenation import Rejuvenation
from inference.mcmc.tempering import parallel_tempering
from ppl.chains import chain_diagnostics

__all__ = ["Rejuvenation", "chain_diagnostics", "mh", "parallel_tempering", "particle_gibbs"]
