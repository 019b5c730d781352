"""Sampled speculative decoding keeps the target distribution: the first three tokens of 2,000 seeded
samples, with n-gram drafts verified by rejection sampling, against 2,000 plain samples.

A tiny-vocabulary random Llama (8 tokens, a sharpened LM head so drafts are often but not always
accepted) keeps the outcome space at 512 triples. Chi-square test of homogeneity over the cells,
pooling cells with fewer than 5 expected samples; it fails at p < 1e-3, so a correct engine fails
it once in a thousand seeds (the seeds are fixed, so the run is deterministic). The same test must
reject a verifier that accepts every draft.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

torch = pytest.importorskip("torch")

from batchserve.config import CacheConfig, scheduler_config
from batchserve.core.scheduler import Scheduler
from batchserve.engine import Engine
from batchserve.executors.torch_executor import TorchExecutor
from batchserve.models.llama import CausalLM
from batchserve.models.tiny import tiny_config, tiny_weights
from batchserve.request import Request, SamplingParams
from batchserve.spec_decode import SpeculativeConfig, Speculator, rejection_sampler

VOCAB = 8
NUM_SAMPLES = 2000
FALSE_ALARM_RATE = 1e-3
PROMPT = [*range(VOCAB), 0, 1]  # every token occurs: a 1-gram draft always exists


@pytest.fixture(scope="module")
def model() -> tuple[CausalLM, object]:
    config = dataclasses.replace(tiny_config(), vocab_size=VOCAB, eos_token_ids=(VOCAB - 1,), bos_token_id=0)
    net = CausalLM(config, dtype=torch.float32, device="cpu")
    net.load_weights((name, w * 12 if name == "lm_head.weight" else w) for name, w in tiny_weights(config))
    return net.eval().requires_grad_(False), config


def first_triples(model: tuple[CausalLM, object], speculate: bool, seeds: range) -> tuple[list[tuple], Speculator]:
    net, config = model
    scheduler = Scheduler(scheduler_config("sarathi", max_num_batched_tokens=4096, max_num_seqs=256),
                          CacheConfig(16, 2048))
    speculator = Speculator(SpeculativeConfig(num_speculative_tokens=3, max_batch_size=256))
    scheduler.speculator = speculator if speculate else None
    engine = Engine(scheduler, TorchExecutor(net, config, 2048, 16, torch.float32, torch.device("cpu")))
    reqs = [Request(str(s), PROMPT, SamplingParams(max_tokens=4, temperature=1.0, seed=s)) for s in seeds]
    for r in reqs:
        engine.add_request(r)
    while engine.has_unfinished():
        engine.step()
    return [tuple(r.output_token_ids[:3]) for r in reqs], speculator


def homogeneity_p_value(a: list[tuple], b: list[tuple]) -> float:
    """Chi-square test that two samples come from one distribution; rare cells pooled into one."""
    ca, cb = Counter(a), Counter(b)
    cells = sorted(set(ca) | set(cb))
    rare = [c for c in cells if ca[c] + cb[c] < 10]  # under 5 expected per sample
    rows = [[ca[c], cb[c]] for c in cells if c not in rare] + [[sum(ca[c] for c in rare), sum(cb[c] for c in rare)]]
    table = torch.tensor([r for r in rows if sum(r)], dtype=torch.float64)
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    stat = ((table - expected) ** 2 / expected).sum()
    df = table.shape[0] - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


@pytest.fixture(scope="module")
def plain(model) -> list[tuple]:
    return first_triples(model, False, range(NUM_SAMPLES))[0]


def test_rejection_sampling_keeps_the_first_three_tokens_distribution(model, plain) -> None:
    spec, speculator = first_triples(model, True, range(NUM_SAMPLES, 2 * NUM_SAMPLES))
    assert 0 < speculator.num_accepted_tokens < speculator.num_draft_tokens  # both branches ran
    assert len(set(plain)) > 20  # a distribution worth testing, not a near-constant
    assert homogeneity_p_value(plain, spec) > FALSE_ALARM_RATE


def test_seeded_requests_repeat(model) -> None:
    assert first_triples(model, True, range(50))[0] == first_triples(model, True, range(50))[0]


def test_a_verifier_that_accepts_every_draft_is_caught(model, plain, monkeypatch) -> None:
    monkeypatch.setattr(rejection_sampler, "_accept_sampled", lambda sampler, draft, probs, gen: draft + [0])
    biased, _ = first_triples(model, True, range(NUM_SAMPLES, NUM_SAMPLES + 500))  # a gross bias: 500 suffice
    assert homogeneity_p_value(plain, biased) < FALSE_ALARM_RATE
