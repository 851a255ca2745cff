"""``LlamaCppLM``: a GGUF model run by llama.cpp, one sequence per particle.

An optional backend (``pip install 'pplscale[llamacpp]'``): llama.cpp runs
quantized models fast on CPU. All particles share one unified KV cache;
each request gets a llama.cpp sequence, and forking a particle copies its
sequence with ``llama_memory_seq_cp``, which shares the cached cells instead
of copying keys and values: resampling is free. Identical contexts are fed
once and forked. Finished rows simply stop being decoded. Tokenization,
sampling, stop strings, temperatures and logits processors are the shared
``TokenLM`` ones, so weights mean exactly what they mean with
``TransformersLM``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.llamacpp_probe import probe
from models.token_lm import TokenLM, assign_slots, match_prefixes
from ppl.errors import BackendError, InvalidArgumentError, ModelNotInstalledError
from ppl.lm import Context, LMStats


def _llama_cpp():
    try:
        import llama_cpp
        from llama_cpp._logger import set_verbose
    except ImportError as error:
        raise ModelNotInstalledError(
            "LlamaCppLM needs llama-cpp-python: pip install 'pplscale[llamacpp]'"
        ) from error
    set_verbose(False)
    return llama_cpp


# Examples that need a package ``make test`` does not install (root conftest.py).
__doctest_requires__ = {"*": ["llama_cpp"]}


class LlamaCppLM(TokenLM):
    """A GGUF model served by llama.cpp, all particles in one unified KV cache.

    ``tokenizer`` is a Hugging Face tokenizer for the same vocabulary (it
    renders chat templates and tokenizes canonically, exactly as
    ``TransformersLM`` does); by default it is read from the GGUF file.
    ``max_sequences`` bounds the particles per call; ``n_ctx`` is the KV
    capacity in tokens shared by all of them (default: the model's training
    context). llama.cpp's quantized kernels differ slightly with the batch's
    shape, so a step's ``logp`` and a later re-scoring of it agree to about
    0.05 nats per token rather than exactly; use ``TransformersLM`` where
    exact re-scoring matters (MH acceptance ratios).

    Example (needs ``llama-cpp-python``, which ``make test`` does not install;
    ``make test-integration`` runs it):
        >>> lm = LlamaCppLM.embedded(max_sequences=8)
        >>> post = ppl.smc(program, lm, "Spell a word: ", num_particles=8, seed=0)
        >>> post.num_particles, 8 <= post.cost.tokens_generated <= 16  # 1-2 letters each
        (8, True)
        >>> lm.close()
    """

    def __init__(
        self,
        gguf_path: str | Path,
        *,
        tokenizer=None,
        max_sequences: int = 64,
        n_ctx: int | None = None,
        n_batch: int = 512,
        threads: int | None = None,
    ):
        lib = _llama_cpp()
        path = Path(gguf_path)
        if not path.is_file():
            raise InvalidArgumentError(f"{path} is not a GGUF file")
        # A build whose kernels this CPU cannot run dies in a child, not here.
        probe(path)
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        self.tokenizer = tokenizer
        self._lib = lib
        lib.llama_backend_init()
        self._model = lib.llama_model_load_from_file(
            str(path).encode(), lib.llama_model_default_params()
        )
        if not self._model:
            raise BackendError(f"llama.cpp could not load {path}")
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx or lib.llama_model_n_ctx_train(self._model)
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = max_sequences
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = threads or torch.get_num_threads()
        self._context = lib.llama_init_from_model(self._model, params)
        if not self._context:
            lib.llama_model_free(self._model)
            raise BackendError(f"llama.cpp could not create a context for {path}")
        self._memory = lib.llama_get_memory(self._context)
        vocab = lib.llama_model_get_vocab(self._model)
        self.vocab_size = lib.llama_vocab_n_tokens(vocab)
        if self.vocab_size != len(tokenizer):
            raise InvalidArgumentError(
                f"the tokenizer has {len(tokenizer)} tokens but the model {self.vocab_size}"
            )
        self.eos_token_ids = frozenset(
            t for t in range(self.vocab_size) if lib.llama_vocab_is_eog(vocab, t)
        )
        self.device = torch.device("cpu")
        self.max_sequences = max_sequences
        self.n_batch = n_batch
        self.stats = LMStats()
        self._batch = lib.llama_batch_init(n_batch, 0, 1)
        self._sequences: list[tuple[int, ...]] = [()] * max_sequences
        self._request_sequences: list[int] = []  # sequence of each request this call
        self._rows: list[int] = []  # requests still decoding
        self._encoded: dict[Context, tuple[int, ...]] = {}

    @classmethod
    def embedded(cls, **options) -> LlamaCppLM:
        """The embedded SmolLM2-135M-Instruct GGUF, run by llama.cpp.

        Example (needs ``llama-cpp-python``; ``make test-integration`` runs it):
            >>> lm = LlamaCppLM.embedded(max_sequences=16)
            >>> lm.max_sequences, lm.decode(lm.tokenizer("Hello")["input_ids"])
            (16, 'Hello')
            >>> lm.close()
        """
        from transformers import AutoTokenizer

        from models import embedded

        # The converted copy's tokenizer loads several times faster than the GGUF's.
        options.setdefault(
            "tokenizer", AutoTokenizer.from_pretrained(embedded.converted_model_dir())
        )
        return cls(embedded.gguf_path(), **options)

    def close(self) -> None:
        """Free llama.cpp's memory now instead of at garbage collection."""
        if getattr(self, "_context", None):
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._context)
            self._lib.llama_model_free(self._model)
            self._context = None

    def __del__(self):
        self.close()

    # --- sequences ------------------------------------------------------------
    def _forget(self) -> None:
        self._lib.llama_memory_clear(self._memory, True)
        self._sequences = [()] * self.max_sequences

    def _feed(
        self, sequences: list[tuple[int, ...]], num_logits: list[int]
    ) -> tuple[torch.Tensor, list[int]]:
        if len(sequences) > self.max_sequences:
            raise InvalidArgumentError(
                f"{len(sequences)} requests in one call but this LlamaCppLM holds "
                f"{self.max_sequences} sequences; create it with max_sequences>={len(sequences)}"
            )
        try:
            return self._feed_sequences(sequences, num_logits)
        except Exception:
            self._forget()
            raise

    def _feed_sequences(self, sequences, num_logits) -> tuple[torch.Tensor, list[int]]:
        sources, lengths = match_prefixes(self._sequences, sequences, num_logits)
        # One computation per distinct (source, prefix, sequence); its copies
        # are forked after it is fed, sharing its cells.
        unique: dict[tuple, int] = {}
        group = [
            unique.setdefault((sources[j], lengths[j], sequence, num_logits[j]), len(unique))
            for j, sequence in enumerate(sequences)
        ]
        keys = [key[:3] for key in unique]
        targets = self._place(keys)
        if any(source < 0 for source, _, _ in keys):
            self.stats.prefill_calls += 1
        logits = self._evaluate(keys, targets, [key[3] for key in unique])
        for k, (_, _, sequence) in enumerate(keys):
            self._sequences[targets[k]] = sequence
        self._fork_copies(sequences, group, targets)
        self._rows = list(range(len(sequences)))
        return logits[group], list(range(len(sequences)))

    def _place(self, keys) -> list[int]:
        """A sequence slot per key, holding its cached prefix; slots nobody uses are cleared."""
        lib, memory = self._lib, self._memory
        targets = assign_slots(
            [source for source, _, _ in keys], self.max_sequences, keep_sources_free=True
        )
        for (source, length, _), target in zip(keys, targets, strict=True):
            if source >= 0 and source != target:
                lib.llama_memory_seq_rm(memory, target, -1, -1)
                lib.llama_memory_seq_cp(memory, source, target, 0, length)
        used = set(targets)
        for sequence_id in range(self.max_sequences):
            if sequence_id not in used and self._sequences[sequence_id]:
                lib.llama_memory_seq_rm(memory, sequence_id, -1, -1)
                self._sequences[sequence_id] = ()
        for (source, length, sequence), target in zip(keys, targets, strict=True):
            kept = length if source >= 0 else 0
            if not lib.llama_memory_seq_rm(memory, target, kept, -1):
                raise BackendError("llama.cpp could not truncate a sequence")
            self._sequences[target] = sequence[:kept]
        return targets

    def _evaluate(self, keys, targets, wanted_logits) -> torch.Tensor:
        """Decode the keys' uncached tokens in chunks; each key's last logits, right-aligned."""
        width = max(wanted_logits)
        logits = torch.zeros((len(keys), width, self.vocab_size))
        pending = [
            (k, target, position, sequence[position], position >= len(sequence) - wanted)
            for k, ((source, length, sequence), target, wanted) in enumerate(
                zip(keys, targets, wanted_logits, strict=True)
            )
            for position in range(length if source >= 0 else 0, len(sequence))
        ]
        for start in range(0, len(pending), self.n_batch):
            chunk = pending[start : start + self.n_batch]
            outputs = self._run([(t, p, token, want) for _, t, p, token, want in chunk])
            wanted = [(k, p) for k, t, p, _, want in chunk if want]
            for (k, position), row in zip(wanted, outputs, strict=True):
                sequence = keys[k][2]
                logits[k, width - (len(sequence) - position)] = row
        self.stats.tokens_prefilled += len(pending)
        return logits

    def _fork_copies(self, sequences, group: list[int], targets: list[int]) -> None:
        """Give each request a sequence: the first of a key its slot, the others forks of it."""
        lib, memory = self._lib, self._memory
        used = set(targets)
        self._request_sequences = [-1] * len(sequences)
        first_of_key: dict[int, int] = {}
        spare = iter(
            s for s in range(self.max_sequences) if s not in used and not self._sequences[s]
        )
        for j, k in enumerate(group):
            if k not in first_of_key:
                first_of_key[k] = j
                self._request_sequences[j] = targets[k]
                continue
            fork = next(spare)
            lib.llama_memory_seq_rm(memory, fork, -1, -1)
            lib.llama_memory_seq_cp(memory, targets[k], fork, -1, -1)
            self._sequences[fork] = sequences[j]
            self._request_sequences[j] = fork

    def _shed(self, rows: list[int], done: list[bool]) -> list[int]:
        """Finished rows leave at once: llama.cpp decodes any subset of sequences."""
        self._rows = [j for j in rows if not done[j]]
        return self._rows

    def _decode(self, tokens: list[int | None]) -> torch.Tensor:
        entries = []
        for j, token in zip(self._rows, tokens, strict=True):
            sequence_id = self._request_sequences[j]
            position = len(self._sequences[sequence_id])
            entries.append((sequence_id, position, token, True))
            self._sequences[sequence_id] = self._sequences[sequence_id] + (token,)
        self.stats.decode_rows += len(entries)
        return self._run(entries)

    def _run(self, entries: Sequence[tuple[int, int, int, bool]]) -> torch.Tensor:
        """Decode ``(sequence, position, token, want_logits)`` entries; logits of wanted ones."""
        lib, batch = self._lib, self._batch
        batch.n_tokens = len(entries)
        for i, (sequence_id, position, token, want) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = sequence_id
            batch.logits[i] = 1 if want else 0
        status = lib.llama_decode(self._context, batch)
        self.stats.forward_calls += 1
        if status == 1:
            raise BackendError(
                "llama.cpp's KV cache is full; create LlamaCppLM with a larger n_ctx "
                "(it is shared by all particles)"
            )
        if status != 0:
            raise BackendError(f"llama_decode failed with status {status}")
        wanted = sum(1 for entry in entries if entry[3])
        pointer = lib.llama_get_logits(self._context)
        array = np.ctypeslib.as_array(
            ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(wanted, self.vocab_size)
        )
        return torch.from_numpy(array.copy())
