"""The n-gram proposer's lookup and the Speculator's choice of k (torch-free)."""

from __future__ import annotations

from batchserve.request import Request, SamplingParams, StructuredOutputsParams
from batchserve.spec_decode import NgramProposer, SpeculativeConfig, Speculator


def test_ngram_takes_the_latest_match_of_the_longest_suffix():
    p = NgramProposer(prompt_lookup_min=1, prompt_lookup_max=3)
    # suffix [1, 2, 3] occurs at 0 (followed by 7, 8) and [2, 3] later at 6 (followed by 9): the 3-gram wins
    assert p.propose_one([1, 2, 3, 7, 8, 5, 2, 3, 9, 1, 2, 3], 2) == [7, 8]
    assert p.propose_one([4, 5, 6, 4, 5, 9, 4, 5], 3) == [9, 4, 5]  # latest of two [4, 5] matches
    assert p.propose_one([1, 2, 3, 4], 3) == []  # nothing repeats
    assert p.propose_one([1, 2, 1], 5) == [2, 1]  # at most what follows the match
    assert NgramProposer(2, 3).propose_one([1, 2, 3, 1], 2) == []  # a 1-gram is below prompt_lookup_min


def request(max_tokens: int = 50, out: int = 0, **params) -> Request:
    req = Request("r", [1, 2, 3, 1, 2], SamplingParams(max_tokens=max_tokens, **params))
    for _ in range(out):
        req.append_output(3)
    return req


def test_k_shrinks_with_the_batch_and_stops_above_max_batch_size():
    s = Speculator(SpeculativeConfig(num_speculative_tokens=4, max_batch_size=16))
    ks = [s.num_tokens_for(request(), b) for b in (1, 4, 8, 16, 17)]
    assert ks == [4, 3, 2, 1, 0]


def test_k_is_cut_by_the_tokens_left_and_by_poor_acceptance():
    s = Speculator(SpeculativeConfig(num_speculative_tokens=4, min_acceptance_rate=0.3))
    assert s.num_tokens_for(request(max_tokens=10, out=7), 1) == 2  # 3 left: 2 drafts + the bonus token
    assert s.num_tokens_for(request(max_tokens=10, out=9), 1) == 0
    req = request()
    s.record(req, 4, 0)
    assert s.num_tokens_for(req, 1) == 1  # probing until drafts land again
    for _ in range(3):
        s.record(req, 1, 1)
    assert s.num_tokens_for(req, 1) == 4
    assert (s.num_drafts, s.num_draft_tokens, s.num_accepted_tokens) == (4, 7, 3)


def test_rows_that_sample_one_step_per_token_never_speculate():
    s = Speculator(SpeculativeConfig())
    assert s.num_tokens_for(request(logprobs=2), 1) == 0
    assert s.num_tokens_for(request(prompt_logprobs=1), 1) == 0
    assert s.num_tokens_for(request(structured_outputs=StructuredOutputsParams(regex="[ab]+")), 1) == 0
    plain, with_logprobs = request(), request(logprobs=1)
    assert list(s.propose([plain, with_logprobs], 1)) == [plain]
