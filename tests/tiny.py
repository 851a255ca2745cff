"""A tiny randomly initialised llama over a character vocabulary, for tests and doctests."""

import torch
from tokenizers import Tokenizer, decoders
from tokenizers.models import BPE
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from models import TransformersLM

# A character-level vocabulary: every string over these characters has exactly
# one tokenization, so exact posteriors can be enumerated token by token.
VOCAB = ["<eos>", "a", "b", "c", "e"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['content'] }}c{% endfor %}"
    "{% if add_generation_prompt %}b{% endif %}"
)


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(VOCAB)}
    backend = Tokenizer(BPE(vocab=vocab, merges=[]))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_lm(seed: int = 0, *, layers: int = 2) -> TransformersLM:
    """A randomly initialised llama over VOCAB with peaked next-token distributions."""
    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.3,
        eos_token_id=0,
        pad_token_id=0,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    torch.random.set_rng_state(generator_state)
    model.generation_config.eos_token_id = 0
    return TransformersLM(model.eval(), make_tokenizer())


def save_tiny_model(directory) -> None:
    """Write ``make_tiny_lm()``'s model and tokenizer to ``directory``, as a local model."""
    lm = make_tiny_lm()
    lm.model.save_pretrained(directory)
    lm.tokenizer.save_pretrained(directory)
