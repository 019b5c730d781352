"""Admission: a request waits for its anchor's prompt, and so do the requests behind it (cache-friendly)."""

from __future__ import annotations

from collections import deque

from batchserve.jobs.batch_io import BadLine, BatchRequest, Entry
from batchserve.jobs.runner import admit
from batchserve.request import SamplingParams


class FakeBackend:
    block_size = 16

    def __init__(self) -> None:
        self.added: list[str] = []
        self.prefilling: set[str] = set()

    def add(self, req: BatchRequest) -> None:
        if req.custom_id == "too-long":
            raise ValueError("prompt too long")
        if req.custom_id == "buggy":
            raise RuntimeError("a bug")
        self.added.append(req.custom_id)
        self.prefilling.add(req.custom_id)

    def prefix_ready(self, custom_id: str) -> bool:
        return custom_id not in self.prefilling

    def num_unfinished(self) -> int:
        return len(self.added)


def req(cid: str, anchor: str | None = None) -> BatchRequest:
    return BatchRequest(0, 3, cid, "/v1/completions", {}, [1, 2], SamplingParams(), anchor)


def test_a_request_waits_until_its_anchor_has_computed_the_shared_prefix():
    backend, emitted = FakeBackend(), []
    pending: deque[Entry] = deque([BadLine(5, 9, None, "bad"), req("too-long"), req("buggy"), req("a1"),
                                   req("a2", "a1"), req("b1")])
    admit(backend, pending, lambda entry, out: emitted.append(entry), max_inflight=100)
    assert backend.added == ["a1"]  # a2 waits for a1's prompt; b1 stays behind it, keeping the working set small
    assert [e.custom_id for e in emitted] == [None, "too-long", "buggy"] and "prompt too long" in emitted[1].message
    assert "a bug" in emitted[2].message  # an unexpected error fails its line alone
    backend.prefilling.discard("a1")
    admit(backend, pending, lambda entry, out: emitted.append(entry), max_inflight=100)
    assert backend.added == ["a1", "a2", "b1"] and not pending


def test_max_inflight_bounds_what_the_backend_holds():
    backend = FakeBackend()
    pending: deque[Entry] = deque([req("x"), req("y"), req("z")])
    admit(backend, pending, lambda entry, out: None, max_inflight=2)
    assert backend.added == ["x", "y"] and [e.custom_id for e in pending] == ["z"]
