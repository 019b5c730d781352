"""Decode step time by batch size on an MoE model: what bigger decode batches buy, measured and simulated.

An MoE decode step of B requests routes B*k rows over E experts; at small B
each touched expert's GEMM gets a few rows and the step is bound by reading
the touched experts' weights, so the time per token falls as B grows until
the expert GEMMs turn compute bound. This reads `calibrate`'s measured steps
(its grid runs decode batches of 1 to 128) and prints, per decode batch, the
measured step time, time per token, tokens per expert (uniform routing) and
the calibrated simulator's prediction. Run after a calibration that kept its steps:

    python bench/bench_fidelity.py --shape mixtral-small --out DIR
    python bench/expert_batching.py --model mixtral-small --profile DIR/profile.json --observations DIR/observations.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np
from bench_engine import SHAPES

from batchserve.model_config import ModelConfig, from_hf_config
from batchserve.sim.calibration import Observation, predict
from batchserve.sim.deployment import Deployment
from batchserve.sim.experts import tokens_per_expert
from batchserve.sim.hardware import get_hardware
from batchserve.sim.models import get_model
from batchserve.sim.simulate import hardware_efficiency


def model_shape(name: str) -> ModelConfig:
    """A bench_engine shape by name (the random-weight model bench_fidelity calibrated), else get_model's lookup."""
    if name not in SHAPES:
        return get_model(name)
    _, architecture, fields = SHAPES[name]
    return from_hf_config({"architectures": [architecture], "max_position_embeddings": 4096, **fields}, name=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a bench_engine shape (mixtral-small), or the calibrated model's directory or config.json")
    parser.add_argument("--profile", required=True, help="calibrate's hardware profile JSON")
    parser.add_argument("--observations", required=True, help="calibrate's measured steps (JSONL)")
    parser.add_argument("--weight-dtype", default="fp32")
    args = parser.parse_args()
    model, hardware = model_shape(args.model), get_hardware(args.profile)
    deployment = Deployment(model=model, hardware=hardware, weight_dtype=args.weight_dtype)
    with open(args.observations) as f:
        steps = [o for o in map(Observation.from_dict, map(json.loads, f)) if o.kind == "decode"]
    predicted = predict(deployment, hardware_efficiency(hardware), steps)
    by_batch: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for o, p in zip(steps, predicted):
        by_batch[o.shape.num_decodes].append((o.seconds, float(p)))
    print("| decode batch | tokens per expert | steps | measured step | per token | simulated step | error |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for batch in sorted(by_batch):
        measured, simulated = (float(np.median(x)) for x in zip(*by_batch[batch]))
        print(f"| {batch} | {tokens_per_expert(model.num_experts, model.num_experts_per_tok, batch):.1f} | "
              f"{len(by_batch[batch])} | {measured * 1e3:.1f} ms | {measured / batch * 1e3:.2f} ms | "
              f"{simulated * 1e3:.1f} ms | {simulated / measured - 1:+.0%} |")


if __name__ == "__main__":
    main()
