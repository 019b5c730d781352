"""Fan-out of search tasks: inline, a local process pool or Ray tasks; an on-disk cache in front.

Tasks are submitted lazily, at most `slots` in flight, and a `skip` test runs
right before each submission: a bound that tightens as results come back
(branch and bound) saves every task it skips, whichever backend runs them.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Call:
    fn: Callable[..., Any]
    args: tuple


class InlineRunner:
    """Runs each task in this process when submitted: the reference the others must agree with."""

    slots = 1

    def submit(self, call: Call) -> list[Any]:
        return [call.fn(*call.args)]

    def wait(self, handles: list[Any]) -> list[tuple[Any, Any]]:
        return [(h, h[0]) for h in handles]

    def close(self) -> None:
        pass


class ProcessRunner:
    """A local process pool: one worker per core by default."""

    def __init__(self, workers: int) -> None:
        self.slots = workers
        self._pool = ProcessPoolExecutor(workers)

    def submit(self, call: Call) -> Future:
        return self._pool.submit(call.fn, *call.args)

    def wait(self, handles: list[Future]) -> list[tuple[Future, Any]]:
        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        return [(f, f.result()) for f in done]

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


class RayRunner:
    """Ray tasks on a running cluster (`address`), or on a local instance started here."""

    def __init__(self, address: str | None = None, slots: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError("--ray needs the ray extra: pip install 'batchserve[ray]'") from None
        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self.slots = slots or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remote = cache(lambda fn: ray.remote(fn))

    def submit(self, call: Call) -> Any:
        return self._remote(call.fn).remote(*call.args)

    def wait(self, handles: list[Any]) -> list[tuple[Any, Any]]:
        done, _ = self._ray.wait(handles, num_returns=1)
        return [(ref, self._ray.get(ref)) for ref in done]

    def close(self) -> None:
        pass  # the cluster (or the local instance) outlives one plan, as Ray expects


class DiskCache:
    """Results keyed by a hash of the task's function, arguments and the simulator's source code."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def key(self, call: Call) -> str:
        text = json.dumps([code_version(), call.fn.__qualname__, _plain(call.args)], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> tuple[bool, Any]:
        try:
            with open(self.dir / f"{key}.pkl", "rb") as f:
                return True, pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError):
            return False, None

    def put(self, key: str, value: Any) -> None:
        tmp = self.dir / f"{key}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(value, f)
        os.replace(tmp, self.dir / f"{key}.pkl")  # atomic: a concurrent reader never sees half a file


def _plain(x: Any) -> Any:
    if is_dataclass(x) and not isinstance(x, type):
        return {type(x).__name__: asdict(x)}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


@cache
def code_version() -> str:
    """Hash of the sources a simulation result depends on (everything but the torch engine and the CLI)."""
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if not rel.startswith(("entrypoints/", "models/")):
            h.update(rel.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class Dispatcher:
    """Runs calls through a runner with the cache in front; counts what was simulated and what was cached."""

    runner: InlineRunner | ProcessRunner | RayRunner
    cache: DiskCache | None = None
    on_progress: Callable[[str, int, int], None] | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"tasks": 0, "cached": 0, "skipped": 0, "simulations": 0})

    def map(
        self,
        phase: str,
        calls: Sequence[Call],
        skip: Callable[[int], bool] = lambda i: False,
        on_result: Callable[[int, Any], None] = lambda i, r: None,
    ) -> dict[int, Any]:
        """Results by call index, in completion order; `skip(i)` is asked just before call i would start."""
        results: dict[int, Any] = {}
        in_flight: dict[int, tuple[Any, int, str | None]] = {}  # by id(handle)

        def finish(i: int, result: Any) -> None:
            results[i] = result
            on_result(i, result)
            if self.on_progress:
                self.on_progress(phase, len(results), len(calls))

        for i in range(len(calls)):
            if skip(i):
                self.counts["skipped"] += 1
                results[i] = None
                continue
            key = self.cache.key(calls[i]) if self.cache else None
            hit, value = self.cache.get(key) if key else (False, None)
            if hit:
                self.counts["cached"] += 1
                finish(i, value)
                continue
            handle = self.runner.submit(calls[i])
            in_flight[id(handle)] = (handle, i, key)
            while len(in_flight) >= self.runner.slots:
                self._collect(in_flight, finish)
        while in_flight:
            self._collect(in_flight, finish)
        return {i: r for i, r in results.items() if r is not None}

    def _collect(self, in_flight: dict, finish: Callable[[int, Any], None]) -> None:
        for handle, result in self.runner.wait([h for h, _, _ in in_flight.values()]):
            _, i, key = in_flight.pop(id(handle))
            self.counts["tasks"] += 1
            self.counts["simulations"] += getattr(result, "num_sims", 1)
            if key:
                self.cache.put(key, result)
            finish(i, result)
