"""Sharded jobs route by the simulator's prefix affinity: a request follows its anchor unless that overloads."""

from __future__ import annotations

from batchserve.jobs.batch_io import BatchRequest
from batchserve.jobs.routing import JobRouter
from batchserve.request import SamplingParams
from batchserve.sim.router import RouterConfig


def req(custom_id: str, anchor: str | None = None, prompt_len: int = 100) -> BatchRequest:
    return BatchRequest(0, 1, custom_id, "/v1/completions", {}, list(range(prompt_len)),
                        SamplingParams(max_tokens=10, n=2), anchor)


def test_followers_go_where_their_anchor_went_and_loads_count_prompt_plus_outputs() -> None:
    router = JobRouter(2, window=100)
    assert router.route(req("a")) == 0
    assert router.route(req("b")) == 1  # no anchor: the least loaded
    assert [router.route(req(f"a{i}", anchor="a")) for i in range(3)] == [0, 0, 0]
    assert router.loads == [4 * (100 + 2 * 10), 100 + 2 * 10]
    router.finished(0, req("a"))
    assert router.loads[0] == 3 * 120


def test_a_follower_leaves_an_overloaded_anchor_replica() -> None:
    router = JobRouter(2, window=100, config=RouterConfig(balance_ratio=1.0, balance_slack_tokens=0))
    router.route(req("a", prompt_len=1000))
    assert router.route(req("a1", anchor="a")) == 1  # replica 0 carries more than 1.0 x 0 + 0
