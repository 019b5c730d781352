#!/usr/bin/env bash
# One device session: CUDA correctness of the engine, throughput vs transformers, simulator fidelity.
# Run from the repository root on a CUDA machine; writes results under $OUT (default ./gpu-out).
set -u
OUT=$(realpath -m "${OUT:-gpu-out}"); mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__)"
echo "== 1. engine on CUDA (the default device) vs transformers greedy on CPU"
timeout 120 python3 -m pytest -q -x -p no:cacheprovider tests/entrypoints/test_llm_oracle.py \
    tests/entrypoints/test_llm.py tests/entrypoints/test_llm_engine.py 2>&1 | tail -12
echo "== 1b. compiled decode steps on CUDA (--no-enforce-eager): equal to eager and transformers, graphs bounded"
timeout 120 python3 -m pytest -q -x -p no:cacheprovider tests/models/test_compiled_decode.py 2>&1 | tail -4
cd bench
if [ "${WITH_THROUGHPUT:-1}" = 1 ]; then
  echo "== 2. throughput: Qwen2.5-0.5B shape, bf16, 256 requests"
  timeout 150 python3 bench_engine.py --device cuda --model qwen0.5b --dtype bfloat16 --num-requests 256 \
      --baseline-batch 256 --baseline static --prepack on 2>&1 | grep -v "Writing model"
fi
echo "== 2b. where a decode step's time goes at batch 256"
timeout 70 python3 profile_engine.py --device cuda --shape qwen0.5b --dtype bfloat16 --num-requests 256 2>&1 \
    | grep -v "Writing model\|USDT"
echo "== 2c. decode step time, eager vs compiled, against the HBM roofline (batch 1/64/256)"
timeout 150 python3 bench_decode.py --device cuda --shape qwen0.5b --dtype bfloat16 --batch 1 --batch 64 \
    --batch 256 --rounds 2 --prompt-len 128 --new-tokens 32 --kv-cache-memory 16GiB 2>&1 | grep -v "Writing model"
echo "== 3. fidelity: Llama-3.2-1B shape, bf16"
timeout 150 python3 bench_fidelity.py --device cuda --shape llama3.2-1b --dtype bfloat16 --num-requests 1000 \
    --kv-cache-memory 16GiB --out "$OUT" 2>&1 | grep -v "Writing model\|calibrating\|running"
