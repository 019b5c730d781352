"""Speculative decoding in the simulator: the acceptance model against its closed form, plain decoding as
its alpha = 0 limit, speculation off untouched, lazy scheduling equal to explicit, and the drafting cost."""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_replay import ExplicitScheduler

from batchserve.config import CacheConfig, scheduler_config
from batchserve.engine import Engine
from batchserve.request import Request, SamplingParams
from batchserve.sim.batch import SimBatch
from batchserve.sim.cost_model import CostModel, Efficiency
from batchserve.sim.engine import SimEngine
from batchserve.sim.executor import SimExecutor, step_shape
from batchserve.sim.models import get_model
from batchserve.sim.scheduler import SimScheduler
from batchserve.sim.simulate import ClusterConfig, build_cluster, resolve, simulate
from batchserve.sim.speculation import (
    AcceptanceModel,
    Proposal,
    SimProposer,
    SimSpeculation,
    SpecAcceptance,
    acceptance_rate_from_counts,
    draft_efficiency,
    draft_model_time,
    draft_step_shape,
    expected_tokens_per_verification,
)
from batchserve.spec_decode import SpeculativeConfig, Speculator

K = 4
ALWAYS_K = SpeculativeConfig(num_speculative_tokens=K, min_acceptance_rate=0.0)  # a lone request always asks k


def setup_for(spec: SpeculativeConfig | None, alpha: float = 0.7, model: str = "qwen2.5-0.5b", **sched):
    return resolve(ClusterConfig(model=model), scheduler_config("sarathi", **sched), CacheConfig(), Efficiency(),
                   speculative=spec, spec_acceptance=SpecAcceptance(alpha))


def requests(num: int, max_tokens: int, prompt_len: int = 32, spacing: float = 0.0, **params) -> list[Request]:
    return [Request(f"r{i}", list(range(1, prompt_len + 1)),
                    SamplingParams(max_tokens=max_tokens, ignore_eos=True, **params), arrival_time=i * spacing)
            for i in range(num)]


def verifications(setup, reqs) -> list[tuple[int, int]]:
    """(drafts, accepted) of every verification of a one-replica simulation."""
    cluster = build_cluster(setup)
    speculator = cluster.replicas[0].scheduler.speculator
    seen: list[tuple[int, int]] = []
    record = speculator.record
    speculator.record = lambda req, n, a: (seen.append((n, a)), record(req, n, a))
    cluster.run(reqs)
    return seen


@pytest.mark.parametrize("alpha", [0.3, 0.6, 0.9])
def test_mean_tokens_per_verification_match_the_closed_form(alpha: float) -> None:
    """E[tokens per verification of k drafts] = (1 - alpha^(k+1)) / (1 - alpha) (Leviathan et al. 2023).

    One request at a time, so every verification not cut by max_tokens carries k drafts. The test fails
    when the simulated mean is more than 5 standard errors off: a false-alarm rate below 1e-6."""
    seen = verifications(setup_for(ALWAYS_K, alpha, max_num_seqs=1), requests(8, 400))
    tokens = np.array([a + 1 for n, a in seen if n == K])
    assert len(tokens) > 500
    expected = expected_tokens_per_verification(alpha, K)
    assert abs(tokens.mean() - expected) < 5 * tokens.std(ddof=1) / np.sqrt(len(tokens))


def test_per_request_alphas_have_the_asked_mean_and_spread() -> None:
    """Each request draws its alpha once from a Beta of the asked mean and standard deviation (5 standard errors)."""
    model = AcceptanceModel(SpecAcceptance(0.6, spec_acceptance_spread=0.25))
    alphas = np.array([model.alpha_of(r) for r in requests(4000, 8)])
    assert abs(alphas.mean() - 0.6) < 5 * 0.25 / np.sqrt(len(alphas))
    assert alphas.std(ddof=1) == pytest.approx(0.25, rel=0.1)
    assert model.alpha_of(requests(1, 8)[0]) == alphas[0]  # seeded per request: the same request, the same alpha


def test_verifications_accept_at_each_requests_own_alpha() -> None:
    """Under a spread, request i's verifications of k drafts accept a ~ TruncGeom(alpha_i): their summed
    deviation from the per-request expectation, over its exact variance, is a z-score (|z| < 5: false alarm < 1e-6);
    at one shared alpha, the far-apart requests would fail it."""
    setup = replace(setup_for(ALWAYS_K, max_num_seqs=1), spec_acceptance=SpecAcceptance(0.6, spec_acceptance_spread=0.3))
    cluster = build_cluster(setup)
    speculator = cluster.replicas[0].scheduler.speculator
    seen: list[tuple[Request, int, int]] = []
    record = speculator.record
    speculator.record = lambda req, n, a: (seen.append((req, n, a)), record(req, n, a))
    reqs = requests(60, 80)
    cluster.run(reqs)
    model = cluster.replicas[0].executor.speculation.acceptance
    full = [(model.alpha_of(req), a) for req, n, a in seen if n == K]
    assert len(full) > 500 and np.std([alpha for alpha, _ in full]) > 0.2
    probs = [np.array([alpha ** j * (1 - alpha) for j in range(K)] + [alpha ** K]) for alpha, _ in full]
    means = np.array([p @ np.arange(K + 1) for p in probs])
    variances = np.array([p @ np.arange(K + 1) ** 2 for p in probs]) - means ** 2
    accepted = np.array([a for _, a in full])
    assert abs((accepted - means).sum()) < 5 * np.sqrt(variances.sum())


def test_closed_form_limits() -> None:
    assert expected_tokens_per_verification(0.0, K) == 1.0
    assert expected_tokens_per_verification(1.0, K) == K + 1
    assert expected_tokens_per_verification(0.5, 1) == pytest.approx(1.5)


def test_alpha_zero_decodes_one_token_per_step_as_plain_decoding() -> None:
    """Every draft rejected: each verification keeps one token, so the steps and outputs are plain decoding's."""
    reqs_spec, reqs_plain = requests(6, 50), requests(6, 50)  # all at once: batching does not depend on time
    spec_cluster, plain_cluster = build_cluster(setup_for(ALWAYS_K, 0.0)), build_cluster(setup_for(None))
    spec, plain = spec_cluster.run(reqs_spec), plain_cluster.run(reqs_plain)
    assert [r.num_output_tokens for r in reqs_spec] == [r.num_output_tokens for r in reqs_plain] == [50] * 6
    assert spec.num_steps == plain.num_steps
    speculator = spec_cluster.replicas[0].scheduler.speculator
    assert speculator.num_drafts > 0 and speculator.num_accepted_tokens == 0
    # verifying rejected drafts costs time: never faster than plain decoding
    assert all(s.finish_time >= p.finish_time for s, p in zip(spec.records, plain.records))


def test_alpha_one_takes_k_plus_one_tokens_per_step() -> None:
    (req,) = reqs = requests(1, 1 + 5 * (K + 1))  # the prompt's step, then five full verifications
    result = simulate(setup_for(ALWAYS_K, 1.0), reqs)
    assert req.num_output_tokens == 1 + 5 * (K + 1) and result.num_steps == 6


def test_speculation_that_never_proposes_changes_nothing() -> None:
    """Rows that cannot speculate (per-token logprobs) decode as without speculation (listed, not in the lazy
    cohort, which sums the same step times in another order): the same records up to rounding."""
    def run(spec):
        return simulate(setup_for(spec), requests(12, 40, spacing=0.003, logprobs=1)).records

    for a, b in zip(run(ALWAYS_K), run(None), strict=True):
        assert (a.request_id, a.num_output_tokens) == (b.request_id, b.num_output_tokens)
        assert (a.first_token_time, a.finish_time) == pytest.approx((b.first_token_time, b.finish_time), rel=1e-12)


def test_speculation_speeds_up_a_memory_bound_lone_request() -> None:
    """A lone decode streams all weights for one token; verifying k + 1 costs about the same, so high
    acceptance shortens the request by roughly the tokens per verification."""
    plain = simulate(setup_for(None), requests(1, 200)).records[0].e2e_s
    fast = simulate(setup_for(ALWAYS_K, 0.8), requests(1, 200)).records[0].e2e_s
    assert 2.0 < plain / fast <= expected_tokens_per_verification(0.8, K) * 1.05


def test_results_record_the_speculative_config_and_acceptance_rate() -> None:
    d = setup_for(ALWAYS_K, 0.55).to_dict()
    assert d["speculative_config"]["num_speculative_tokens"] == K and d["spec_acceptance"]["spec_acceptance_rate"] == 0.55
    assert "speculative_config" not in setup_for(None).to_dict()


def test_bad_acceptance_rate_is_refused() -> None:
    with pytest.raises(ValueError, match=r"--spec-acceptance-rate must be in \[0, 1\]"):
        SpecAcceptance(1.5)


# ---------------------------------------------------------------------------- lazy vs explicit


def run_explicit_and_lazy(reqs_a: list[Request], reqs_b: list[Request], spec: SpeculativeConfig, alpha: float,
                          num_blocks: int, max_num_seqs: int) -> None:
    """The core Scheduler (every request listed) and the SimScheduler (cohort, fast-forward), one SimExecutor each."""
    setup = setup_for(spec, alpha, max_num_seqs=max_num_seqs)
    cache = replace(setup.cache, block_size=4, num_blocks=num_blocks)
    cost = CostModel(setup.deployment, setup.efficiency)
    for reqs, lazy in ((reqs_a, False), (reqs_b, True)):
        sched = (SimScheduler if lazy else ExplicitScheduler)(setup.scheduler, cache)
        speculation = SimSpeculation(setup.spec_acceptance)
        sched.speculator = Speculator(spec, speculation.proposer)
        engine = (SimEngine if lazy else Engine)(sched, SimExecutor(cost, setup.attention, 0, speculation))
        pending = sorted(reqs, key=lambda r: r.arrival_time)
        while pending or engine.has_unfinished():
            t_next = pending[0].arrival_time if pending else float("inf")
            if engine.has_unfinished() and engine.now < t_next:
                if lazy:
                    engine.step(until=t_next)  # a decode run stops at the next arrival, as in a Cluster
                else:
                    engine.step()
                continue
            r = pending.pop(0)
            if not engine.has_unfinished():
                engine.now = max(engine.now, r.arrival_time)
            engine.add_request(r)
        assert sched.kv.pool.num_free_blocks == sched.kv.pool.num_blocks, "blocks leaked"


@settings(max_examples=20, deadline=None)
@given(lengths=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 24), st.booleans()), min_size=1, max_size=8),
       alpha=st.sampled_from([0.0, 0.5, 0.9]), num_blocks=st.integers(25, 60), max_num_seqs=st.integers(1, 6),
       max_batch_size=st.integers(1, 8))
def test_lazy_simulation_matches_explicit_scheduling_under_speculation(lengths, alpha, num_blocks, max_num_seqs,
                                                                       max_batch_size) -> None:
    """Same times, outputs and preemptions (small pools force them), requests with logprobs riding the cohort."""
    spec = SpeculativeConfig(num_speculative_tokens=3, max_batch_size=max_batch_size)

    def fresh() -> list[Request]:
        return [Request(f"r{i}", [1 + (i + j) % 5 for j in range(p)],
                        SamplingParams(max_tokens=m, ignore_eos=True, logprobs=1 if lp else None),
                        arrival_time=0.002 * i) for i, (p, m, lp) in enumerate(lengths)]

    explicit, lazy = fresh(), fresh()
    run_explicit_and_lazy(explicit, lazy, spec, alpha, num_blocks, max_num_seqs)

    # a fast-forwarded run sums its step times in another order: equal up to rounding
    assert [(r.num_output_tokens, r.num_preemptions) for r in lazy] == [(r.num_output_tokens, r.num_preemptions)
                                                                        for r in explicit]
    for a, b in zip(lazy, explicit):
        assert (a.first_token_time, a.finish_time) == pytest.approx((b.first_token_time, b.finish_time), rel=1e-12)
    assert all(r.num_output_tokens == m for r, (_, m, _) in zip(lazy, lengths))


# ---------------------------------------------------------------------------- drafting cost


def test_draft_model_first_feeds_the_prompt_then_what_it_has_not_seen() -> None:
    """As DraftModelProposer: the whole context at first, then the tokens past the last accepted draft."""
    proposer = SimProposer()
    (req,) = requests(1, 100)
    req.num_computed_tokens = 32
    req.append_output(0)  # 33 tokens known, the prompt computed
    proposer.propose([req], [4])
    for _ in range(2 + 1):  # two drafts accepted, plus the target's token
        req.append_output(0)
    proposer.propose([req], [4])  # it holds 33 + 3 fed drafts; valid are 33 + 2 accepted
    for _ in range(4 + 1):  # all four accepted: the last draft (never fed) and the bonus are new
        req.append_output(0)
    proposer.propose([req], [2])
    assert proposer.take_proposals() == [Proposal(4, 0, 33), Proposal(4, 35, 1), Proposal(2, 39, 2)]
    assert proposer.take_proposals() == []


def test_ngram_drafting_costs_its_overhead_per_proposing_request() -> None:
    """Each proposal adds proposer_overhead_s (times time_scale) to its step, and nothing else changes."""
    def run(overhead: float):
        setup = resolve(ClusterConfig(model="qwen2.5-0.5b"), scheduler_config("sarathi"), CacheConfig(),
                        Efficiency(proposer_overhead_s=overhead, time_scale=2.0), speculative=ALWAYS_K,
                        spec_acceptance=SpecAcceptance(0.6))
        cluster = build_cluster(setup)
        result = cluster.run(requests(1, 120))
        return result.records[0].e2e_s, cluster.replicas[0].scheduler.speculator.num_drafts

    (base, n), (slow, n_slow) = run(0.0), run(0.002)
    assert n == n_slow > 20 and slow - base == pytest.approx(2.0 * n * 0.002, rel=1e-6)


def test_draft_model_steps_cost_the_drafts_forward_passes() -> None:
    """k draft decode steps of a lone request cost k steps of the draft's shape; a 2-layer draft saves the other layers."""
    setup = setup_for(ALWAYS_K)
    target = CostModel(setup.deployment, setup.efficiency)
    same = draft_model_time(target, [Proposal(K, 99, 1)])
    assert same == pytest.approx(sum(target.step_time(num_decodes=1, decode_context_tokens=100 + j, num_sampling=1)
                                     for j in range(K)))
    draft_shape = replace(get_model("qwen2.5-0.5b"), num_layers=2)
    small = CostModel(replace(setup.deployment, model=draft_shape), setup.efficiency)
    drafted = draft_model_time(small, [Proposal(K, 99, 1)])
    # fewer layers, but each step still pays its fixed cost and the full-vocabulary LM head
    layers = K * 22 * (target.layer_gemm_time(1) + target.decode_attention_time(1, 101))
    assert drafted < same - 0.9 * layers and drafted > K * (target.overhead + target.lm_head_time(1))


CPU_FIT = Efficiency(memory_bandwidth=0.3, step_overhead_s=0.05, token_overhead_s=4e-4, sequence_overhead_s=2e-3,
                     chunk_overhead_s=3e-3, decode_group_overhead_s=1e-3, new_shape_overhead_s=5e-3,
                     proposer_overhead_s=1e-4, draft_step_overhead_s=0.004, time_scale=1.5)
"""A CPU-like fitted target: large per-step, per-sequence and per-layer host terms, a measured draft step."""


def test_a_draft_step_pays_its_own_fixed_cost_and_its_share_of_the_per_layer_terms() -> None:
    """Closed form of one draft step (2 of 24 layers) under `draft_efficiency`: its layers' roofline, the LM head
    over its rows, `draft_step_overhead_s`, and the per-token, per-chunk, per-group terms x 2/24; none of the
    target step's fixed, per-sequence, new-shape or proposer terms."""
    target = get_model("qwen2.5-0.5b")
    deployment = setup_for(ALWAYS_K).deployment
    draft = replace(deployment, model=replace(target, num_layers=2))
    eff = draft_efficiency(CPU_FIT, 2, target.num_layers)
    cost = CostModel(draft, eff)
    share = 2 / 24
    # two requests: one decoding at context 99, one feeding a 33-token prompt chunk
    shape = draft_step_shape([99, 0], [1, 33])
    roofline = CostModel(draft, replace(CPU_FIT, step_overhead_s=0.0, token_overhead_s=0.0, sequence_overhead_s=0.0,
                                        chunk_overhead_s=0.0, decode_group_overhead_s=0.0, time_scale=1.0))
    expected = 1.5 * (roofline.step_time(*shape) + 0.004 + share * (4e-4 * 34 + 3e-3 * 1 + 1e-3 * 1))
    assert cost.step_time(*shape) == pytest.approx(expected, rel=1e-12)
    assert shape.num_sampling == 2 and shape.num_prefill_tokens == 33 and shape.num_decodes == 1
    assert shape.num_decode_groups == 1 and shape.decode_key_tokens == 100


def test_simulated_draft_model_charges_draft_efficiency_steps() -> None:
    """A simulated round with a draft model costs the target's step plus the draft's steps at `draft_efficiency`:
    the draft pays its measured step overhead, never the target's (here 12x larger)."""
    draft_cfg = SpeculativeConfig(model="qwen2.5-0.5b", num_speculative_tokens=K, min_acceptance_rate=0.0)
    setup = resolve(ClusterConfig(model="qwen2.5-0.5b"), scheduler_config("sarathi"), CacheConfig(), CPU_FIT,
                    speculative=draft_cfg, spec_acceptance=SpecAcceptance(0.7),
                    draft_model=replace(get_model("qwen2.5-0.5b"), num_layers=2))
    cluster = build_cluster(setup)
    spec = cluster.replicas[0].executor.speculation
    expected = CostModel(replace(setup.deployment, model=setup.draft_model), draft_efficiency(CPU_FIT, 2, 24))
    proposals = [Proposal(K, 99, 1), Proposal(2, 40, 2)]
    assert spec.draft_model_time(proposals) == pytest.approx(draft_model_time(expected, proposals), rel=1e-12)
    per_step = draft_model_time(expected, [Proposal(1, 99, 1)])
    assert per_step < CPU_FIT.step_overhead_s  # the old pricing charged every draft step the target's 50 ms


def test_a_verification_samples_its_request_once_and_adds_lm_head_rows() -> None:
    """A verification of k drafts is a k + 1 token chunk sampled once (`sequence_overhead_s` once), whose k extra
    logits rows cost LM-head rows; against a decode of the same request it adds the chunk's terms and k tokens'."""
    cost = CostModel(setup_for(ALWAYS_K).deployment, CPU_FIT)
    (req,) = requests(1, 100)
    req.num_computed_tokens = 32
    req.append_output(7)
    verify = SimBatch([req], [K + 1], [req.num_computed_tokens], spec_token_ids={req: [0] * K})
    shape = step_shape(verify)
    assert (shape.num_sampling, shape.num_draft_logits, shape.num_prefill_tokens) == (1, K, K + 1)
    decode = step_shape(SimBatch([req], [1], [req.num_computed_tokens]))
    no_seq = CostModel(setup_for(ALWAYS_K).deployment, replace(CPU_FIT, sequence_overhead_s=0.0))
    assert cost.step_time(*shape) - no_seq.step_time(*shape) == pytest.approx(1.5 * 2e-3, rel=1e-9)
    extra = cost.step_time(*shape) - cost.step_time(*decode)
    attention = cost.num_layers * (cost.prefill_attention_time(K + 1, (K + 1) * (32 + (K + 2) / 2), 32 + K + 1)
                                   - float(cost.decode_attention_time(1, 33)))
    gemms = cost.num_layers * (cost.layer_gemm_time(K + 1) - cost.layer_gemm_time(1))
    lm_head = cost.lm_head_time(K + 1) - cost.lm_head_time(1)
    assert extra == pytest.approx(1.5 * (gemms + attention + lm_head + 3e-3 + 4e-4 * K
                                         - 1e-3 * decode.num_decode_groups), rel=1e-9)


def test_a_draft_models_first_step_after_a_prompt_is_a_chunk() -> None:
    """After the prefill, the draft has seen nothing: its first forward step runs the whole prompt."""
    setup = setup_for(ALWAYS_K)
    target = CostModel(setup.deployment, setup.efficiency)
    first = draft_model_time(target, [Proposal(1, 0, 33)])
    assert first == pytest.approx(target.step_time(num_prefill_tokens=33, prefill_attended_pairs=33 * 17,
                                                   prefill_context_tokens=33, num_sampling=1, num_prefill_seqs=1))


def test_simulated_draft_model_slows_each_round_by_its_steps() -> None:
    """With a draft model, each round pays the draft's k steps: slower than n-gram drafts at the same alpha."""
    draft = SpeculativeConfig(model="qwen2.5-0.5b", num_speculative_tokens=K, min_acceptance_rate=0.0)
    ngram = simulate(setup_for(ALWAYS_K, 0.8), requests(1, 100)).records[0].e2e_s
    drafted = simulate(setup_for(draft, 0.8), requests(1, 100)).records[0].e2e_s
    assert drafted > ngram * 1.5


def test_simulator_stays_torch_free() -> None:
    import subprocess

    code = "import sys, batchserve.sim.simulate, batchserve.sim.speculation; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("alpha", [0.2, 0.6, 0.95])
def test_acceptance_rate_recovered_from_a_runs_counters(alpha: float) -> None:
    """vLLM's three counters of a simulated run (ragged k: the batch and max_tokens cut it) give back its alpha."""
    spec = SpeculativeConfig(num_speculative_tokens=5, min_acceptance_rate=0.0, max_batch_size=4)
    cluster = build_cluster(setup_for(spec, alpha, max_num_seqs=3))
    cluster.run(requests(12, 150))
    s = cluster.replicas[0].scheduler.speculator
    assert acceptance_rate_from_counts(s.num_drafts, s.num_draft_tokens, s.num_accepted_tokens) == pytest.approx(
        alpha, abs=0.03)


def test_acceptance_rate_inverts_the_closed_form() -> None:
    for alpha in (0.0, 0.3, 0.8, 0.99):
        accepted = expected_tokens_per_verification(alpha, 4) - 1
        assert acceptance_rate_from_counts(1000, 4000, round(1000 * accepted)) == pytest.approx(alpha, abs=1e-3)
    with pytest.raises(ValueError, match="no verification was measured"):
        acceptance_rate_from_counts(0, 0, 0)


def test_lookups_that_find_no_draft_decode_one_token() -> None:
    """With spec_draft_rate r, about r of the lookups carry drafts to verify (5 binomial standard errors: a
    false alarm below 1e-6); at r = 0 the steps are plain decoding's."""
    setup = resolve(ClusterConfig(model="qwen2.5-0.5b"), scheduler_config("sarathi", max_num_seqs=1), CacheConfig(),
                    Efficiency(), speculative=ALWAYS_K, spec_acceptance=SpecAcceptance(0.8, spec_draft_rate=0.4))
    cluster = build_cluster(setup)
    cluster.run(requests(4, 300))
    s = cluster.replicas[0].scheduler.speculator
    rate, n = s.num_drafts / s.num_proposals, s.num_proposals
    assert abs(rate - 0.4) < 5 * np.sqrt(0.4 * 0.6 / n)
    none = resolve(ClusterConfig(model="qwen2.5-0.5b"), scheduler_config("sarathi"), CacheConfig(), Efficiency(),
                   speculative=ALWAYS_K, spec_acceptance=SpecAcceptance(0.8, spec_draft_rate=0.0))
    assert simulate(none, requests(3, 40)).num_steps == simulate(setup_for(None), requests(3, 40)).num_steps
