"""Language-model backends and verifiers for pplscale."""

from models.embedded import default_lm
from models.processors import BannedTokens
from models.transformers_lm import TransformersLM

__all__ = ["BannedTokens", "TransformersLM", "default_lm"]
