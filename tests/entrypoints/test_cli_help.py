"""Every subcommand's --help prints: flag help generated from config docstrings may hold a literal "%"."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from batchserve.entrypoints.cli import build_parser
from batchserve.entrypoints.options import add_dataclass_flags

COMMANDS = ["run", "serve", "generate", "simulate", "plan", "calibrate", "validate", "bench"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([command, "--help"])
    assert done.value.code == 0
    assert f"usage: batchserve {command}" in capsys.readouterr().out


@dataclass
class _Knobs:
    coverage: float = 0.8
    """Covers about 80% of jobs (a literal percent sign)."""


def test_a_percent_sign_in_a_field_doc_reaches_the_help_as_written(capsys):
    parser = argparse.ArgumentParser(prog="x")
    add_dataclass_flags(parser, _Knobs, "knobs")
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps help lines
    assert "Covers about 80% of jobs (a literal percent sign). (default: 0.8)" in text


def test_the_cli_shows_batchserve_notices_on_stderr_and_quiet_keeps_warnings_only(monkeypatch, capsys):
    """A first-use kernel build or a dtype fallback logs at INFO: the CLI shows it (no logging is configured for
    a command line), prefixed; -q hides it but not a warning; another library's INFO stays hidden."""
    import logging

    from batchserve.entrypoints.cli import show_notices

    log = logging.getLogger("batchserve")
    monkeypatch.setattr(log, "handlers", [])
    monkeypatch.setattr(log, "level", log.level)
    show_notices(quiet=False)
    show_notices(quiet=False)  # once a process: no second handler
    logging.getLogger("batchserve.models.paged_decode").info("building the kernel")
    logging.getLogger("some_library").info("chatter")
    assert capsys.readouterr().err == "batchserve: building the kernel\n"
    show_notices(quiet=True)
    logging.getLogger("batchserve.models").info("building the kernel")
    logging.getLogger("batchserve.models").warning("row_major_gemv: skipped")
    assert capsys.readouterr().err == "batchserve: row_major_gemv: skipped\n"
