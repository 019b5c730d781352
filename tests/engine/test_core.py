"""Engine.step: the schedule/execute/update loop, fast-forwarded decode runs and the router's load figure."""

from __future__ import annotations

import pytest

from batchserve.config import CacheConfig, scheduler_config
from batchserve.core.scheduler import ScheduledBatch, Scheduler, StepResult
from batchserve.engine import Engine
from batchserve.request import Request, RequestStatus, SamplingParams

INF = float("inf")


class UnitStepExecutor:
    """Every step takes exactly 1.0; grants decode runs per `ff` ("off", "limit" or "horizon")."""

    def __init__(self, ff: str = "horizon") -> None:
        self.ff = ff
        self.granted: list[int] = []

    def max_decode_steps(self, batch: ScheduledBatch, horizon_s: float, limit: int) -> int:
        if self.ff == "off":
            return 1
        if self.ff == "limit" or horizon_s == INF:
            return limit
        # steps start at 0, 1, 2, ...: count those starting strictly before the horizon
        return max(1, min(limit, -int(-horizon_s // 1)))

    def execute(self, batch: ScheduledBatch) -> StepResult:
        self.granted.append(batch.num_steps)
        return StepResult([float(i + 1) for i in range(batch.num_steps)])


def req(rid: str, prompt: list[int], max_tokens: int, arrival: float = 0.0) -> Request:
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), arrival_time=arrival)


def make_engine(ff: str = "horizon", lazy: bool = True, num_blocks: int = 64, block_size: int = 16,
                caching: bool = True, **overrides) -> Engine:
    overrides.setdefault("max_num_seqs", 8)
    sched = Scheduler(scheduler_config("sarathi", **overrides), CacheConfig(block_size, num_blocks, caching),
                      lazy_decodes=lazy)
    return Engine(sched, UnitStepExecutor(ff))


def drain(engine: Engine, until: float = INF) -> list[Request]:
    done = []
    for _ in range(10_000):
        if not engine.has_unfinished():
            return done
        done += engine.step(until)
    raise AssertionError("engine did not drain")


def test_lone_request_timeline_step_by_step() -> None:
    """Prefill step samples the first token; each later step one more; the last ends the request."""
    engine = make_engine(ff="off")
    r = req("r", [1, 2, 3], max_tokens=4, arrival=0.0)
    engine.add_request(r)
    assert drain(engine) == [r]
    assert (r.first_scheduled_time, r.first_token_time, r.finish_time) == (0.0, 1.0, 4.0)
    assert r.status == RequestStatus.FINISHED_LENGTH and r.num_output_tokens == 4
    assert engine.num_steps == engine.num_iterations == 4


def test_fast_forward_runs_every_decode_in_one_iteration_with_the_same_timeline() -> None:
    engine = make_engine(ff="limit")
    r = req("r", [1, 2, 3], max_tokens=50)
    engine.add_request(r)
    assert drain(engine) == [r]
    assert (r.first_token_time, r.finish_time) == (1.0, 50.0)
    assert engine.num_steps == 50
    assert engine.num_iterations == 2  # the prompt step, then one run of 49 decode steps
    assert engine.executor.granted == [1, 49]


def test_fast_forward_stops_before_the_horizon() -> None:
    """A run holds only the steps that start strictly before `until`, so an arrival there joins the next step."""
    engine = make_engine(ff="horizon")
    r = req("r", [1, 2, 3], max_tokens=50)
    engine.add_request(r)
    engine.step()  # prompt: now = 1.0
    engine.step(until=11.5)  # steps start at 1, 2, ..., 11 < 11.5: 11 steps
    assert engine.now == 12.0 and engine.num_steps == 12
    engine.step(until=14.0)  # steps start at 12, 13 < 14: 2 steps
    assert engine.now == 14.0 and engine.num_iterations == 3
    drain(engine)
    assert r.finish_time == 50.0 and r.num_output_tokens == 50


def test_requests_finishing_mid_run_end_the_run() -> None:
    """No request finishes before a run's last step: a short request cuts the run at its finish."""
    engine = make_engine(ff="limit")
    short = req("short", [1], max_tokens=5)
    long = req("long", [2], max_tokens=20)
    engine.add_request(short)
    engine.add_request(long)
    finished = engine.step()
    assert finished == []
    assert engine.step() == [short]
    assert short.finish_time == 5.0 and short.num_output_tokens == 5
    assert engine.step() == [long]
    assert long.finish_time == 20.0
    assert engine.executor.granted == [1, 4, 15]


@pytest.mark.parametrize("lazy", [False, True])
def test_outstanding_tokens_return_to_zero_without_cache_hits(lazy: bool) -> None:
    engine = make_engine(lazy=lazy, caching=False)
    for i in range(3):
        engine.add_request(req(str(i), [i] * 40, max_tokens=7))
    assert engine.outstanding_tokens == 3 * 47
    drain(engine)
    assert engine.outstanding_tokens == 0


def test_outstanding_tokens_count_down_with_preemption() -> None:
    """Recomputed tokens after a preemption are owed again, and paid again: the figure ends at zero."""
    engine = make_engine(lazy=True, caching=False, num_blocks=5, block_size=4)
    a, b = req("a", [1] * 8, max_tokens=6), req("b", [2] * 8, max_tokens=6, arrival=0.5)
    engine.add_request(a)
    engine.add_request(b)
    drain(engine)
    assert a.num_preemptions + b.num_preemptions >= 1
    assert engine.outstanding_tokens == 0


@pytest.mark.parametrize("lazy", [False, True])
def test_outstanding_tokens_return_to_zero_with_cache_hits(lazy: bool) -> None:
    engine = make_engine(lazy=lazy, caching=True)
    shared = list(range(100, 148))  # three 16-token blocks
    engine.add_request(req("a", shared + [1], max_tokens=3))
    drain(engine)
    assert engine.outstanding_tokens == 0
    b = req("b", shared + [2], max_tokens=3)
    engine.add_request(b)
    drain(engine)
    assert b.num_cached_tokens == 48
    assert engine.outstanding_tokens == 0  # actual: 48, the cache hit


def _two_decoders_short_of_blocks(ff: str) -> Engine:
    """Two 1-token prompts decoding in a 5-block pool of 1-token blocks: the pool runs dry at tick 2."""
    engine = make_engine(ff=ff, num_blocks=5, block_size=1, caching=False)
    engine.add_request(req("a", [1], max_tokens=3))
    engine.add_request(req("b", [2], max_tokens=3))
    engine.step()  # both prompts: 2 blocks used
    engine.step()  # the first decode tick (a run of it, when fast-forwarding)
    return engine


def test_truncated_decode_run_takes_the_same_steps_as_step_by_step() -> None:
    slow, fast = _two_decoders_short_of_blocks("off"), _two_decoders_short_of_blocks("limit")
    assert fast.num_steps == slow.num_steps == 2
    assert fast.now == slow.now


def test_truncated_decode_run_allocates_no_block_early() -> None:
    """After the same two steps, a truncated fast-forward run leaves the pool as step-by-step does:
    2 requests x 2 computed tokens = 4 blocks in use, 1 free."""
    slow, fast = _two_decoders_short_of_blocks("off"), _two_decoders_short_of_blocks("limit")
    assert slow.scheduler.kv.num_free_blocks == 1
    assert fast.scheduler.kv.num_free_blocks == 1  # actual: 0, "a" holds its block for tick 2


def test_both_runs_of_the_short_pool_finish_identically() -> None:
    slow, fast = _two_decoders_short_of_blocks("off"), _two_decoders_short_of_blocks("limit")
    drain(slow)
    drain(fast)
    assert slow.now == fast.now
    assert slow.scheduler.kv.num_free_blocks == fast.scheduler.kv.num_free_blocks == 5
    assert slow.scheduler.num_preemptions == fast.scheduler.num_preemptions >= 1


def test_empty_engine_step_is_a_no_op() -> None:
    engine = make_engine()
    assert engine.step() == []
    assert engine.now == 0.0 and engine.num_steps == 0
