"""`batchserve serve` and `bench serve` argument errors: exit status 2 and a message saying what is wrong."""

from __future__ import annotations

import pytest

from batchserve.entrypoints.cli import main
from batchserve.entrypoints.options import ConfigError
from batchserve.entrypoints.serve_cmd import resolve_api_key


@pytest.mark.parametrize("argv, words", [
    (["serve", "--model", "tiny", "--max-waiting", "0"], "--max-waiting must be >= 1"),
    (["serve", "--model", "tiny", "--max-request-bytes", "0"], "--max-request-bytes must be > 0"),
    (["serve", "--model", "tiny", "--timeout-header", "-1"], "--timeout-header must be > 0"),
    (["serve", "--model", "tiny", "--api-key", ""], "--api-key must be non-empty"),
    (["serve", "--model", "tiny", "--policy", "random"], "unknown policy 'random'"),
    (["bench", "serve", "--simulate", "h100-sxm"], "--simulate needs --sim-model"),
])
def test_bad_arguments_exit_2_with_a_message(argv, words, capsys):
    assert main(argv) == 2
    assert words in capsys.readouterr().err


def test_the_api_key_flag_wins_then_batchserves_variable_then_vllms():
    both = {"BATCHSERVE_API_KEY": "ours", "VLLM_API_KEY": "theirs"}
    assert resolve_api_key("flag", both) == "flag"
    assert resolve_api_key(None, both) == "ours"
    assert resolve_api_key(None, {"BATCHSERVE_API_KEY": "", "VLLM_API_KEY": "theirs"}) == "theirs"
    assert resolve_api_key(None, {}) is None
    with pytest.raises(ConfigError):
        resolve_api_key("", both)
