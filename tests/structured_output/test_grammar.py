"""Constraint specs: shape checks on the params, compile errors at add time, one compile per distinct spec."""

from __future__ import annotations

import json

import pytest

from batchserve.request import SamplingParams, StructuredOutputsParams
from batchserve.structured_output import GrammarCompiler, grammar_spec, ll_tokenizer
from batchserve.tokenizer import ByteTokenizer

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "y"]}}, "required": ["a"]}


@pytest.fixture(scope="module")
def compiler() -> GrammarCompiler:
    return GrammarCompiler(ll_tokenizer(ByteTokenizer(), 259, [ByteTokenizer.EOS]))


@pytest.mark.parametrize("fields", [{}, {"regex": "a", "choice": ["a"]}, {"json_object": False}])
def test_exactly_one_constraint(fields: dict) -> None:
    with pytest.raises(ValueError, match="exactly one of json, regex, choice, grammar, json_object"):
        StructuredOutputsParams(**fields)


@pytest.mark.parametrize("choice", [[], "yes", ["a", 1]])
def test_choice_is_a_non_empty_list_of_strings(choice: object) -> None:
    with pytest.raises(ValueError, match="choice must be a non-empty list of strings"):
        StructuredOutputsParams(choice=choice)  # type: ignore[arg-type]


def test_sampling_params_take_only_structured_outputs_params() -> None:
    with pytest.raises(TypeError, match="StructuredOutputsParams"):
        SamplingParams(structured_outputs={"regex": "a"})  # type: ignore[arg-type]


def test_equal_schemas_share_one_compiled_grammar(compiler: GrammarCompiler) -> None:
    specs = [StructuredOutputsParams(json=SCHEMA), StructuredOutputsParams(json=json.dumps(SCHEMA, indent=2))]
    before = compiler.cache_info()
    templates = [compiler.compile(p) for p in specs]
    after = compiler.cache_info()
    assert templates[0] is templates[1]
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    # whitespace in the output, and the order properties are written in, make other grammars
    reordered = {"required": ["a"], "properties": {"b": {"enum": ["x", "y"]}, "a": {"type": "integer"}},
                 "type": "object"}
    for other in (StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True),
                  StructuredOutputsParams(json=reordered)):
        assert grammar_spec(other) != grammar_spec(specs[0])


def test_properties_are_written_in_schema_order(compiler: GrammarCompiler) -> None:
    schema = {"type": "object", "properties": {"z": {"const": 1}, "a": {"const": 2}}, "required": ["z", "a"]}
    matcher = compiler.compile(StructuredOutputsParams(json=schema, disable_any_whitespace=True)).deep_copy()
    assert matcher.consume_tokens(list(b'{"z":1,"a":2}')) and matcher.is_stopped()


def test_json_object_is_any_object(compiler: GrammarCompiler) -> None:
    matcher = compiler.compile(StructuredOutputsParams(json_object=True)).deep_copy()
    assert not matcher.consume_tokens(list(b"[1]"))
    matcher = compiler.compile(StructuredOutputsParams(json_object=True)).deep_copy()
    assert matcher.consume_tokens(list(b'{"k": [1, {}]}')) and matcher.is_accepting()


@pytest.mark.parametrize(("params", "message"), [
    (StructuredOutputsParams(json='{"type": "object",'), r"structured_outputs.json is not valid JSON"),
    (StructuredOutputsParams(json="[1, 2]"), r"json must be a JSON schema object, got list"),
    (StructuredOutputsParams(json={"type": "objectx"}), r"invalid structured_outputs.json: .*objectx"),
    (StructuredOutputsParams(json={"type": "string", "pattern": "(?=a)b"}),
     r"invalid structured_outputs.json: .*look-around"),
    (StructuredOutputsParams(regex=r"(?<=a)b"), r"invalid structured_outputs.regex: .*look-around"),
    (StructuredOutputsParams(regex="a(b"), r"invalid structured_outputs.regex: .*unclosed group"),
    (StructuredOutputsParams(grammar='root ::= "a" undefined'), r"invalid structured_outputs.grammar: .*undefined"),
    (StructuredOutputsParams(grammar="start: ("), r"invalid structured_outputs.grammar"),
])
def test_invalid_constraints_are_clear_value_errors(compiler: GrammarCompiler, params: StructuredOutputsParams,
                                                    message: str) -> None:
    with pytest.raises(ValueError, match="(?s)" + message):  # llguidance messages span lines
        compiler.compile(params)


@pytest.mark.parametrize("grammar", ['root ::= "(" [0-9]+ ")"', 'start: "(" /[0-9]+/ ")"'])
def test_grammar_takes_gbnf_and_lark(compiler: GrammarCompiler, grammar: str) -> None:
    matcher = compiler.compile(StructuredOutputsParams(grammar=grammar)).deep_copy()
    assert matcher.consume_tokens(list(b"(42)")) and matcher.is_stopped()
