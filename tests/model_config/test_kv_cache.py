"""The one KV-size formula: GQA, dtype, TP sharding and replication of KV heads, PP stages."""

from __future__ import annotations

import pytest

from batchserve.model_config import kv_bytes_per_block, kv_bytes_per_token, kv_heads_per_rank
from batchserve.sim.models import MODELS

LLAMA31_8B = MODELS["llama-3.1-8b"]  # 32 layers, 8 KV heads (GQA over 32 query heads), head_dim 128


def test_gqa_stores_only_kv_heads():
    assert kv_bytes_per_token(LLAMA31_8B, 2) == 2 * 32 * 8 * 128 * 2 == 131072
    assert kv_bytes_per_token(LLAMA31_8B, 1) == 65536  # fp8 KV
    mha = MODELS["llama-2-7b"]
    assert kv_bytes_per_token(mha, 2) == 2 * 32 * 32 * 128 * 2


@pytest.mark.parametrize("tp, heads", [(1, 8), (2, 4), (8, 1), (16, 1), (32, 1)])
def test_tp_shards_kv_heads_and_replicates_past_their_count(tp, heads):
    assert kv_heads_per_rank(8, tp) == heads
    assert kv_bytes_per_token(LLAMA31_8B, 2, tp=tp) == 2 * 32 * heads * 128 * 2


def test_pipeline_stage_and_block():
    assert kv_bytes_per_token(LLAMA31_8B, 2, num_layers=1) == kv_bytes_per_token(LLAMA31_8B, 2) / 32
    assert kv_bytes_per_block(LLAMA31_8B, 16, 2, tp=2, num_layers=8) == 16 * 2 * 8 * 4 * 128 * 2
