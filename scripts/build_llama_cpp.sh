#!/usr/bin/env bash
# Build the llama.cpp tools the GGUF parity test runs (tests/test_llama_cpp_parity.py) into .cache/llama.cpp/bin.
# Source: the vendor/llama.cpp of the pinned llama-cpp-python sdist (PyPI, through pip). Nothing is done when the
# binaries are already there. CPU only, static, no curl/OpenSSL. Measured on 2 cores shared with other jobs
# (load ~6): llama-simple 7.5 min wall / 3.3 min CPU, then llama-completion (the common library) 8.9 min wall /
# 3.6 min CPU more; on 2 idle cores about 4 min for both. CI builds llama-simple only: one llama-completion build
# (same source, same flags, 2026-12-04) printed no tokens and exited 0 while another build worked; build it with
# LLAMA_CPP_TARGETS='llama-simple llama-completion' to also run the printed hint (the parity test does when present).
# Usage: bash scripts/build_llama_cpp.sh   (then: ANIMA_LLAMA_CPP_BIN defaults to .cache/llama.cpp/bin)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
TARGETS="${LLAMA_CPP_TARGETS:-llama-simple}"
cache=.cache/llama.cpp
missing=0
for t in $TARGETS; do [ -x "$cache/bin/$t" ] || missing=1; done
if [ "$missing" = 0 ]; then
  echo "llama.cpp: $TARGETS already built in $cache/bin"
  exit 0
fi
command -v cmake >/dev/null && command -v c++ >/dev/null || { echo "llama.cpp: cmake and a C++ compiler are needed" >&2; exit 2; }
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
mkdir -p "$cache/sdist"
src="$cache/src/llama_cpp_python-$VERSION/vendor/llama.cpp"
if [ ! -f "$src/CMakeLists.txt" ]; then
  "$PY" -m pip download --quiet --no-binary :all: --no-deps -d "$cache/sdist" "llama-cpp-python==$VERSION"
  mkdir -p "$cache/src"
  tar -xzf "$cache/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$cache/src" "llama_cpp_python-$VERSION/vendor/llama.cpp"
fi
start=$(date +%s)
cmake -S "$src" -B "$cache/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
  >"$cache/build.log" 2>&1 || { tail -n 30 "$cache/build.log" >&2; exit 1; }
# shellcheck disable=SC2086
cmake --build "$cache/build" --target $TARGETS -j "${LLAMA_CPP_JOBS:-2}" >>"$cache/build.log" 2>&1 \
  || { tail -n 30 "$cache/build.log" >&2; exit 1; }   # compiler output in the log, not in CI's
mkdir -p "$cache/bin"
for t in $TARGETS; do cp "$cache/build/bin/$t" "$cache/bin/$t"; done
echo "llama.cpp: built $TARGETS (llama-cpp-python $VERSION's llama.cpp) in $(( $(date +%s) - start ))s into $cache/bin"
