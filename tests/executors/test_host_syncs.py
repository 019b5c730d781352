"""The executor moves a step's results to the host once, whatever the batch's mix of sampling settings.

On a GPU every device-to-host read (`.tolist()`, `.item()`, `int(tensor)`, ...) waits
for the queued kernels; one per request per step would serialize the batch. The reads
are counted on CPU by wrapping those methods of torch.Tensor: a step with greedy,
seeded, unseeded, top-k/top-p, penalized and logprobs rows must read exactly once,
and seeded requests must still give the same tokens alone and in that batch.
"""

from __future__ import annotations

import pytest
import torch

from batchserve import SamplingParams
from batchserve.engine.llm_engine import LLMEngine

HOST_READS = ("tolist", "item", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__")

MIXED = [
    SamplingParams(max_tokens=6, temperature=0, ignore_eos=True),
    SamplingParams(max_tokens=6, temperature=0.8, seed=7, ignore_eos=True),
    SamplingParams(max_tokens=6, temperature=1.0, top_k=20, top_p=0.9, ignore_eos=True),
    SamplingParams(max_tokens=6, temperature=0.7, seed=3, logprobs=3, presence_penalty=0.5, ignore_eos=True),
    SamplingParams(max_tokens=6, temperature=0, logprobs=0, repetition_penalty=1.2, min_tokens=2, ignore_eos=True),
]


@pytest.fixture
def host_reads(monkeypatch) -> list[str]:
    """Names of the host reads made while the fixture is active, in order."""
    calls: list[str] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return calls


def run(engine: LLMEngine, params: dict[int, SamplingParams], reads: list[str] | None = None) -> dict[str, list]:
    for i, p in params.items():
        engine.add_request(str(i), list(range(10 + i, 30 + 2 * i)), p)
    outs: dict[str, list] = {}
    while engine.has_unfinished():
        if reads is not None:
            reads.clear()
        finished = engine.step()
        if reads is not None:
            assert reads == ["tolist"], f"one step read the device {len(reads)} times: {reads}"
        outs.update({o.request_id: o.outputs[0] for o in finished if o.finished})
    return outs


def test_a_mixed_sampling_step_reads_the_device_once(host_reads) -> None:
    engine = LLMEngine("tiny", kv_cache_memory="16MiB", skip_tokenizer_init=True)
    outs = run(engine, dict(enumerate(MIXED)), host_reads)
    assert all(len(o.token_ids) == 6 for o in outs.values())
    assert len(outs["3"].logprobs[0]) in (3, 4)  # top 3, plus the sampled token when it is not among them


def test_seeded_requests_give_the_same_tokens_alone_and_in_a_mixed_batch() -> None:
    mixed = run(LLMEngine("tiny", kv_cache_memory="16MiB", skip_tokenizer_init=True), dict(enumerate(MIXED)))
    for i in (1, 3):  # the same request id and prompt, alone
        alone = run(LLMEngine("tiny", kv_cache_memory="16MiB", skip_tokenizer_init=True), {i: MIXED[i]})
        assert alone[str(i)].token_ids == mixed[str(i)].token_ids
