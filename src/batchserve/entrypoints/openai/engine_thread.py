"""The bridge between the HTTP event loop and `LLMEngine`: one thread alone steps the engine.

A step can take milliseconds to seconds; run on the event loop it would stall
every connection (and `/health`). So the engine lives in a dedicated thread:
commands go in through a thread-safe queue, and each step's outputs come back
to the loop with one `call_soon_threadsafe`, into the per-HTTP-request
`RequestStream` that asked for them.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ...engine import EngineStats, PromptType
from ...engine.llm_engine import LLMEngine
from ...lora import LoRARequest
from ...outputs import RequestOutput
from ...request import SamplingParams

logger = logging.getLogger(__name__)


class Overloaded(Exception):
    """The waiting queue is full (`max_waiting`): the client should retry later (HTTP 429)."""


class EngineDead(Exception):
    """The engine thread failed; no request can run any more (HTTP 500, /health 503)."""


@dataclass
class _Add:
    request_id: str
    prompt: PromptType
    params: SamplingParams
    priority: int
    deadline_s: float | None
    done: asyncio.Future
    lora_request: LoRARequest | None = None


@dataclass
class _Abort:
    request_id: str


class RequestStream:
    """The outputs of one HTTP request's engine requests (one per prompt), in step order."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._live: set[str] = set()

    async def add(self, request_id: str, prompt: PromptType, params: SamplingParams, *, priority: int = 0,
                  deadline_s: float | None = None, lora_request: LoRARequest | None = None) -> None:
        """Queue a prompt; raises ValueError (invalid), Overloaded or EngineDead and then queues nothing."""
        self._live.add(request_id)
        try:
            await self._engine._add(self, request_id, prompt, params, priority, deadline_s, lora_request)
        except BaseException:
            self._live.discard(request_id)
            raise

    def _put(self, item: RequestOutput | BaseException) -> None:
        self._queue.put_nowait(item)

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        """Each output of each request until all have finished (an aborted one ends with finish_reason 'abort')."""
        while self._live:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if item.finished:
                self._live.discard(item.request_id)
            yield item

    def abort(self) -> None:
        """Abort every unfinished request of this stream; their KV blocks return to the pool at the next step."""
        for request_id in self._live:
            self._engine._abort(request_id)


class AsyncEngine:
    """Owns an `LLMEngine` and the one thread that steps it; methods are called from the event loop."""

    def __init__(self, engine: LLMEngine, *, max_waiting: int | None = None) -> None:
        """`max_waiting` bounds the waiting queue, in sequences (a request with n=4 is four)."""
        if max_waiting is not None and max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1, got {max_waiting}")
        self.engine = engine
        self.max_waiting = max_waiting
        self.on_step: Callable[[list[RequestOutput], float], None] | None = None
        """Called in the engine thread after each step with its outputs and the engine clock (metrics)."""
        self._commands: queue.SimpleQueue[_Add | _Abort | None] = queue.SimpleQueue()
        self._streams: dict[str, RequestStream] = {}  # touched on the event loop only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.stats: EngineStats = engine.stats()
        """The latest counters, published by the engine thread after each step (read without locking)."""

    def start(self) -> None:
        """Start the engine thread; call from the event loop that will consume the outputs."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="batchserve-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the thread after its current step; unfinished requests stay where they are."""
        if self._thread is not None:
            self._commands.put(None)
            self._thread.join()
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    def stream(self) -> RequestStream:
        return RequestStream(self)

    # ---- event-loop side ------------------------------------------------------------------

    async def _add(self, stream: RequestStream, request_id: str, prompt: PromptType, params: SamplingParams,
                   priority: int, deadline_s: float | None, lora_request: LoRARequest | None = None) -> None:
        if not self.alive:
            raise EngineDead(f"the engine is not running: {self.error!r}")
        done = self._loop.create_future()
        self._streams[request_id] = stream
        self._commands.put(_Add(request_id, prompt, params, priority, deadline_s, done, lora_request))
        try:
            await done
        except BaseException:
            self._commands.put(_Abort(request_id))  # in case it landed before a cancellation; else a no-op
            self._streams.pop(request_id, None)
            raise

    def _abort(self, request_id: str) -> None:
        if request_id in self._streams:
            self._commands.put(_Abort(request_id))

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue
            if out.finished:
                del self._streams[out.request_id]
            stream._put(out)

    def _fail_all(self, dead: EngineDead) -> None:
        """Fail every stream and every add still queued (on the loop, so no add can slip in after)."""
        for stream in set(self._streams.values()):
            stream._put(dead)
        self._streams.clear()
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(cmd, _Add):
                self._settle(cmd.done, dead)

    @staticmethod
    def _settle(fut: asyncio.Future, error: BaseException | None) -> None:
        if fut.done():  # the HTTP side gave up waiting
            return
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)

    # ---- engine-thread side ---------------------------------------------------------------

    def _run(self) -> None:
        engine = self.engine
        try:
            while True:
                outputs: list[RequestOutput] = []
                if not self._apply_commands(outputs, block=not engine.has_unfinished()):
                    return
                if engine.has_unfinished():
                    outputs += engine.step()
                self.stats = engine.stats()
                if self.on_step is not None:
                    self.on_step(outputs, engine.now)
                if outputs:
                    self._loop.call_soon_threadsafe(self._deliver, outputs)
        except BaseException as err:  # a bug or a device error: fail loudly, never hang the clients
            logger.exception("the engine thread failed; every request gets 503 from now on")
            self.error = err
            self._loop.call_soon_threadsafe(self._fail_all, EngineDead(f"the engine failed: {err!r}"))

    def _apply_commands(self, outputs: list[RequestOutput], block: bool) -> bool:
        """Apply every queued command (waiting for one when idle); False on shutdown."""
        try:
            cmd = self._commands.get() if block else self._commands.get_nowait()
        except queue.Empty:
            return True
        while True:
            if cmd is None:
                return False
            if isinstance(cmd, _Abort):
                out = self.engine.abort_request(cmd.request_id)
                if out is not None:
                    outputs.append(out)
            else:
                self._loop.call_soon_threadsafe(self._settle, cmd.done, self._try_add(cmd))
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return True

    def _try_add(self, cmd: _Add) -> BaseException | None:
        waiting = len(self.engine.scheduler.waiting)
        if self.max_waiting is not None and waiting >= self.max_waiting:
            return Overloaded(f"the server is overloaded: {waiting} requests are waiting (max_waiting="
                              f"{self.max_waiting}); retry later")
        try:
            self.engine.add_request(cmd.request_id, cmd.prompt, cmd.params, priority=cmd.priority,
                                    deadline_s=cmd.deadline_s, lora_request=cmd.lora_request)
        except (ValueError, TypeError) as err:
            return ValueError(str(err))
        except Exception as err:  # a bug met by this request alone: it fails, the engine goes on
            logger.exception("adding request %s failed", cmd.request_id)
            return ValueError(f"the request could not be prepared: {err!r}")
        return None

