"""Verify drafts against the target model's distributions, exactly (Leviathan et al.; Chen et al. 2023).

Each speculating request brings k draft tokens and k + 1 rows of target logits: row j follows the
known tokens plus draft[:j]. Greedy rows accept the longest prefix of the draft that equals the
target's argmax, then take the argmax after it. Sampled rows accept draft token d with probability
min(1, p(d) / q(d)) and on the first rejection draw from norm(max(0, p - q)); when all k pass they
draw a bonus token from row k. N-gram drafts are deterministic (q is one-hot on d), so acceptance
is p(d) and the residual is p with d removed. Every uniform comes from the request's own generator,
so a seeded request stays reproducible; the output distribution is the target's, token for token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models.sampler import GREEDY_EPS, Sampler, process_logits, sample_inverse_cdf, sampling_probs
from ..request import Request, SamplingParams


def _needs_history(p: SamplingParams) -> bool:
    """Does this row's processing read the output so far (penalties, min_tokens)?"""
    return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 or p.min_tokens > 0


def verify(
    sampler: Sampler,
    logits: torch.Tensor,
    requests: Sequence[Request],
    drafts: Sequence[list[int]],
    generators: Sequence[torch.Generator],
) -> list[list[int]]:
    """The tokens each request keeps: its accepted draft prefix plus one target token.

    `logits` holds len(drafts[i]) + 1 rows per request, requests in order.
    """
    params: list[SamplingParams] = []
    prompts: list[list[int]] = []
    histories: list[list[int]] = []
    stop_ids: list[list[int]] = []
    for req, draft in zip(requests, drafts):
        p, out = req.sampling_params, req.output_token_ids
        for j in range(len(draft) + 1):
            params.append(p)
            prompts.append(req.prompt_token_ids)
            # row j sees the drafts before it as output (penalties, min_tokens), as plain decoding would
            histories.append(out + draft[:j] if j and _needs_history(p) else out)
            stop_ids.append(p.stop_token_ids)
    logits = process_logits(logits.float(), params, prompts, histories, stop_ids)
    greedy = [req.sampling_params.temperature < GREEDY_EPS for req in requests]
    targets = logits.argmax(dim=-1).tolist() if any(greedy) else []
    kept: list[list[int]] = []
    start = 0
    for req, draft, is_greedy, gen in zip(requests, drafts, greedy, generators):
        end = start + len(draft) + 1
        if is_greedy:
            kept.append(_accept_greedy(draft, targets[start:end]))
        else:
            probs = sampling_probs(logits[start:end], params[start:end])
            kept.append(_accept_sampled(sampler, draft, probs, gen))
        start = end
    return kept


def _accept_greedy(draft: list[int], targets: list[int]) -> list[int]:
    a = 0
    while a < len(draft) and draft[a] == targets[a]:
        a += 1
    return draft[:a] + [targets[a]]


def _accept_sampled(sampler: Sampler, draft: list[int], probs: torch.Tensor, gen: torch.Generator) -> list[int]:
    """Rejection sampling against a one-hot draft distribution; `probs` is [k + 1, V]."""
    k = len(draft)
    p_draft = probs[torch.arange(k), torch.tensor(draft, dtype=torch.long)].tolist()
    for j, (d, p_d) in enumerate(zip(draft, p_draft)):
        if sampler.draw_uniforms([gen]).item() < p_d:  # accept with min(1, p(d) / q(d)), q(d) = 1
            continue
        residual = probs[j].clone()  # max(0, p - q): p without d
        residual[d] = 0.0
        return draft[:j] + [_draw(sampler, residual, gen)]
    return draft + [_draw(sampler, probs[k], gen)]


def _draw(sampler: Sampler, probs: torch.Tensor, gen: torch.Generator) -> int:
    return int(sample_inverse_cdf(probs.unsqueeze(0), sampler.draw_uniforms([gen]).to(probs.device))[0])
