"""CompilationConfig: the ladder of decode batch sizes that compiled (on CUDA: captured) steps are padded to."""

from __future__ import annotations

from bisect import bisect_left

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchserve.config import CompilationConfig


@given(st.integers(1, 2000))
def test_the_default_ladder_is_vllms_and_reaches_the_engines_largest_decode_step(max_num_seqs):
    sizes = CompilationConfig().capture_sizes(max_num_seqs)
    top = min(max_num_seqs, 512)
    assert list(sizes) == sorted(set(sizes)) and sizes[-1] == top
    assert all(s in (1, 2, 4, top) or (s % 8 == 0 and s <= 256) or s % 16 == 0 for s in sizes)
    for rows in range(1, top + 1):  # every step up to the top pads by less than one rung
        padded = sizes[bisect_left(sizes, rows)]
        assert padded - rows < (16 if rows > 256 else 8)


def test_explicit_sizes_and_the_max_come_from_json_as_in_vllm():
    assert CompilationConfig.of('{"cudagraph_capture_sizes": [8, 1, 2, 2]}').capture_sizes(256) == (1, 2, 8)
    assert CompilationConfig.of({"max_cudagraph_capture_size": 20}).capture_sizes(256) == (1, 2, 4, 8, 16, 20)
    both = {"cudagraph_capture_sizes": [1, 4, 32, 64], "max_cudagraph_capture_size": 32}
    assert CompilationConfig.of(both).capture_sizes(256) == (1, 4, 32)
    assert CompilationConfig.of(None) == CompilationConfig()


@pytest.mark.parametrize(("value", "message"), [
    ("{bad", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ({"cuda_graph_sizes": [1]}, "unknown compilation config key"),
    ({"cudagraph_capture_sizes": [0, 1]}, "positive integers"),
    ({"cudagraph_capture_sizes": []}, "positive integers"),
    ({"cudagraph_capture_sizes": 8}, "a list of positive integers"),
    ({"max_cudagraph_capture_size": 0}, "positive integer"),
    ({"inductor_compile_config": ["max_autotune"]}, "JSON object of inductor settings"),
])
def test_bad_compilation_configs_say_what_is_wrong(value, message):
    with pytest.raises(ValueError, match=message):
        CompilationConfig.of(value)
