"""Small GGUF files written with gguf.GGUFWriter, for tests of what a loader must refuse or survive."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_gguf(path: Path, architecture: str = "llama", tensor_type: str = "F32", tokenizer_model: str = "gpt2",
               truncate: bool = False) -> Path:
    """A one-layer model's metadata and two tensors of `tensor_type`; `truncate` cuts the file inside its data."""
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
    writer.add_token_list([f"t{i}" for i in range(8)])
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
