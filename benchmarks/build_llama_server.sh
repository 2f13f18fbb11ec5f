#!/usr/bin/env bash
# Build llama.cpp's C++ `llama-server` from the llama.cpp source vendored in llama-cpp-python's
# source package (the same llama.cpp that efflm's export tests load GGUF files into), with CMake.
# The binary lands in build/llama-server/bin/llama-server (git-ignored); benchmarks/serve_load.py
# uses it when it is there. About 10 minutes on 2 cores, once. `make llama-server` runs this.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SRC="$ROOT/build/llama-server-src"
OUT="$ROOT/build/llama-server"
PIP="${PIP:-$ROOT/.venv/bin/pip}"
if [ -x "$OUT/bin/llama-server" ]; then
  echo "efflm: $OUT/bin/llama-server is built"; exit 0
fi
mkdir -p "$SRC"
if [ ! -d "$SRC/llama_cpp_python-$VERSION" ]; then
  "$PIP" download --quiet --disable-pip-version-check --no-binary :all: --no-deps \
    "llama-cpp-python==$VERSION" -d "$SRC"
  tar xzf "$SRC/llama_cpp_python-$VERSION.tar.gz" -C "$SRC"
fi
LLAMA="$SRC/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$LLAMA" -B "$OUT" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >/dev/null
cmake --build "$OUT" --target llama-server -j "${JOBS:-2}"
echo "efflm: built $OUT/bin/llama-server"
