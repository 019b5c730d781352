"""The simulated twin of a job: the job loop's backend over simulated replicas, and a whole simulated run.

Same ordering, prefix gating and routing as the real job (they share `feed`);
only step times are predicted and token values synthetic. Each completion
generates the length it is given (learned from evidence), else its max_tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

from ..engine.parallel_sampling import SiblingGate
from ..outputs import CompletionOutput, RequestMetrics, RequestOutput
from ..request import Request
from ..sim.engine import SimEngine
from ..sim.router import RouterConfig
from ..sim.simulate import SimSetup, build_cluster
from .batch_io import BatchRequest, Entry
from .routing import JobRouter
from .runner import Finished, JobConfig, Recorder, Summary, feed


class SimBackend:
    """One simulated replica: requests become scheduler Requests stamped with the simulated clock."""

    def __init__(self, engine: SimEngine, lengths: Mapping[str, Sequence[int]] | None = None) -> None:
        self.engine = engine
        self.lengths = lengths or {}  # custom_id -> each completion's output length; absent: its max_tokens
        self.block_size = engine.scheduler.kv.block_size
        self.siblings = SiblingGate(engine.scheduler.cache_config)  # n > 1 computes the prompt once, as in the engine
        self._live: dict[str, tuple[BatchRequest, list[Request]]] = {}
        self._parent: dict[Request, str] = {}  # each child's custom_id (ids may contain any character)
        self._computed_prompt_tokens = 0
        self._generation_tokens = 0
        self._last_arrival = -math.inf

    def add(self, req: BatchRequest) -> None:
        params = req.params
        assert params is not None
        n = params.n
        limits = self.lengths.get(req.custom_id, [params.max_tokens] * n)
        # Strictly increasing arrivals, as the engine's wall clock gives: FCFS then ranks an n > 1 prompt's held
        # siblings by their parent's arrival, ahead of requests added after it in the same admission burst.
        self._last_arrival = max(self.engine.now, math.nextafter(self._last_arrival, math.inf))
        children = [
            Request(req.custom_id if n == 1 else f"{req.custom_id}#{k}", req.prompt_token_ids,
                    replace(params, n=1, max_tokens=limits[k], min_tokens=min(params.min_tokens, limits[k])),
                    arrival_time=self._last_arrival,
                    adapter_id=None if req.lora_request is None else req.lora_request.lora_int_id)
            for k in range(n)
        ]
        # what the engine accepts depends on max_tokens, not on the length this completion is given
        self.engine.scheduler.check_request(Request(req.custom_id, req.prompt_token_ids, replace(params, n=1)))
        for child in children:
            self._parent[child] = req.custom_id
        for child in self.siblings.admit(children):
            self.engine.add_request(child)
        self._live[req.custom_id] = (req, children)

    def step(self) -> list[Finished]:
        out = self.engine.step()
        for sibling in self.siblings.release(out.batch):
            self.engine.add_request(sibling)
        finished = {self._parent.pop(r) for r in out.finished}
        self._computed_prompt_tokens += out.batch.num_computed_prompt_tokens
        done = []
        for cid in finished:
            req, children = self._live[cid]
            if all(c.is_finished for c in children):
                del self._live[cid]
                outputs = [CompletionOutput(k, "", c.output_token_ids, finish_reason=c.status.finish_reason)
                           for k, c in enumerate(children)]
                self._generation_tokens += sum(len(o.token_ids) for o in outputs)
                done.append((req, RequestOutput(cid, None, req.prompt_token_ids, outputs,
                                                       metrics=RequestMetrics.of(children[0]))))
        return done

    def prefix_ready(self, custom_id: str) -> bool:
        live = self._live.get(custom_id)
        # as the engine's backend: ready once any completion has sampled (the prompt is computed then)
        return live is None or any(c.num_output_tokens > 0 or c.is_finished for c in live[1])

    def num_unfinished(self) -> int:
        return len(self._live)

    def counters(self) -> dict[str, int]:
        kv = self.engine.scheduler.kv
        return {"prefix_cache_queries": kv.num_queries, "prefix_cache_hits": kv.num_hits,
                "computed_prompt_tokens": self._computed_prompt_tokens, "generation_tokens": self._generation_tokens}


class SimReplicas:
    """Several simulated replicas behind the prefix-affinity routing of a Ray job; the one furthest behind
    in simulated time steps next, so their clocks advance together."""

    def __init__(self, replicas: list[SimBackend], router: JobRouter) -> None:
        self.replicas = replicas
        self.block_size = replicas[0].block_size
        self.router = router

    def add(self, req: BatchRequest) -> None:
        idx = self.router.route(req)
        try:
            self.replicas[idx].add(req)
        except ValueError:
            self.router.finished(idx, req)
            raise

    def step(self) -> list[Finished]:
        busy = [r for r in self.replicas if r.num_unfinished()]
        idx = self.replicas.index(min(busy, key=lambda r: r.engine.now))
        done = self.replicas[idx].step()
        for req, _ in done:
            self.router.finished(idx, req)
        return done

    def prefix_ready(self, custom_id: str) -> bool:
        return all(r.prefix_ready(custom_id) for r in self.replicas)  # only the replica running it can say no

    def num_unfinished(self) -> int:
        return sum(r.num_unfinished() for r in self.replicas)

    def counters(self) -> dict[str, int]:
        counts = [r.counters() for r in self.replicas]
        return {k: sum(c[k] for c in counts) for k in counts[0]}

    @property
    def now(self) -> float:
        return max(r.engine.now for r in self.replicas)


def simulate_entries(
    entries: Sequence[Entry], sim: SimSetup, config: JobConfig, router: RouterConfig = RouterConfig(),
    lengths: Mapping[str, Sequence[int]] | None = None,
) -> Summary:
    """Run prepared entries (in their planned order) through the twin; wall_s is the simulated time."""
    replicas = sim.cluster.replicas
    backend = SimReplicas([SimBackend(engine, lengths) for engine in build_cluster(sim).replicas],
                          JobRouter(replicas, config.window, router))
    recorder = Recorder(None, preserve_order=False, total=len(entries), keep_records=config.keep_records)
    feed(backend, entries, recorder.emit, config.max_inflight * replicas)
    summary = recorder.finish(backend.counters())
    summary.wall_s = backend.now
    return summary
