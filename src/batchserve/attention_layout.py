"""How the plain-torch attention backend lays out decodes: shared with the cost model (torch-free).

The backend gathers each group of decode rows' K/V into one tensor padded to
the group's longest row, so a step reads the padded key count, not the real
one; the simulator counts the same padded keys, by the same rule.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

ATTENTION_BACKENDS = ("torch", "flex", "cpp")
_Count = TypeVar("_Count")  # an int, or a numpy array of counts (one per step of a run)


def default_attention_backend(device_type: str, batch_invariant: bool = False) -> str:
    """The backend an engine on this device runs unless told otherwise: on a CPU the cpp kernel (1.5-1.85x the
    output rate of a 64-request job on SmolLM2, bench/RESULTS.md, session 28) where a C++ compiler can build
    it, else torch; torch off a CPU, and for batch-invariant (deterministic) attention."""
    if device_type != "cpu" or batch_invariant:
        return "torch"
    return "cpp" if shutil.which(os.environ.get("CXX", "c++")) else "torch"


@dataclass(frozen=True)
class AttentionConfig:
    """Knobs of the attention backend, set on the executor."""

    decode_bucket_ratio: float = 0.7
    """Decode rows share a padded call while their key count is at least this fraction of the call's longest:
    higher pads less but makes more calls; 0 attends every decode row in one call padded to the longest (a
    GPU, whose steps wait on the host's kernel launches rather than on the bytes padding adds, may want it)."""

    backend: str = "torch"
    """Paged attention kernel: "torch" gathers each row's K/V into padded copies for SDPA (the reference);
    "flex" reads them in place from the block pool with a compiled FlexAttention kernel (models/flex_attention.py);
    "cpp" (CPU) reads decode rows' and prompt chunks' K/V in place with C++ kernels built on first use
    (models/paged_decode.py; chunks of a head_dim other than 64 and 128, or without AVX-512, as "torch" does)."""

    batch_invariant: bool = False
    """One call per query token over exactly its visible keys, so a token's result never depends on its
    batch-mates or on how its prompt was chunked (deterministic=True; models/batch_invariant.py)."""

    compiled_decode_rows: int = 0
    """The most rows of a pure decode step the engine runs through its compiled graph (enforce_eager=False):
    the flex backend's largest capture size, max_num_seqs on the torch backend; 0: every step runs eagerly.
    The cost model prices those steps apart (`compiled_rows`; Efficiency.compiled_overhead_ratio)."""

    @property
    def decode_in_place(self) -> bool:
        """Whether decode rows read their own keys in place (flex, cpp): no padding is read, one call a layer."""
        return self.backend in ("flex", "cpp")

    @property
    def decode_padding_ratio(self) -> float:
        """The decode grouping ratio of the keys a step reads: in-place backends read each row's own keys only."""
        return 1.0 if self.decode_in_place else self.decode_bucket_ratio

    @property
    def decode_group_ratio(self) -> float:
        """The ratio decode rows are grouped by (`decode_groups`): 0, one group, where padding is not read."""
        return 0.0 if self.decode_in_place else self.decode_bucket_ratio

    def decode_calls(self, groups: _Count) -> _Count:
        """Attention calls per layer of decodes laid out in `groups` groups (an int or a numpy array): the torch
        backend gathers and attends each group in its own call; in-place backends run one for all of them."""
        return (groups > 0) * 1 if self.decode_in_place else groups

    def compiled_rows(self, num_prefill_tokens: _Count, num_decodes: _Count, decode_calls: _Count) -> _Count:
        """Rows of a step (ints, or numpy arrays of them) that run through the compiled decode graph: all of a
        pure decode step's, when it has at most `compiled_decode_rows` rows in one attention call per layer (the
        torch backend's graph takes one padded group: models/attention.decode_metadata), else 0."""
        return num_decodes * ((num_prefill_tokens == 0) & (num_decodes <= self.compiled_decode_rows)
                              & (decode_calls == 1))

    def __post_init__(self) -> None:
        if not 0 <= self.decode_bucket_ratio <= 1:
            raise ValueError(f"decode_bucket_ratio must be in [0, 1] (0: one padded call for all decode rows), "
                             f"got {self.decode_bucket_ratio}")
        if self.compiled_decode_rows < 0:
            raise ValueError(f"compiled_decode_rows must be >= 0, got {self.compiled_decode_rows}")
        if self.backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention backend {self.backend!r} is not one of {', '.join(ATTENTION_BACKENDS)}")
        if self.batch_invariant and self.backend != "torch":
            raise ValueError(f"deterministic (batch-invariant) attention runs on the torch backend, not "
                             f"{self.backend!r}; drop one of them")


def decode_groups(lengths: Sequence[int], ratio: float) -> list[list[int]]:
    """Row indices grouped by key count, longest first; a group's shortest row is >= ratio x its longest.

    Grouping bounds the padding (keys gathered and attended for nothing) to 1 / ratio of the real
    keys instead of max/mean of the whole batch: on a CPU the K/V gather of one padded batch of
    256 mixed-length decodes was 57% of the step.
    """
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and lengths[i] >= ratio * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def decode_layout(lengths: Sequence[int], ratio: float) -> tuple[int, int]:
    """(keys the grouped decode attention reads, its calls per layer): each group's row count times its
    longest row, and the number of groups."""
    groups = decode_groups(lengths, ratio)
    return sum(len(g) * lengths[g[0]] for g in groups), len(groups)
