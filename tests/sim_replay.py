"""One request list through the simulator twice: every decode listed (the core scheduler) or lazy (SimScheduler's
cohort, runs of decode steps fast-forwarded), for tests that the two timelines agree."""

from __future__ import annotations

from batchserve.config import CacheConfig, SchedulerConfig
from batchserve.core.scheduler import Scheduler
from batchserve.engine import Engine
from batchserve.lora import LoRAAdmission
from batchserve.request import Request
from batchserve.sim.batch import SimBatch
from batchserve.sim.engine import SimEngine
from batchserve.sim.executor import SimExecutor
from batchserve.sim.scheduler import SimScheduler


class ExplicitScheduler(Scheduler):
    """The core scheduler, every decode listed, handing out the simulator's batch type."""

    batch_type = SimBatch


def replay(lazy: bool, requests: list[Request], executor: SimExecutor, sched: SchedulerConfig,
           cache: CacheConfig, max_loras: int = 0) -> list[tuple]:
    """Each request's (id, first token time, finish time, preemptions) after running all of them from time 0."""
    scheduler = (SimScheduler if lazy else ExplicitScheduler)(sched, cache)
    if max_loras:
        scheduler.admission_check = LoRAAdmission(max_loras)
    engine = (SimEngine if lazy else Engine)(scheduler, executor)
    for r in requests:
        engine.add_request(r)
    while engine.has_unfinished():
        engine.step()
    return [(r.request_id, r.first_token_time, r.finish_time, r.num_preemptions) for r in requests]
