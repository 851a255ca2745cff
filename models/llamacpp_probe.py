"""Check in a child process that this machine can run llama.cpp's batched kernels.

A llama.cpp built with ``-march=native`` (pip's default for llama-cpp-python)
uses every instruction set of the build host. Moved to another CPU, or on a
host whose AVX-512/AMX paths fault, its batched decoding dies with SIGILL and
takes the Python process with it, without a traceback. ``probe`` loads the
model and decodes a batch of several sequences in a child process first; if
the child dies, the caller gets a ``CapabilityError`` that says how to
rebuild instead of a dead process. A probe that passed is remembered for the
rest of the process (per model file and library).

Set ``PPLSCALE_LLAMA_PROBE=0`` to skip it (a few seconds per process).

Example (needs ``llama-cpp-python``, which ``make test`` does not install;
``make test-integration`` runs it):
    >>> from models import embedded
    >>> probe(embedded.gguf_path())  # passes quietly, or raises
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ppl.errors import BackendError, CapabilityError

# Examples that need a package ``make test`` does not install (root conftest.py).
__doctest_requires__ = {"*": ["llama_cpp"]}

PORTABLE_BUILD = (
    "rebuild llama-cpp-python without -march=native: `scripts/build_llama_cpp.sh` (run by "
    "`make test-integration`) builds it with CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX=ON "
    "-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON'; then "
    "`pip install --force-reinstall --no-deps <the wheel it prints>`"
)

# Loads the model and decodes four sequences in one batch, then one token of
# each: the prompt and decode shapes LlamaCppLM uses.
_PROBE = """
import sys
import llama_cpp as lib
from llama_cpp._logger import set_verbose
set_verbose(False)
lib.llama_backend_init()
model = lib.llama_model_load_from_file(sys.argv[1].encode(), lib.llama_model_default_params())
assert model, "cannot load the model"
params = lib.llama_context_default_params()
params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 256, 64, 64, 4
params.kv_unified = True
context = lib.llama_init_from_model(model, params)
assert context, "cannot create a context"
batch = lib.llama_batch_init(64, 0, 1)
def decode(entries):
    batch.n_tokens = len(entries)
    for i, (seq, pos, token) in enumerate(entries):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
        batch.seq_id[i][0], batch.logits[i] = seq, 1
    assert lib.llama_decode(context, batch) == 0, "llama_decode failed"
decode([(s, p, 1 + 7 * s + p) for s in range(4) for p in range(8)])
decode([(s, 8, 2 + s) for s in range(4)])
print("ok")
"""

_passed: set[tuple[str, str]] = set()


def probe_command(gguf_path: str | Path) -> list[str]:
    """The child process that exercises llama.cpp on ``gguf_path``."""
    return [sys.executable, "-c", _PROBE, str(gguf_path)]


def probe(gguf_path: str | Path, *, command: list[str] | None = None, timeout: float = 300.0):
    """Run the batched-decoding probe in a child; raise if it dies or fails.

    ``CapabilityError`` when the child is killed by a signal (SIGILL: an
    instruction this CPU lacks) or does not finish in ``timeout`` seconds;
    ``BackendError`` when it exits with an error.
    """
    if os.environ.get("PPLSCALE_LLAMA_PROBE") == "0":
        return
    key = (str(gguf_path), _library_stamp())
    if command is None and key in _passed:
        return
    try:
        done = subprocess.run(
            command or probe_command(gguf_path), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as error:
        raise CapabilityError(
            f"llama.cpp's batched-decoding probe on {gguf_path} did not finish in "
            f"{timeout:g} s; if the machine is not just overloaded, {PORTABLE_BUILD}"
        ) from error
    if done.returncode < 0:
        raise CapabilityError(
            f"llama.cpp died with {_signal_name(-done.returncode)} in a batched decode of "
            f"{gguf_path} (in a probe process, so this one lives): the installed build "
            f"uses instructions this CPU cannot run; {PORTABLE_BUILD}"
            f"{_tail(done.stderr)}"
        )
    if done.returncode != 0:
        raise BackendError(
            f"llama.cpp's probe on {gguf_path} failed (exit status {done.returncode})"
            f"{_tail(done.stderr)}"
        )
    if command is None:
        _passed.add(key)


def _library_stamp() -> str:
    """Identifies the installed llama-cpp-python, so a reinstall is probed again."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return ""
    library = Path(spec.origin).parent / "lib"
    return ";".join(f"{p.name}:{p.stat().st_mtime_ns}" for p in sorted(library.glob("*.so*")))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _tail(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return ("\nlast lines of its output:\n" + "\n".join(lines[-5:])) if lines else ""
