"""Turn one step's logits into next tokens: penalties, temperature, top-k/top-p/min-p and seeded draws.

Every per-request setting becomes a per-row tensor, so a batch with mixed
params is still a handful of batched ops; Python loops only build those
tensors and draw one uniform per sampled row. A row's token depends only on
its own logits, params and generator (the draw is one uniform, turned into a
token by inverse CDF over the vocabulary in id order), so seeded requests
give the same tokens whatever their batch-mates are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from batchserve.request import SamplingParams

GREEDY_EPS = 1e-5
"""Temperatures below this are greedy: dividing logits by them would overflow (vLLM uses the same cut)."""


@dataclass
class SampleOutput:
    """One sampled token per row and, where asked, its log-probabilities."""

    token_ids: list[int]
    logprobs: list[dict[int, float] | None]
    """Per row: {token id: logprob} for the top-`logprobs` tokens (best first) plus the sampled one,
    from log_softmax of the raw logits (before penalties and temperature, as vLLM reports by default);
    None for rows whose params.logprobs is None."""


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without the host waiting: on CUDA through pinned memory, so the copy queues
    behind the step's kernels, where a copy from pageable memory would stall the host until they finish (which
    async scheduling needs the host for). On a CPU it is the tensor itself."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def device_tensor(values: Sequence, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`torch.tensor(values, dtype=dtype, device=device)`, copied as `to_device` copies."""
    return to_device(torch.tensor(values, dtype=dtype), device)


def make_generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator for a seeded request (None without a seed): it only ever draws one uniform per token."""
    if seed is None:
        return None
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


class Sampler:
    """Stateless apart from the generator shared by rows that have no seed of their own."""

    def __init__(self, seed: int | None = None) -> None:
        self.generator = torch.Generator(device="cpu")
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor, params: Sequence[SamplingParams], *per_row: Sequence) -> SampleOutput:
        """Sample one token for each row of `logits` [S, V] (`sample`'s arguments), read to the host."""
        return to_host(*self.sample(logits, params, *per_row), params)

    def sample(
        self,
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator | None],
        prompt_token_ids: Sequence[Sequence[int]],
        output_token_ids: Sequence[Sequence[int]],
        min_tokens_eos: Sequence[Sequence[int]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One token for each row of `logits` [S, V], row i following params[i]: the sampled ids and the
        unprocessed float logits, on the device, where nothing waits for them yet (`to_host` reads them)."""
        num_rows = logits.shape[0]
        lengths = {len(params), len(generators), len(prompt_token_ids), len(output_token_ids), len(min_tokens_eos)}
        if lengths != {num_rows}:
            raise ValueError(f"sampler got {num_rows} logit rows but per-row lists of other lengths")
        raw = logits.float()
        logits = process_logits(raw, params, prompt_token_ids, output_token_ids, min_tokens_eos)
        greedy = [p.temperature < GREEDY_EPS for p in params]
        if all(greedy):
            token_ids = logits.argmax(dim=-1)  # first maximum wins: ties go to the lowest id
        elif not any(greedy):
            token_ids = self._sample(logits, params, generators)
        else:
            greedy_rows = [i for i, g in enumerate(greedy) if g]
            random_rows = [i for i, g in enumerate(greedy) if not g]
            token_ids = torch.empty(num_rows, dtype=torch.long, device=logits.device)
            g_idx = device_tensor(greedy_rows, logits.device)
            r_idx = device_tensor(random_rows, logits.device)
            token_ids[g_idx] = logits[g_idx].argmax(dim=-1)
            token_ids[r_idx] = self._sample(
                logits[r_idx], [params[i] for i in random_rows], [generators[i] for i in random_rows]
            )
        return token_ids, raw

    def _sample(
        self, logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None]
    ) -> torch.Tensor:
        uniforms = to_device(self.draw_uniforms(generators), logits.device)
        return sample_inverse_cdf(sampling_probs(logits, params), uniforms)

    def draw_uniforms(self, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
        """One uniform in [0, 1) per row: from the row's own generator, else from the shared one."""
        shared_rows = [i for i, g in enumerate(generators) if g is None]
        u = torch.empty(len(generators), dtype=torch.float64)
        if shared_rows:
            u[shared_rows] = torch.rand(len(shared_rows), dtype=torch.float64, generator=self.generator)
        for i, g in enumerate(generators):
            if g is not None:
                u[i] = torch.rand(1, dtype=torch.float64, generator=g)
        return u


def process_logits(
    raw: torch.Tensor,
    params: Sequence[SamplingParams],
    prompt_token_ids: Sequence[Sequence[int]],
    output_token_ids: Sequence[Sequence[int]],
    min_tokens_eos: Sequence[Sequence[int]],
) -> torch.Tensor:
    """Penalties, logit bias and the min_tokens mask: the logits greedy takes the argmax of (`raw` if none apply)."""
    logits = apply_penalties(raw, params, prompt_token_ids, output_token_ids)
    logits = apply_logit_bias(logits, params, inplace=logits is not raw)
    return mask_min_tokens(logits, params, output_token_ids, min_tokens_eos, inplace=logits is not raw)


def sampling_probs(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """The distribution a non-greedy row draws from: temperature, then top-k/top-p, then min-p."""
    device, vocab = logits.device, logits.shape[1]
    temperature = device_tensor([p.temperature for p in params], device, logits.dtype)
    logits = logits / temperature.unsqueeze(1)
    logits = apply_top_k_top_p(
        logits, [p.top_k if 0 < p.top_k < vocab else 0 for p in params], [p.top_p for p in params]
    )
    logits = apply_min_p(logits, [p.min_p for p in params])
    return logits.softmax(dim=-1)


def apply_penalties(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    prompt_token_ids: Sequence[Sequence[int]],
    output_token_ids: Sequence[Sequence[int]],
) -> torch.Tensor:
    """Repetition penalty (HF: over prompt + output), then presence/frequency penalties (OpenAI: over output).

    Returns `logits` itself when no row has a penalty, else a new tensor.
    """
    rep_rows = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0]
    pf_rows = [i for i, p in enumerate(params) if p.presence_penalty != 0.0 or p.frequency_penalty != 0.0]
    if not rep_rows and not pf_rows:
        return logits
    logits = logits.clone()
    vocab, device = logits.shape[1], logits.device
    if rep_rows:
        idx = device_tensor(rep_rows, device)
        seen = _token_counts([[*prompt_token_ids[i], *output_token_ids[i]] for i in rep_rows], vocab, device) > 0
        penalty = device_tensor([params[i].repetition_penalty for i in rep_rows], device).unsqueeze(1)
        rows = logits[idx]
        # Dividing a positive logit and multiplying a negative one both make the token less likely.
        penalized = torch.where(rows > 0, rows / penalty, rows * penalty)
        logits[idx] = torch.where(seen, penalized, rows)
    if pf_rows:
        idx = device_tensor(pf_rows, device)
        counts = _token_counts([output_token_ids[i] for i in pf_rows], vocab, device)
        frequency = device_tensor([params[i].frequency_penalty for i in pf_rows], device).unsqueeze(1)
        presence = device_tensor([params[i].presence_penalty for i in pf_rows], device).unsqueeze(1)
        logits[idx] = logits[idx] - frequency * counts - presence * (counts > 0)
    return logits


def _token_counts(seqs: Sequence[Sequence[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """[len(seqs), vocab] float counts of each token id; one scatter over a padded index."""
    width = max((len(s) for s in seqs), default=0)
    # Pad with `vocab`, an extra column dropped afterwards, so padding counts nothing.
    index = device_tensor([[*s, *[vocab] * (width - len(s))] for s in seqs], device, torch.long)
    index = index.reshape(len(seqs), width)
    counts = torch.zeros(len(seqs), vocab + 1, device=device)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=counts.dtype))
    return counts[:, :vocab]


def apply_logit_bias(logits: torch.Tensor, params: Sequence[SamplingParams], inplace: bool = False) -> torch.Tensor:
    """Add each row's `logit_bias` to its token ids' logits (after penalties, before temperature, as vLLM does)."""
    rows: list[int] = []
    cols: list[int] = []
    bias: list[float] = []
    for i, p in enumerate(params):
        for token, b in (p.logit_bias or {}).items():
            rows.append(i)
            cols.append(token)
            bias.append(b)
    if not rows:
        return logits
    if not inplace:
        logits = logits.clone()
    device = logits.device
    logits.index_put_((device_tensor(rows, device), device_tensor(cols, device)),
                      device_tensor(bias, device, logits.dtype), accumulate=True)
    return logits


def mask_min_tokens(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    output_token_ids: Sequence[Sequence[int]],
    min_tokens_eos: Sequence[Sequence[int]],
    inplace: bool = False,
) -> torch.Tensor:
    """Forbid a row's stop ids (EOS, stop_token_ids) until it has `min_tokens` output tokens."""
    rows: list[int] = []
    cols: list[int] = []
    for i, p in enumerate(params):
        if len(output_token_ids[i]) < p.min_tokens:
            rows.extend([i] * len(min_tokens_eos[i]))
            cols.extend(min_tokens_eos[i])
    if not rows:
        return logits
    if not inplace:
        logits = logits.clone()
    logits[device_tensor(rows, logits.device), device_tensor(cols, logits.device)] = -float("inf")
    return logits


def apply_top_k_top_p(logits: torch.Tensor, top_k: Sequence[int], top_p: Sequence[float]) -> torch.Tensor:
    """Keep each row's `top_k` best tokens (0: all), then the smallest best-first set holding `top_p` of the mass.

    Top-k keeps exactly k tokens, ties at the cut going to the lower id (as greedy does); top-p is taken
    over the distribution renormalized after top-k and always keeps the best token. Rows with neither
    are untouched and skip the sort.
    """
    rows = [i for i, (k, p) in enumerate(zip(top_k, top_p)) if k > 0 or p < 1.0]
    if not rows:
        return logits
    device, vocab = logits.device, logits.shape[1]
    everyone = len(rows) == logits.shape[0]
    idx = None if everyone else device_tensor(rows, device)
    sub = logits if idx is None else logits[idx]
    k = device_tensor([top_k[i] or vocab for i in rows], device).unsqueeze(1)
    p = device_tensor([top_p[i] for i in rows], device, logits.dtype).unsqueeze(1)

    sorted_logits, order = sub.sort(dim=-1, descending=True, stable=True)
    drop = torch.arange(vocab, device=device) >= k
    probs = sorted_logits.masked_fill(drop, -float("inf")).softmax(dim=-1)
    cum = probs.cumsum(dim=-1)
    mass_before = torch.cat([torch.zeros_like(cum[:, :1]), cum[:, :-1]], dim=1)
    # `p < 1` guard: rounding can push the cumulative sum to 1 before the tail, which must not be cut.
    drop |= (mass_before >= p) & (p < 1.0)
    mask = torch.empty_like(drop).scatter_(1, order, drop)
    sub = sub.masked_fill(mask, -float("inf"))
    if idx is None:
        return sub
    logits = logits.clone()
    logits[idx] = sub
    return logits


def apply_min_p(logits: torch.Tensor, min_p: Sequence[float]) -> torch.Tensor:
    """Drop tokens whose probability is below `min_p` times the row's best (0: off)."""
    if not any(m > 0 for m in min_p):
        return logits
    probs = logits.softmax(dim=-1)
    threshold = device_tensor(min_p, probs.device, probs.dtype).unsqueeze(1)
    return logits.masked_fill(probs < threshold * probs.amax(dim=-1, keepdim=True), -float("inf"))


def sample_inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Token per row: first id whose cumulative probability (in id order) exceeds u * total.

    One uniform per row keeps a seeded request's draws independent of the vocabulary size and the
    batch; a zero-probability token can never be chosen, since its cumulative sum equals its
    predecessor's. Float64 keeps the tail of a 100k+ vocabulary from being rounded away.
    """
    cdf = probs.cumsum(dim=-1, dtype=torch.float64)
    total = cdf[:, -1:]
    target = uniforms.to(torch.float64).unsqueeze(1) * total
    token = torch.searchsorted(cdf, target, right=True).squeeze(1)
    # u * total can round up to total; then take the first id where the sum reaches it (a positive one).
    last = (cdf < total).sum(dim=-1)
    return torch.minimum(token, last)


def to_host(token_ids: torch.Tensor, raw_logits: torch.Tensor, params: Sequence[SamplingParams]) -> SampleOutput:
    """The step's one device-to-host transfer: sampled ids and the log-probabilities rows ask for, in one tensor.

    Logprobs are the top-N and sampled-token log-probabilities of the unprocessed logits; they are
    computed on the device and packed with the ids as float64 (exact for any token id), so a GPU
    step waits for its results once, not once per kind of result.
    """
    rows = [i for i, p in enumerate(params) if p.logprobs is not None]
    if not rows:
        return SampleOutput(token_ids.tolist(), [None] * len(params))
    idx = device_tensor(rows, raw_logits.device)
    logprobs = torch.log_softmax(raw_logits[idx], dim=-1)
    sampled_lp = logprobs.gather(1, token_ids[idx].unsqueeze(1)).squeeze(1)
    num_top = min(max(params[i].logprobs or 0 for i in rows), logprobs.shape[1])
    top_lp, top_ids = logprobs.topk(num_top, dim=-1)
    packed = torch.cat([t.reshape(-1).double() for t in (token_ids, sampled_lp, top_lp, top_ids)]).tolist()
    num_rows, num_lp = len(params), len(rows)
    tokens = [int(t) for t in packed[:num_rows]]
    top = packed[num_rows + num_lp:]
    out: list[dict[int, float] | None] = [None] * num_rows
    for j, i in enumerate(rows):
        n = params[i].logprobs or 0
        row_lp = top[j * num_top:j * num_top + n]
        row_ids = top[(num_lp + j) * num_top:(num_lp + j) * num_top + n]
        entry = {int(t): lp for t, lp in zip(row_ids, row_lp)}
        entry[tokens[i]] = packed[num_rows + j]
        out[i] = entry
    return SampleOutput(tokens, out)


def prompt_logprobs(logits: torch.Tensor, targets: Sequence[int], num_top: int) -> list[dict[int, float]]:
    """Per row: the top-`num_top` log-probabilities and the target token's (the next prompt token)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    target_lp = logprobs.gather(1, device_tensor(targets, logits.device).unsqueeze(1)).squeeze(1).tolist()
    top_lp, top_ids = logprobs.topk(min(num_top, logprobs.shape[1]), dim=-1)
    out = []
    for ids, lps, target, lp in zip(top_ids.tolist(), top_lp.tolist(), targets, target_lp):
        entry = dict(zip(ids, lps))
        entry[target] = lp
        out.append(entry)
    return out
