"""A progress bar with ETA on stderr for long commands (tqdm), silent with -q and when stderr is not a terminal."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]"
OWN_ETA_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}{postfix}]"
"""For callers whose detail carries a better ETA than the rate (a job's simulated twin): tqdm's is left out."""


class Progress:
    """One bar per long phase; `update(done, detail)` moves it to `done` and shows `detail` after the times.

    Not drawn when disabled or when the stream is not a terminal (logs and pipes get no redraw noise).
    """

    def __init__(self, label: str, total: int | None, enabled: bool = True, stream: TextIO | None = None,
                 unit: str = "requests", own_eta: bool = False) -> None:
        stream = stream or sys.stderr
        fmt = OWN_ETA_FORMAT if own_eta else BAR_FORMAT
        if total is None:  # unknown length (a trace): count and rate, no bar
            fmt = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"
        self.enabled = enabled and stream.isatty()
        self._bar: tqdm[Any] = tqdm(total=total, desc=label, unit=unit, file=stream, disable=not self.enabled,
                                    bar_format=fmt, mininterval=0.1, dynamic_ncols=True, leave=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()

    def update(self, done: int, detail: str = "") -> None:
        if not self.enabled:
            return
        if detail:
            self._bar.set_postfix_str(detail, refresh=False)
        self._bar.update(done - self._bar.n)
