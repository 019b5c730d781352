"""Run-to-run spread of `bench_fidelity.py`'s errors: one row per run, then the mean and the range.

On a shared VM one calibrate-then-validate run moves by 20 points and more from the next (the machine's speed
drifts between the calibration's minutes and the validation's), so a fidelity claim rests on several runs:

    python bench/fidelity_spread.py bench/results/fidelity-smollm2-s12-cap bench/results/fidelity-smollm2-s12-cap2

Prints a markdown table (the errors the issue bounds: TTFT p50, TPOT p50, offline throughput; and, where the run
recorded it, the profile's price of the real run's own steps over their measured time). A run made with
`--recalibrate` gets a second row: the same errors predicted from the profile fitted to both grids (the mean and
range rows are over the first calibrations only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = (("TTFT p50", "metrics", "ttft_p50"), ("TPOT p50", "metrics", "tpot_p50"),
           ("offline throughput", "offline_metrics", "throughput"))


def errors(run: dict) -> list[float | None]:
    """The bounded errors of one run (None where the run has no such figure)."""
    return [(run.get(side) or {}).get(metric, {}).get("error") for _, side, metric in COLUMNS]


def bracketed_errors(run: dict) -> list[float | None] | None:
    """The same errors predicted from the profile fitted to the grids before and after the run
    (`bench_fidelity.py --recalibrate`); None for a run without one."""
    both = (run.get("bracket") or {}).get("both grids")
    if not both:
        return None
    runs = {"metrics": both.get("open-loop") or {}, "offline_metrics": both.get("offline") or {}}
    return [runs[side].get(metric, {}).get("error") for _, side, metric in COLUMNS]


def fmt(x: float | None, ratio: bool = False) -> str:
    return "-" if x is None else (f"{x:.2f}x" if ratio else f"{x:+.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="--out directories of bench_fidelity.py runs")
    args = parser.parse_args()
    rows = []
    print("| run | " + " | ".join(name for name, _, _ in COLUMNS) + " | steps priced / measured (open, offline) |")
    print("| --- |" + " --- |" * (len(COLUMNS) + 1))
    for path in args.runs:
        run = json.loads((Path(path) / "fidelity.json").read_text())
        rows.append(errors(run))
        ratios = ", ".join(fmt(((run.get(k) or {}).get("all") or {}).get("priced_over_measured"), ratio=True)
                           for k in ("step_costs", "offline_step_costs"))
        print(f"| {Path(path).name} | " + " | ".join(fmt(e) for e in rows[-1]) + f" | {ratios} |")
        if (bracketed := bracketed_errors(run)) is not None:
            print(f"| {Path(path).name}, both grids | " + " | ".join(fmt(e) for e in bracketed) + " | |")
    for label, reduce in (("mean", lambda v: sum(v) / len(v)), ("min", min), ("max", max)):
        cells = [[r[i] for r in rows if r[i] is not None] for i in range(len(COLUMNS))]
        print(f"| {label} | " + " | ".join(fmt(reduce(c)) if c else "-" for c in cells) + " | |")


if __name__ == "__main__":
    main()
