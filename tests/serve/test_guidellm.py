"""guidellm, the vLLM project's benchmark, completes a short synthetic streaming run against `batchserve serve`.

guidellm pins click and pulls in uvloop and httptools (which uvicorn would then
pick up), so it lives in its own virtualenv: the test runs the CLI named by
$GUIDELLM, else `python -m guidellm` where it is importable, else
/tmp/guidellm-venv/bin/guidellm, and is skipped when none exists. Set one up with
`python -m venv /tmp/guidellm-venv && /tmp/guidellm-venv/bin/pip install guidellm`
(a .pth file naming this venv's site-packages saves downloading torch again).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

KEY = "sk-guidellm"
NUM_REQUESTS = 4
PROMPT_TOKENS, OUTPUT_TOKENS = 16, 8


def _guidellm() -> list[str] | None:
    if os.environ.get("GUIDELLM"):
        return [os.environ["GUIDELLM"]]
    if importlib.util.find_spec("guidellm") is not None:
        return [sys.executable, "-m", "guidellm"]
    venv = Path("/tmp/guidellm-venv/bin/guidellm")
    return [str(venv)] if venv.exists() else None


GUIDELLM = _guidellm()
pytestmark = pytest.mark.skipif(GUIDELLM is None, reason="guidellm not installed (see the module docstring)")


def _byte_tokenizer(path: Path) -> Path:
    """A Hugging Face tokenizer with one token per byte, like the tiny model's: guidellm sizes synthetic
    prompts with it, and there is no network to fetch a real one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    path.mkdir()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return path


@pytest.fixture(scope="module")
def served(serve_process):
    with serve_process(["--api-key", KEY]) as (url, _):
        yield url


def test_guidellm_completes_a_synthetic_streaming_chat_run(served, tmp_path):
    """Chat, guidellm's default; its /v1/completions requests differ only in `prompt` and `max_tokens`."""
    out = tmp_path / "report.json"
    cmd = [*GUIDELLM, "run",
           "--backend", f"kind=openai_http,target={served},api_key={KEY}",
           "--profile", "kind=synchronous",
           "--data", f"kind=synthetic_text,prompt_tokens={PROMPT_TOKENS},output_tokens={OUTPUT_TOKENS}",
           "--tokenizer", f"kind=hf_auto,model={_byte_tokenizer(tmp_path / 'tokenizer')}",
           "--constraint", f"kind=max_requests,count={NUM_REQUESTS}",
           "--output", f"kind=json,path={out}", "--disable-console"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)  # cwd: guidellm.log
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads(out.read_text())["benchmarks"][0]["metrics"]
    assert metrics["request_totals"] == {"successful": NUM_REQUESTS, "errored": 0, "incomplete": 0,
                                         "total": NUM_REQUESTS}
    assert metrics["output_token_count"]["successful"]["total_sum"] == NUM_REQUESTS * OUTPUT_TOKENS
