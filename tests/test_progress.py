"""The progress bar draws on terminals only, with an ETA (the bar's own, or the caller's when it has a better one)."""

from __future__ import annotations

import io

from batchserve.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def draw(stream: io.StringIO, enabled: bool = True, **kw) -> str:
    with Progress("run", 4, enabled=enabled, stream=stream, **kw) as bar:
        for done in range(1, 5):
            bar.update(done, "9 tok/s")
    return stream.getvalue()


def test_a_terminal_gets_a_bar_with_eta_and_detail() -> None:
    last = draw(Terminal()).split("\r")[-1]
    assert last.startswith("run: 100%|") and "4/4 requests" in last and "<00:00, 9 tok/s]" in last


def test_the_callers_eta_replaces_the_bars() -> None:
    last = draw(Terminal(), own_eta=True).split("\r")[-1]
    assert "4/4 requests [00:00, 9 tok/s]" in last and "<" not in last


def test_quiet_and_pipes_get_nothing() -> None:
    assert draw(Terminal(), enabled=False) == ""
    assert draw(io.StringIO()) == ""
