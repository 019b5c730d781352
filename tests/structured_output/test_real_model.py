"""JSON schemas on the real SmolLM2-135M-Instruct (GGUF): every chat answer validates.

Needs the session fixture `smollm2_gguf` (a Path to the GGUF file, from
tests/conftest.py) and GGUF loading in `LLM`; skipped until both exist.
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
                                                                "required": ["first", "last"]},
                                      "year": {"type": "integer", "minimum": 1000, "maximum": 2100}},
     "required": ["title", "author", "year"], "additionalProperties": False},
]
QUESTIONS = ["Describe one example as JSON.", "Answer in JSON: tell me about a famous book, a person or an apple."]


@pytest.fixture(scope="module")
def smollm2(request: pytest.FixtureRequest) -> LLM:
    try:
        path: Path = request.getfixturevalue("smollm2_gguf")
    except pytest.FixtureLookupError:
        pytest.skip("needs the smollm2_gguf fixture (tests/conftest.py)")
    try:
        return LLM(str(path), kv_cache_memory="64MiB")
    except (FileNotFoundError, ValueError, NotImplementedError) as err:
        pytest.skip(f"LLM cannot load {path} yet: {err}")


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
