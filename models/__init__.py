"""Language-model backends and verifiers for pplscale."""

from models.embedded import default_lm
from models.llamacpp_lm import LlamaCppLM
from models.processors import BannedTokens
from models.token_lm import TokenLM
from models.transformers_lm import TransformersLM

__all__ = ["BannedTokens", "LlamaCppLM", "TokenLM", "TransformersLM", "default_lm"]
