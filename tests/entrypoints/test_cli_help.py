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
