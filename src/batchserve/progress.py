"""A one-line progress display on stderr for long commands (no dependency)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Redraws one line on a terminal; prints a line every 10% when stderr is not a terminal."""

    def __init__(self, label: str, total: int | None, enabled: bool = True, stream=None, unit: str = "requests") -> None:
        self.label = label
        self.unit = unit
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self._t0 = time.perf_counter()
        self._last_draw = 0.0
        self._last_decile = -1

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def update(self, done: int, detail: str = "") -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        elapsed = now - self._t0
        of = f"/{self.total}" if self.total else ""
        detail = f", {detail}" if detail else ""
        line = f"{self.label}: {done}{of} {self.unit} done{detail}, {elapsed:.1f} s elapsed"
        if self.tty:
            if now - self._last_draw >= 0.1 or done == self.total:
                self._last_draw = now
                self.stream.write("\r" + line)
                self.stream.flush()
        elif self.total:
            decile = done * 10 // self.total
            if decile > self._last_decile:
                self._last_decile = decile
                self.stream.write(line + "\n")
