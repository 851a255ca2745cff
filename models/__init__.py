"""Language-model backends and verifiers for pplscale."""

from models.embedded import default_lm
from models.llamacpp_lm import LlamaCppLM
from models.openai_lm import SERVERS, OpenAILM, ServerProfile
from models.processors import BannedTokens
from models.token_lm import TokenLM
from models.transformers_lm import TransformersLM

__all__ = [
    "SERVERS",
    "BannedTokens",
    "LlamaCppLM",
    "OpenAILM",
    "ServerProfile",
    "TokenLM",
    "TransformersLM",
    "default_lm",
]
