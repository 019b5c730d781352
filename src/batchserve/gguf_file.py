"""A GGUF file opened once: its metadata as plain Python values and its tensor records.

A GGUF (llama.cpp's format) carries the model's config, tokenizer and chat
template as metadata next to the weights. The config reader
(model_config.gguf_reader), the tokenizer and the weight loader all read the
same file through this module, which imports only `gguf` and numpy (no
torch), so a torch-free front end can read a GGUF's tokenizer too. Any
failure to parse the file (truncated, not a GGUF) is one GGUFError naming it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from .model_config import ModelConfig, from_gguf_metadata

GGUF_SUFFIX = ".gguf"


class GGUFError(ValueError):
    """A GGUF file cannot be read or describes something unsupported; the message names the file."""


def is_gguf(model: str | os.PathLike) -> bool:
    """Whether `model` names a GGUF file (by its suffix; the file may not exist yet)."""
    return str(model).lower().endswith(GGUF_SUFFIX)


class GGUFFile:
    """Metadata values by key (converted on first use) and the tensor records of one GGUF file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise GGUFError(f"GGUF file {self.path} not found")
        reader = _reader_class()
        if reader is None:
            raise GGUFError(f"reading {self.path} needs the gguf package: pip install 'gguf>=0.10'")
        try:
            self._reader = reader(self.path)
        except Exception as e:  # gguf raises ValueError, IndexError, struct errors... on a damaged file
            raise GGUFError(f"{self.path} is not a readable GGUF file (truncated or corrupt?): "
                            f"{type(e).__name__}: {e}") from None
        self._values: dict[str, Any] = {}  # metadata converted so far (the vocabulary takes a while)

    @functools.cached_property
    def architecture(self) -> str:
        """llama.cpp's architecture name, e.g. "llama", "qwen2"; the prefix of its model keys."""
        return str(self.get("general.architecture", ""))

    def __contains__(self, key: str) -> bool:
        return key in self._reader.fields

    def get(self, key: str, default: Any = None) -> Any:
        """The value of a metadata key (int, float, bool, str or list of them), or `default` if absent."""
        return self._value(key) if key in self._reader.fields else default

    def _value(self, key: str) -> Any:
        if key not in self._values:
            try:
                self._values[key] = self._reader.fields[key].contents()
            except Exception as e:
                raise GGUFError(f"{self.path}: metadata {key!r} cannot be read: {e}") from None
        return self._values[key]

    def scalars(self) -> dict[str, Any]:
        """Every metadata value but the arrays (the vocabulary, merges: slow to convert, read them by key)."""
        import gguf

        return {k: self._value(k) for k, f in self._reader.fields.items()
                if not (f.types and f.types[0] == gguf.GGUFValueType.ARRAY)}

    def model_config(self) -> ModelConfig:
        """The model this file describes, named after the file."""
        metadata = self.scalars()
        if f"{self.architecture}.vocab_size" not in metadata and "tokenizer.ggml.tokens" in self:
            metadata["tokenizer.ggml.tokens"] = self.get("tokenizer.ggml.tokens")
        return from_gguf_metadata(metadata, self.tensor_names, name=self.path.stem)

    @property
    def tensors(self) -> list[Any]:
        """The reader's tensor records: name, tensor_type, data (a memory-mapped numpy view)."""
        return self._reader.tensors

    @functools.cached_property
    def tensor_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self._reader.tensors)


@functools.cache
def _reader_class() -> type | None:
    """gguf's reader over a plain ndarray view of its memory map.

    The reader slices its buffer once per metadata item (a 49k-token vocabulary
    is 150k slices); a numpy memmap's slices each run memmap's bookkeeping, a
    plain view's do not: SmolLM2's file parses in 0.6 s instead of 2.0 s. The
    bytes are the same mapped pages, tensors included. None without gguf.
    """
    try:
        import gguf
        import numpy as np
    except ImportError:
        return None

    class Reader(gguf.GGUFReader):
        @property
        def data(self) -> np.ndarray:
            return self._data

        @data.setter
        def data(self, mapped: np.memmap) -> None:
            self._data = mapped.view(np.ndarray)

    return Reader


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """The parsed file, shared by the config, tokenizer and weight readers of one load (parsing takes seconds)."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise GGUFError(f"GGUF file {resolved} not found")
    return _open(resolved, resolved.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _open(path: Path, mtime_ns: int) -> GGUFFile:
    return GGUFFile(path)  # the mtime in the key: a rewritten file is parsed again
