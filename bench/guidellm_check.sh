#!/usr/bin/env bash
# guidellm (the vLLM project's load generator) against `batchserve serve --model tiny`: a short synthetic
# streaming run must complete with 0 errors. guidellm pins click and brings uvloop/httptools, so it gets its
# own venv that reuses this environment's packages (torch, transformers) through a .pth file.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GUIDELLM_VENV:-/tmp/guidellm-venv}
if [ ! -x "$VENV/bin/guidellm" ]; then
    python -m venv "$VENV"
    python -c "import site; print(site.getsitepackages()[0])" > "$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')/parent.pth"
    "$VENV/bin/pip" install -q guidellm
fi
GUIDELLM="$VENV/bin/guidellm" python -m pytest -o addopts="" -q tests/serve/test_guidellm.py
