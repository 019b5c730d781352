"""Prefix affinity: follow the longest cached prefix, yield to balance past ratio and slack, forget by LRU."""

from __future__ import annotations

import pytest

from batchserve.sim.router import PrefixAffinity, RouterConfig


def test_a_request_follows_the_replica_holding_its_longest_prefix() -> None:
    router = PrefixAffinity([100, 100, 100])
    assert router.route([1, 2, 3], [0, 0, 0]) == 0
    assert router.route([1, 5], [5000, 5000, 0]) == 2  # overloaded past the default slack: 1 and 5 now on 2 too
    assert router.route([1, 2, 7], [0, 0, 0]) == 0  # two leading keys on replica 0, one on replica 2
    assert router.route([1, 5, 8], [0, 0, 0]) == 2


def test_no_match_goes_to_the_least_loaded_replica() -> None:
    assert PrefixAffinity([100, 100]).route([5], [3, 1]) == 1


def test_affinity_yields_once_load_exceeds_ratio_times_least_plus_slack() -> None:
    config = RouterConfig(balance_ratio=2.0, balance_slack_tokens=100)
    router = PrefixAffinity([100, 100], config)
    assert router.route([1], [0, 0]) == 0
    assert router.route([1, 2], [2 * 50 + 100, 50]) == 0  # at the bound: stays
    assert router.route([1, 3], [2 * 50 + 101, 50]) == 1  # past it: the least-loaded replica


def test_each_replica_remembers_at_most_its_capacity_of_keys() -> None:
    router = PrefixAffinity([2, 2])
    router.route([1, 2, 3], [0, 1])  # replica 0 keeps only 2 and 3
    assert router.route([1], [5, 0]) == 1


def test_router_config_rejects_a_ratio_below_one() -> None:
    with pytest.raises(ValueError, match="balance_ratio"):
        RouterConfig(balance_ratio=0.5)
