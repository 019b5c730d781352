"""OpenMP defaults for CPU inference, set before torch loads its OpenMP runtime (libgomp reads them once, at load).

`import batchserve` sets them (the CLI, and scripts that import batchserve before torch); a value already in the
environment is kept. Torch-free.
"""

from __future__ import annotations

import os

GOMP_SPINCOUNT = "3000000"
"""How long torch's OpenMP workers busy-wait for the next parallel region before they sleep (iterations; libgomp's
default is 300000). Measured on a 2-core VM (tiny, a 200-token prefill step after the engine idled, 2026-12-02):
with the default, a step after 0.1-1 s of idle took 14-16 ms instead of 4-5 ms whenever the engine had run only
one to four steps before idling (a lightly loaded server's pattern); 3,000,000 and 30,000,000 did not show it, and
0 (sleep at once) slowed back-to-back steps by up to 1.8x. Set GOMP_SPINCOUNT (or OMP_WAIT_POLICY) to override."""


def set_openmp_defaults() -> None:
    """Set the OpenMP variables the user has not set; they only take effect if torch is not loaded yet."""
    if "OMP_WAIT_POLICY" not in os.environ:  # a wait policy sets its own spin count
        os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
