"""Small GGUF files written with gguf.GGUFWriter: damaged or unsupported ones, HF models converted as llama.cpp does."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# HF module -> llama.cpp tensor name, spelled out here so the loader's own table is checked, not reused.
_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "mlp.gate": "ffn_gate_inp", "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
    "mlp.shared_expert.up_proj": "ffn_up_shexp", "mlp.shared_expert.down_proj": "ffn_down_shexp",
    "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
}
_TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}
_ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
                  "MixtralForCausalLM": "llama", "Qwen2MoeForCausalLM": "qwen2moe", "Qwen3MoeForCausalLM": "qwen3moe"}


@contextlib.contextmanager
def transformers_reads_gguf_quickly() -> Iterator[None]:
    """transformers parses a GGUF file once per load (config, weights, tokenizer: 3.5 s each for SmolLM2) and
    rebuilds gguf's tensor-name map once per tensor (5 s): memoize both, pure functions of their arguments.
    gguf's parser (over a plain view of the memory map, as batchserve reads it) and transformers' own mapping
    and dequantization still do all the work, once."""
    import gguf
    import pytest

    from batchserve.gguf_file import _reader_class

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", functools.lru_cache(_reader_class()))
        patch.setattr(gguf, "get_tensor_name_map", functools.lru_cache(gguf.get_tensor_name_map))
        yield


def llama_cpp_permute(rows: np.ndarray, num_heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: HF's half-split RoPE rows to interleaved pairs."""
    return rows.reshape(num_heads, 2, rows.shape[0] // num_heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(
        rows.shape)


def write_hf_model_as_gguf(model: Any, path: Path, tensor_type: str = "F32", no_vocab: bool = False) -> Path:
    """What llama.cpp's converter writes for a transformers Llama/Qwen2/Qwen3 model: keys, names, q/k order.

    Matrices are stored as `tensor_type` (F32 or a type gguf.quants can quantize, e.g. Q8_0); norms stay F32.
    no_vocab: mark the file as having no tokenizer (tokenizer.ggml.model "none"), which llama.cpp loads
    with vocab_size dummy tokens (bench/bench_quant.py runs random-weight shapes in it).
    """
    import gguf

    c = model.config
    arch = _ARCHITECTURES[type(model).__name__]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_vocab_size(c.vocab_size)
    if no_vocab:
        writer.add_tokenizer_model("none")
    if getattr(c, "num_experts", 0):
        writer.add_expert_count(c.num_experts)
        writer.add_expert_used_count(c.num_experts_per_tok)
        if hasattr(c, "moe_intermediate_size"):
            writer.add_expert_feed_forward_length(c.moe_intermediate_size)
        if getattr(c, "shared_expert_intermediate_size", 0):
            writer.add_expert_shared_feed_forward_length(c.shared_expert_intermediate_size)
    kind = gguf.GGMLQuantizationType[tensor_type]
    for name, tensor in _llama_cpp_tensors(model.state_dict()):
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue  # llama.cpp writes no output tensor for a tied head
        array = tensor.float().numpy()
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            array = llama_cpp_permute(array, c.num_attention_heads if ".q_proj." in name else c.num_key_value_heads)
        if array.ndim == 2 and kind != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(_gguf_name(name), gguf.quants.quantize(array, kind), raw_dtype=kind)
        else:
            writer.add_tensor(_gguf_name(name), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _llama_cpp_tensors(state: dict[str, Any]):
    """transformers 5's stacked experts as llama.cpp stores them: gate, up and down stacks [E, rows, cols];
    the shared expert's one-row gate as a vector."""
    for name, tensor in state.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            gate, up = tensor.chunk(2, dim=1)
            yield name.replace("gate_up_proj", "gate_exps"), gate
            yield name.replace("gate_up_proj", "up_exps"), up
        elif name.endswith("mlp.experts.down_proj"):
            yield name.replace("down_proj", "down_exps"), tensor
        elif name.endswith("shared_expert_gate.weight"):
            yield name, tensor.reshape(-1)
        else:
            yield name, tensor


def _gguf_name(hf: str) -> str:
    if hf in _TOP_NAMES:
        return _TOP_NAMES[hf]
    if ".mlp.experts." in hf:  # model.layers.N.mlp.experts.<gate|up|down>_exps
        return f"blk.{hf.split('.')[2]}.ffn_{hf.rsplit('.', 1)[1]}.weight"
    _, _, layer, rest = hf.split(".", 3)  # model.layers.N.<module>.<weight|bias>
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_LAYER_NAMES[module]}.{kind}"


def write_gguf(path: Path, architecture: str = "llama", tensor_type: str = "F32", tokenizer_model: str = "gpt2",
               vocab: list[tuple[str, float, int]] | None = None, truncate: bool = False) -> Path:
    """A one-layer model's metadata and two tensors of `tensor_type`; `truncate` cuts the file inside its data.

    `vocab`: (token, score, llama.cpp token type) triples; token 0 is <unk>, 1 <s>, 2 </s>.
    """
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(8)
    writer.add_tokenizer_model(tokenizer_model)
    if vocab is None:
        writer.add_token_list([f"t{i}" for i in range(8)])
    else:
        writer.add_token_list([t for t, _, _ in vocab])
        writer.add_token_scores([score for _, score, _ in vocab])
        writer.add_token_types([kind for _, _, kind in vocab])
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
    kind = gguf.GGMLQuantizationType[tensor_type]
    block, size = gguf.GGML_QUANT_SIZES[kind]
    for name in ("token_embd.weight", "blk.0.attn_norm.weight"):
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, np.ones((8, 32), dtype=np.float32))
        else:  # raw blocks: the loader must refuse them before looking inside
            writer.add_tensor(name, np.zeros((8, 32 // block * size), dtype=np.uint8), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 600])
    return path
