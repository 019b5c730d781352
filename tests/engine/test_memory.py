"""KV cache sizing: memory strings, and how many blocks an explicit, GPU or CPU budget holds."""

from __future__ import annotations

import pytest

from batchserve.engine.memory import CPU_KV_CACHE_MEMORY, num_kv_blocks, parse_memory

GiB = 2**30


@pytest.mark.parametrize("value, expected", [
    (1073741824, GiB), (1e9, 10**9), ("512MiB", 512 * 2**20), (" 2 GiB ", 2 * GiB), ("1.5kb", 1500), ("64", 64),
])
def test_parse_memory_reads_bytes_and_binary_or_decimal_units(value, expected) -> None:
    assert parse_memory(value) == expected


@pytest.mark.parametrize("value", ["lots", "2 TiB", "GiB", ""])
def test_parse_memory_rejects_what_it_cannot_read(value) -> None:
    with pytest.raises(ValueError, match="not understood"):
        parse_memory(value)


def test_an_explicit_budget_wins_over_the_gpu_share() -> None:
    assert num_kv_blocks("1MiB", 0.9, 2**16, gpu_memory=(80 * GiB, 80 * GiB)) == 16


def test_the_gpu_budget_is_its_utilization_share_less_what_is_in_use() -> None:
    # 80 GiB GPU, 0.5 allowed, 10 GiB in use (weights): 30 GiB left for the cache
    assert num_kv_blocks(None, 0.5, GiB, gpu_memory=(70 * GiB, 80 * GiB)) == 30


def test_a_gpu_already_over_its_share_says_which_knob_to_turn() -> None:
    with pytest.raises(ValueError, match="gpu_memory_utilization=0.5.*kv_cache_memory="):
        num_kv_blocks(None, 0.5, 2**20, gpu_memory=(30 * GiB, 80 * GiB))


def test_cpu_gets_the_default_budget() -> None:
    assert num_kv_blocks(None, 0.9, 2**20, gpu_memory=None) == CPU_KV_CACHE_MEMORY // 2**20


def test_a_budget_smaller_than_one_block_is_rejected() -> None:
    with pytest.raises(ValueError, match="holds no block"):
        num_kv_blocks("1KiB", 0.9, 2**20, gpu_memory=None)
