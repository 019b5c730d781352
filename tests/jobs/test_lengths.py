"""The output-length model: censored at max_tokens, per prompt-length bucket, drawn within each request's limit."""

from __future__ import annotations

import numpy as np
import pytest

from batchserve.jobs.lengths import Completion, LengthDistribution, LengthModel


def stopped(length: int, prompt_len: int = 10, max_tokens: int = 100) -> Completion:
    return Completion(prompt_len, max_tokens, length, censored=False)


def capped(max_tokens: int, prompt_len: int = 10) -> Completion:
    return Completion(prompt_len, max_tokens, max_tokens, censored=True)


def test_stopped_completions_give_their_empirical_distribution():
    dist = LengthDistribution([stopped(5), stopped(5), stopped(20), stopped(30)])
    assert dist.values.tolist() == [5, 20, 30]
    assert dist.masses.tolist() == pytest.approx([0.5, 0.25, 0.25]) and dist.tail == pytest.approx(0)


def test_a_completion_cut_by_max_tokens_is_only_a_lower_bound():
    """Kaplan-Meier: a capped completion counts as still going up to its cap, and its mass moves to later stops
    (or to the unknown tail, where a request runs to its own limit)."""
    dist = LengthDistribution([stopped(5), capped(10), stopped(20), capped(40)])
    assert dist.values.tolist() == [5, 20]
    assert dist.masses.tolist() == pytest.approx([0.25, 0.375]) and dist.tail == pytest.approx(0.375)
    rng = np.random.default_rng(0)
    draws = dist.draw(np.full(4000, 64), rng)
    assert set(draws.tolist()) == {5, 20, 64}
    assert np.mean(draws == 64) == pytest.approx(0.375, abs=0.03)
    assert dist.draw(np.full(100, 8), rng).max() == 8  # never past the request's own max_tokens


def test_all_capped_means_every_request_runs_to_its_limit():
    dist = LengthDistribution([capped(16), capped(16)])
    assert dist.tail == 1.0
    assert dist.draw(np.array([16, 300]), np.random.default_rng(0)).tolist() == [16, 300]


def test_buckets_follow_prompt_length_and_thin_ones_borrow_the_pool():
    short = [stopped(4, prompt_len=10) for _ in range(5)]
    long = [stopped(40, prompt_len=500) for _ in range(5)]
    model = LengthModel(short + long, job_prompt_lens=[10] * 50 + [500] * 50, num_buckets=2, min_samples=3)
    dists = model.distributions(model.observations)
    rng = np.random.default_rng(0)
    assert model.draw([10, 500, 11], [64, 64, 64], dists, rng).tolist() == [4, 40, 4]
    thin = LengthModel(short + long[:2], job_prompt_lens=[10] * 50 + [500] * 50, num_buckets=2, min_samples=3)
    pooled = thin.draw([500] * 2000, [64] * 2000, thin.distributions(thin.observations), rng)
    assert set(pooled.tolist()) == {4, 40}


def test_bootstrap_draws_spread_with_the_evidence():
    obs = [stopped(n) for n in range(1, 41)]
    model = LengthModel(obs, job_prompt_lens=[10], num_buckets=1, min_samples=1)
    rng = np.random.default_rng(0)
    means = [model.draw([10] * 200, [100] * 200, model.resample(rng), rng).mean() for _ in range(20)]
    assert 15 < np.mean(means) < 26 and np.std(means) > 0.5


def test_no_evidence_is_an_error():
    with pytest.raises(ValueError, match="no observed completions"):
        LengthModel([], [10], 1, 1)
