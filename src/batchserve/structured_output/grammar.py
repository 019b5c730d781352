"""Constraint specs to compiled llguidance grammars, each distinct spec compiled once (LRU cache).

A compiled grammar is a fresh `LLMatcher`, kept as a template: building one
(lexer, parser tables over the vocabulary) takes milliseconds for a JSON
schema, while each request's matcher is a microsecond `deep_copy` of it.
"""

from __future__ import annotations

import functools
import json

import llguidance

from ..request import StructuredOutputsParams

GrammarKey = tuple[str, str, bool]
"""(kind, normalized text, whitespace-flexible JSON): equal keys compile to the same grammar."""


def grammar_spec(params: StructuredOutputsParams) -> GrammarKey:
    """The normalized spec of a constraint: JSON schemas re-serialized compactly, choices as JSON.

    Keys keep their order: a schema's property order is the order the output writes them in.

    Raises ValueError for a JSON schema that is not a JSON object.
    """
    kind = params.kind
    if kind == "json":
        schema = params.json
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as err:
                raise ValueError(f"structured_outputs.json is not valid JSON: {err}") from None
        if not isinstance(schema, dict):
            raise ValueError(f"structured_outputs.json must be a JSON schema object, got {type(schema).__name__}")
        text = json.dumps(schema, separators=(",", ":"))
    elif kind == "json_object":
        kind, text = "json", '{"type": "object"}'
    elif kind == "choice":
        text = json.dumps(list(params.choice or ()))
    else:
        text = str(getattr(params, kind))
    return kind, text, kind == "json" and not params.disable_any_whitespace


class GrammarCompiler:
    """Compiles constraint specs against one tokenizer; `cache_size` distinct grammars stay compiled."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, cache_size: int = 256) -> None:
        self.tokenizer = tokenizer
        self._compile_key = functools.lru_cache(maxsize=cache_size)(self._compile)

    def compile(self, params: StructuredOutputsParams) -> llguidance.LLMatcher:
        """The template matcher of a constraint (do not advance it: deep_copy it per request).

        Raises ValueError naming the constraint for a bad schema, an unsupported regex
        feature or an unparsable grammar; failures are not cached.
        """
        return self._compile_key(grammar_spec(params))

    def cache_info(self) -> functools._CacheInfo:
        return self._compile_key.cache_info()

    def _compile(self, key: GrammarKey) -> llguidance.LLMatcher:
        kind, text, whitespace_flexible = key
        try:
            if kind == "json":
                grammar = llguidance.LLMatcher.grammar_from_json_schema(
                    text, defaults={"whitespace_flexible": whitespace_flexible}
                )
            else:
                # "grammar" takes GBNF or Lark (llguidance converts GBNF); "choice" becomes Lark alternatives
                grammar = llguidance.grammar_from(kind, text)
        except ValueError as err:
            raise ValueError(f"invalid structured_outputs.{kind}: {err}") from None
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"invalid structured_outputs.{kind}: {matcher.get_error().strip()}")
        return matcher
