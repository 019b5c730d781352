"""Job-file builders shared by the batch job tests (imported as `jobfiles`)."""

from __future__ import annotations

import json
import random
from pathlib import Path


def write_jsonl(path: Path, lines: list[dict | str]) -> Path:
    with open(path, "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def completion(custom_id: str, prompt: str | list[int], **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": {"prompt": prompt, **body}}


def chat(custom_id: str, content: str, system: str = "Be brief.", **body) -> dict:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": content}]
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": messages, **body}}


def shared_prefix_requests(num_prefixes: int, num_requests: int, prefix_len: int, max_tokens: int,
                           seed: int = 0) -> list[dict]:
    """num_requests prompts, each one of num_prefixes system prompts of prefix_len bytes plus a short question,
    in random (arrival) order."""
    rng = random.Random(seed)
    prefixes = ["".join(rng.choice("abcdefghij ") for _ in range(prefix_len)) for _ in range(num_prefixes)]
    return [
        completion(f"req-{i}", rng.choice(prefixes) + f" question {i}: {rng.random():.6f}?", max_tokens=max_tokens)
        for i in range(num_requests)
    ]


def read_results(path: Path) -> dict[str, dict]:
    """Results by custom_id (malformed lines by 'line N'), without what depends on the run rather than the
    request: the wall-clock `created` and how many prompt tokens the prefix cache served."""
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec["response"] is not None:
            del rec["response"]["body"]["created"]
            del rec["response"]["body"]["usage"]["prompt_tokens_details"]
        key = rec["custom_id"] if rec["custom_id"] is not None else f"line {rec['error']['line']}"
        assert key not in out, f"{key} appears twice"
        out[key] = rec
    return out
