"""`batchserve serve` and `bench serve` argument errors: exit status 2 and a message saying what is wrong."""

from __future__ import annotations

import pytest

from batchserve.entrypoints.cli import main


@pytest.mark.parametrize("argv, words", [
    (["serve", "--max-waiting", "0"], "--max-waiting must be >= 1"),
    (["serve", "--policy", "random"], "unknown policy 'random'"),
    (["bench", "serve", "--simulate", "h100-sxm"], "--simulate needs --sim-model"),
])
def test_bad_arguments_exit_2_with_a_message(argv, words, capsys):
    assert main(argv) == 2
    assert words in capsys.readouterr().err
