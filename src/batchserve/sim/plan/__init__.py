"""The deployment planner: which hardware, parallel plan and knobs serve a workload within an SLO, cheapest.

- `slo`: percentile latency targets, margins, and an exact early stop for clear violations.
- `space`: the search space and memory pruning (no simulation).
- `evaluate`: what a worker runs: one simulation at a rate, a capacity search, the on-disk cache.
- `search`: the driver: bounds, parallel fan-out (processes or Ray), replica counts, verification.
- `report`: the text report and the JSON document.
"""
