#!/usr/bin/env bash
# One device session, under 8 minutes (DEADLINE seconds, 470 by default): CUDA correctness of the engine (eager,
# compiled decode, the in-place flex attention backend, captured flex decode steps), where an eager step's time goes
# (profiler), decode step time against the HBM roofline, throughput vs transformers (eager and compiled decode
# steps; decodes grouped by length or in one attention call), compiled decode through dynamo vs DirectCall,
# simulator fidelity. Packages the machine lacks (llguidance, on the lent H200 image) go on PYTHONPATH,
# which the script keeps: bench/RESULTS.md, session 25.
# Run from the repository root on a CUDA machine; each step's full log goes to $OUT (default ./gpu-out).
# The steps run in order of what they are worth; each is cut at its own limit or at the deadline, whichever comes
# first, and one that fails or is cut is reported and the next one runs. ONLY (a regular expression) runs the steps
# whose names match: ONLY='1b|2c' bash bench/gpu_run.sh
set -euo pipefail
OUT=$(realpath -m "${OUT:-gpu-out}"); mkdir -p "$OUT"
DEADLINE=${DEADLINE:-470}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, print the log's tail
  local name=$1 limit=$2; shift 2
  if [ -n "${ONLY:-}" ] && ! [[ $name =~ $ONLY ]]; then return; fi
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 10 ]; then echo "!! $name: skipped, ${left}s left before the deadline"; return; fi
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  echo "== $name (limit ${limit}s, at ${SECONDS}s)"
  local rc=0
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  grep -v "Writing model" "$OUT/$name.log" | tail -n 14 || true
  if [ "$rc" = 124 ]; then echo "!! $name: timed out"; elif [ "$rc" != 0 ]; then echo "!! $name: exit $rc"; fi
}

step versions 15 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; python3 -c \
'import torch, transformers, sys; print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \
\"transformers\", transformers.__version__)'"
# the engine runs on CUDA (the default device) against transformers' greedy tokens on CPU; four workers share the GPU
step 1-oracle 70 python3 -m pytest -o addopts="" -q -n 4 -p no:cacheprovider tests/entrypoints/test_llm_oracle.py \
    tests/engine/test_llm_engine.py -k "not flex"
# compiled decode steps (torch backend: DirectCall; flex backend: the captured ladder) equal eager and transformers
step 1b-compiled-decode 75 python3 -m pytest -o addopts="" -q -n 4 -p no:cacheprovider \
    tests/models/test_compiled_decode.py
# --attention-backend flex on CUDA (Triton FlexAttention over the block pool): greedy equal to transformers with
# prefix caching and preemption
step 1c-flex-oracle 30 python3 -m pytest -o addopts="" -q -p no:cacheprovider tests/entrypoints/test_llm_oracle.py \
    -k flex
cd bench
# the flex kernel against the gather backend, op level (SmolLM2's 9 query / 3 KV heads; since session 25 a row's
# queries are its KV head's group, read once per group)
step 1d-flex-op 25 python3 bench_attention.py --device cuda --dtype bfloat16 --batch 1 --batch 64 --batch 256 \
    --context 1024 --context 8192 --context 32768 --max-keys 2097152 --reps 20
# where an eager step of 256 decodes spends its time (session 25: host-bound, 1.7x transformers where 3x is the goal):
# by op and kernel, with the decodes attended in groups of similar length (0.7, the default: a gather and an SDPA
# call per group and layer) and in one padded call (0)
step 2p-profile-eager 70 bash -c "for r in 0.7 0; do python3 profile_engine.py --device cuda --shape qwen0.5b \
    --dtype bfloat16 --num-requests 256 --steps 5 --decode-bucket-ratio \$r; done"
# captured decode steps (flex backend, CUDA graphs of the padded batch sizes 1/64/256 through torch.compile's
# reduce-overhead mode) against eager and the HBM roofline ((weights + K/V bytes) / bandwidth); perf_hints and
# recompiles say why inductor skips a CUDA graph and why dynamo recompiles (session 25: slower than eager)
step 2d-captured-decode-llama 80 env TORCH_LOGS=perf_hints,recompiles python3 bench_decode.py --device cuda \
    --shape llama3.2-1b --dtype bfloat16 --batch 1 --batch 64 --batch 256 --modes eager,flex-compiled --rounds 1 \
    --prompt-len 128 --new-tokens 16 --kv-cache-memory 16GiB
# the torch backend's compiled decode steps (one graph for one row, one for more, run without dynamo: DirectCall)
step 2c-decode-roofline 120 python3 bench_decode.py --device cuda --shape qwen0.5b --dtype bfloat16 --batch 1 \
    --batch 64 --batch 256 --modes eager,compiled --rounds 1 --prompt-len 128 --new-tokens 16 --kv-cache-memory 16GiB
# end to end against transformers' static batching, eager and compiled decode steps (their ratio is printed), both
# with async scheduling
step 2-throughput 100 python3 bench_engine.py --device cuda --model qwen0.5b --dtype bfloat16 --num-requests 256 \
    --baseline-batch 256 --baseline static --prepack on --async-scheduling on --enforce-eager both
# every decode row in one padded attention call per layer (fewer launches, more keys read), so that every pure
# decode step, not only those whose rows' lengths are alike, runs the torch backend's compiled graph; against the
# default grouping in the same run
step 2a-one-decode-call 100 python3 bench_engine.py --device cuda --model qwen0.5b --dtype bfloat16 \
    --num-requests 256 --no-baseline --prepack on --async-scheduling on --enforce-eager off \
    --decode-bucket-ratio 0.7 0
# batch-1 compiled decode through dynamo vs DirectCall (dynamo's transformed code run directly), same process
step 2b-direct-call 90 python3 direct_call_ab.py --device cuda --shape qwen0.5b --dtype bfloat16 --rounds 6
step 3-fidelity 60 python3 bench_fidelity.py --device cuda --shape llama3.2-1b --dtype bfloat16 --num-requests 300 \
    --kv-cache-memory 16GiB --out "$OUT"
echo "== done at ${SECONDS}s"
