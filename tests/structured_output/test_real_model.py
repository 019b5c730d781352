"""JSON schemas on the real SmolLM2-135M-Instruct (GGUF): every chat answer validates, in `LLM.chat` and in a
batch job, and without the constraint the same requests mostly do not (the grammar does the work).

Uses the session fixture `smollm2_gguf` (tests/conftest.py), skipped where the model's package is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
jsonschema = pytest.importorskip("jsonschema")

from batchserve import SamplingParams  # noqa: E402
from batchserve.entrypoints.llm import LLM  # noqa: E402
from batchserve.request import StructuredOutputsParams  # noqa: E402

NAME = {"type": "string", "minLength": 1, "maxLength": 24}
SCHEMAS = [
    {"type": "object", "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                      "city": NAME},
     "required": ["name", "age", "city"], "additionalProperties": False},
    {"type": "object", "properties": {"product": NAME, "category": {"enum": ["fruit", "vegetable", "dairy"]},
                                      "tags": {"type": "array", "items": NAME, "maxItems": 3},
                                      "in_stock": {"type": "boolean"}},
     "required": ["product", "category", "tags", "in_stock"], "additionalProperties": False},
    {"type": "object", "properties": {"title": NAME, "author": {"type": "object", "properties": {"first": NAME,
                                                                                                 "last": NAME},
                                                                "required": ["first", "last"],
                                                                "additionalProperties": False},
                                      "year": {"type": "integer", "minimum": 1000, "maximum": 2100}},
     "required": ["title", "author", "year"], "additionalProperties": False},
]
QUESTIONS = ["Describe one example as JSON.", "Answer in JSON: tell me about a famous book, a person or an apple."]


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf: Path) -> LLM:
    return LLM(str(smollm2_gguf), kv_cache_memory="64MiB")


def test_every_answer_validates_against_its_schema(smollm2: LLM) -> None:
    convs = [[{"role": "user", "content": q}] for _ in SCHEMAS for q in QUESTIONS]
    # Flexible whitespace (the default) on every other request: a small model may pad JSON with blank lines.
    params = [SamplingParams(max_tokens=128, temperature=0.7, seed=i, structured_outputs=StructuredOutputsParams(
                  json=schema, disable_any_whitespace=i % 2 == 1))
              for i, schema in enumerate(s for s in SCHEMAS for _ in QUESTIONS)]
    outs = smollm2.chat(convs, params, use_tqdm=False)
    for out, p in zip(outs, params):
        (c,) = out.outputs
        assert c.finish_reason == "stop", c.text
        jsonschema.validate(json.loads(c.text), p.structured_outputs.json)


TOPICS = ["a person you admire", "a vegetable", "a classic novel", "a cheese", "a scientist", "a fruit",
          "a poem", "a city dweller", "a dairy product", "a detective story", "an athlete", "a berry",
          "a history book", "a chef", "a root vegetable", "a science fiction book"]


def _job_line(i: int, schema: dict, constrained: bool) -> dict:
    prompt = f"Describe {TOPICS[i % len(TOPICS)]} as a JSON object with the fields {', '.join(schema['required'])}."
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 96, "temperature": 0.7, "seed": i}
    if constrained:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    return {"custom_id": f"{'c' if constrained else 'u'}{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": body}


def test_a_structured_batch_job_validates_every_line(smollm2_gguf: Path, tmp_path: Path) -> None:
    """6 chat lines over 3 schemas through `run`: all validate; the same 6 unconstrained mostly fail (measured: 1
    of 12 validated when this job had 12 lines)."""
    from batchserve.jobs.engine_backend import local_job
    from batchserve.jobs.runner import JobConfig

    schemas = {i: SCHEMAS[i % 3] for i in range(6)}
    lines = [_job_line(i, schemas[i], constrained) for constrained in (True, False) for i in range(6)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    local_job(str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), str(smollm2_gguf),
              dict(kv_cache_memory="64MiB", max_num_seqs=24), JobConfig(), quiet=True)
    valid = {"c": 0, "u": 0}
    for record in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines()):
        cid = record["custom_id"]
        text = record["response"]["body"]["choices"][0]["message"]["content"]
        try:
            jsonschema.validate(json.loads(text), schemas[int(cid[1:])])
            valid[cid[0]] += 1
        except (ValueError, jsonschema.ValidationError):
            assert cid[0] == "u", f"{cid}: {text!r}"
    assert valid["c"] == 6
    assert valid["u"] <= 3, valid  # without the grammar at most half validate
