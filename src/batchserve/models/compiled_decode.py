"""Pure decode steps through one torch.compile graph; on the flex backend padded to a ladder of batch sizes.

A batch-1 decode runs ~40 small ops per layer besides its matmuls; compiled,
they fuse into a few kernels with no per-op dispatch. On the torch backend
shapes are dynamic, so the graph compiles once for one row and once for more.
On a CPU with row-major weights (models/linear.py) a one-row step's LM head
runs through a small static graph of its own, as its projections do in the step's.

The flex backend reads K/V in place from the pool (a fixed-size key axis), so
its decode step's shapes depend on the row count only: a step of B rows is
padded to the smallest ladder size >= B (CompilationConfig) and compiled with
static shapes, at most one graph per size; on CUDA each size is recorded once
as a CUDA graph and replayed (torch.compile's reduce-overhead mode, torch's
cudagraph trees). The FlexAttention kernel stays an opaque op of that graph
(flex_attention.flex_pool_attention), compiled on its own. Padding rows decode at position
0 of a scratch block that no request is ever given: they write their K/V there,
attend that one key (no empty softmax) and their outputs are dropped.
The torch backend gathers a step's keys into a [B, L] copy whose L changes
every step, so a CUDA graph per shape would be a graph per step; it compiles
decode steps of any size without padding or graphs. There, regional
compilation (`regions`) compiles one decoder layer instead of the whole step:
the layers share their code, and their weights are the graph's inputs (dynamo
inlines nn.Modules), so one graph serves all of them, at a fraction of the
compile time; the few ops around the layers run eagerly.
"""

from __future__ import annotations

import sysconfig
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .attention import AttentionMetadata, KVCache, decode_metadata, flex_decode_metadata

CPU_INDUCTOR_DEFAULTS = {"cpp_wrapper": True}
"""Inductor settings a CPU's compiled decode step starts from (CompilationConfig.inductor_compile_config overrides
them): C++, not Python, calls the graph's kernels and ops, which a batch-1 step makes ~250 of. SmolLM2-135M bf16,
2 threads, batch 1: 1.00-1.21x the Python wrapper's step in three same-run benches, never slower; 1.12x eager at
batch 32 where the Python wrapper gave 1.03x (bench/RESULTS.md, session 17). Applied only where Python's C headers
are installed: the C++ wrapper is built as a Python extension module."""


def python_headers_installed() -> bool:
    """Whether Python.h is where an extension build looks for it (python3-dev and the like)."""
    return (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file()


class CompiledDecode:
    """A model's run_layers compiled for pure decode steps; call it with a step, get hidden states or None (eager)."""

    def __init__(self, run_layers: Callable[..., torch.Tensor], window: int | None, kv_caches: list[KVCache],
                 capture_sizes: Sequence[int] = (), inductor_options: Mapping[str, Any] | None = None,
                 regions: bool = False, head: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """`inductor_options`: inductor settings for the graph (torch.compile's `options`), checked here, not at
        the first decode step. `regions`: compile one decoder layer (run_layers' call_layer), not the whole
        step; torch backend only. `head`: hidden states -> float32 logits, compiled for one row (a CPU's
        row-major LM head, models/linear.py); None: logits stay eager."""
        unknown = sorted(set(inductor_options or {}) - set(torch._inductor.list_options()))
        if unknown:
            raise ValueError(f"unknown inductor option(s) {unknown} in inductor_compile_config; see "
                             "torch._inductor.list_options(), e.g. max_autotune, freezing")
        if regions and capture_sizes:
            raise ValueError("compile_regions applies to the torch attention backend; the flex backend's padded "
                             "decode steps compile whole (drop compile_regions or use --attention-backend torch)")
        self.window = window
        self.capture_sizes = tuple(sorted(capture_sizes))
        """The flex backend's ladder of padded row counts; empty: the torch backend, no padding."""
        self.scratch_block = kv_caches[0][0].shape[0] - 1
        """The pool's last block: the engine allocates it beyond the scheduler's blocks, for padding rows."""
        self.cuda_graphs = bool(self.capture_sizes) and kv_caches[0][0].is_cuda
        if self.cuda_graphs:  # the cache is written in place: graphs replay only into inputs at fixed addresses
            for cache in kv_caches:
                for t in cache:
                    torch._dynamo.mark_static_address(t)
        # the ladder's sizes compile one static graph each (dynamo's per-function limit must hold them all)
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, len(self.capture_sizes) + 1)
        cpu_defaults = kv_caches[0][0].device.type == "cpu" and python_headers_installed()
        options = {**(CPU_INDUCTOR_DEFAULTS if cpu_defaults else {}), **(inductor_options or {})}
        if self.cuda_graphs:  # what mode="reduce-overhead" sets (torch.compile takes a mode or options, not both)
            options["triton.cudagraphs"] = True
        if regions:
            self.fn = partial(run_layers, call_layer=torch.compile(call_layer, dynamic=True, fullgraph=True,
                                                                   options=options))
        else:
            self.fn = torch.compile(run_layers, dynamic=not self.capture_sizes, fullgraph=True, options=options)
        self.head = None if head is None else torch.compile(head, dynamic=False, fullgraph=True, options=options)

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                 meta: AttentionMetadata) -> torch.Tensor | None:
        """Hidden states [T, hidden] of a pure decode step; None for a step that must run eagerly."""
        if not self.capture_sizes:
            step = decode_metadata(meta, self.window)
            return None if step is None else self.fn(input_ids, positions, kv_caches, step)
        rows = input_ids.shape[0]
        if meta.num_seqs != rows or rows > self.capture_sizes[-1]:  # prompt chunks, or above the ladder
            return None
        ids, pos, padded = pad_decode(input_ids, positions, meta,
                                      self.capture_sizes[bisect_left(self.capture_sizes, rows)], self.scratch_block)
        step = flex_decode_metadata(padded, self.window, self.scratch_block + 1)
        if self.cuda_graphs:  # the previous step's outputs are consumed: the graphs may reuse their memory
            torch.compiler.cudagraph_mark_step_begin()
        return self.fn(ids, pos, kv_caches, step)[:rows]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """float32 logits of one row through the compiled head; None for more rows or no compiled head (eager)."""
        return self.head(hidden) if self.head is not None and hidden.shape[0] == 1 else None


def call_layer(layer: torch.nn.Module, *args: Any) -> torch.Tensor:
    """One decoder layer's forward: the region a regional compile compiles once for every layer."""
    return layer(*args)


def pad_decode(input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, size: int,
               scratch_block: int) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """A decode step of B rows as `size` rows: the extra rows decode token 0 at position 0 of scratch_block."""
    b = meta.num_seqs
    pad = size - b
    if not pad:
        return input_ids, positions, meta
    zeros = input_ids.new_zeros(pad)
    slots = torch.full((pad,), scratch_block * meta.block_size, dtype=meta.slot_mapping.dtype,
                       device=meta.slot_mapping.device)
    padded = AttentionMetadata(torch.cat([meta.slot_mapping, slots]), meta.query_start_loc + list(range(b + 1, size + 1)),
                               meta.context_lens + [0] * pad, meta.block_tables + [[scratch_block]] * pad,
                               meta.block_size, meta.config)
    return torch.cat([input_ids, zeros]), torch.cat([positions, zeros]), padded
