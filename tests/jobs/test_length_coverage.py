"""The output-length model's range means what it says: on seeded synthetic jobs with known length distributions
(a 5% stratified sample, some lengths censored at max_tokens), the p10-p90 of the predicted total output tokens
covers the job's true total in about 80% of jobs, and the median prediction is unbiased."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from batchserve.jobs.estimate import EstimateConfig, stratified_sample
from batchserve.jobs.lengths import Completion, LengthModel, sample_size_for

N, SAMPLE, MAX_TOKENS, SEEDS, WORLDS = 200, 10, 128, 48, 40


def natural_lengths(family: str, prompts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each family's job parameters are drawn per seed, so coverage is over jobs, not one job's binomial luck."""
    n = len(prompts)
    if family == "geometric":
        return rng.geometric(1 / rng.uniform(15, 80), n)
    if family == "lognormal":
        return np.ceil(rng.lognormal(np.log(rng.uniform(20, 80)), rng.uniform(0.4, 1.0), n)).astype(int)
    if family == "bimodal":
        short = rng.random(n) < rng.uniform(0.3, 0.8)
        return np.where(short, rng.integers(3, 15, n), rng.integers(60, 300, n))
    if family == "by-prompt":  # longer prompts, longer answers: what the buckets are for
        return rng.geometric(1 / (5 + prompts / rng.uniform(4, 12)))
    assert family == "mostly-capped"  # the old collapse: most requests run to max_tokens, a few stop anywhere
    return np.where(rng.random(n) < rng.uniform(0.7, 0.97), 10**6, rng.integers(1, MAX_TOKENS, n))


def predicted_totals(family: str, seed: int, n: int = N, sample: int = SAMPLE,
                     worlds: int = WORLDS) -> tuple[np.ndarray, int]:
    """Posterior predictive draws of a seeded job's total output tokens given a stratified sample, and its truth."""
    rng = np.random.default_rng(seed)
    prompts = rng.integers(10, 500, n)
    natural = natural_lengths(family, prompts, rng)
    lengths = np.minimum(natural, MAX_TOKENS)
    requests = [SimpleNamespace(prompt_token_ids=range(p), index=i) for i, p in enumerate(prompts)]
    sampled = [r.index for r in stratified_sample(requests, sample, seed)]
    observed = [Completion(int(prompts[i]), MAX_TOKENS, int(lengths[i]), bool(natural[i] >= MAX_TOKENS))
                for i in sampled]
    est = EstimateConfig()
    model = LengthModel(observed, prompts.tolist(), est.num_buckets, est.length_prior_weight,
                        est.bucket_prior_weight, est.length_concentration)
    rest = np.setdiff1d(np.arange(n), sampled)
    totals = lengths[sampled].sum() + np.array([
        model.predict(prompts[rest], np.full(len(rest), MAX_TOKENS), np.random.default_rng([seed, w])).sum()
        for w in range(worlds)])
    return totals, int(lengths.sum())


@pytest.mark.parametrize("family", ["geometric", "lognormal", "bimodal", "by-prompt", "mostly-capped"])
def test_p10_p90_covers_the_true_total_in_about_80_percent_of_jobs_and_the_median_is_unbiased(family):
    covered, ratios = 0, []
    for seed in range(SEEDS):
        totals, truth = predicted_totals(family, seed)
        lo, median, hi = np.percentile(totals, [10, 50, 90])
        covered += lo <= truth <= hi
        ratios.append(median / truth)
    assert 0.6 <= covered / SEEDS <= 0.95, f"p10-p90 covered the truth in {covered} of {SEEDS} jobs"
    # the median of 48 jobs' ratios is itself uncertain by about +-5% (their spread is about 0.25)
    assert np.median(ratios) == pytest.approx(1.0, abs=0.1)


def test_the_old_collapse_every_sampled_request_capped():
    """Every sampled request ran to max_tokens: the range still reaches below the limit (the Kaplan-Meier
    estimate alone said every request certainly runs to it, a point), and it covers a job in which 15% stop."""
    rng = np.random.default_rng(0)
    natural = np.where(rng.random(N) < 0.85, 10**6, rng.integers(1, MAX_TOKENS, N))
    truth = int(np.minimum(natural, MAX_TOKENS).sum())
    capped = [Completion(100, MAX_TOKENS, MAX_TOKENS, censored=True)] * 3
    est = EstimateConfig()
    model = LengthModel(capped, [100] * N, est.num_buckets, est.length_prior_weight, est.bucket_prior_weight,
                        est.length_concentration)
    totals = 3 * MAX_TOKENS + np.array([model.predict([100] * (N - 3), [MAX_TOKENS] * (N - 3), rng).sum()
                                        for _ in range(200)])
    lo, hi = np.percentile(totals, [10, 90])
    assert lo < truth <= hi == N * MAX_TOKENS


def test_the_sample_it_names_narrows_the_token_range_to_about_the_target():
    """A 24-request sample of a 2,000-request job leaves the output-token range at about +-20%; a new sample of the
    size `sample_size_for` names for +-10% gives about +-10% (a small sample's own spread is itself uncertain,
    so 'about': within half and one and a half times the target, across jobs)."""
    target, before, after = 0.10, [], []
    for family in ("lognormal", "bimodal", "by-prompt"):
        for seed in range(3):
            totals, _ = predicted_totals(family, seed, n=2000, sample=24, worlds=100)
            k = sample_size_for(totals, 24, 2000, target, EstimateConfig().length_concentration)
            assert k is not None and 24 < k < 2000
            before.append(half_width(totals))
            after.append(half_width(predicted_totals(family, seed, n=2000, sample=k, worlds=100)[0]))
    assert np.median(before) > 1.5 * target
    assert 0.5 * target <= np.median(after) <= 1.5 * target, f"half-widths after: {np.round(after, 3)}"


def test_no_larger_sample_is_named_where_the_range_is_narrow_and_never_more_than_the_job():
    totals, _ = predicted_totals("geometric", 0, n=2000, sample=400, worlds=100)
    concentration = EstimateConfig().length_concentration
    assert half_width(totals) < 0.10 and sample_size_for(totals, 400, 2000, 0.10, concentration) is None
    assert sample_size_for(totals, 400, 2000, 0.001, concentration) == 2000


def half_width(totals: np.ndarray) -> float:
    """The p10-p90 half-width relative to the median."""
    lo, median, hi = np.percentile(totals, [10, 50, 90])
    return (hi - lo) / 2 / median
