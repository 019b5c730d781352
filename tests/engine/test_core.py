"""Engine.step: the schedule/execute/update loop, its typed output and the router's load figure."""

from __future__ import annotations

from batchserve.config import CacheConfig, scheduler_config
from batchserve.core.scheduler import ScheduledBatch, Scheduler, StepResult
from batchserve.engine import AsyncEngine, Engine
from batchserve.request import Request, RequestStatus, SamplingParams


class UnitStepExecutor:
    """Every step takes exactly 1.0; remembers the batches it ran."""

    def __init__(self) -> None:
        self.batches: list[ScheduledBatch] = []

    def execute(self, batch: ScheduledBatch) -> StepResult:
        self.batches.append(batch)
        return StepResult(1.0)


def req(rid: str, prompt: list[int], max_tokens: int, arrival: float = 0.0) -> Request:
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), arrival_time=arrival)


def make_engine(num_blocks: int = 64, block_size: int = 16, caching: bool = True, **overrides) -> Engine:
    overrides.setdefault("max_num_seqs", 8)
    sched = Scheduler(scheduler_config("sarathi", **overrides), CacheConfig(block_size, num_blocks, caching))
    return Engine(sched, UnitStepExecutor())


def drain(engine: Engine) -> list[Request]:
    done = []
    for _ in range(10_000):
        if not engine.has_unfinished():
            return done
        done += engine.step().finished
    raise AssertionError("engine did not drain")


def test_lone_request_timeline_step_by_step() -> None:
    """Prefill step samples the first token; each later step one more; the last ends the request."""
    engine = make_engine()
    r = req("r", [1, 2, 3], max_tokens=4, arrival=0.0)
    engine.add_request(r)
    assert drain(engine) == [r]
    assert (r.first_scheduled_time, r.first_token_time, r.finish_time) == (0.0, 1.0, 4.0)
    assert r.status == RequestStatus.FINISHED_LENGTH and r.num_output_tokens == 4
    assert engine.num_steps == 4


def test_step_output_carries_the_batch_its_result_and_the_finished_requests() -> None:
    engine = make_engine()
    short, long = req("short", [1, 2], max_tokens=1), req("long", [3, 4], max_tokens=3)
    engine.add_request(short)
    engine.add_request(long)
    out = engine.step()
    assert out.batch is engine.executor.batches[-1]
    assert out.batch.requests == [short, long] and out.batch.num_tokens == [2, 2]
    assert out.result is not None and out.result.duration == 1.0
    assert out.finished == [short]
    out = engine.step()
    assert out.batch.requests == [long] and out.finished == []


def test_outstanding_tokens_return_to_zero_without_cache_hits() -> None:
    engine = make_engine(caching=False)
    for i in range(3):
        engine.add_request(req(str(i), [i] * 40, max_tokens=7))
    assert engine.outstanding_tokens == 3 * 47
    drain(engine)
    assert engine.outstanding_tokens == 0


def test_outstanding_tokens_count_down_with_preemption() -> None:
    """Recomputed tokens after a preemption are owed again, and paid again: the figure ends at zero."""
    engine = make_engine(caching=False, num_blocks=5, block_size=4)
    a, b = req("a", [1] * 8, max_tokens=6), req("b", [2] * 8, max_tokens=6, arrival=0.5)
    engine.add_request(a)
    engine.add_request(b)
    drain(engine)
    assert a.num_preemptions + b.num_preemptions >= 1
    assert engine.outstanding_tokens == 0


def test_outstanding_tokens_return_to_zero_with_cache_hits() -> None:
    engine = make_engine(caching=True)
    shared = list(range(100, 148))  # three 16-token blocks
    engine.add_request(req("a", shared + [1], max_tokens=3))
    drain(engine)
    assert engine.outstanding_tokens == 0
    b = req("b", shared + [2], max_tokens=3)
    engine.add_request(b)
    drain(engine)
    assert b.num_cached_tokens == 48
    assert engine.outstanding_tokens == 0  # actual: 48, the cache hit


def test_empty_engine_step_is_a_no_op() -> None:
    engine = make_engine()
    out = engine.step()
    assert out.result is None and out.finished == [] and out.batch.is_empty
    assert engine.now == 0.0 and engine.num_steps == 0


def test_a_row_the_executor_marks_complete_finishes_as_stopped() -> None:
    """A finished grammar (`StepResult.stop_rows`) stops its request, also on the token that reaches max_tokens."""
    engine = make_engine()
    first = req("first", [1, 2], max_tokens=4)
    at_limit = req("at_limit", [3, 4], max_tokens=1)
    engine.add_request(first)
    engine.add_request(at_limit)
    engine.executor.execute = lambda batch: StepResult(1.0, [[7]] * len(batch.requests), stop_rows=frozenset({0, 1}))
    assert engine.step().finished == [first, at_limit]
    assert [r.status for r in (first, at_limit)] == [RequestStatus.FINISHED_STOPPED] * 2
    assert first.output_token_ids == [7] and engine.outstanding_tokens == 0


class PendingUnitStep:
    """`UnitStepExecutor`'s step as async scheduling launches it: the result is read later."""

    def __init__(self, result: StepResult) -> None:
        self._result = result

    def result(self) -> StepResult:
        return self._result


class AsyncUnitStepExecutor(UnitStepExecutor):
    def execute_async(self, batch: ScheduledBatch) -> PendingUnitStep:
        return PendingUnitStep(self.execute(batch))


def test_async_scheduling_reports_a_preemption_whose_batch_lost_every_row() -> None:
    """A request that samples its last token needs a block for the next step, scheduled before it finishes; the
    block comes from preempting another, and then the finish drops the next batch's only row. The preemption is
    reported with the next batch that starts, and the router's load figure comes back to zero."""
    sched = Scheduler(scheduler_config("sarathi", max_num_seqs=4, max_num_batched_tokens=16, watermark=0.0),
                      CacheConfig(block_size=4, num_blocks=2, enable_prefix_caching=False))
    engine = AsyncEngine(sched, AsyncUnitStepExecutor())
    last, other = req("last", [1, 2, 3, 4], max_tokens=1), req("other", [5, 6, 7], max_tokens=3)
    engine.add_request(last)
    engine.add_request(other)
    outputs = []
    for _ in range(100):
        if not engine.has_unfinished():
            break
        outputs.append(engine.step())
    assert sched.num_preemptions == 1 and other.num_preemptions == 1
    assert sum(len(o.batch.preempted) for o in outputs) == 1
    assert last.num_output_tokens == 1 and other.num_output_tokens == 3
    assert engine.outstanding_tokens == 0
