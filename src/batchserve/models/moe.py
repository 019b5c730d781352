"""The sparse mixture-of-experts block of Mixtral, Qwen2-MoE and Qwen3-MoE, with grouped expert dispatch.

A router picks each token's top-k experts. The step's tokens are then sorted
by expert (a stable argsort of the flat top-k assignment), so each expert's
rows form one contiguous slice and run one gate/up and one down GEMM; the
outputs, weighted by the router probabilities, are summed back per token with
index_add. The Python loop runs over experts (at most num_experts per layer),
never over tokens, and an expert no token chose costs nothing.

A compiled decode step (enforce_eager=False) calls the dispatch as one opaque
op, `routed_experts`, since its per-expert row counts are data; the router and
the shared expert compile with the rest of the layer.

Expert weights are stacked [E, ...] as transformers 5 keeps them (gate rows
before up rows); checkpoints that store one tensor per expert, as the hub's
Mixtral and Qwen MoE files do, are read into the stack's slices.
"""

from __future__ import annotations

import itertools
import re
import weakref
from collections.abc import Callable, Iterable, Iterator
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..config import QuantizationConfig
from ..model_config import ModelConfig
from .linear import PackedLinear, new_linear, replace_linears
from .quantization import quantized_linear, quantized_weight

# Mixtral's checkpoint names -> the Qwen / transformers-5 names our modules use
_MIXTRAL_RENAMES = ((re.compile(r"\.block_sparse_moe\."), ".mlp."),
                    (re.compile(r"(\.experts\.\d+\.)w1\."), r"\1gate_proj."),
                    (re.compile(r"(\.experts\.\d+\.)w3\."), r"\1up_proj."),
                    (re.compile(r"(\.experts\.\d+\.)w2\."), r"\1down_proj."))


# A stacked 3-D expert tensor: transformers 5's `experts.gate_up_proj` / `experts.down_proj`, or GGUF's
# separate gate / up / down stacks (`ffn_gate_exps`, ... renamed by models/gguf_weights.py)
_STACKED = re.compile(r"(.*\.experts)\.(gate_up_proj|gate_proj|up_proj|down_proj)(?:\.weight)?")


_KEYS = itertools.count()
_EXPERTS: weakref.WeakValueDictionary[int, Experts] = weakref.WeakValueDictionary()
"""Experts modules by key, for routed_experts: a compiled graph takes tensors and constants, not modules (as vLLM's
compiled graphs call their attention layers by name). Weak: a model dropped is not kept alive here."""


class Experts(nn.Module):
    """num_experts gated-SiLU MLPs stacked [E, ...], run grouped over the tokens routed to each."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size,
                                                     dtype=dtype, device=device))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size,
                                                  dtype=dtype, device=device))
        self.packed: nn.ModuleList | None = None
        """After prepack or quantize: the (gate_up, down) modules of each expert, in expert order."""
        self.key = next(_KEYS)
        """This module's name for routed_experts (a compiled graph's constant)."""
        _EXPERTS[self.key] = self

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(x[t]) for every token t; [T, hidden]."""
        if torch.compiler.is_compiling():  # the dispatch's row counts are data: the graph calls it whole
            return routed_experts(x, topk_weights, topk_ids, self.key)
        return self.dispatch(x, topk_weights, topk_ids)

    def dispatch(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """forward's grouped dispatch, eagerly (also what a compiled step's routed_experts op runs)."""
        top_k = topk_ids.shape[1]
        flat = topk_ids.flatten()
        order = flat.argsort(stable=True)
        token = order // top_k  # the token each sorted assignment came from
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        xs = x.index_select(0, token)
        ys = torch.empty_like(xs)
        start = 0
        for expert, n in enumerate(counts):
            if n:
                gate_up, down = self._projections(expert)
                gate, up = gate_up(xs[start:start + n]).chunk(2, dim=-1)
                ys[start:start + n] = down(F.silu(gate) * up)
                start += n
        ys.mul_(topk_weights.flatten()[order].unsqueeze(1))
        return torch.zeros_like(x).index_add_(0, token, ys)

    def _projections(self, expert: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], ...]:
        if self.packed is not None:
            return self.packed[2 * expert], self.packed[2 * expert + 1]
        return partial(F.linear, weight=self.gate_up_proj[expert]), partial(F.linear, weight=self.down_proj[expert])

    @torch.no_grad()
    def prepack(self) -> None:
        """Hand each expert's matrices to oneDNN's packed GEMM (as models/linear.py does for the dense layers).

        Experts already quantized stay as they are.
        """
        if self.packed is None:
            self._per_expert(lambda w: PackedLinear(w, None))

    @torch.no_grad()
    def quantize(self, config: QuantizationConfig) -> None:
        """Each expert's gate/up and down as int8 or int4 products (models/quantization.py, config.method)."""
        self._per_expert(lambda w: quantized_weight(w, None, config.method, config.group_size))

    def _per_expert(self, make: Callable[[torch.Tensor], nn.Module]) -> None:
        # the stacked parameters are dropped so the weights are not held twice
        self.packed = nn.ModuleList(make(w[e]) for e in range(self.num_experts)
                                    for w in (self.gate_up_proj, self.down_proj))
        del self.gate_up_proj, self.down_proj


@torch.library.custom_op("batchserve::routed_experts", mutates_args=())
def routed_experts(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, key: int) -> torch.Tensor:
    """Experts.dispatch of the registered module `key`, as one op torch.compile keeps whole (compiled decode steps)."""
    return _EXPERTS[key].dispatch(x, topk_weights, topk_ids)


@routed_experts.register_fake
def _(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, key: int) -> torch.Tensor:
    return torch.empty_like(x)


class SparseMoeBlock(nn.Module):
    """Router + routed experts (+ a sigmoid-gated shared expert for Qwen2-MoE): replaces the MLP of an MoE layer."""

    def __init__(self, config: ModelConfig, shared_expert: nn.Module | None, dtype: torch.dtype, device) -> None:
        super().__init__()
        c = config
        self.top_k, self.norm_topk_prob = c.num_experts_per_tok, c.norm_topk_prob
        self.gate = new_linear(c.hidden_size, c.num_experts, False, dtype, device)
        self.experts = Experts(c.num_experts, c.hidden_size, c.intermediate_size, dtype, device)
        self.shared_expert = shared_expert
        if shared_expert is not None:
            self.shared_expert_gate = new_linear(c.hidden_size, 1, False, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.experts(x, *self.route(x))
        if self.shared_expert is not None:
            y = y + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return y

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights, expert ids), each [T, top_k]: softmax over all experts in float32, then top-k, as HF does."""
        probs = torch.softmax(self.gate(x), dim=-1, dtype=torch.float32)
        weights, ids = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(x.dtype), ids


def quantize_moe_model(model: nn.Module, config: QuantizationConfig) -> None:
    """int8 / int4 for an MoE model: every expert, the attention and shared-expert projections; the routers stay
    in float, as vLLM keeps them (a quantized router can flip a token's top-k choice)."""
    for module in model.modules():
        if isinstance(module, Experts):
            module.quantize(config)
    replace_linears(model, lambda path, linear: linear if path.endswith(".mlp.gate")
                    else quantized_linear(linear, config.method, config.group_size))


def expert_targets(param_name: str, param: torch.Tensor) -> dict[str, tuple[str, int, int | None, int | None]]:
    """Per-expert checkpoint name -> (stacked parameter, expert, row offset, rows) for `experts.gate_up_proj`
    or `experts.down_proj`."""
    prefix, kind = param_name.rsplit(".", 1)
    num_experts, rows = param.shape[0], param.shape[1]
    if kind == "down_proj":
        return {f"{prefix}.{e}.down_proj.weight": (param_name, e, None, None) for e in range(num_experts)}
    half = rows // 2
    return {f"{prefix}.{e}.{part}.weight": (param_name, e, start, half)
            for e in range(num_experts) for part, start in (("gate_proj", 0), ("up_proj", half))}


def per_expert_tensors(weights: Iterable[tuple[str, torch.Tensor]],
                       architecture: str) -> Iterator[tuple[str, torch.Tensor]]:
    """A checkpoint's tensors with its expert weights under per-expert names in our modules' spelling.

    Mixtral's `block_sparse_moe.experts.N.w1/w3/w2` become `mlp.experts.N.gate_proj/up_proj/down_proj`; a
    stacked 3-D `experts.gate_up_proj` [E, 2I, H] or `experts.down_proj` [E, H, I] (transformers 5's
    in-memory layout), or GGUF's `experts.gate_proj` / `up_proj` [E, I, H], is split into its experts.
    """
    for name, tensor in weights:
        if architecture == "MixtralForCausalLM":
            for pattern, repl in _MIXTRAL_RENAMES:
                name = pattern.sub(repl, name)
        stacked = _STACKED.fullmatch(name) if tensor.dim() == 3 else None
        if stacked is None:
            yield name, tensor
            continue
        prefix, kind = stacked.group(1), stacked.group(2)
        half = tensor.shape[1] // 2
        for e, w in enumerate(tensor):
            if kind == "gate_up_proj":
                yield f"{prefix}.{e}.gate_proj.weight", w[:half]
                yield f"{prefix}.{e}.up_proj.weight", w[half:]
            else:
                yield f"{prefix}.{e}.{kind}.weight", w
