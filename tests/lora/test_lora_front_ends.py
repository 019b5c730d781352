"""`model` picks the adapter in every front-end: the shared OpenAI layer, `serve`, `run` and `generate`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from batchserve import LoRARequest, SamplingParams
from batchserve.entrypoints.cli import main
from batchserve.entrypoints.llm import LLM
from batchserve.openai import APIError, ServingContext, engine_inputs, parse_request

sys.path.insert(0, str(Path(__file__).parent.parent / "jobs"))
from jobfiles import completion, read_results, write_jsonl

PROMPT = [72, 101, 108, 108, 111]  # "Hello" in the tiny model's byte vocabulary
MAX_TOKENS = 8
LORA_FLAGS = ["--max-loras", "2"]


def lora_flags(adapters: dict[str, LoRARequest]) -> list[str]:
    return ["--lora-modules", *(f"{a.lora_name}={a.lora_path}" for a in adapters.values()), *LORA_FLAGS]


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM("tiny", kv_cache_memory="4MiB", enable_lora=True, max_loras=2)


@pytest.fixture(scope="module")
def expected(llm, tiny_adapters) -> dict[str, str]:
    """The greedy text of PROMPT under each adapter and the base model, from LLM.generate."""
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    texts = {name: llm.generate([PROMPT], params, use_tqdm=False, lora_request=lora)[0].outputs[0].text
             for name, lora in {**tiny_adapters, "tiny": None}.items()}
    assert len(set(texts.values())) == 3  # each adapter changes the text
    return texts


def test_serving_context_resolves_model_to_base_or_adapter() -> None:
    sql = LoRARequest("sql", 1, "/adapters/sql")
    ctx = ServingContext(model_names=("base",), tokenizer=None, max_model_len=64, vocab_size=300,
                         lora_modules={"sql": sql})

    def inputs(model: str | None):
        return engine_inputs(parse_request({"model": model, "prompt": [1, 2]}, chat=False), ctx)

    assert inputs("sql").lora_request is sql and inputs("sql").response.model == "sql"
    assert inputs("base").lora_request is None and inputs(None).lora_request is None
    with pytest.raises(APIError) as err:
        inputs("nope")
    assert err.value.status == 404 and err.value.param == "model" and "'base', 'sql'" in err.value.message


def test_serve_lists_adapters_and_routes_by_model(tiny_adapters, expected) -> None:
    from fastapi.testclient import TestClient

    from batchserve.engine.llm_engine import LLMEngine
    from batchserve.entrypoints.openai.api_server import build_app

    llm = LLMEngine("tiny", kv_cache_memory="4MiB", enable_lora=True, max_loras=2)
    app = build_app(llm, "tiny", lora_modules=list(tiny_adapters.values()))
    with TestClient(app) as client:
        cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
        assert list(cards) == ["tiny", "sql", "chat"]
        assert cards["sql"]["parent"] == "tiny" and cards["sql"]["root"] == tiny_adapters["sql"].lora_path
        for model, text in expected.items():
            r = client.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS,
                                                     "temperature": 0, "ignore_eos": True})
            assert r.status_code == 200 and r.json()["model"] == model
            assert r.json()["choices"][0]["text"] == text
        r = client.post("/v1/completions", json={"model": "nope", "prompt": PROMPT})
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"
        assert "'sql', 'chat'" in r.json()["error"]["message"]
    assert not llm.has_unfinished()


def test_run_lines_pick_the_adapter_by_model(tiny_adapters, expected, tmp_path) -> None:
    lines = [completion(f"{m}-{i}", PROMPT, model=m, max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
             for i in range(2) for m in expected]
    inp = write_jsonl(tmp_path / "in.jsonl", [*lines, completion("bad", PROMPT, model="nope")])
    out = tmp_path / "out.jsonl"
    assert main(["run", str(inp), "-o", str(out), "--model", "tiny", "--kv-cache-memory", "4MiB", "-q", *lora_flags(tiny_adapters)]) == 0
    results = read_results(out)
    for line in lines:
        body = results[line["custom_id"]]["response"]["body"]
        assert body["model"] == line["body"]["model"]
        assert body["choices"][0]["text"] == expected[line["body"]["model"]]
    assert "the model 'nope' does not exist" in results["bad"]["error"]["message"]


def test_generate_runs_the_chosen_adapter(llm, tiny_adapters, tmp_path, capsys) -> None:
    out = tmp_path / "gen.json"
    assert main(["generate", "--model", "tiny", "--prompt", "Hello", "--max-tokens", str(MAX_TOKENS),
                 "--kv-cache-memory", "4MiB", "--lora", "sql", "--json", str(out), *lora_flags(tiny_adapters)]) == 0
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0)
    want = llm.generate("Hello", params, use_tqdm=False, lora_request=tiny_adapters["sql"])[0].outputs[0]
    assert json.loads(out.read_text())["outputs"][0]["token_ids"] == want.token_ids
    assert main(["generate", "--model", "tiny", "--prompt", "x", "--lora", "nope", *lora_flags(tiny_adapters)]) == 2
    assert "--lora 'nope' is not one of --lora-modules (sql, chat)" in capsys.readouterr().err


def test_bad_lora_flags_stop_before_loading(tiny_adapters, tmp_path, capsys) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [completion("a", PROMPT)])
    args = ["run", str(inp), "-o", str(tmp_path / "o.jsonl"), "-q", "--model", "tiny"]
    assert main([*args, "--lora-modules", "sql"]) == 2
    assert "is not NAME=PATH" in capsys.readouterr().err
    assert main([*args, "--lora-modules", f"sql={tiny_adapters['sql'].lora_path}", "--max-loras", "4",
                 "--max-cpu-loras", "2"]) == 2
    assert "max_cpu_loras (2) must be >= max_loras (4)" in capsys.readouterr().err
    assert main(["serve", "--model", "tiny", "--kv-cache-memory", "4MiB", "--lora-modules", f"gone={tmp_path / 'gone'}"]) == 2
    assert "LoRA adapter 'gone'" in capsys.readouterr().err  # serve loads its adapters before it listens
