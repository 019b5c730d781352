"""Prompt groups: prompts alike in what they ask and how long they are end up together."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from batchserve.jobs.prompt_groups import GroupingConfig, kmeans, nearest, prompt_features, prompt_groups

CONFIG = GroupingConfig()


def templated_job(n: int, rng: np.random.Generator) -> tuple[list[list[int]], np.ndarray]:
    """Five instructions of 6 tokens each, about one of 16 topics, under one 60-token system prompt."""
    kinds = rng.integers(0, 5, n)
    topics = rng.integers(3000, 3016, n)
    system = list(range(1000, 1060))
    return [system + list(range(2000 + 10 * k, 2006 + 10 * k)) + [int(t)] for k, t in zip(kinds, topics)], kinds


@pytest.mark.parametrize("num_groups", [5, 6, 8])
def test_prompts_of_one_instruction_share_a_group(num_groups):
    """Every group holds one kind of instruction (a kind may span two groups where there are more groups than
    kinds), whatever the topic; the system prompt all share does not blur them."""
    prompts, kinds = templated_job(400, np.random.default_rng(1))
    groups = prompt_groups(prompt_features(prompts, CONFIG), num_groups, CONFIG)
    assert groups.min() == 0 and groups.max() < num_groups
    for g in np.unique(groups):
        assert len(set(kinds[groups == g].tolist())) == 1, Counter(kinds[groups == g].tolist())
    assert len(np.unique(groups)) >= 5


def test_kmeans_fitted_to_part_of_a_job_groups_all_of_it():
    """Fitted to 100 of 400 prompts (`fit_rows`), every prompt joins its nearest center: still one kind a group."""
    prompts, kinds = templated_job(400, np.random.default_rng(5))
    config = GroupingConfig(fit_rows=100)
    groups = prompt_groups(prompt_features(prompts, config), 6, config)
    assert all(len(set(kinds[groups == g].tolist())) == 1 for g in np.unique(groups))
    assert len(np.unique(groups)) >= 5


def test_one_template_over_documents_of_many_lengths_is_grouped_by_length():
    """One instruction over documents of unrelated words, 20-40 or 300-400 tokens long: the documents share few
    tokens, so their length decides."""
    rng = np.random.default_rng(2)
    lengths = np.where(rng.random(200) < 0.5, rng.integers(20, 40, 200), rng.integers(300, 400, 200))
    prompts = [list(range(10)) + rng.integers(100, 50000, n).tolist() for n in lengths]
    groups = prompt_groups(prompt_features(prompts, CONFIG), 2, CONFIG)
    assert len(set(groups[lengths < 100].tolist())) == 1 and len(set(groups[lengths > 100].tolist())) == 1
    assert groups[lengths < 100][0] != groups[lengths > 100][0]


def test_features_leave_out_what_every_prompt_shares_and_what_one_prompt_has():
    """Template tokens only: a prompt whose other tokens are all shared by every prompt or by none has no content
    direction, only its length."""
    prompts = [[1, 2, 3, 7], [1, 2, 3, 8], [1, 2, 3, 9, 10], [1, 2, 3, 9, 11]]
    features = prompt_features(prompts, CONFIG)
    assert np.allclose(features[:2, :-1], 0)
    assert np.allclose(np.linalg.norm(features[2:, :-1], axis=1), 1)
    assert np.allclose(features[2, :-1], features[3, :-1])  # both have only 9 (of the template tokens)
    assert features[0, -1] == features[1, -1] < features[2, -1] == features[3, -1]  # the lengths, standardized


def test_groups_are_the_same_every_time_and_never_more_than_distinct_prompts():
    prompts, _ = templated_job(300, np.random.default_rng(3))
    features = prompt_features(prompts, CONFIG)
    assert np.array_equal(prompt_groups(features, 6, CONFIG), prompt_groups(features, 6, CONFIG))
    same = prompt_features([[5, 6, 7]] * 10 + [[5, 6, 8]] * 10, CONFIG)
    assert sorted(set(prompt_groups(same, 6, CONFIG).tolist())) == [0, 1]
    assert prompt_groups(features, 1, CONFIG).tolist() == [0] * 300
    assert prompt_groups(prompt_features([], CONFIG), 4, CONFIG).tolist() == []


def test_kmeans_finds_well_separated_clusters():
    rng = np.random.default_rng(4)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = rng.integers(0, 3, 300)
    x = centers[truth] + rng.normal(0, 0.5, (300, 2))
    labels = nearest(x, kmeans(x, 3, np.random.default_rng(0), 50)[0])
    assert all(len(set(labels[truth == t].tolist())) == 1 for t in range(3)) and len(set(labels.tolist())) == 3


def test_one_group_per_few_observed_requests_up_to_a_limit():
    assert [CONFIG.num_groups(k) for k in (0, 3, 8, 24, 72, 1000)] == [1, 1, 2, 6, 16, 16]
    for bad in ({"samples_per_group": 0}, {"max_groups": 0}, {"dims": 0}, {"fit_rows": 0}, {"restarts": 0},
                {"max_share": 0}, {"length_weight": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GroupingConfig(**bad)
