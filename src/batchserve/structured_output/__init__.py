"""Structured output: constrain a request's tokens to a JSON schema, regex, choice or grammar (llguidance).

The input side compiles each request's constraint when it is added
(`StructuredOutputManager.add_request`, cached per distinct spec), so a bad one
fails that request alone; the executor asks the manager for a token bitmask
per constrained row before sampling and feeds it the sampled tokens after.
Nothing here touches the scheduler: a grammar only narrows which tokens a row
may sample, and says when the output is complete.
"""

from .grammar import GrammarCompiler, grammar_spec
from .manager import GrammarBitmask, StructuredOutputManager
from .tokenizer import ll_tokenizer

__all__ = ["GrammarBitmask", "GrammarCompiler", "StructuredOutputManager", "grammar_spec", "ll_tokenizer"]
