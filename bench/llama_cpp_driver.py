"""llama.cpp's side of bench_quant.py, run by llama-cpp-python's interpreter (bench/setup_llama_cpp.sh).

It imports only llama_cpp and numpy (that venv has no torch or batchserve);
bench_quant.py starts it as a subprocess and reads the one JSON line it prints.

    PY llama_cpp_driver.py quantize IN.gguf OUT.gguf Q8_0|BF16|F16|F32|Q4_1
    PY llama_cpp_driver.py decode FILE.gguf --threads N --prompt-tokens 128 --decode-tokens 128 --rounds 3
    PY llama_cpp_driver.py mixed FILE.gguf WORKLOAD.json --threads N

decode: one request, greedy, the median rate of --rounds runs over the tokens
after the first (the prefill excluded), as bench_quant measures batchserve.
mixed: the workload's requests ([prompt ids, output length] pairs, all arriving
at once) under continuous batching through the low-level API, as llama.cpp's
`batched` example and server do: one sequence id per request, every step one
`llama_batch` of each running request's next decode token plus prompt chunks up
to n_batch tokens, greedy, each request stopping at its output length.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time

import llama_cpp as L
import numpy as np

FTYPES = {"F32": L.LLAMA_FTYPE_ALL_F32, "F16": L.LLAMA_FTYPE_MOSTLY_F16, "BF16": L.LLAMA_FTYPE_MOSTLY_BF16,
          "Q8_0": L.LLAMA_FTYPE_MOSTLY_Q8_0, "Q4_1": L.LLAMA_FTYPE_MOSTLY_Q4_1, "Q4_0": L.LLAMA_FTYPE_MOSTLY_Q4_0}
_GGML_LOG_LEVEL_ERROR = 4  # ggml.h's enum ggml_log_level
FLASH_ATTN = {"auto": L.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
              "off": L.LLAMA_FLASH_ATTN_TYPE_DISABLED}


@L.llama_log_callback
def _quiet(level, text, user_data) -> None:
    """llama.cpp logs every load to stderr; only errors pass."""
    if level == _GGML_LOG_LEVEL_ERROR:
        print(text.decode(errors="replace"), end="", flush=True)


class Runner:
    """A loaded model and a context sized for `n_seq_max` sequences of up to `seq_len` tokens each."""

    def __init__(self, path: str, threads: int, n_seq_max: int, seq_len: int, n_batch: int, flash_attn: str) -> None:
        self.model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
        if not self.model:
            raise SystemExit(f"llama.cpp cannot load {path}")
        params = L.llama_context_default_params()
        params.n_ctx = n_seq_max * seq_len
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_seq_max
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = FLASH_ATTN[flash_attn]
        params.kv_unified = False  # one KV stream per sequence: attention reads only its own keys
        self.ctx = L.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise SystemExit(f"llama.cpp cannot make a context for {n_seq_max} x {seq_len} tokens")
        self.n_batch = n_batch
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.batch = L.llama_batch_init(n_batch, 0, 1)

    def step(self, rows: list[tuple[int, int, int, bool]]) -> list[int]:
        """Decode (seq, position, token, wants logits) rows as one batch; the greedy token of each row that wants one."""
        b = self.batch
        for i, (seq, pos, token, wants) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, wants
            b.seq_id[i][0] = seq
        b.n_tokens = len(rows)
        if L.llama_decode(self.ctx, b) != 0:
            raise SystemExit(f"llama_decode failed on a batch of {len(rows)} tokens")
        return [self._argmax(i) for i, row in enumerate(rows) if row[3]]

    def _argmax(self, i: int) -> int:
        logits = ctypes.cast(L.llama_get_logits_ith(self.ctx, i), ctypes.POINTER(ctypes.c_float))
        return int(np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax())

    def clear(self) -> None:
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)


def decode_rate(runner: Runner, prompt: list[int], tokens: int) -> float:
    """Tokens per second of one request's decode steps (after its first token)."""
    runner.clear()
    token = runner.step([(0, p, t, p == len(prompt) - 1) for p, t in enumerate(prompt)])[0]
    start = time.perf_counter()
    for pos in range(len(prompt), len(prompt) + tokens - 1):
        token = runner.step([(0, pos, token, True)])[0]
    return (tokens - 1) / (time.perf_counter() - start)


def mixed_rate(runner: Runner, requests: list[tuple[list[int], int]]) -> float:
    """Output tokens per second of the whole workload under continuous batching (all requests arrive at once)."""
    runner.clear()
    fed = [0] * len(requests)  # prompt tokens fed so far
    outputs: list[list[int]] = [[] for _ in requests]
    start = time.perf_counter()
    while True:
        # decodes first (one token each), then prompt chunks in arrival order up to n_batch, as the server does
        rows, owners = [], []
        for seq, (prompt, length) in enumerate(requests):
            if fed[seq] == len(prompt) and len(outputs[seq]) < length:
                rows.append((seq, len(prompt) + len(outputs[seq]) - 1, outputs[seq][-1], True))
                owners.append(seq)
        for seq, (prompt, _) in enumerate(requests):
            take = min(len(prompt) - fed[seq], runner.n_batch - len(rows))
            if take <= 0:
                continue
            last = fed[seq] + take == len(prompt)
            rows += [(seq, p, prompt[p], last and p == len(prompt) - 1) for p in range(fed[seq], fed[seq] + take)]
            owners += [seq] if last else []
            fed[seq] += take
        if not rows:
            break
        for seq, token in zip(owners, runner.step(rows)):
            outputs[seq].append(token)
    return sum(len(o) for o in outputs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    quantize = sub.add_parser("quantize", help="write a GGUF file requantized to another type (llama-quantize)")
    quantize.add_argument("source")
    quantize.add_argument("target")
    quantize.add_argument("type", choices=sorted(FTYPES))
    for name in ("decode", "mixed"):
        p = sub.add_parser(name)
        p.add_argument("gguf")
        if name == "mixed":
            p.add_argument("workload", help="JSON list of [prompt token ids, output length]")
        p.add_argument("--threads", type=int, required=True)
        p.add_argument("--flash-attn", choices=sorted(FLASH_ATTN), default="auto")
        p.add_argument("--n-batch", type=int, default=2048, help="tokens per llama_decode (n_batch = n_ubatch)")
        p.add_argument("--prompt-tokens", type=int, default=128)
        p.add_argument("--decode-tokens", type=int, default=128)
        p.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    L.llama_log_set(_quiet, ctypes.c_void_p(0))
    L.llama_backend_init()
    if args.command == "quantize":
        params = L.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize = FTYPES[args.type], True
        if L.llama_model_quantize(args.source.encode(), args.target.encode(), ctypes.byref(params)) != 0:
            raise SystemExit(f"llama_model_quantize failed: {args.source} -> {args.type}")
        print(json.dumps({"file": args.target}))
    elif args.command == "decode":
        length = args.prompt_tokens + args.decode_tokens
        runner = Runner(args.gguf, args.threads, 1, length, max(args.n_batch, args.prompt_tokens), args.flash_attn)
        prompt = list(range(1, args.prompt_tokens + 1))
        decode_rate(runner, prompt, 8)  # warm-up, as bench_quant warms batchserve up
        rates = [decode_rate(runner, prompt, args.decode_tokens) for _ in range(args.rounds)]
        print(json.dumps({"decode": statistics.median(rates), "rounds": rates}))
    else:
        with open(args.workload) as f:
            requests = [(list(prompt), int(length)) for prompt, length in json.load(f)]
        seq_len = max(len(p) + n for p, n in requests)
        runner = Runner(args.gguf, args.threads, len(requests), seq_len, args.n_batch, args.flash_attn)
        print(json.dumps({"mixed": mixed_rate(runner, requests)}))


if __name__ == "__main__":
    main()
