"""The expert term of an MoE step: which experts a step's tokens touch, and what their GEMMs cost.

Each token picks top_k of num_experts experts; under uniform routing every
expert misses one token's pick with probability 1 - k/E, independently across
tokens, so n tokens touch E * (1 - (1 - k/E)^n) distinct experts on average.
A step reads the weights of the touched experts only (all experts stay
resident) and runs n * k expert rows of FLOPs; with few tokens per expert (a
decode step) the GEMMs are bound by those weight reads.
"""

from __future__ import annotations


def expected_active_experts(num_experts: int, top_k: int, tokens: float) -> float:
    """Expected number of distinct experts `tokens` tokens route to, each picking `top_k` uniformly."""
    if not num_experts:
        return 0.0
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** tokens)


def tokens_per_expert(num_experts: int, top_k: int, tokens: float) -> float:
    """Rows each touched expert's GEMM gets on average: the batch the expert GEMMs actually run at."""
    active = expected_active_experts(num_experts, top_k, tokens)
    return tokens * top_k / active if active else 0.0
