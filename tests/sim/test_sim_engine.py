"""SimEngine.step: fast-forwarded runs of decode steps, their horizon, and the counts they keep."""

from __future__ import annotations

import pytest

from batchserve.config import CacheConfig, scheduler_config
from batchserve.core.batch import StepResult
from batchserve.request import Request, RequestStatus, SamplingParams
from batchserve.sim.batch import DecodeRunResult, SimBatch
from batchserve.sim.engine import SimEngine
from batchserve.sim.scheduler import SimScheduler

INF = float("inf")


class UnitStepExecutor:
    """Every step takes exactly 1.0; grants decode runs per `ff` ("off", "limit" or "horizon")."""

    def __init__(self, ff: str = "horizon") -> None:
        self.ff = ff
        self.granted: list[int] = []

    def max_decode_steps(self, batch: SimBatch, horizon_s: float, limit: int) -> int:
        if self.ff == "off":
            return 1
        if self.ff == "limit" or horizon_s == INF:
            return limit
        # steps start at 0, 1, 2, ...: count those starting strictly before the horizon
        return max(1, min(limit, -int(-horizon_s // 1)))

    def execute(self, batch: SimBatch) -> StepResult:
        self.granted.append(batch.num_steps)
        if batch.num_steps == 1:
            return StepResult(1.0)
        return DecodeRunResult.from_offsets([float(i + 1) for i in range(batch.num_steps)])


def req(rid: str, prompt: list[int], max_tokens: int, arrival: float = 0.0) -> Request:
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), arrival_time=arrival)


def make_engine(ff: str = "horizon", num_blocks: int = 64, block_size: int = 16, caching: bool = True,
                **overrides) -> SimEngine:
    overrides.setdefault("max_num_seqs", 8)
    sched = SimScheduler(scheduler_config("sarathi", **overrides), CacheConfig(block_size, num_blocks, caching))
    return SimEngine(sched, UnitStepExecutor(ff))


def drain(engine: SimEngine, until: float = INF) -> list[Request]:
    done = []
    for _ in range(10_000):
        if not engine.has_unfinished():
            return done
        done += engine.step(until).finished
    raise AssertionError("engine did not drain")


def test_lone_request_timeline_step_by_step() -> None:
    """Without fast-forward, each call runs one step: the core engine's timeline."""
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
    assert engine.step().finished == []
    assert engine.step().finished == [short]
    assert short.finish_time == 5.0 and short.num_output_tokens == 5
    assert engine.step().finished == [long]
    assert long.finish_time == 20.0
    assert engine.executor.granted == [1, 4, 15]


def test_token_times_of_a_run_are_each_steps_end() -> None:
    engine = make_engine(ff="limit")
    engine.track_token_times = True
    r = req("r", [1, 2, 3], max_tokens=6)
    engine.add_request(r)
    drain(engine)
    assert r.token_times == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


@pytest.mark.parametrize("ff", ["off", "limit"])
def test_outstanding_tokens_count_every_step_of_a_run(ff: str) -> None:
    """With cache hits and preemptions, stepwise or fast-forwarded, the load figure returns to zero."""
    engine = make_engine(ff=ff, caching=True, num_blocks=9, block_size=4)
    shared = [7] * 8
    engine.add_request(req("a", shared + [1] * 3, max_tokens=9))
    assert engine.outstanding_tokens == 11 + 9
    engine.step()  # a's prompt: its two shared blocks are now cached
    for rid in "bc":
        engine.add_request(req(rid, shared + [2] * 3, max_tokens=9))
    drain(engine)
    assert engine.scheduler.num_preemptions >= 1
    assert engine.scheduler.kv.num_hits > 0
    assert (max(engine.executor.granted) > 1) == (ff == "limit")
    assert engine.outstanding_tokens == 0


def _two_decoders_short_of_blocks(ff: str) -> SimEngine:
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
    out = engine.step()
    assert out.result is None and out.finished == []
    assert engine.now == 0.0 and engine.num_steps == engine.num_iterations == 0
