"""The Llama-family decoder: Llama 2/3, Mistral, Qwen2, Qwen3 and the MoE kin Mixtral, Qwen2-MoE, Qwen3-MoE.

The variants differ only in config flags (QKV bias, tied embeddings, per-head
q/k RMSNorm, sliding window, experts), so one implementation serves them all;
an MoE layer swaps its MLP for the sparse block of models/moe.py. q/k/v and
gate/up are fused into one matmul each; load_weights takes HF names and fills
the fused weights' slices. Numerics follow HF where it matters for parity:
RMSNorm in float32, RoPE cos/sin cast to the activation dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from ..model_config import ModelConfig
from .attention import AttentionMetadata, DecodeMetadata, FlexDecodeMetadata, KVCache, PagedAttention
from .compiled_decode import CompiledDecode
from .config import ModelLoadError
from .linear import PackedLinear, new_linear, prepack_linears
from .moe import Experts, SparseMoeBlock, expert_targets, per_expert_tensors
from .rope import RopeTables, RotaryEmbedding, apply_rope

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # old checkpoints saved the RoPE buffer


def fused_rows(config: ModelConfig, mlp_width: int | None = None) -> dict[str, tuple[tuple[str, int], ...]]:
    """Our fused module -> the HF projections stacked in it and their rows, in row order (loading, LoRA).

    mlp_width: the gate/up width of this MLP when it is not intermediate_size (a shared expert, a dense
    layer of an MoE model).
    """
    c, width = config, mlp_width or config.intermediate_size
    return {"qkv_proj": (("q_proj", c.q_size), ("k_proj", c.kv_size), ("v_proj", c.kv_size)),
            "gate_up_proj": (("gate_proj", width), ("up_proj", width))}


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back before the weight, as HF Llama does.

    torch's fused rms_norm kernel does the float32 part in one op instead of six.
    """

    def __init__(self, size: int, eps: float, dtype: torch.dtype, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype, device=device))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), self.weight.shape, None, self.eps).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device=None):
        super().__init__()
        c = config
        self.q_size, self.kv_size = c.q_size, c.kv_size
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_attention_heads, c.num_kv_heads, c.head_dim
        self.scale = c.head_dim ** -0.5
        self.qkv_proj = new_linear(c.hidden_size, c.q_size + 2 * c.kv_size, c.attention_bias, dtype, device)
        self.o_proj = new_linear(c.q_size, c.hidden_size, c.o_proj_bias, dtype, device)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps, dtype, device)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps, dtype, device)
        self.qk_norm = c.qk_norm

    def forward(self, rope: RopeTables, x: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata,
                attn: PagedAttention) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.qkv_proj(x)
        v = qkv[:, self.q_size + self.kv_size:].view(t, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k, _ = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = self.q_norm(q.reshape(t, self.num_heads, self.head_dim))
            k = self.k_norm(k.reshape(t, self.num_kv_heads, self.head_dim))
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        else:  # q and k side by side in qkv: one rotation for both heads' sets
            qk = apply_rope(qkv[:, :self.q_size + self.kv_size].view(t, -1, self.head_dim), rope)
            q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
        out = attn.forward(q, k, v, kv_cache, meta, self.scale)
        return self.o_proj(out.reshape(t, self.q_size))


class MLP(nn.Module):
    """Gated SiLU MLP: down(silu(gate(x)) * up(x)), gate and up in one matmul."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device=None, width: int | None = None):
        super().__init__()
        c, width = config, width or config.intermediate_size
        self.gate_up_proj = new_linear(c.hidden_size, 2 * width, c.mlp_bias, dtype, device)
        self.down_proj = new_linear(width, c.hidden_size, c.mlp_bias, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def _feed_forward(config: ModelConfig, layer: int, dtype: torch.dtype, device) -> nn.Module:
    """Layer `layer`'s MLP: the sparse MoE block on MoE layers, else a dense MLP of the layer's width."""
    c = config
    if not c.is_moe_layer(layer):
        return MLP(c, dtype, device, c.dense_intermediate_size if c.is_moe else None)
    shared = MLP(c, dtype, device, c.shared_expert_intermediate_size) if c.shared_expert_intermediate_size else None
    return SparseMoeBlock(c, shared, dtype, device)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, dtype: torch.dtype, device=None):
        super().__init__()
        self.self_attn = Attention(config, dtype, device)
        self.mlp = _feed_forward(config, layer, dtype, device)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)

    def forward(self, rope: RopeTables, x: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata,
                attn: PagedAttention) -> torch.Tensor:
        x = x + self.self_attn(rope, self.input_layernorm(x), kv_cache, meta, attn)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    """Embeddings, layers, final norm: HF's `model.` prefix."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device=None):
        super().__init__()
        self.embed_tokens = skip_init(nn.Embedding, config.vocab_size, config.hidden_size, dtype=dtype, device=device)
        self.layers = nn.ModuleList(DecoderLayer(config, i, dtype, device) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)


class CausalLM(nn.Module):
    """A Llama-family causal LM over a flat batch and a paged KV cache."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        super().__init__()
        dtype = dtype or getattr(torch, config.dtype)
        device = torch.device(device) if device is not None else torch.get_default_device()  # skip_init needs one
        self.config = config
        self.model = DecoderModel(config, dtype, device)
        self.lm_head = None if config.tie_word_embeddings else new_linear(
            config.hidden_size, config.vocab_size, False, dtype, device)
        self.rotary_emb = RotaryEmbedding(config, device)
        self.attn = PagedAttention(config.num_attention_heads, config.num_kv_heads, config.head_dim, config.sliding_window)
        self._prepacked = False
        self.compiled_decode: CompiledDecode | None = None
        """run_layers compiled for pure decode steps (compile_decode); None runs every step eagerly."""

    @property
    def dtype(self) -> torch.dtype:
        """Weight dtype; the natural dtype for the KV cache too."""
        return self.model.embed_tokens.weight.dtype

    @property
    def prepacked(self) -> bool:
        """Whether prepack_weights ran: the projections run oneDNN's packed GEMM."""
        return self._prepacked

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states [T, hidden] of the step's T new tokens; their K/V land in kv_caches."""
        if self.compiled_decode is not None:
            hidden = self.compiled_decode(input_ids, positions, kv_caches, meta)
            if hidden is not None:
                return hidden
        return self.run_layers(input_ids, positions, kv_caches, meta)

    def compile_decode(self, kv_caches: list[KVCache], capture_sizes: Sequence[int] = (),
                       inductor_options: Mapping[str, Any] | None = None, regions: bool = False) -> None:
        """Run pure decode steps compiled (models/compiled_decode.py), every other step eagerly.

        capture_sizes: the flex backend's ladder of padded batch sizes; the last block of kv_caches is
        then the padding rows' scratch block, which the caller never hands to a request.
        inductor_options: torch.compile's `options` for the graph (CompilationConfig.inductor_compile_config).
        regions: compile one decoder layer, not the whole step (CompilationConfig.compile_regions).
        """
        # a one-row step's LM head streams its plain weight like the projections do (models/linear.py)
        head = self._logits if getattr(self.lm_head, "row_major_gemv", False) else None
        self.compiled_decode = CompiledDecode(self.run_layers, self.attn.sliding_window, kv_caches, capture_sizes,
                                              inductor_options, regions, head)

    def run_layers(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                   meta: AttentionMetadata | DecodeMetadata | FlexDecodeMetadata,
                   call_layer: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
        """forward's body: embeddings, the decoder layers, the final norm.

        call_layer(layer, rope, x, kv_cache, meta, attn) runs each layer in its place (a compiled layer).
        """
        x = self.model.embed_tokens(input_ids)
        rope = self.rotary_emb(positions, x.dtype)  # gathered once per step, applied by every layer
        for layer, kv_cache in zip(self.model.layers, kv_caches, strict=True):
            x = layer(rope, x, kv_cache, meta, self.attn) if call_layer is None else call_layer(
                layer, rope, x, kv_cache, meta, self.attn)
        return self.model.norm(x)

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits [S, vocab] for the rows the caller samples from."""
        if self.compiled_decode is not None:
            logits = self.compiled_decode.logits(hidden)
            if logits is not None:
                return logits
        return self._logits(hidden)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:
            return F.linear(hidden, self.model.embed_tokens.weight).float()
        return self.lm_head(hidden).float()

    @torch.no_grad()
    def prepack_weights(self, row_major: bool = False) -> None:
        """Hand every projection to oneDNN in its packed layout (CPU; see models/linear.py).

        The last step of loading: packed weights are no longer parameters, so
        load_weights cannot fill them afterwards. A tied LM head gets its own
        packed copy; the embedding lookup keeps the plain table. Experts are
        packed one by one (models/moe.py). row_major: the projections and the
        head keep their plain weights too, for compiled one-row steps.
        """
        prepack_linears(self.model, row_major)
        for module in self.model.modules():
            if isinstance(module, Experts):
                module.prepack()
        if self.lm_head is None or isinstance(self.lm_head, nn.Linear):  # a quantized head stays as it is
            self.lm_head = PackedLinear(  # a tied head's row-major weight is the embedding table itself
                self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight, None, row_major)
        self._prepacked = True

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into the (fused) parameters; every parameter must be filled exactly."""
        targets = self._hf_targets()
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        unexpected: list[str] = []
        if self.config.is_moe:
            weights = per_expert_tensors(weights, self.config.architecture)
        for name, tensor in weights:
            if name.endswith(_IGNORED_SUFFIXES) or (name == "lm_head.weight" and self.lm_head is None):
                continue  # tied checkpoints sometimes keep a copy of the embedding as lm_head
            if name not in targets:
                unexpected.append(name)
                continue
            param_name, expert, start, size = targets[name]
            dest = params[param_name] if expert is None else params[param_name][expert]
            dest = dest if start is None else dest.narrow(0, start, size)
            if tuple(dest.shape) != tuple(tensor.shape):
                raise ModelLoadError(f"weight {name} has shape {tuple(tensor.shape)}, the config implies "
                                     f"{tuple(dest.shape)}")
            dest.copy_(tensor)
            loaded.add(name)
        missing = sorted(set(targets) - loaded)
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing weights ({len(missing)}): {_names(missing)}")
            if unexpected:
                parts.append(f"unexpected weights ({len(unexpected)}): {_names(sorted(unexpected))}")
            raise ModelLoadError(f"checkpoint does not match {self.config.architecture}: " + "; ".join(parts))

    def _hf_targets(self) -> dict[str, tuple[str, int | None, int | None, int | None]]:
        """HF weight name -> (our parameter, expert, row offset, rows) for every tensor a checkpoint must hold."""
        targets: dict[str, tuple[str, int | None, int | None, int | None]] = {}
        for name, param in self.named_parameters():
            module = name.split(".")[-2]
            if module == "experts":
                targets.update(expert_targets(name, param))
                continue
            fused = fused_rows(self.config, param.shape[0] // 2 if module == "gate_up_proj" else None)
            if module not in fused:
                targets[name] = (name, None, None, None)
                continue
            start = 0
            for hf, n in fused[module]:
                targets[name.replace(f".{module}.", f".{hf}.")] = (name, None, start, n)
                start += n
        return targets


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
