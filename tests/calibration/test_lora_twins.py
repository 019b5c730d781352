"""Calibration's LoRA steps on the tiny engine: each step under adapters is paired with a step of the same rows
as base rows (what `fit_lora_terms` prices the adapters' time against), and the phases reach a batch job's regime."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from batchserve.calibration.steps import _lora_steps, lora_phases
from batchserve.engine.llm_engine import LLMEngine
from batchserve.gemm_shapes import SeenTokenCounts
from batchserve.sim.calibration import same_rows


def test_every_lora_phase_has_a_twin_of_base_rows_with_the_same_lengths() -> None:
    phases = list(lora_phases(vocab=100, max_seqs=256, num_adapters=8))
    for (label, entries, ids), (twin_label, twin, twin_ids) in zip(phases[::2], phases[1::2]):
        assert twin_label == f"{label} (base twin)" and ids and not twin_ids
        assert [(len(p), out) for p, out, _ in entries] == [(len(p), out) for p, out, _ in twin]
        assert all(p != q for (p, _, _), (q, _, _) in zip(entries, twin))  # fresh prompts: no prefix-cache hit
    assert ("LoRA decode x64, 8 adapters", 64) in [(label, len(entries)) for label, entries, _ in phases]


def test_the_engine_runs_each_lora_step_and_its_twin_on_the_same_rows() -> None:
    llm = LLMEngine("tiny", kv_cache_memory="64MiB", enable_lora=True, max_loras=2, max_lora_rank=8)
    pairs = _lora_steps(llm, (), SeenTokenCounts())
    assert len(pairs) >= 20
    for under, twin in pairs:
        assert same_rows(under.shape, twin.shape)
        assert under.shape.num_lora_tokens == under.shape.num_prefill_tokens + under.shape.num_decodes
        assert twin.shape.num_lora_segments == 0 and twin.shape.num_lora_tokens == 0
    assert {p.shape.num_lora_segments for p, _ in pairs} == {1, 2}
    assert max(p.shape.num_decodes for p, _ in pairs) == 64
