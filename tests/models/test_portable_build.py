"""Integration tier: the llama.cpp build holds no AVX-512 or AMX instruction.

A native build on an AVX-512/AMX host emits those instructions and died there
with "Illegal instruction" in batched decoding; the portable build
(``scripts/build_llama_cpp.sh``: ``GGML_NATIVE=OFF``, explicit AVX2/FMA/F16C)
must not. Disassembling every library and executable of the installed wheel
and of ``llama-server`` checks that on any host, including one without those
extensions: an instruction that is not in the binary cannot fault.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import ppl
from models import embedded

pytestmark = pytest.mark.slow

# zmm registers, opmask registers, EVEX-only xmm/ymm 16-31 (AVX-512) and AMX tile ops.
AVX512_OR_AMX = re.compile(
    r"%zmm\d|%k[0-7]\b|%[xy]mm(1[6-9]|2\d|3[01])\b|\b(ldtilecfg|sttilecfg|tileloadd\w*|"
    r"tilestored|tilezero|tilerelease|tdp\w+)\b"
)
ELF_MAGIC = b"\x7fELF"


def avx512_or_amx_lines(binary: Path) -> list[str]:
    """The disassembled lines of ``binary`` that use AVX-512 or AMX."""
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(binary)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in listing.splitlines() if AVX512_OR_AMX.search(line)]


def elf_files(*folders: Path) -> list[Path]:
    found = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                with path.open("rb") as handle:
                    if handle.read(4) == ELF_MAGIC:
                        found.append(path)
    return found


def require_tool(name: str) -> None:
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed (binutils/gcc build llama.cpp in this tier)")


def test_the_scan_finds_avx512_in_a_binary_built_for_it(tmp_path):
    require_tool("objdump")
    require_tool("gcc")
    source = tmp_path / "wide.c"
    source.write_text(
        "#include <immintrin.h>\n"
        "void add(float *out, const float *a, const float *b) {\n"
        "  _mm512_storeu_ps(out, _mm512_add_ps(_mm512_loadu_ps(a), _mm512_loadu_ps(b)));\n"
        "}\n"
    )
    wide = tmp_path / "wide.o"
    subprocess.run(["gcc", "-O2", "-mavx512f", "-c", str(source), "-o", str(wide)], check=True)
    narrow = tmp_path / "narrow.o"
    source.write_text("float twice(float x) { return 2 * x; }\n")
    subprocess.run(["gcc", "-O2", "-mavx2", "-c", str(source), "-o", str(narrow)], check=True)

    assert avx512_or_amx_lines(wide)
    assert avx512_or_amx_lines(narrow) == []


def test_the_llama_cpp_wheel_and_server_use_no_avx512_or_amx():
    require_tool("objdump")
    llama_cpp = pytest.importorskip("llama_cpp")
    try:
        server = embedded.llama_cpp_server_path().resolve()
    except ppl.ModelNotInstalledError as error:
        pytest.skip(f"integration tier: {error}")
    build = server.parent.parent
    binaries = elf_files(Path(llama_cpp.__file__).parent / "lib", build / "lib", build / "libexec")
    assert any(path.name.startswith("libggml-cpu") for path in binaries)

    offending = {path: avx512_or_amx_lines(path) for path in binaries}
    offending = {str(path): lines[:3] for path, lines in offending.items() if lines}
    assert offending == {}
