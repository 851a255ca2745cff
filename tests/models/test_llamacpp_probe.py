"""The llama.cpp capability probe: a kernel crash is an error, not a dead process."""

import signal
import sys

import pytest

import ppl
from models import llamacpp_probe
from models.llamacpp_probe import probe


def suicide(sig: signal.Signals) -> list[str]:
    return [sys.executable, "-c", f"import os, signal; os.kill(os.getpid(), signal.{sig.name})"]


def test_a_probe_killed_by_sigill_says_what_to_rebuild(tmp_path):
    with pytest.raises(ppl.CapabilityError, match="SIGILL") as error:
        probe(tmp_path / "m.gguf", command=suicide(signal.SIGILL))
    assert "GGML_NATIVE=OFF" in str(error.value) and "build_llama_cpp.sh" in str(error.value)


def test_other_deaths_and_failures_are_told_apart(tmp_path):
    with pytest.raises(ppl.CapabilityError, match="SIGSEGV"):
        probe(tmp_path / "m.gguf", command=suicide(signal.SIGSEGV))
    failing = [sys.executable, "-c", "import sys; print('no model here', file=sys.stderr); exit(3)"]
    with pytest.raises(ppl.BackendError, match="exit status 3") as error:
        probe(tmp_path / "m.gguf", command=failing)
    assert not isinstance(error.value, ppl.CapabilityError) and "no model here" in str(error.value)
    with pytest.raises(ppl.CapabilityError, match="did not finish"):
        probe(
            tmp_path / "m.gguf",
            command=[sys.executable, "-c", "import time; time.sleep(30)"],
            timeout=0.5,
        )


def test_the_probe_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("PPLSCALE_LLAMA_PROBE", "0")
    probe(tmp_path / "m.gguf", command=suicide(signal.SIGILL))


@pytest.mark.slow
def test_llamacpp_lm_raises_instead_of_dying_when_its_kernels_crash(monkeypatch):
    pytest.importorskip("llama_cpp", reason="integration tier: the portable llama.cpp wheel")
    from models import embedded
    from models.llamacpp_lm import LlamaCppLM

    # The real probe passes on this machine's build...
    probe(embedded.gguf_path())
    # ...and a probe that dies as a native build does on an AVX-512 host is reported.
    monkeypatch.setattr(llamacpp_probe, "_passed", set())
    monkeypatch.setattr(llamacpp_probe, "probe_command", lambda path: suicide(signal.SIGILL))
    with pytest.raises(ppl.CapabilityError, match="SIGILL.*rebuild"):
        LlamaCppLM.embedded(max_sequences=4)
