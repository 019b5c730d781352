"""Sampler: greedy, temperature, top-k/top-p/min-p, penalties, min_tokens, seeded batch invariance, logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from batchserve.models.sampler import (
    Sampler,
    SampleOutput,
    apply_min_p,
    apply_penalties,
    apply_top_k_top_p,
    make_generator,
    mask_min_tokens,
)
from batchserve.request import SamplingParams

NEG_INF = -float("inf")


def sample(
    sampler: Sampler,
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None] | None = None,
    prompts: list[list[int]] | None = None,
    outputs: list[list[int]] | None = None,
    eos: list[list[int]] | None = None,
) -> SampleOutput:
    rows = logits.shape[0]
    return sampler(
        logits,
        params,
        generators or [None] * rows,
        prompts or [[0]] * rows,
        outputs or [[] for _ in range(rows)],
        eos or [[] for _ in range(rows)],
    )


def log_probs(*probs: float) -> torch.Tensor:
    return torch.tensor([math.log(p) for p in probs])


def kept(logits: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(row > NEG_INF).flatten().tolist()) for row in logits]


# --- greedy ---


def test_greedy_is_argmax_with_ties_to_the_lowest_id() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, 5.0, 5.0, 5.0], [0.0, -1.0, 2.0, 2.0]])
    out = sample(Sampler(seed=0), logits, [SamplingParams(temperature=0.0)] * 3)
    assert out.token_ids == [1, 0, 2]
    assert out.logprobs == [None, None, None]


def test_greedy_rows_in_a_mixed_batch_stay_argmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(8, 50)
    params = [SamplingParams(temperature=0.0 if i % 2 == 0 else 1.5) for i in range(8)]
    out = sample(Sampler(seed=0), logits, params)
    expected = logits.argmax(dim=-1).tolist()
    assert [t for i, t in enumerate(out.token_ids) if i % 2 == 0] == expected[::2]


def test_a_vanishing_temperature_is_greedy() -> None:
    logits = torch.tensor([[0.0, 80.0, 79.9]])
    assert sample(Sampler(seed=0), logits, [SamplingParams(temperature=1e-9)]).token_ids == [1]


# --- temperature: empirical frequencies ---


def chi_square(tokens: list[int], probs: torch.Tensor) -> float:
    counts = torch.bincount(torch.tensor(tokens), minlength=len(probs)).double()
    expected = probs.double() * len(tokens)
    nonzero = expected > 0
    assert counts[~nonzero].sum() == 0, "sampled a token of probability zero"
    return float(((counts[nonzero] - expected[nonzero]) ** 2 / expected[nonzero]).sum())


# 99.99th percentile of chi-square with 4 degrees of freedom is ~23.5; draws are seeded, so no flakes.
CHI2_4DOF = 23.5


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sampled_frequencies_follow_softmax_of_logits_over_temperature(temperature: float) -> None:
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, 2.0])
    n = 20_000
    out = sample(Sampler(seed=1), logits.repeat(n, 1), [SamplingParams(temperature=temperature)] * n)
    assert chi_square(out.token_ids, torch.softmax(logits / temperature, dim=-1)) < CHI2_4DOF


def test_per_request_generators_sample_the_same_distribution() -> None:
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, 2.0])
    n = 20_000
    generators = [make_generator(seed) for seed in range(n)]
    out = sample(Sampler(seed=0), logits.repeat(n, 1), [SamplingParams(temperature=0.8)] * n, generators)
    assert chi_square(out.token_ids, torch.softmax(logits / 0.8, dim=-1)) < CHI2_4DOF


def test_top_k_top_p_samples_the_renormalized_kept_set() -> None:
    logits = log_probs(0.1, 0.4, 0.05, 0.3, 0.15)
    n = 20_000
    out = sample(Sampler(seed=2), logits.repeat(n, 1), [SamplingParams(top_k=3, top_p=0.75)] * n)
    # top-3 = {1, 3, 4} renormalized to 0.4/0.85, 0.3/0.85, 0.15/0.85; mass before id 4 is 0.82 >= 0.75.
    expected = torch.tensor([0.0, 0.4, 0.0, 0.3, 0.0]) / 0.7
    assert set(out.token_ids) == {1, 3}
    assert chi_square(out.token_ids, expected) < CHI2_4DOF


# --- top-k, top-p, min-p: exact kept sets ---


def test_top_k_keeps_exactly_k_tokens_ties_to_lower_ids() -> None:
    logits = torch.tensor([[0.1, 2.0, 1.0, 2.0, -1.0, 0.5], [3.0, 1.0, 1.0, 1.0, 0.0, 1.0]])
    assert kept(apply_top_k_top_p(logits, [2, 2], [1.0, 1.0])) == [{1, 3}, {0, 1}]
    assert kept(apply_top_k_top_p(logits, [3, 0], [1.0, 1.0])) == [{1, 2, 3}, set(range(6))]
    assert kept(apply_top_k_top_p(logits, [1, 6], [1.0, 1.0])) == [{1}, set(range(6))]


@pytest.mark.parametrize(
    ("top_p", "expected"),
    [(0.01, {2}), (0.5, {2}), (0.6, {2, 0}), (0.75, {2, 0, 4}), (0.9, {2, 0, 4, 1}), (1.0, {0, 1, 2, 3, 4})],
)
def test_top_p_keeps_the_smallest_best_first_set_reaching_p(top_p: float, expected: set[int]) -> None:
    # probabilities 0.2, 0.1, 0.5, 0.05, 0.15: best first 2 (0.5), 0 (0.7), 4 (0.85), 1 (0.95), 3 (1.0)
    logits = log_probs(0.2, 0.1, 0.5, 0.05, 0.15).unsqueeze(0)
    assert kept(apply_top_k_top_p(logits, [0], [top_p])) == [expected]


def test_top_p_applies_to_the_distribution_left_by_top_k() -> None:
    logits = log_probs(0.2, 0.1, 0.5, 0.05, 0.15).unsqueeze(0)
    assert kept(apply_top_k_top_p(logits, [0], [0.7])) == [{2, 0}]
    # After top-2 the best token holds 0.5 / 0.7 = 0.714 >= 0.7 of the mass on its own.
    assert kept(apply_top_k_top_p(logits, [2], [0.7])) == [{2}]


def test_top_k_top_p_rows_are_independent_and_off_rows_untouched() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 30)
    out = apply_top_k_top_p(logits, [5, 0, 0, 30], [1.0, 1.0, 0.5, 1.0])
    assert torch.equal(out[1], logits[1]) and torch.equal(out[3], logits[3])
    assert kept(out[:1]) == kept(apply_top_k_top_p(logits[:1], [5], [1.0]))
    assert kept(out[2:3]) == kept(apply_top_k_top_p(logits[2:3], [0], [0.5]))
    assert len(kept(out[:1])[0]) == 5
    assert apply_top_k_top_p(logits, [0] * 4, [1.0] * 4) is logits  # nothing to do: no sort, no copy


@pytest.mark.parametrize(("min_p", "expected"), [(0.0, {0, 1, 2, 3, 4}), (0.25, {0, 2, 4}), (0.35, {0, 2}), (1.0, {2})])
def test_min_p_drops_tokens_below_a_fraction_of_the_best(min_p: float, expected: set[int]) -> None:
    logits = log_probs(0.2, 0.1, 0.5, 0.05, 0.15).unsqueeze(0)
    assert kept(apply_min_p(logits, [min_p])) == [expected]


def test_min_p_is_scale_free_after_temperature() -> None:
    # min-p compares p_i / p_max = exp((l_i - l_max) / T): at T = 2 the 0.2 token is at sqrt(0.2/0.5) = 0.63.
    logits = log_probs(0.2, 0.1, 0.5, 0.05, 0.15).unsqueeze(0)
    assert kept(apply_min_p(logits / 2.0, [0.6])) == [{0, 2}]


# --- penalties and min_tokens ---


def test_penalties_match_hand_computation() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0, 3.0]])
    params = [SamplingParams(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)]
    out = apply_penalties(logits, params, [[0, 1]], [[2, 2, 4]])
    # repetition (prompt+output {0,1,2,4}): 2/2, -1*2, 0.5/2, untouched, 3/2
    # then output counts {2: 2, 4: 1}: id 2 -= 0.5 + 2*0.25, id 4 -= 0.5 + 1*0.25
    assert out.tolist() == [[1.0, -2.0, -0.75, 0.0, 0.75]]
    assert logits.tolist() == [[2.0, -1.0, 0.5, 0.0, 3.0]]  # input untouched


def test_presence_and_frequency_ignore_prompt_tokens() -> None:
    logits = torch.zeros(1, 4)
    params = [SamplingParams(presence_penalty=1.0, frequency_penalty=1.0)]
    assert apply_penalties(logits, params, [[0, 1, 1]], [[3, 3, 3]]).tolist() == [[0.0, 0.0, 0.0, -4.0]]


def test_repetition_penalty_matches_transformers() -> None:
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    gen = torch.Generator().manual_seed(0)
    vocab = 50
    logits = torch.randn(4, vocab, generator=gen) * 3
    prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (5, 1, 9, 3)]
    outputs = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (4, 0, 7, 2)]
    penalties = [1.3, 1.0, 0.7, 2.5]
    params = [SamplingParams(repetition_penalty=p) for p in penalties]
    ours = apply_penalties(logits, params, prompts, outputs)
    for i, penalty in enumerate(penalties):
        ids = torch.tensor([prompts[i] + outputs[i]])
        theirs = RepetitionPenaltyLogitsProcessor(penalty=penalty)(ids, logits[i : i + 1].clone())
        torch.testing.assert_close(ours[i : i + 1], theirs, rtol=0, atol=0)


def test_no_penalty_returns_the_logits_themselves() -> None:
    logits = torch.randn(3, 10)
    assert apply_penalties(logits, [SamplingParams()] * 3, [[1]] * 3, [[2]] * 3) is logits


def test_min_tokens_masks_stop_ids_until_reached() -> None:
    logits = torch.tensor([[0.0, 1.0, 9.0, 2.0, 8.0]] * 3)
    params = [SamplingParams(temperature=0.0, min_tokens=3, max_tokens=10)] * 3
    outputs = [[1], [1, 1], [1, 1, 1]]
    eos = [[2, 4]] * 3
    masked = mask_min_tokens(logits, params, outputs, eos)
    assert kept(masked) == [{0, 1, 3}, {0, 1, 3}, {0, 1, 2, 3, 4}]
    out = sample(Sampler(seed=0), logits, params, outputs=outputs, eos=eos)
    assert out.token_ids == [3, 3, 2]


# --- seeded reproducibility ---


TARGET = SamplingParams(
    temperature=0.9, top_k=20, top_p=0.9, min_p=0.02, repetition_penalty=1.1, presence_penalty=0.2, seed=1234
)
BATCH_MATES = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7, top_k=5, seed=7),
    SamplingParams(temperature=1.3, top_p=0.5, frequency_penalty=0.5),
    SamplingParams(temperature=0.5, min_p=0.1, seed=99, logprobs=2),
]


def generate(target_seed: int, batch: bool, steps: int = 12, vocab: int = 64) -> list[int]:
    """Run `steps` sampling steps; the target row sees the same logits whether alone or row 5 of 16."""
    target_logits = torch.Generator().manual_seed(0)
    mates_logits = torch.Generator().manual_seed(1)
    rows, target_row = (16, 5) if batch else (1, 0)
    params = [BATCH_MATES[i % len(BATCH_MATES)] for i in range(rows)]
    params[target_row] = TARGET
    seeds = [p.seed + i if p.seed is not None else None for i, p in enumerate(params)]
    seeds[target_row] = target_seed
    generators = [make_generator(s) for s in seeds]
    sampler = Sampler(seed=2 if batch else 3)  # the shared generator must not matter to seeded rows
    prompts = [[i % vocab, 3, 4] for i in range(rows)]
    outputs: list[list[int]] = [[] for _ in range(rows)]
    for _ in range(steps):
        logits = torch.randn(rows, vocab, generator=mates_logits) * 2
        logits[target_row] = torch.randn(vocab, generator=target_logits) * 2
        out = sampler(logits, params, generators, prompts, outputs, [[0]] * rows)
        for row, token in zip(outputs, out.token_ids):
            row.append(token)
    return outputs[target_row]


def test_seeded_request_is_batch_invariant() -> None:
    alone = generate(1234, batch=False)
    assert generate(1234, batch=True) == alone
    assert generate(1234, batch=False) == alone
    assert len(set(alone)) > 3  # really sampling, not stuck on one token


def test_different_seeds_give_different_tokens() -> None:
    assert generate(1234, batch=False) != generate(4321, batch=False)


def test_make_generator() -> None:
    assert make_generator(None) is None
    a, b = make_generator(5), make_generator(5)
    assert a is not None and b is not None
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))


def test_shared_generator_is_seedable() -> None:
    logits = torch.randn(32, 100, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(temperature=1.0)] * 32
    assert sample(Sampler(seed=5), logits, params).token_ids == sample(Sampler(seed=5), logits, params).token_ids


# --- logprobs ---


def test_logprobs_are_log_softmax_of_the_raw_logits() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 40, generator=gen) * 2
    params = [
        SamplingParams(temperature=0.7, top_k=5, repetition_penalty=1.5, logprobs=3),
        SamplingParams(temperature=0.0, logprobs=0),
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=1.2, presence_penalty=1.0, logprobs=20),
    ]
    out = sample(Sampler(seed=0), logits, params, prompts=[[1, 2, 3]] * 4, outputs=[[4, 5]] * 4)
    raw = torch.log_softmax(logits, dim=-1)
    assert out.logprobs[2] is None
    for i, n in ((0, 3), (1, 0), (3, 20)):
        entry = out.logprobs[i]
        assert entry is not None
        top = raw[i].topk(n).indices.tolist() if n else []
        token = out.token_ids[i]
        assert list(entry)[:n] == top  # best first
        assert set(entry) == set(top) | {token}
        for token_id, lp in entry.items():
            assert lp == pytest.approx(raw[i, token_id].item(), abs=1e-6)
    assert out.logprobs[1] == {out.token_ids[1]: pytest.approx(raw[1].max().item(), abs=1e-6)}


def test_sampler_rejects_mismatched_row_lists() -> None:
    with pytest.raises(ValueError, match="rows"):
        Sampler(seed=0)(torch.zeros(2, 4), [SamplingParams()], [None], [[1]], [[]], [[]])
