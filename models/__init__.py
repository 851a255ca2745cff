"""Language-model backends and verifiers for pplscale."""

from models.embedded import default_lm
from models.transformers_lm import TransformersLM

__all__ = ["TransformersLM", "default_lm"]
