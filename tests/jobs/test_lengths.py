"""The output-length model: censored at max_tokens, per prompt group, drawn within each request's limit."""

from __future__ import annotations

import numpy as np
import pytest

from batchserve.jobs.lengths import Completion, LengthDistribution, LengthModel


def stopped(length: int, prompt_len: int = 10, max_tokens: int = 100) -> Completion:
    return Completion(prompt_len, max_tokens, length, censored=False)


def capped(max_tokens: int, prompt_len: int = 10) -> Completion:
    return Completion(prompt_len, max_tokens, max_tokens, censored=True)


def test_stopped_completions_give_their_empirical_distribution():
    dist = LengthDistribution.kaplan_meier([stopped(5), stopped(5), stopped(20), stopped(30)])
    assert dist.values.tolist() == [5, 20, 30]
    assert dist.masses.tolist() == pytest.approx([0.5, 0.25, 0.25]) and dist.tail == pytest.approx(0)


def test_a_completion_cut_by_max_tokens_is_only_a_lower_bound():
    """Kaplan-Meier: a capped completion counts as still going up to its cap, and its mass moves to later stops
    (or to the unknown tail, where a request runs to its own limit)."""
    dist = LengthDistribution.kaplan_meier([stopped(5), capped(10), stopped(20), capped(40)])
    assert dist.values.tolist() == [5, 20]
    assert dist.masses.tolist() == pytest.approx([0.25, 0.375]) and dist.tail == pytest.approx(0.375)
    rng = np.random.default_rng(0)
    draws = dist.draw(np.full(4000, 64), rng)
    assert set(draws.tolist()) == {5, 20, 64}
    assert np.mean(draws == 64) == pytest.approx(0.375, abs=0.03)
    assert dist.draw(np.full(100, 8), rng).max() == 8  # never past the request's own max_tokens


def test_all_capped_means_every_request_runs_to_its_limit():
    dist = LengthDistribution.kaplan_meier([capped(16), capped(16)])
    assert dist.tail == 1.0
    assert dist.draw(np.array([16, 300]), np.random.default_rng(0)).tolist() == [16, 300]


def test_groups_have_their_own_lengths_and_thin_ones_lean_on_the_pool():
    short = [stopped(4) for _ in range(5)]
    long = [stopped(40) for _ in range(5)]
    groups = [0] * 5 + [1] * 5
    model = LengthModel(short + long, groups, num_groups=3, prior_weight=0, group_prior_weight=0, concentration=1)
    rng = np.random.default_rng(0)
    assert model.draw([0, 1, 0], [64, 64, 64], model.expected(), rng).tolist() == [4, 40, 4]
    # a group no completion is of, and group -1 (requests of no group), draw from the pool: half 4, half 40
    for group in (2, -1):
        assert np.mean(model.draw([group] * 4000, [64] * 4000, model.expected(), rng) == 4) == pytest.approx(
            0.5, abs=0.03)
    # 2 pseudo-completions from the pool beside its own 5: the pool's length 4 (half of it) 2/7 * 1/2 of the time
    pooled = LengthModel(short + long, groups, num_groups=2, prior_weight=0, group_prior_weight=2, concentration=1)
    draws = pooled.draw([1] * 4000, [64] * 4000, pooled.expected(), rng)
    assert np.mean(draws == 4) == pytest.approx(1 / 7, abs=0.02)
    thin = LengthModel(short + long[:1], groups[:6], num_groups=2, prior_weight=0, group_prior_weight=2,
                       concentration=1)
    # (20,000 draws: the share's own sampling error 0.004)
    assert np.mean(thin.draw([1] * 20000, [64] * 20000, thin.expected(), rng) == 4) == pytest.approx(2 / 3 * 5 / 6,
                                                                                              abs=0.02)


def test_another_jobs_completions_teach_only_the_pool():
    """Completions of group -1 (a record of another job) are in the pooled lengths, in no group's own."""
    model = LengthModel([stopped(4)] * 5 + [stopped(40)] * 5, [0] * 5 + [-1] * 5, num_groups=1, prior_weight=0,
                        group_prior_weight=0, concentration=1)
    rng = np.random.default_rng(0)
    assert set(model.draw([0] * 100, [64] * 100, model.expected(), rng).tolist()) == {4}
    assert set(model.draw([-1] * 100, [64] * 100, model.expected(), rng).tolist()) == {4, 40}


def test_each_completion_needs_a_group_of_the_model():
    with pytest.raises(ValueError, match="a group in -1..1 for each of 2 completions"):
        LengthModel([stopped(4)] * 2, [0, 2], 2, 0, 0, 1)
    with pytest.raises(ValueError, match="for each of 2 completions"):
        LengthModel([stopped(4)] * 2, [0], 2, 0, 0, 1)


def test_a_completion_keeps_its_request_id_through_a_record():
    """A record written by this version names each completion's request; an older one (four numbers) loads too."""
    with_id = Completion(12, 64, 30, False, "req-7")
    assert Completion.from_list(with_id.to_list()) == with_id
    assert Completion.from_list([12, 64, 64, 1]) == Completion(12, 64, 64, True, None)


@pytest.mark.parametrize("concentration", [1.0, 0.5])
def test_posterior_draws_spread_with_the_evidence(concentration):
    """Dirichlet(a) weights on n completions: the posterior mean length has the completions' plug-in variance over
    a n + 1 (a = 1, the Bayesian bootstrap: 133.25 / 41 for the lengths 1..40)."""
    obs = [stopped(n) for n in range(1, 41)]
    model = LengthModel(obs, [0] * len(obs), num_groups=1, prior_weight=0, group_prior_weight=0,
                        concentration=concentration)
    rng = np.random.default_rng(0)
    means = [model.draw([0] * 4000, [100] * 4000, model.posterior(rng), rng).mean() for _ in range(200)]
    sd = np.sqrt(133.25 / (40 * concentration + 1))
    assert np.mean(means) == pytest.approx(20.5, abs=0.5)
    assert np.std(means) == pytest.approx(np.sqrt(sd**2 + 133.25 / 4000), rel=0.15)


def test_the_prior_keeps_all_capped_from_meaning_certainly_capped():
    """Three of three capped: the prior (weight 1 against 3) keeps a Beta(1, 3) share, mean 1/4, whose natural
    lengths are log-uniform on 1..768, so some draws stop early; the old Kaplan-Meier alone gave every draw the
    limit. E[min(L, M)] for L log-uniform on [1, 2M] is ((M - 1) + M ln 2) / ln 2M."""
    model = LengthModel([capped(384)] * 3, [0] * 3, num_groups=1, prior_weight=1, group_prior_weight=2,
                        concentration=1)
    rng = np.random.default_rng(0)
    totals = np.array([model.predict([0] * 200, [384] * 200, rng).sum() for _ in range(400)])
    full = 200 * 384
    prior_mean = (383 + 384 * np.log(2)) / np.log(768) / 384
    assert totals.mean() / full == pytest.approx(3 / 4 + 1 / 4 * prior_mean, abs=0.02)
    lo, hi = np.percentile(totals, [10, 90])
    assert hi <= full and lo < 0.7 * full
    assert LengthModel([capped(384)] * 3, [0] * 3, 1, 0, 0, 1).predict([0] * 20, [384] * 20, rng).tolist() == [384] * 20


def test_the_prior_is_log_uniform_up_to_twice_the_limit():
    lengths = LengthDistribution.prior().draw(np.full(20000, 128), np.random.default_rng(0))
    assert lengths.min() >= 1 and lengths.max() == 128
    assert np.mean(lengths == 128) == pytest.approx(np.log(2) / np.log(256), abs=0.01)
    assert np.mean(lengths <= 16) == pytest.approx(np.log(16) / np.log(256), abs=0.01)


def test_no_evidence_is_an_error():
    with pytest.raises(ValueError, match="no observed completions"):
        LengthModel([], [], 1, 1, 2, 1)
