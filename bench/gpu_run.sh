#!/usr/bin/env bash
# One device session (under 8 minutes: the step timeouts below sum to 470 s): CUDA correctness of the engine
# (eager, compiled decode, the in-place flex attention backend, captured flex decode steps, async scheduling),
# throughput vs transformers (with and without async scheduling), decode step time against the HBM roofline,
# simulator fidelity.
# Run from the repository root on a CUDA machine; each step's full log goes to $OUT (default ./gpu-out).
# A step that fails or times out is reported and the next one runs.
set -euo pipefail
OUT=$(realpath -m "${OUT:-gpu-out}"); mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, print the log's tail
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  local rc=0
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  grep -v "Writing model" "$OUT/$name.log" | tail -n 14 || true
  if [ "$rc" = 124 ]; then echo "!! $name: timed out"; elif [ "$rc" != 0 ]; then echo "!! $name: exit $rc"; fi
}

step versions 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
step python 10 python3 -c "import torch, transformers, sys; print('python', sys.version.split()[0], 'torch', \
torch.__version__, 'transformers', transformers.__version__)"
# the engine runs on CUDA (the default device) against transformers' greedy tokens on CPU
step 1-oracle 65 python3 -m pytest -q -x -p no:cacheprovider tests/entrypoints/test_llm_oracle.py \
    tests/entrypoints/test_llm_engine.py -k "not flex"
step 1b-compiled-decode 60 python3 -m pytest -q -x -p no:cacheprovider tests/models/test_compiled_decode.py
# --attention-backend flex on CUDA (Triton FlexAttention over the block pool): greedy equal to transformers with
# prefix caching and preemption, then the op-level step time against the gather backend
step 1c-flex-oracle 30 python3 -m pytest -q -x -p no:cacheprovider tests/entrypoints/test_llm_oracle.py -k flex
step 1d-flex-op 35 python3 bench/bench_attention.py --device cuda --dtype bfloat16 --batch 1 --batch 64 \
    --batch 256 --context 1024 --context 8192 --context 32768 --max-keys 2097152 --reps 20
cd bench
# with and without async scheduling (the next step scheduled while one runs): their ratio is printed
step 2-throughput 80 python3 bench_engine.py --device cuda --model qwen0.5b --dtype bfloat16 --num-requests 256 \
    --baseline-batch 256 --baseline static --prepack on --async-scheduling both
# decode step time against the HBM roofline ((weights + K/V bytes) / bandwidth); flex-compiled = captured decode
# steps (CUDA graphs of the padded batch sizes 1/64/256 through torch.compile's reduce-overhead mode)
step 2c-decode-roofline 75 python3 bench_decode.py --device cuda --shape qwen0.5b --dtype bfloat16 --batch 1 \
    --batch 64 --batch 256 --modes eager,compiled,flex,flex-compiled --rounds 1 --prompt-len 128 --new-tokens 16 \
    --kv-cache-memory 16GiB
step 2d-captured-decode-llama 55 python3 bench_decode.py --device cuda --shape llama3.2-1b --dtype bfloat16 \
    --batch 1 --batch 64 --batch 256 --modes eager,flex-compiled --rounds 1 --prompt-len 128 --new-tokens 16 \
    --kv-cache-memory 16GiB
step 3-fidelity 50 python3 bench_fidelity.py --device cuda --shape llama3.2-1b --dtype bfloat16 --num-requests 300 \
    --kv-cache-memory 16GiB --out "$OUT"
