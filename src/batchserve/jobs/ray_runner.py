"""`run --replicas N`: engine replicas as Ray actors, fed by the one job loop that reads and writes the files.

The driver plans the input (skip done, tokenize, order) and writes every
result, exactly as a local job does, so resuming works the same. Requests go
to replicas by prefix affinity; each actor holds back a request until its
anchor's prompt is computed there, as a local job does. Ray is the optional
`[ray]` extra; on a cluster (`--ray-address`) every node needs batchserve.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from ..engine.llm_engine import LLMEngine
from ..openai import ServingContext
from ..request import SamplingParams
from ..sim.router import RouterConfig
from ..tokenizer import load_tokenizer
from .batch_io import BatchRequest, Entry
from .engine_backend import COUNTERS, EngineBackend
from .openai_format import job_context
from .routing import JobRouter
from .runner import Finished, JobConfig, Summary, admit, run_job


class ReplicaWorker:
    """What runs inside one actor: an engine, its queue of routed requests, and the local admission loop."""

    def __init__(self, model: str, engine_args: dict[str, Any], max_inflight: int, advance_s: float) -> None:
        self.backend = EngineBackend(LLMEngine(model, **engine_args))
        self.pending: deque[Entry] = deque()
        self.max_inflight = max_inflight
        self.advance_s = advance_s

    def block_size(self) -> int:
        return self.backend.block_size

    def limits(self) -> tuple[int, int, SamplingParams, int | None]:
        """Context length, vocabulary size and generation defaults, for the driver's serving context."""
        engine = self.backend.engine
        return (engine.model_config.max_model_len, engine.model_config.vocab_size, engine.default_sampling_params,
                engine.default_max_tokens)

    def advance(self, new: list[BatchRequest]) -> tuple[list[Finished], dict[str, int]]:
        """Queue `new`, then step until something finished and a moment passed, or nothing is left."""
        self.pending.extend(new)
        out: list[Finished] = []
        t0 = time.perf_counter()
        while not out or time.perf_counter() - t0 < self.advance_s:
            admit(self.backend, self.pending, lambda entry, result: out.append((entry, result)), self.max_inflight)
            if not self.backend.num_unfinished():
                break
            out.extend(self.backend.step())
        return out, self.backend.counters()


class RayBackend:
    """The job loop's backend over N actors: route on `add`, and on `step` wait for the first actor call back."""

    def __init__(self, actors: list[Any], block_size: int, router: JobRouter) -> None:
        import ray

        self._ray = ray
        self.actors = actors
        self.block_size = block_size
        self.router = router
        self._outbox: list[list[BatchRequest]] = [[] for _ in actors]
        self._sent = [0] * len(actors)  # requests on each actor, not yet returned
        self._calls: dict[Any, int] = {}  # in-flight advance() call -> actor index
        self._counters = [dict.fromkeys(COUNTERS, 0) for _ in actors]

    def add(self, req: BatchRequest) -> None:
        self._outbox[self.router.route(req)].append(req)

    def step(self) -> list[Finished]:
        busy = set(self._calls.values())
        for idx, actor in enumerate(self.actors):
            if idx not in busy and (self._outbox[idx] or self._sent[idx]):
                self._sent[idx] += len(self._outbox[idx])
                self._calls[actor.advance.remote(self._outbox[idx])] = idx
                self._outbox[idx] = []
        ready, _ = self._ray.wait(list(self._calls), num_returns=1)
        idx = self._calls.pop(ready[0])
        results, self._counters[idx] = self._ray.get(ready[0])
        self._sent[idx] -= len(results)
        for entry, _ in results:
            self.router.finished(idx, entry)
        return results

    def prefix_ready(self, custom_id: str) -> bool:
        return True  # each actor gates its own requests on their anchors

    def num_unfinished(self) -> int:
        return sum(self._sent) + sum(map(len, self._outbox))

    def counters(self) -> dict[str, int]:
        return {k: sum(c[k] for c in self._counters) for k in self._counters[0]}


def run_ray_job(
    input_path: str, output_path: str, model: str, engine_args: dict[str, Any], config: JobConfig, replicas: int,
    ray_address: str | None = None, quiet: bool = False, router: RouterConfig = RouterConfig(),
) -> Summary:
    """Run (or resume) a job on `replicas` Ray actors; starts a local Ray unless one is running or given."""
    try:
        import ray
    except ImportError:
        raise ValueError("--replicas needs Ray: pip install 'batchserve[ray]'") from None

    def make_backend() -> RayBackend:
        if not ray.is_initialized():
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
        wants_gpu = engine_args.get("device") != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1
        actor_cls = ray.remote(num_cpus=1, num_gpus=1 if wants_gpu else 0)(ReplicaWorker)
        actors = [actor_cls.remote(model, engine_args, config.max_inflight, config.replica_advance_s)
                  for _ in range(replicas)]
        return RayBackend(actors, ray.get(actors[0].block_size.remote()), JobRouter(replicas, config.window, router))

    tokenizer = load_tokenizer(model)

    def make_context(backend: RayBackend) -> ServingContext:
        return job_context(model, config, tokenizer, *ray.get(backend.actors[0].limits.remote()))

    return run_job(input_path, output_path, make_backend, make_context, config, quiet)
