"""Batch job files: stream the input lines, and append results so that a killed job can resume.

Input is the OpenAI Batch API format (one `{"custom_id", "method", "url",
"body"}` object per line) or a plain form (a prompt per line, or
`{"prompt": ..., sampling fields}`), told apart by the first non-blank line.
Plain lines are named by their line number (`custom_id` "1", "2", ...).
Blank lines are skipped. Nothing here holds more than one line of input.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..lora.request import LoRARequest
from ..openai import ResponseSpec
from ..request import SamplingParams

OPENAI, PLAIN = "openai", "plain"
CHAT_URL, COMPLETIONS_URL = "/v1/chat/completions", "/v1/completions"


@dataclass
class BatchRequest:
    """One valid input line; `prompt_token_ids`, `params` and `response` are filled by `openai_format.prepare`."""

    seq: int
    """Position among the input's non-blank lines: the output order under --preserve-order."""
    line_no: int
    custom_id: str
    url: str
    body: dict[str, Any]
    prompt_token_ids: list[int] = field(default_factory=list)
    params: SamplingParams | None = None
    anchor: str | None = None
    """custom_id of the earlier request whose prompt computes this one's shared prefix (set by ordering)."""
    response: ResponseSpec | None = None
    lora_request: LoRARequest | None = None
    """The adapter the line's `model` names (--lora-modules); None runs the base model."""


@dataclass
class BadLine:
    """An input line that cannot run; it becomes an error entry in the output."""

    seq: int
    line_no: int
    custom_id: str | None
    message: str
    param: str | None = None
    """The body field at fault, as in the server's 400s."""


Entry = BatchRequest | BadLine


def _lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of the non-blank lines, streamed."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                yield line_no, line.rstrip("\r\n")


def detect_format(path: str | os.PathLike) -> str:
    """OPENAI if the first non-blank line is a JSON object with a custom_id, else PLAIN."""
    for _, text in _lines(path):
        try:
            first = _load_json(text)
        except ValueError:
            return PLAIN
        return OPENAI if isinstance(first, dict) and "custom_id" in first else PLAIN
    return PLAIN


def read_entries(path: str | os.PathLike, fmt: str) -> Iterator[Entry]:
    """Every non-blank line as a BatchRequest or a BadLine saying what is wrong with it."""
    parse = _parse_openai if fmt == OPENAI else _parse_plain
    for seq, (line_no, text) in enumerate(_lines(path)):
        yield parse(seq, line_no, text)


def _load_json(text: str) -> Any:
    """The line's JSON value; ValueError with a clear message for bad JSON or JSON nested too deep to parse."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply to parse") from None


def _parse_openai(seq: int, line_no: int, text: str) -> Entry:
    try:
        obj = _load_json(text)
    except ValueError as err:
        return BadLine(seq, line_no, None, f"line {line_no}: {err}")
    if not isinstance(obj, dict):
        return BadLine(seq, line_no, None, f"line {line_no}: expected a JSON object, got {type(obj).__name__}")
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        return BadLine(seq, line_no, None, f"line {line_no}: custom_id must be a non-empty string, got {cid!r}")
    url, method, body = obj.get("url"), obj.get("method", "POST"), obj.get("body")
    if url not in (CHAT_URL, COMPLETIONS_URL):
        return BadLine(seq, line_no, cid, f"line {line_no}: unsupported url {url!r}; use {CHAT_URL} or {COMPLETIONS_URL}")
    if method != "POST":
        return BadLine(seq, line_no, cid, f"line {line_no}: method must be POST, got {method!r}")
    if not isinstance(body, dict):
        return BadLine(seq, line_no, cid, f"line {line_no}: body must be a JSON object, got {type(body).__name__}")
    return BatchRequest(seq, line_no, cid, url, body)


def _parse_plain(seq: int, line_no: int, text: str) -> Entry:
    cid = str(line_no)
    if not text.lstrip().startswith("{"):
        return BatchRequest(seq, line_no, cid, COMPLETIONS_URL, {"prompt": text})
    try:
        body = _load_json(text)
    except ValueError as err:
        return BadLine(seq, line_no, cid, f"line {line_no}: {err}")
    if not isinstance(body, dict) or "prompt" not in body:
        return BadLine(seq, line_no, cid, f"line {line_no}: a JSON line of the plain form needs a 'prompt' field")
    return BatchRequest(seq, line_no, cid, COMPLETIONS_URL, body)


def check_unique_ids(path: str | os.PathLike, fmt: str) -> int:
    """Count the non-blank lines; raise ValueError naming every duplicate custom_id and its line numbers."""
    lines: dict[str, list[int]] = defaultdict(list)
    count = 0
    for entry in read_entries(path, fmt):
        count += 1
        if entry.custom_id is not None:
            lines[entry.custom_id].append(entry.line_no)
    dups = {cid: nums for cid, nums in lines.items() if len(nums) > 1}
    if dups:
        shown = "; ".join(f"{cid!r} on lines {', '.join(map(str, nums))}" for cid, nums in list(dups.items())[:10])
        more = f" (and {len(dups) - 10} more)" if len(dups) > 10 else ""
        raise ValueError(f"{path}: {len(dups)} duplicate custom_id(s): {shown}{more}; every custom_id must be unique")
    return count


@dataclass
class Done:
    """What an earlier run of the job already wrote."""

    custom_ids: set[str] = field(default_factory=set)
    lines: set[int] = field(default_factory=set)
    """Line numbers of error entries without a custom_id (malformed lines)."""
    num_ok: int = 0
    num_failed: int = 0

    def __contains__(self, entry: Entry) -> bool:
        if entry.custom_id is None:
            return entry.line_no in self.lines
        return entry.custom_id in self.custom_ids

    def add(self, custom_id: str | None, error: dict[str, Any] | None) -> None:
        if custom_id is None:
            self.lines.add(error["line"])
        else:
            self.custom_ids.add(custom_id)
        if error is None:
            self.num_ok += 1
        else:
            self.num_failed += 1

    def __len__(self) -> int:
        return len(self.custom_ids) + len(self.lines)


def scan_output(path: str | os.PathLike) -> Done:
    """Read an earlier run's results, cutting off a torn last line (a write a kill interrupted)."""
    done = Done()
    p = Path(path)
    if not p.exists():
        return done
    with open(p, "rb+") as f:
        good_end = 0  # offset just past the last complete line
        for line_no, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                f.truncate(good_end)
                break
            good_end += len(raw)
            try:
                record = json.loads(raw)
                cid, error = record["custom_id"], record.get("error")
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(
                    f"{path}: line {line_no} is not a result entry; is -o pointing at the right file?"
                ) from None
            done.add(cid, error)
    return done


LINE_BREAKS_ESCAPED = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})
"""Characters JSON may hold raw in a string but many line readers break lines at (Python's str.splitlines,
JavaScript): written escaped, a result is one line to every reader. A real model's story held one (session 31)."""


class ResultWriter:
    """Appends one result per line: one write() and a flush each, fsync every `fsync_every` and at close."""

    def __init__(self, path: str | os.PathLike, fsync_every: int) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[str] = open(path, "a", encoding="utf-8")
        self.fsync_every = fsync_every
        self._unsynced = 0

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False).translate(LINE_BREAKS_ESCAPED) + "\n")
        self._f.flush()
        self._unsynced += 1
        if self._unsynced >= self.fsync_every:
            self.sync()

    def sync(self) -> None:
        os.fsync(self._f.fileno())
        self._unsynced = 0

    def close(self) -> None:
        self.sync()
        self._f.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
