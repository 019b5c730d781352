"""The server's default limits on what one client can make it hold: bytes of a body, seconds of a connection.

Kept free of web-framework imports, so the CLI can show them without loading the server.
"""

from __future__ import annotations

DEFAULT_MAX_REQUEST_BYTES = 16 * 2**20
"""A 128k-token prompt is about 0.5 MiB as text and 1 MiB as token ids, so 16 MiB fits any real request
with room to spare, while a client cannot make the server buffer and parse (at several times its size in
Python objects) an arbitrarily large JSON body."""

DEFAULT_TIMEOUT_KEEP_ALIVE_S = 5.0
"""uvicorn's and vLLM's default: long enough to reuse a connection between a client's requests."""

DEFAULT_HEADER_TIMEOUT_S = 10.0
"""Request headers arrive in one packet or a few; seconds more only serve a client that holds the socket."""
