"""`run --estimate`: the job through the simulator, same scheduler, same ordering and gating, no model.

The simulator has no real tokens: every request is assumed to generate its
max_tokens (stop strings and EOS cannot end it early), so the prediction is an
upper bound on work when outputs often stop early.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import CacheConfig, scheduler_config
from ..engine.input_processor import generation_defaults
from ..engine.parallel_sampling import SiblingGate
from ..model_config import ModelConfig
from ..outputs import CompletionOutput, RequestOutput
from ..request import Request
from ..sim.engine import SimEngine
from ..sim.router import RouterConfig
from ..sim.simulate import ClusterConfig, build_cluster, resolve
from ..tokenizer import load_tokenizer
from .batch_io import BatchRequest, Done, check_unique_ids, detect_format
from .openai_format import job_context
from .routing import JobRouter
from .runner import Finished, JobConfig, Recorder, Summary, feed, plan


class SimBackend:
    """One simulated replica: requests become scheduler Requests stamped with the simulated clock."""

    def __init__(self, engine: SimEngine) -> None:
        self.engine = engine
        self.block_size = engine.scheduler.kv.block_size
        self.siblings = SiblingGate(engine.scheduler.cache_config)  # n > 1 computes the prompt once, as in the engine
        self._live: dict[str, tuple[BatchRequest, list[Request]]] = {}
        self._parent: dict[Request, str] = {}  # each child's custom_id (ids may contain any character)
        self._computed_prompt_tokens = 0
        self._generation_tokens = 0

    def add(self, req: BatchRequest) -> None:
        params = req.params
        assert params is not None
        n = params.n
        children = [
            Request(req.custom_id if n == 1 else f"{req.custom_id}#{k}", req.prompt_token_ids, replace(params, n=1),
                    arrival_time=self.engine.now)
            for k in range(n)
        ]
        for child in children:
            self.engine.scheduler.check_request(child)
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
                done.append((req, RequestOutput(cid, None, req.prompt_token_ids, outputs)))
        return done

    def prefix_ready(self, custom_id: str) -> bool:
        live = self._live.get(custom_id)
        return live is None or all(c.num_output_tokens > 0 or c.is_finished for c in live[1])

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


def model_shape(model: str) -> ModelConfig | None:
    """The built-in tiny model's shape; None: look `model` up as usual."""
    if model != "tiny":
        return None
    from ..models.tiny import tiny_config

    return tiny_config()


def estimate_job(
    input_path: str, model: str, hardware: str, config: JobConfig, max_num_batched_tokens: int, max_num_seqs: int,
    replicas: int = 1, router: RouterConfig = RouterConfig(),
) -> tuple[Summary, dict[str, Any]]:
    """Simulate the whole input (nothing is skipped, nothing written); wall_s is predicted seconds."""
    fmt = detect_format(input_path)
    total = check_unique_ids(input_path, fmt)
    setup = resolve(
        ClusterConfig(model=model, hardware=hardware, replicas=replicas),
        scheduler_config("sarathi", max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs),
        CacheConfig(), model=model_shape(model),
    )
    backend = SimReplicas([SimBackend(engine) for engine in build_cluster(setup).replicas],
                          JobRouter(replicas, config.window, router))
    recorder = Recorder(None, preserve_order=False, total=total)
    shape = setup.deployment.model
    defaults = generation_defaults(Path(model) if Path(model).is_dir() else None)
    context = job_context(model, config, load_tokenizer(model), shape.max_model_len, shape.vocab_size, defaults)
    entries = plan(input_path, fmt, Done(), context, config, backend.block_size)
    feed(backend, entries, recorder.emit, config.max_inflight * replicas)
    summary = recorder.finish(backend.counters())
    summary.wall_s = backend.now
    info = {
        "model": setup.deployment.model.name, "hardware": setup.deployment.hardware.name,
        "num_gpus": replicas * setup.deployment.num_gpus, "num_kv_blocks": setup.cache.num_blocks,
        "predicted_wall_s": backend.now, "assumes": "every request generates its max_tokens",
    }
    return summary, info
