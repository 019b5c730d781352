"""PagedAttention against a direct per-sequence computation, and the KV-cache helpers."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._dynamo.utils import counters

from batchserve.attention_layout import decode_groups
from batchserve.model_config import kv_bytes_per_block
from batchserve.models import attention, paged_decode
from batchserve.models.attention import decode_metadata
from batchserve.models import (
    AttentionConfig,
    AttentionMetadata,
    PagedAttention,
    allocate_kv_cache,
    flex_attention,
    tiny_config,
)

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 4, 2, 8, 4


def reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, context: int, scale: float,
              window: int | None) -> torch.Tensor:
    """Softmax attention of q [n, H, D] at positions context.. over keys/values [context+n, KVH, D]."""
    group = HEADS // KV_HEADS
    keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, keys) * scale
    q_pos = torch.arange(context, context + q.shape[0])[:, None]
    k_pos = torch.arange(keys.shape[0])[None, :]
    allowed = (k_pos <= q_pos) & ((k_pos > q_pos - window) if window else True)
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.einsum("hqk,khd->qhd", weights, values)


def run_batch(seqs: list[tuple[int, int]], window: int | None = None, seed: int = 0,
              config: AttentionConfig = AttentionConfig(), attn: PagedAttention | None = None,
              head_dim: int = HEAD_DIM):
    """Cache each (context, new) sequence's context by hand, then attend its new tokens in one call."""
    g = torch.Generator().manual_seed(seed)
    free = list(range(64))
    random.Random(seed).shuffle(free)
    k_cache, v_cache = (torch.zeros(64, BLOCK, KV_HEADS, head_dim) for _ in range(2))
    flat_k, flat_v = k_cache.view(-1, KV_HEADS, head_dim), v_cache.view(-1, KV_HEADS, head_dim)
    qs, ks, vs, slots, qsl, tables, expected = [], [], [], [], [0], [], []
    scale = head_dim ** -0.5
    for context, n in seqs:
        total = context + n
        table = [free.pop() for _ in range(-(-total // BLOCK))]
        seq_slots = torch.tensor([table[p // BLOCK] * BLOCK + p % BLOCK for p in range(total)])
        keys = torch.randn(total, KV_HEADS, head_dim, generator=g)
        values = torch.randn(total, KV_HEADS, head_dim, generator=g)
        q = torch.randn(n, HEADS, head_dim, generator=g)
        flat_k[seq_slots[:context]], flat_v[seq_slots[:context]] = keys[:context], values[:context]
        qs.append(q), ks.append(keys[context:]), vs.append(values[context:]), slots.append(seq_slots[context:])
        qsl.append(qsl[-1] + n)
        tables.append(table)
        expected.append(reference(q, keys, values, context, scale, window))
    meta = AttentionMetadata(slot_mapping=torch.cat(slots), query_start_loc=qsl, context_lens=[c for c, _ in seqs],
                             block_tables=tables, block_size=BLOCK, config=config)
    attn = attn or PagedAttention(HEADS, KV_HEADS, head_dim, sliding_window=window)
    k_new = torch.cat(ks)
    out = attn.forward(torch.cat(qs), k_new, torch.cat(vs), (k_cache, v_cache), meta, scale)
    assert torch.equal(flat_k[meta.slot_mapping], k_new)  # new keys landed at their slots
    return out, torch.cat(expected)


# fresh prompt, decodes of different lengths (padding), a chunk with context, a one-token prompt
MIXED = [(0, 5), (6, 1), (9, 4), (0, 1), (13, 1), (2, 7)]


@pytest.mark.parametrize("window", [None, 3])
def test_mixed_batch_matches_reference(window):
    out, expected = run_batch(MIXED, window)
    assert (out - expected).abs().max() < 1e-5


@pytest.mark.parametrize(("ratio", "rows_per_call"), [(0.7, [1, 3]), (0.95, [1, 1, 1, 1]), (0.1, [4])])
def test_decodes_of_similar_length_share_one_sdpa_call(monkeypatch, ratio, rows_per_call):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    # keys per row 21, 25, 3, 23: at the default ratio the three long rows pad to 25 together, the short
    # one runs alone; a ratio near 1 pads nothing, a small one pads all four into one call
    out, expected = run_batch([(20, 1), (24, 1), (2, 1), (22, 1)], config=AttentionConfig(ratio))
    assert sorted(shape[0] for shape in calls) == rows_per_call
    assert (out - expected).abs().max() < 1e-5


@pytest.mark.parametrize(("contexts", "one_call"), [([20, 24, 22], True), ([24, 22, 20], True), ([2, 24], False)])
def test_a_pure_decode_step_in_one_group_is_one_padded_call_whatever_its_rows_order(contexts, one_call):
    """What a compiled decode step takes (decode_metadata): rows in batch order, whether or not they come longest
    first; a step in several groups runs eagerly. attention_layout.AttentionConfig.compiled_rows says the same."""
    out, expected = run_batch([(c, 1) for c in contexts])
    assert (out - expected).abs().max() < 1e-5
    meta = AttentionMetadata(torch.arange(len(contexts)), list(range(len(contexts) + 1)), contexts,
                             [list(range(-(-(c + 1) // BLOCK))) for c in contexts], BLOCK)
    assert (decode_metadata(meta, None) is not None) == one_call
    groups = len(decode_groups([c + 1 for c in contexts], AttentionConfig().decode_bucket_ratio))
    compiled = AttentionConfig(compiled_decode_rows=8).compiled_rows(0, len(contexts), groups)
    assert compiled == (len(contexts) if one_call else 0)


def test_decode_gathers_reuse_their_buffers_across_calls_of_any_shape():
    """The CPU decode path copies K/V into buffers it keeps: calls of growing and shrinking groups stay exact,
    and a call that fits the buffers allocates none."""
    attn = PagedAttention(HEADS, KV_HEADS, HEAD_DIM)
    for seed, seqs in enumerate([[(20, 1), (22, 1)], [(30, 1), (31, 1), (29, 1), (5, 1)], [(3, 1)], MIXED]):
        out, expected = run_batch(seqs, seed=seed, attn=attn)
        assert (out - expected).abs().max() < 1e-5
    buffers = [b.data_ptr() for b in attn._gather_buffers]
    out, expected = run_batch([(8, 1), (9, 1)], seed=9, attn=attn)
    assert (out - expected).abs().max() < 1e-5
    assert [b.data_ptr() for b in attn._gather_buffers] == buffers


def test_metadata_with_inconsistent_lengths_is_rejected():
    meta = AttentionMetadata(slot_mapping=torch.tensor([0, 1]), query_start_loc=[0, 2], context_lens=[0, 0],
                             block_tables=[[0]], block_size=BLOCK)
    attn = PagedAttention(HEADS, KV_HEADS, HEAD_DIM)
    cache = (torch.zeros(1, BLOCK, KV_HEADS, HEAD_DIM), torch.zeros(1, BLOCK, KV_HEADS, HEAD_DIM))
    with pytest.raises(ValueError, match="query_start_loc"):
        attn.forward(torch.zeros(2, HEADS, HEAD_DIM), torch.zeros(2, KV_HEADS, HEAD_DIM),
                     torch.zeros(2, KV_HEADS, HEAD_DIM), cache, meta, 1.0)


def test_kv_cache_shapes_and_bytes():
    config = tiny_config()
    caches = allocate_kv_cache(config, num_blocks=10, block_size=16, dtype=torch.bfloat16, device="cpu")
    assert len(caches) == config.num_layers
    k, v = caches[0]
    assert k.shape == v.shape == (10, 16, config.num_kv_heads, config.head_dim) and k.dtype == torch.bfloat16
    per_block = kv_bytes_per_block(config, 16, torch.bfloat16.itemsize)  # the formula the engine sizes with
    assert per_block == 2 * config.num_layers * 16 * config.num_kv_heads * config.head_dim * 2
    assert per_block * 10 == sum(t.numel() * t.element_size() for pair in caches for t in pair)


FLEX = AttentionConfig(backend="flex")
IN_PLACE = pytest.mark.parametrize("config", [FLEX, AttentionConfig(backend="cpp")], ids=["flex", "cpp"])


@IN_PLACE
@pytest.mark.parametrize("window", [None, 3])
def test_in_place_backends_match_reference_on_a_mixed_batch(window, config):
    out, expected = run_batch(MIXED, window, config=config)
    assert (out - expected).abs().max() < 1e-5


@IN_PLACE
@settings(max_examples=12, deadline=None)
@given(seqs=st.lists(st.tuples(st.integers(0, 40), st.integers(1, 9)), min_size=1, max_size=6),
       window=st.sampled_from([None, 1, 5, 16]), seed=st.integers(0, 99))
def test_in_place_backends_match_reference_on_ragged_batches(seqs, window, seed, config):
    """Ragged rows on prefix-cached contexts (decodes, chunks on context, fresh prompts), GQA, sliding windows."""
    out, expected = run_batch(seqs, window, seed, config=config)
    assert (out - expected).abs().max() < 1e-5


def test_the_cpp_backend_attends_decodes_in_place_and_other_head_sizes_chunks_through_sdpa(monkeypatch):
    """Decode rows (any lengths) go to the kernel in one call a layer, no gather; prompt chunks of a head size the
    prefill kernel has no code for (8) keep SDPA."""
    calls = {"sdpa": 0, "kernel": []}
    sdpa, kernel = attention._sdpa, attention.paged_decode
    monkeypatch.setattr(attention, "_sdpa", lambda *a: calls.__setitem__("sdpa", calls["sdpa"] + 1) or sdpa(*a))
    monkeypatch.setattr(attention, "paged_decode", lambda q, *a: calls["kernel"].append(q.shape[0]) or kernel(q, *a))
    monkeypatch.setattr(PagedAttention, "_gather", None)  # a gather would fail
    cpp = AttentionConfig(backend="cpp", decode_bucket_ratio=0.99)  # the ratio only groups the torch backend
    run_batch([(3, 1), (30, 1), (11, 1)], config=cpp)
    assert calls == {"sdpa": 0, "kernel": [3]}
    run_batch(MIXED, config=cpp)
    assert calls["sdpa"] == 3 and calls["kernel"] == [3, 3]  # 3 prompt chunks; decodes (6, 1), (0, 1), (13, 1)


needs_prefill_kernel = pytest.mark.skipif(not paged_decode.prefill_in_place(64),
                                          reason="the prefill kernel needs an AVX-512 (BW, VL) build")


@needs_prefill_kernel
@pytest.mark.parametrize("window", [None, 3])
def test_the_cpp_backend_attends_prompt_chunks_in_place_too(monkeypatch, window):
    """At head_dim 64 every prompt chunk (fresh, or on a cached context) goes to the prefill kernel, one call a
    chunk, and decodes to the decode kernel: no SDPA, no gather, no chunk mask built, the reference's result."""
    calls = {"sdpa": 0, "prefill": []}
    prefill, sdpa = attention.paged_prefill, attention._sdpa
    monkeypatch.setattr(attention, "_sdpa", lambda *a: calls.__setitem__("sdpa", calls["sdpa"] + 1) or sdpa(*a))
    monkeypatch.setattr(attention, "paged_prefill",
                        lambda q, *a: calls["prefill"].append(q.shape[0]) or prefill(q, *a))
    monkeypatch.setattr(PagedAttention, "_gather", None)  # a gather would fail
    monkeypatch.setattr(attention._PrefillPlan, "mask", property(lambda plan: pytest.fail("a chunk mask was built")))
    out, expected = run_batch(MIXED, window, config=AttentionConfig(backend="cpp"), head_dim=64)
    assert (out - expected).abs().max() < 1e-5
    assert calls == {"sdpa": 0, "prefill": [5, 4, 7]}


@needs_prefill_kernel
@settings(max_examples=12, deadline=None)
@given(seqs=st.lists(st.tuples(st.integers(0, 50), st.integers(1, 30)), min_size=1, max_size=3),  # 64 blocks of 4
       window=st.sampled_from([None, 1, 5, 24]), seed=st.integers(0, 99))
def test_the_cpp_backend_matches_reference_on_ragged_chunks_at_head_dim_64(seqs, window, seed):
    """Chunks across the kernel's 16-token tiles and 8-key blocks, on contexts of any length, with windows."""
    out, expected = run_batch(seqs, window, seed, config=AttentionConfig(backend="cpp"), head_dim=64)
    assert (out - expected).abs().max() < 1e-5


@needs_prefill_kernel
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2), (9, 3), (6, 1)])
@pytest.mark.parametrize("threads", [1, 8])
def test_the_prefill_kernel_equals_softmax_attention_for_every_group(head_dim, heads, kv_heads, threads):
    """A 37-token chunk (three tiles) over 50 scattered cached keys, groups of 1-6 query heads (rows that fill
    16-lane vectors unevenly), windows of 1 and 20 keys and none, 1 and 8 threads, against float64."""
    g = torch.Generator().manual_seed(head_dim + heads * 10 + kv_heads)
    group, context, n, pool = heads // kv_heads, 50, 37, 300
    k_cache, v_cache = (torch.randn(pool, kv_heads, head_dim, generator=g) for _ in range(2))
    slots = torch.randperm(pool, generator=g)[:context + n]
    q = torch.randn(n, heads, head_dim, generator=g)
    scale = head_dim ** -0.5
    k = k_cache[slots].double().repeat_interleave(group, 1)
    v = v_cache[slots].double().repeat_interleave(group, 1)
    q_pos, k_pos = torch.arange(context, context + n)[:, None], torch.arange(context + n)[None, :]
    prior = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for window in (None, 1, 20):
            out = paged_decode.paged_prefill(q, k_cache, v_cache, slots, context, window, scale)
            visible = (k_pos <= q_pos) & ((k_pos > q_pos - window) if window else True)
            w = (torch.einsum("qhd,khd->hqk", q.double(), k) * scale).masked_fill(~visible, float("-inf"))
            expected = torch.einsum("hqk,khd->qhd", w.softmax(-1), v)
            assert (out.double() - expected).abs().max() < 1e-5, window
    finally:
        torch.set_num_threads(prior)


@needs_prefill_kernel
def test_the_prefill_kernel_in_bfloat16_is_as_accurate_as_sdpa_over_gathered_copies():
    """bf16 K/V and queries, a 24-token chunk over 200 cached keys: the kernel (fp32 inside) is no further from the
    float64 result than SDPA over the same bf16 copies."""
    g = torch.Generator().manual_seed(0)
    heads, kv_heads, head_dim, context, n = 9, 3, 64, 200, 24
    k_cache, v_cache = (torch.randn(400, kv_heads, head_dim, generator=g).bfloat16() for _ in range(2))
    slots = torch.randperm(400, generator=g)[:context + n]
    q = torch.randn(n, heads, head_dim, generator=g).bfloat16()
    attn = PagedAttention(heads, kv_heads, head_dim)
    mask = attention._visible(torch.arange(context, context + n)[:, None], torch.arange(context + n)[None, :], None)
    exact = PagedAttention(heads, kv_heads, head_dim)._prefill(q.double(), k_cache[slots].double(),
                                                               v_cache[slots].double(), mask, head_dim ** -0.5)
    kernel = paged_decode.paged_prefill(q, k_cache, v_cache, slots, context, None, head_dim ** -0.5)
    sdpa = attn._prefill(q, k_cache[slots], v_cache[slots], mask, head_dim ** -0.5)
    assert (kernel.double() - exact).abs().max() <= (sdpa.double() - exact).abs().max()


@pytest.mark.parametrize("window", [None, 1, 7])
def test_the_cpp_kernel_splits_a_row_with_fewer_rows_than_threads_and_merges_its_chunks(window):
    """Fewer rows than threads: each row's keys are split among the threads and merged (flash-decoding's split);
    a window of one key leaves some chunks empty."""
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        for seqs in ([(37, 1)], [(50, 1), (3, 1)]):
            out, expected = run_batch(seqs, window, config=AttentionConfig(backend="cpp"))
            assert (out - expected).abs().max() < 1e-5
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("head_dim", [8, 64, 128])
@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2), (9, 3), (6, 1)])
@pytest.mark.parametrize("threads", [1, 8])
def test_the_cpp_kernel_equals_softmax_attention_for_every_head_dim_and_group(head_dim, heads, kv_heads, threads):
    """The kernel's vectorized form for head_dims 64 and 128 (AVX-512 builds) and its generic loop for others:
    ragged rows of masked keys scattered over the pool (key counts off a multiple of 4, a row with one key, a
    row with none: zeros), groups of 1-6 query heads (an odd group splits its register pairs), with and
    without split-K, against softmax attention of the same keys in float64."""
    g = torch.Generator().manual_seed(head_dim * 100 + heads * 10 + kv_heads)
    group, width, pool = heads // kv_heads, 45, 400
    k_cache, v_cache = (torch.randn(pool, kv_heads, head_dim, generator=g) for _ in range(2))
    lens = [45, 1, 30, 7, 0, 13]
    slots = torch.randperm(pool, generator=g)[:len(lens) * width].view(len(lens), width)
    mask = torch.zeros(len(lens), width, dtype=torch.bool)
    for r, n in enumerate(lens):
        mask[r, torch.randperm(width, generator=g)[:n]] = True
    q = torch.randn(len(lens), heads, head_dim, generator=g)
    scale = head_dim ** -0.5
    prior = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = paged_decode.paged_decode(q, k_cache, v_cache, slots, mask, scale)
    finally:
        torch.set_num_threads(prior)
    for r in range(len(lens)):
        keys = slots[r][mask[r]]
        k = k_cache[keys].double().repeat_interleave(group, 1)
        v = v_cache[keys].double().repeat_interleave(group, 1)
        w = (torch.einsum("hd,khd->hk", q[r].double(), k) * scale).softmax(-1)
        expected = torch.einsum("hk,khd->hd", w, v) if len(keys) else torch.zeros(heads, head_dim)
        assert (out[r].double() - expected).abs().max() < 1e-5, (r, lens[r])


def test_a_failed_kernel_build_says_what_to_do_as_an_environment_error(monkeypatch):
    """No compiler or headers: an OSError (the CLI's one-line errors) naming the fix, not a build log's traceback."""
    from torch.utils import cpp_extension

    def fail(*args, **kwargs):
        raise RuntimeError("Error building extension 'batchserve_paged_decode'")

    monkeypatch.setattr(cpp_extension, "load", fail)
    with pytest.raises(OSError, match="build failed .*install a C\\+\\+ compiler \\(g\\+\\+\\) or use --attention-backend torch"):
        paged_decode.load_kernel.__wrapped__()


def test_a_kernel_load_that_is_a_build_says_so_and_a_cached_load_says_nothing(monkeypatch, caplog):
    """A fresh machine's first run builds the kernel for 8-25 s: a load still going after BUILD_NOTICE_AFTER_S is
    announced (the CLI shows batchserve's INFO lines); a cached load (0.04 s) prints nothing."""
    import logging
    import time

    from torch.utils import cpp_extension

    monkeypatch.setattr(torch.library, "register_fake", lambda name: (lambda fn: fn))
    monkeypatch.setattr(paged_decode, "BUILD_NOTICE_AFTER_S", 0.05)
    caplog.set_level(logging.INFO, logger="batchserve")
    for seconds, announced in ((0.0, False), (0.5, True)):
        caplog.clear()
        monkeypatch.setattr(cpp_extension, "load", lambda *args, s=seconds, **kwargs: time.sleep(s))
        paged_decode.load_kernel.__wrapped__()
        time.sleep(0.1)  # past the notice's timer, had it not been cancelled
        assert any("building the CPU paged-attention kernel" in r.getMessage() for r in caplog.records) is announced


def test_the_cpp_kernel_in_bfloat16_is_at_least_as_accurate_as_sdpa_over_gathered_copies():
    """bf16 K/V (SmolLM2's 9 query and 3 KV heads of 64): the kernel accumulates in fp32 and rounds once, so
    against an fp64 reference of the same bf16 inputs it errs no more than the torch backend's SDPA."""
    g = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, block = 9, 3, 64, 16
    lens = [1, 17, 200, 333, 64, 90]
    k_cache, v_cache = (torch.randn(64, block, kv_heads, dim, generator=g).bfloat16() for _ in range(2))
    order = torch.randperm(64, generator=g).tolist()
    tables = [[order.pop() for _ in range(-(-n // block))] for n in lens]
    meta = AttentionMetadata(torch.tensor([t[(n - 1) // block] * block + (n - 1) % block for t, n in zip(tables, lens)]),
                             list(range(len(lens) + 1)), [n - 1 for n in lens], tables, block)
    q = torch.randn(len(lens), heads, dim, generator=g).bfloat16()
    flat_k, flat_v = k_cache.view(-1, kv_heads, dim), v_cache.view(-1, kv_heads, dim)
    new_k, new_v = flat_k[meta.slot_mapping].clone(), flat_v[meta.slot_mapping].clone()
    expected = []
    for i, (table, n) in enumerate(zip(tables, lens)):
        slots = torch.tensor([table[p // block] * block + p % block for p in range(n)])
        keys = flat_k[slots].double().repeat_interleave(heads // kv_heads, 1)
        values = flat_v[slots].double().repeat_interleave(heads // kv_heads, 1)
        weights = (torch.einsum("hd,khd->hk", q[i].double(), keys) / 8).softmax(-1)
        expected.append(torch.einsum("hk,khd->hd", weights, values))
    errors = {}
    for backend in ("torch", "cpp"):
        meta.config, meta._plans = AttentionConfig(backend=backend), {}
        out = PagedAttention(heads, kv_heads, dim).forward(q, new_k, new_v, (k_cache, v_cache), meta, 1 / 8)
        errors[backend] = (out.double() - torch.stack(expected)).abs().max().item()
    assert errors["cpp"] <= errors["torch"], errors


def test_flex_backend_fails_loudly_past_the_recompile_limit(monkeypatch):
    """Past dynamo's limit, flex_attention would run uncompiled, whose dense path ignores the block mask's sparsity
    (attention over the whole pool, silently wrong): an error that says what to do instead."""
    monkeypatch.setattr(flex_attention, "FLEX_RECOMPILE_LIMIT", 0)
    torch._dynamo.reset()  # no graph this process compiled before may serve the call
    with torch._dynamo.config.patch(recompile_limit=0), pytest.raises(
            flex_attention.FlexRecompileLimitError, match="recompile_limit.*attention-backend torch"):
        run_batch([(5, 1), (9, 3)], config=FLEX)


def test_flex_backend_does_not_recompile_per_batch_shape():
    run_batch([(5, 1), (9, 3)], config=FLEX)  # compile for many rows (and one row below) before counting
    run_batch([(7, 1)], config=FLEX)
    graphs = counters["stats"]["unique_graphs"]
    for seqs in ([(3, 1), (20, 1), (11, 2)], [(30, 1)] * 7, [(0, 6), (2, 1)], [(40, 4), (1, 1), (6, 1)]):
        run_batch(seqs, config=FLEX)
    assert counters["stats"]["unique_graphs"] == graphs


def test_unknown_backend_and_flex_with_deterministic_are_refused():
    with pytest.raises(ValueError, match="not one of torch, flex, cpp"):
        AttentionConfig(backend="flash")
    with pytest.raises(ValueError, match="deterministic"):
        AttentionConfig(backend="flex", batch_invariant=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_kv_pool_is_zeroed_and_each_tensor_its_own(dtype) -> None:
    """The CPU pool comes zeroed from the OS, not written: every K and V still reads zero, in the asked dtype and
    shape, and a write lands in its own tensor only."""
    from batchserve.models.attention import allocate_kv_cache
    from batchserve.models.tiny import tiny_config

    config = tiny_config()
    pool = allocate_kv_cache(config, num_blocks=300, block_size=16, dtype=dtype, device="cpu")
    assert len(pool) == config.num_layers
    shape = (300, 16, config.num_kv_heads, config.head_dim)
    for k, v in pool:
        assert k.shape == v.shape == shape and k.dtype == v.dtype == dtype and k.is_contiguous()
        assert not k.any() and not v.any()
    pool[0][0][7, 3] = 1.5
    assert pool[0][0].sum() == 1.5 * config.num_kv_heads * config.head_dim
    assert not pool[0][1].any() and not any(k.any() or v.any() for k, v in pool[1:])
