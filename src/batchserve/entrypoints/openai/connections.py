"""A deadline for request headers, which uvicorn lacks.

uvicorn's `timeout_keep_alive` only starts once a response is complete, and
any byte received cancels it: a socket that connects and sends nothing, or
sends a header line now and then (slowloris), is held open forever, each one an
fd and a protocol object. Here a connection gets `header_timeout_s` from its
first byte of a request (or from connecting) to finish that request's headers,
else it is closed.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


class _HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol plus the header deadline (subclasses set `header_timeout_s`)."""

    header_timeout_s: float

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        between_requests = self.cycle is None or self.cycle.response_complete
        cycle = self.cycle
        if between_requests and self._deadline is None:
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if self.cycle is not cycle:  # h11 parsed a whole request head
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def header_deadline_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """The protocol class to pass as uvicorn's `http=`; it also pins h11 (uvicorn would pick httptools if
    installed)."""
    if header_timeout_s <= 0:
        raise ValueError(f"header_timeout_s must be > 0, got {header_timeout_s}")
    return type("HeaderDeadlineH11Protocol", (_HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s})
