#!/usr/bin/env bash
# Build llama.cpp portably, once per (version, flags): llama-cpp-python's wheel and
# llama.cpp's C++ batching server `llama-server`, from one CMake build of the sdist's
# vendored llama.cpp, so both run the same kernels.
#
# A native build (-march=native) bakes in the build host's instruction sets (AVX-512,
# AMX): the artefacts then die with SIGILL on another CPU, or even on the build host
# when a batched kernel takes a path it advertises but faults on. The default flags
# target AVX2/FMA/F16C, which every x86-64 server of the last decade runs.
#
# Usage: scripts/build_llama_cpp.sh [--print-dir]
# Environment:
#   LLAMA_CPP_VERSION   llama-cpp-python version (default 0.3.36)
#   LLAMA_CPP_FLAGS     ggml CMake flags (default: the portable set below)
#   LLAMA_CPP_CACHE     cache root (default ~/.cache/pplscale/llama-cpp)
#   PYTHON              interpreter whose pip downloads and builds (default python3)
#   CMAKE_BUILD_PARALLEL_LEVEL  compile jobs (default 2)
# Artefacts, in <root>/<version>-<hash of the CMake arguments>/:
#   llama_cpp_python-<version>-*.whl   the wheel (pip install --find-links <dir>)
#   bin/llama-server                   the server (its shared libraries in lib/)
#   CMAKE_ARGS, build.log              what was built, and how long it took
set -euo pipefail

VERSION=${LLAMA_CPP_VERSION:-0.3.36}
PORTABLE="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
FLAGS=${LLAMA_CPP_FLAGS:-$PORTABLE}
# The server comes from llama.cpp's tools; they build mtmd themselves, so the
# wheel's own copy of it (multimodal chat only) is left out.
SHAPE="-DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAVA_BUILD=OFF"
SHAPE+=" -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF"
ARGS="$FLAGS $SHAPE"
ROOT=${LLAMA_CPP_CACHE:-$HOME/.cache/pplscale/llama-cpp}
PYTHON=${PYTHON:-python3}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
DIR=$ROOT/$VERSION-$(printf '%s' "$ARGS" | sha256sum | cut -c1-12)

case ${1:-} in
  --print-dir) echo "$DIR"; exit 0 ;;
  "") ;;
  *) echo "build_llama_cpp.sh: unknown argument '$1' (only --print-dir)" >&2; exit 2 ;;
esac

log() { echo "[build_llama_cpp $(date -u +%H:%M:%S)] $*"; }

if ls "$DIR"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1 && [ -x "$DIR/bin/llama-server" ]
then
  log "cached: $DIR"; exit 0
fi

SRC=$ROOT/src/llama_cpp_python-$VERSION
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  log "downloading the llama-cpp-python $VERSION sdist"
  mkdir -p "$ROOT/src"
  "$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$ROOT/src" \
    "llama-cpp-python==$VERSION"
  tar -xzf "$ROOT/src/llama_cpp_python-$VERSION.tar.gz" -C "$ROOT/src"
fi

log "building llama-cpp-python $VERSION and llama-server with: $ARGS"
start=$SECONDS
staging=$(mktemp -d "$ROOT/.build-XXXXXX")
trap 'rm -rf "$staging"' EXIT
CMAKE_ARGS="$ARGS" "$PYTHON" -m pip wheel -q --no-deps -w "$staging/wheel" \
  --config-settings=build-dir="$staging/build" "$SRC"

# The server links llama.cpp's shared libraries: ship it with them.
mkdir -p "$staging/out/bin" "$staging/out/lib" "$staging/out/libexec"
mv "$staging"/wheel/llama_cpp_python-*.whl "$staging/out/"
server=$(find "$staging/build" -type f -name llama-server -perm -u+x | head -n 1)
[ -n "$server" ] || { echo "build_llama_cpp.sh: no llama-server was built" >&2; exit 1; }
cp "$server" "$staging/out/libexec/"
find "$staging/build" -name 'lib*.so*' \( -type f -o -type l \) -exec cp -P {} "$staging/out/lib/" \;
cat > "$staging/out/bin/llama-server" <<'WRAPPER'
#!/bin/sh
here=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/libexec/llama-server" "$@"
WRAPPER
chmod +x "$staging/out/bin/llama-server"
printf '%s\n' "$ARGS" > "$staging/out/CMAKE_ARGS"
echo "built in $((SECONDS - start)) s with CMAKE_BUILD_PARALLEL_LEVEL=$CMAKE_BUILD_PARALLEL_LEVEL" \
  > "$staging/out/build.log"
rm -rf "$DIR"
mkdir -p "$(dirname "$DIR")"
mv "$staging/out" "$DIR"
log "built in $((SECONDS - start)) s: $DIR"
