"""Pure decode steps through one torch.compile graph; on the flex backend padded to a ladder of batch sizes.

A batch-1 decode runs ~40 small ops per layer besides its matmuls; compiled,
they fuse into a few kernels with no per-op dispatch. On the torch backend
a step's row count and key length are symbolic (the weights' shapes are not),
so one graph serves one-row steps and one serves the rest. On a CPU the one-row
graph is compiled apart, with inductor settings of its own (its products are
row-major GEMVs, models/linear.py, ONE_ROW_INDUCTOR_DEFAULTS), and its LM head
runs through a small static graph of its own. After its first call each of
these graphs runs dynamo's transformed code itself, without guards (DirectCall).

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

import inspect
import sysconfig
import types
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .attention import AttentionMetadata, DecodeMetadata, KVCache, decode_metadata, flex_decode_metadata

CPU_INDUCTOR_DEFAULTS = {"cpp_wrapper": True}
"""Inductor settings a CPU's compiled decode step starts from (CompilationConfig.inductor_compile_config overrides
them): C++, not Python, calls the graph's kernels and ops, which a batch-1 step makes ~250 of. SmolLM2-135M bf16,
2 threads, batch 1: 1.00-1.21x the Python wrapper's step in three same-run benches, never slower; 1.12x eager at
batch 32 where the Python wrapper gave 1.03x (bench/RESULTS.md, session 17). Applied only where Python's C headers
are installed: the C++ wrapper is built as a Python extension module."""

ONE_ROW_INDUCTOR_DEFAULTS = {"realize_opcount_threshold": 0}
"""Inductor settings a CPU's one-row decode graph adds: store a reused intermediate rather than recompute it.
A one-row product is a multiply-and-reduce that broadcasts its input row to every output row (models/linear.gemv);
by default inductor fuses that input's producer (the RMSNorm before q/k/v, SiLU(gate) * up before down) into the
reduction and recomputes it once per output row, which made the GEMV loops compute-bound. Stored once, the loops
only stream weights: SmolLM2-135M, batch 1, 2 threads, 1.19x (bf16) and 1.09x (fp32) the step rate in the same
process (bench/RESULTS.md, session 23). Graphs of more rows call oneDNN's GEMM, which reads a stored input anyway,
and keep inductor's defaults."""


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
        cpu = kv_caches[0][0].device.type == "cpu"
        defaults = CPU_INDUCTOR_DEFAULTS if cpu and python_headers_installed() else {}
        options = {**defaults, **(inductor_options or {})}
        if self.cuda_graphs:  # what mode="reduce-overhead" sets (torch.compile takes a mode or options, not both)
            options["triton.cudagraphs"] = True
        self.fn = self._compile(run_layers, call_layer, regions, options)
        """The graph(s) of decode steps: off a CPU every step's, on a CPU those of more than one (padded) row."""
        one_row_options = options
        if cpu:
            one_row_options = {**defaults, **ONE_ROW_INDUCTOR_DEFAULTS, **(inductor_options or {})}
            self.one_row = self._compile(one_row_step, call_one_row_layer, regions, one_row_options, run_layers)
        elif isinstance(self.fn, DirectCall):  # a DirectCall of its own runs the same graph's one-row entry
            self.one_row = self._compile(run_layers, call_layer, regions, options)
        else:
            self.one_row = self.fn
        """The graph of one-row steps: on a CPU compiled apart, with ONE_ROW_INDUCTOR_DEFAULTS."""
        self.head = None if head is None else DirectCall(head, one_row_options)

    def _compile(self, fn: Callable[..., torch.Tensor], layer: Callable[..., torch.Tensor], regions: bool,
                 options: Mapping[str, Any], *leading: Any) -> Callable[..., torch.Tensor]:
        """fn compiled whole, or (regions) fn with `layer`, which calls each decoder layer, compiled; its calls
        start with `leading`. The torch backend's whole step is a DirectCall: one entry of dynamo's cache serves
        every step of its row count (the flex backend's ladder keeps an entry per size, behind dynamo's guards)."""
        if regions:
            layer = torch.compile(layer, dynamic=True, fullgraph=True, options=options)
            return partial(fn, *leading, call_layer=layer)
        if not self.capture_sizes:
            return DirectCall(fn, options, *leading)
        return partial(torch.compile(fn, dynamic=False, fullgraph=True, options=options), *leading)

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                 meta: AttentionMetadata) -> torch.Tensor | None:
        """Hidden states [T, hidden] of a pure decode step; None for a step that must run eagerly."""
        rows = input_ids.shape[0]
        if not self.capture_sizes:
            step = decode_metadata(meta, self.window)
            if step is None or step.key_slots.shape[1] < MIN_SYMBOLIC_SIZE:
                return None
            mark_step_dynamic(input_ids, positions, step)
            return self._graph(rows)(input_ids, positions, kv_caches, step)
        if meta.num_seqs != rows or rows > self.capture_sizes[-1]:  # prompt chunks, or above the ladder
            return None
        size = self.capture_sizes[bisect_left(self.capture_sizes, rows)]
        ids, pos, padded = pad_decode(input_ids, positions, meta, size, self.scratch_block)
        step = flex_decode_metadata(padded, self.window, self.scratch_block + 1)
        if self.cuda_graphs:  # the previous step's outputs are consumed: the graphs may reuse their memory
            torch.compiler.cudagraph_mark_step_begin()
        return self._graph(size)(ids, pos, kv_caches, step)[:rows]

    def _graph(self, rows: int) -> Callable[..., torch.Tensor]:
        return self.one_row if rows == 1 else self.fn

    def logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """float32 logits of one row through the compiled head; None for more rows or no compiled head (eager)."""
        return self.head(hidden) if self.head is not None and hidden.shape[0] == 1 else None


MIN_SYMBOLIC_SIZE = 2
"""Dynamo specializes sizes 0 and 1, so a graph's symbolic axes hold sizes from 2 up: the graph of more rows
takes two or more, and a step whose rows attend one key (one-token prompts, which run as decode rows) runs eagerly
rather than through a graph specialized to one key."""


class DirectCall:
    """A function compiled with static shapes except those marked dynamic (torch.compile's dynamic=False) that,
    once its first call has compiled it, runs dynamo's transformed bytecode for that call itself: no
    frame-evaluation hook and no guards (vLLM drops them too).

    Dynamo checks ~300 guards (every weight's dtype, shape and strides) and enters its frame hook on each call:
    about 1 ms of a 12 ms SmolLM2 bf16 one-row step (bench/RESULTS.md, session 24). For the torch backend's
    decode graphs nothing those guards check changes between steps: the engine passes the same weights and
    cache tensors, in the same dtypes, and the sizes that change (rows above one, the key axis) are symbolic in
    the graph, from MIN_SYMBOLIC_SIZE up, which the caller keeps to. The first call picks the cache entry as
    dynamo does (compiled by this backend, guards passing); where this torch's cache offers none, every call goes
    through dynamo."""

    def __init__(self, fn: Callable[..., Any], options: Mapping[str, Any], *leading: Any) -> None:
        """`options`: torch.compile's; `leading`: the arguments every call starts with (as functools.partial)."""
        self.fn, self.options, self.leading = fn, dict(options), leading
        self.compiled = torch.compile(fn, dynamic=False, fullgraph=True, options=dict(options))
        self.run: Callable[..., Any] | None = None
        """After the first call: the transformed code, or the compiled function where it was not found."""
        self.direct = False
        """Whether calls skip dynamo (the transformed code was found)."""

    def __call__(self, *args: Any) -> Any:
        if self.run is not None:
            return self.run(*self.leading, *args)
        out = self.compiled(*self.leading, *args)
        code = transformed_code(self.fn, self.leading + args, self.options)
        self.direct = code is not None
        self.run = code or self.compiled
        return out


def transformed_code(fn: Callable[..., Any], args: tuple[Any, ...],
                     options: Mapping[str, Any]) -> Callable[..., Any] | None:
    """What dynamo runs for a call fn(*args) that torch.compile(fn, dynamic=False, options=options) has compiled:
    the bytecode of the first entry of fn's cache (dynamo's order) from an inductor backend of those options whose
    guards pass for these arguments, as a function of fn's arguments (dynamo keeps the original's arguments and
    free variables). None where this torch's cache has no such entry or API."""
    func = getattr(fn, "__func__", fn)  # a bound method: dynamo caches its function's code
    this = (fn.__self__,) if func is not fn else ()
    try:
        bound = inspect.signature(func).bind(*this, *args)
        bound.apply_defaults()
        entries = torch._dynamo.eval_frame._debug_get_cache_entry_list(func.__code__)
        entry = next((e for e in entries if (e.backend.config or {}) == options and e.backend.dynamic is False
                      and e.guard_manager.check(dict(bound.arguments))), None)
    except (AttributeError, TypeError):
        return None
    if entry is None:
        return None
    code = types.FunctionType(entry.code, func.__globals__, func.__name__, func.__defaults__, func.__closure__)
    return partial(code, *this)


def call_layer(layer: torch.nn.Module, *args: Any) -> torch.Tensor:
    """One decoder layer's forward: the region a regional compile compiles once for every layer."""
    return layer(*args)


def call_one_row_layer(layer: torch.nn.Module, *args: Any) -> torch.Tensor:
    """call_layer for one-row steps: code of its own, so dynamo keeps its graph (and settings) apart."""
    return layer(*args)


def one_row_step(run_layers: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
    """A one-row decode step (run_layers inlined): code of its own, so dynamo keeps its graph apart from the
    graph of more rows, which compiles run_layers itself under other inductor settings."""
    return run_layers(*args, **kwargs)


def mark_step_dynamic(input_ids: torch.Tensor, positions: torch.Tensor, step: DecodeMetadata) -> None:
    """Mark the torch backend's per-step sizes symbolic, and only those: the key axis, and the rows above one.

    The weights' and the cache's shapes stay static, so no size of the step is unified with a model dimension
    that happens to be equal when the graph compiles (dynamo's duck sizing), which specialized the graph to that
    size and compiled it again at the next one (bench/RESULTS.md, session 23)."""
    mark = torch._dynamo.maybe_mark_dynamic
    if input_ids.shape[0] > 1:  # one row is a graph of its own: size 1 is never symbolic
        for t in (input_ids, positions, step.slot_mapping, step.key_slots, step.key_mask):
            mark(t, 0)
    mark(step.key_slots, 1)
    mark(step.key_mask, 3)


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
