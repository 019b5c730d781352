#!/usr/bin/env bash
# Builds llama-cpp-python (llama.cpp's Python binding) from source into its own venv, for the
# side-by-side rows of bench_quant.py and bench_decode.py (--llama-cpp). PyPI ships it only as an
# sdist; on 2 cores the build takes about 11 minutes. Native CPU flags, no GPU backends, so llama.cpp
# gets every instruction set this machine has, as batchserve does.
set -euo pipefail
VENV=${LLAMA_CPP_VENV:-/tmp/llama-cpp-venv}
VERSION=${LLAMA_CPP_VERSION:-0.3.36}
if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    python -m venv "$VENV"
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
        CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$VENV/bin/pip" install -q --no-cache-dir "llama-cpp-python==$VERSION"
fi
"$VENV/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, '->', '$VENV/bin/python')"
