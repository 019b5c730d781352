"""`import batchserve` sets torch's OpenMP spin count before torch loads, and keeps what the user set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from batchserve.openmp import GOMP_SPINCOUNT

SHOW = "import batchserve, os, sys; print(os.environ.get('GOMP_SPINCOUNT')); print('torch' in sys.modules)"


@pytest.mark.parametrize(("env", "expected"), [
    ({}, GOMP_SPINCOUNT),
    ({"GOMP_SPINCOUNT": "42"}, "42"),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, "None"),  # a wait policy sets its own spin count
])
def test_spin_count_is_set_before_torch_loads_unless_the_user_chose(env, expected):
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", SHOW], env={**base, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [expected, "False"]  # set, and torch (whose libgomp reads it once, at load) not loaded yet
