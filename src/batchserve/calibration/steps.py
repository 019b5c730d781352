"""Measure real steps on this device and fit the cost model to them: a calibrated hardware profile.

The grid covers what a serving step can be: prompt chunks of several sizes
with and without cached context, decode batches of several sizes at several
contexts, and steps mixing both. Long contexts come cheaply from the prefix
cache (a shared prefix is computed once, then many requests decode on top of
it), so the grid computes about 23k prompt tokens whatever the model: a few
minutes on a 2-core CPU for a 0.5B model. An engine serving with prefix caching
off gets it for the grid's duration: without it the same grid computes 230k
prompt tokens (20 minutes for the 0.5B model), for the same step shapes.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..core.kv_cache_manager import KVCacheManager
from ..engine import Engine
from ..engine.llm_engine import LLMEngine
from ..gemm_shapes import RUN_IN_THIS_PROCESS, SeenTokenCounts
from ..lora import LoRARequest
from ..lora.random_adapters import write_random_adapters
from ..progress import Progress
from ..request import Request, SamplingParams, StructuredOutputsParams
from ..sim.calibration import (
    Observation,
    fit_draft_step_overhead,
    fit_efficiency,
    fit_lora_terms,
    fit_report,
    median_per_point,
)
from ..sim.cost_model import Efficiency
from ..sim.deployment import Deployment
from ..sim.executor import step_shape
from ..sim.hardware import Hardware
from ..sim.speculation import draft_efficiency, draft_step_shape
from ..spec_decode.draft_model import DraftForward, DraftModelProposer
from ..spec_decode.speculator import Speculator
from ..structured_output import StructuredOutputManager
from .device import (WEIGHT_DTYPES, catalog_match, device_memory_bytes, device_name, last_level_cache_bytes,
                     measure_peaks)
from .validate import check_steps_timed_apart

_ids = itertools.count()
GRID_BUDGET_S = 60.0
"""How long `calibrate` keeps repeating its step grid (whole passes, one after another; each point keeps its median
over the passes): a shared machine's speed drifts by up to 2x between minutes, and a point measured in one minute
carries that minute's speed. A tiny model's pass takes seconds and gets many; a 0.5B model's takes minutes and
gets `MIN_GRID_PASSES`. On `tiny` (2 cores), two calibrations of 15 passes predicted saturation 7% apart (188,
176 req/s); of 4-5 passes, saturation 117-208 req/s over six calibrations."""
MAX_GRID_PASSES = 15
"""The most passes of the grid `calibrate` runs (`GRID_BUDGET_S`)."""
MIN_GRID_PASSES = 3
"""The fewest passes of the grid `calibrate` runs by default, past `GRID_BUDGET_S` if need be: a median of three
keeps one slow minute out, of one or two it cannot. SmolLM2's pass takes about a minute (one pass before): over six
job estimates (three job shapes, fp32 and bf16) its profile priced the jobs' own steps at 0.91-1.05x from three
passes, 0.89-1.15x from one, mean |log| error 0.053 against 0.105 (bench/RESULTS.md, session 15)."""
WIDEST_SPREAD_CONTEXT = 1024
"""The longest context of the grid's 192-row points (the 64-row one spans the whole grid): 192 rows up to the
grid's 2,040 tokens doubled SmolLM2's calibration pass (88 -> 183 s); saturated runs spend their wide steps at
the contexts of prompts plus outputs, most under a thousand tokens."""
DISTINCT_CONTEXT = 512
"""The longest context of the grid's wide decode point whose rows share no K/V (each its own prompt, computed in
full: 64 rows up to 512 tokens add 16k prompt tokens to a pass)."""
WAKEUP_IDLE_S = 0.1
"""How long the engine sits idle before each wake-up step: as between a lightly loaded server's requests, and well
past the milliseconds a CPU GEMM library's worker threads spin before they sleep."""


def _prompt(rng: np.random.Generator, vocab: int, n: int) -> list[int]:
    return rng.integers(0, vocab, n).tolist()


Entry = tuple[list[int], int, int]  # prompt, output length, the step it arrives at


def _decode_steps(batch: int, steps: int, small_batch: int = 4, small_steps: int = 16) -> int:
    """Outputs per request of a decode point: batches of up to `small_batch` rows, the steps a lightly loaded
    server runs most and the cheapest to measure, get `small_steps` (a 3-step sample of them misfit tiny's
    batch-1 decodes by 20-30%)."""
    return small_steps if batch <= small_batch else steps


def calibration_phases(max_model_len: int, vocab: int, max_tokens_per_step: int, max_seqs: int,
                       seed: int = 0, prompt_repeats: int = 3,
                       max_context: int = 2048) -> Iterator[tuple[str, list[Entry]]]:
    """(label, requests) groups; each group runs to completion before the next.

    Requests of a group that share a prefix reuse it from the prefix cache, which
    is what makes long-context decode points cheap; late arrivals make mixed steps.
    A prompt point is one step, so each is measured `prompt_repeats` times (fresh
    tokens each, so no cache hit): on a shared VM single steps vary by +-15%, and
    a fit through single samples moved the predicted TTFT by 40% between runs.
    `max_context`: the longest context measured (a shorter grid for a workload of short contexts).
    """
    rng = np.random.default_rng(seed)
    longest = min(max_context, max_model_len - 320)  # room for a 256-token chunk and outputs on top
    # Page in the weights and build the kernels of every step kind once, unrecorded.
    yield "warm-up", [(_prompt(rng, vocab, 256), 4, 0)] + [(_prompt(rng, vocab, 16), 4, 1) for _ in range(8)]
    for n in (16, 64, 256):
        for _ in range(prompt_repeats):
            yield f"prefill {n}", [(_prompt(rng, vocab, n), 1, 0)]
    # Prompts of lengths run once each, as a workload's are: each beside its twin run right after, they measure
    # what a token count new to the CPU's GEMM kernels costs (`new_shape_overhead_s`, from such pairs).
    for n in (24, 40, 72, 100, 136, 160, 224, 320):
        for twin in ("once", "twin"):
            yield f"prefill {n} {twin}", [(_prompt(rng, vocab, n), 1, 0)]
    for context in sorted({min(512, longest), longest}):
        prefix = _prompt(rng, vocab, context)
        yield f"prefix {context}", [(prefix, 1, 0)]
        for n in (32, 256):
            for _ in range(prompt_repeats):
                yield f"chunk {n} at context {context}", [(prefix + _prompt(rng, vocab, n), 1, 0)]
        for batch in (1, 4, 16, 64):
            if batch <= max_seqs:
                yield f"decode x{batch} at context {context}", [
                    (prefix + _prompt(rng, vocab, 8), _decode_steps(batch, 4), 0) for _ in range(batch)
                ]
    for batch in (1, 8, 32, 128):
        if batch <= max_seqs:
            yield f"decode x{batch} short", [(_prompt(rng, vocab, 16), _decode_steps(batch, 5), 0)
                                             for _ in range(batch)]
    # Decodes of spread contexts fall into several decode groups (one attention call each per layer): beside the
    # one-group batches above, they pin `decode_group_overhead_s` apart from the per-step cost.
    spread = np.geomspace(16, longest, min(8, max_seqs)).astype(int)
    yield "decode x8, spread contexts", [(_prompt(rng, vocab, int(n)), 16, 0) for n in spread]
    # A narrow batch over its own prompts, beside the x4 point over one shared prefix above: the fit then tells
    # keys other rows share (`kv_shared_bandwidth_ratio`) from a narrow step's keys. Without it shared keys came
    # only in narrow steps and distinct ones in wide steps, and a SmolLM2 fit priced shared keys 4.3x faster
    # (session 14 measured 1.2x at equal width) and a server's narrow decodes 1.3x what they took (session 22).
    rows, top = min(4, max_seqs), min(DISTINCT_CONTEXT, longest)
    yield f"decode x{rows}, own prompts", [(_prompt(rng, vocab, int(n)), _decode_steps(rows, 4), 0)
                                          for n in np.linspace(top * 3 // 4, top, rows)]
    # A saturated run spends most of its time in wide decodes over spread contexts (64-200 rows in 4-9 decode
    # groups), which the points above only bracket: fits that price the grid alike extrapolated them 25-65% apart.
    # Rows cut the longest prefix above at spread lengths, so its cached blocks spare most of their prefill.

    def spread_rows(rows: int, outputs: int, top: int = longest) -> list[Entry]:
        """`rows` requests at contexts spread up to `top`, each the cached prefix cut plus 8 fresh tokens."""
        return [(prefix[:int(n)] + _prompt(rng, vocab, 8), outputs, 0) for n in np.linspace(8, top - 8, rows)]

    widest = min(WIDEST_SPREAD_CONTEXT, longest)
    yield f"decode x{min(64, max_seqs)}, spread contexts", spread_rows(min(64, max_seqs), 6)
    # Rows that cut one prefix read the same K/V blocks, which stay in the CPU's caches across rows: a job's
    # unique prompts read K/V no other row shares, and SmolLM2's 64-row decode forward took 1.17-1.21x as long
    # over such (same rows and keys; bench/RESULTS.md, session 14). These rows bring their own prompts; they
    # decode beside the later ones' prompt chunks (mixed steps, as a job's) until all have joined, then alone
    # (a small step budget joins them late: outputs stop at the model's length, and the point is mixed steps only).
    rows, top = min(64, max_seqs), min(DISTINCT_CONTEXT, longest)
    lengths = np.linspace(8, top, rows).astype(int)
    joined = -(-int(lengths.sum()) // max_tokens_per_step)  # steps until the last prompt has been computed
    outputs = min(joined + 6, max_model_len - top)
    yield f"decode x{rows}, distinct contexts", [(_prompt(rng, vocab, int(n)), outputs, 0) for n in lengths]
    if max_seqs > 64:
        yield f"decode x{min(192, max_seqs)}, spread contexts", spread_rows(min(192, max_seqs), 6, widest)
    chunk = min(512, max_tokens_per_step // 2, longest)

    def arrivals() -> list[Entry]:
        """Fresh prompts of `chunk` tokens joining running decodes at steps 3, 6, 9 and 12."""
        return [(_prompt(rng, vocab, chunk), 1, step) for step in (3, 6, 9, 12)]

    yield "mixed", [(_prompt(rng, vocab, 32), 16, 0) for _ in range(min(16, max_seqs - 1))] + arrivals()
    # A saturated run's other common step: a prompt chunk beside a wide batch of decodes over spread contexts
    # (priced 13% high on tiny's saturated replay while the grid's mixed steps had at most 64 rows).
    wide = min(192, max_seqs - 1)
    yield f"mixed x{wide}, spread contexts", spread_rows(wide, 16, widest) + arrivals()
    # Serving-like steps: a stream of arrivals sharing a system prompt, so decode batches grow
    # while new prompts' chunks join them.
    system = _prompt(rng, vocab, 128)
    yield "steady", [(system + _prompt(rng, vocab, 32), 12, i // 6) for i in range(min(64, max_seqs))]


def constrained_phases(vocab: int, max_seqs: int, seed: int = 1) -> Iterator[tuple[int, list[Entry]]]:
    """Decode batches whose every row runs a grammar: beside the unconstrained ones of the same sizes, they
    fit `structured_overhead_s`."""
    rng = np.random.default_rng(seed)
    for batch in (1, 8, 32):
        if batch <= max_seqs:
            yield batch, [(_prompt(rng, vocab, 16), 5, 0) for _ in range(batch)]


LIGHT_LOAD_OUTPUTS = 16
"""Tokens each request of a wake-up phase decodes: a lightly loaded server's regime, measured as it runs."""


def wakeup_phases(vocab: int, seed: int = 3, repeats: int = 3,
                  outputs: int = LIGHT_LOAD_OUTPUTS) -> Iterator[list[Entry]]:
    """A lightly loaded server, as `validate --rate` meets it: a request arrives to an idle engine (its prompt
    chunk is the wake-up step), decodes `outputs` tokens, and a second one joins halfway (a mixed step, then
    two-row decodes). Beside the back-to-back prefills of the same sizes (`calibration_phases`) the first steps
    fit `wakeup_overhead_s`, which most first tokens of such a server pay; the 1-2 row decodes at short context,
    measured between idle periods rather than in a busy grid, are where its TPOT lives (on `tiny`, validation's
    TPOT ran 1.2-1.4x the grid's back-to-back 1-row decodes, which the fit priced within 5%)."""
    rng = np.random.default_rng(seed)
    for n in (16, 64, 256):
        for _ in range(repeats):
            yield [(_prompt(rng, vocab, n), outputs, 0),
                   (_prompt(rng, vocab, 32), outputs // 2, outputs // 2)]


def lora_phases(vocab: int, max_seqs: int, num_adapters: int, seed: int = 2,
                prompt_repeats: int = 2) -> Iterator[tuple[str, list[Entry], list[int]]]:
    """(label, requests, adapter ids: request i runs under ids[i % len]; none: base rows) groups, each twice:
    under adapters, then with fresh prompts of the same lengths as base rows (its twin, for `fit_lora_terms`).

    Prompt chunks under one adapter, and decode batches (after their 16-token prompts' chunk) of 8 and up to
    64 rows under one adapter and under `num_adapters`: 64 rows over 8 adapters is a batch job's regime, where
    each segment's shrink and expand GEMMs run on a few rows and the prompts' chunk holds a segment per adapter.
    An adapter's first step also copies it into a slot.
    """
    rng = np.random.default_rng(seed)
    groups = [("LoRA prefill 256", [(256, 1)], [1])] * prompt_repeats
    for batch in sorted({min(8, max_seqs), min(64, max_seqs)}):
        groups += [(f"LoRA decode x{batch}, {k} adapters", [(16, 5)] * batch, list(range(1, k + 1)))
                   for k in sorted({1, num_adapters})]
    for label, lengths, ids in groups:
        for twin in (False, True):
            yield (f"{label} (base twin)" if twin else label,
                   [(_prompt(rng, vocab, n), out, 0) for n, out in lengths], [] if twin else ids)


def speculation_phases(vocab: int, max_batch: int, seed: int = 3) -> Iterator[list[Entry]]:
    """Decode batches of up to `max_batch` rows (those that speculate) with speculation on: half the prompts
    repeat a phrase, which an n-gram lookup continues (verification steps), half are random (lookups that find
    nothing); a draft model proposes for all. Beside the grid's plain decodes, they fit the speculative terms."""
    rng = np.random.default_rng(seed)
    for batch in (1, 2, 4, 8):
        if batch <= max_batch:
            yield [(_prompt(rng, vocab, 8) * 6 if i % 2 == 0 else _prompt(rng, vocab, 48), 16, 0)
                   for i in range(batch)]


def record_steps(engine: Engine, entries: list[Entry], seen: SeenTokenCounts, keep: bool = True,
                 grammar: tuple[StructuredOutputManager, StructuredOutputsParams] | None = None,
                 adapters: Sequence[int] = (), idle_s: float = 0.0) -> list[Observation]:
    """Run requests to completion, adding each at its step; each step's shape and wall time (scheduling included).

    `idle_s` > 0: whenever requests arrive to an idle engine, it first sleeps that long, as a serving loop waits
    for its next request, and the step is timed from when they were due (the loop's sleep overshoot included,
    as a request's TTFT includes it) and marked as a wake-up.

    `seen`: the token counts the engine ran before (updated), so a step whose count is new is marked as such.
    With `grammar`, every request runs under that constraint (registered with the engine's manager); with
    `adapters` (LoRA ids the engine has registered), request i runs under adapters[i % len(adapters)].
    """
    arrivals = sorted(((start, i) for i, (_, _, start) in enumerate(entries)), reverse=True)
    lora = getattr(engine.executor, "lora", None)  # counts the slot loads each step makes
    speculator = engine.scheduler.speculator  # counts the requests it proposed drafts for
    draft_log = _draft_log(engine)  # the draft model's forward steps, timed apart from the target's step
    observations = []
    step = 0
    while arrivals or engine.has_unfinished():
        wakeup = idle_s > 0 and not engine.has_unfinished()
        if wakeup:
            due = time.perf_counter() + idle_s
            time.sleep(idle_s)
        while arrivals and arrivals[-1][0] <= step:
            i = arrivals.pop()[1]
            prompt, out, _ = entries[i]
            params = SamplingParams(max_tokens=out, ignore_eos=True,
                                    structured_outputs=grammar[1] if grammar else None)
            req = Request(f"calibrate-{next(_ids)}", prompt, params,
                          adapter_id=adapters[i % len(adapters)] if adapters else None)
            if grammar:
                grammar[0].add_request(req)
            engine.add_request(req)
        loads = lora.num_slot_loads if lora is not None else 0
        proposals = speculator.num_proposals if speculator is not None else 0
        drafted = len(draft_log) if draft_log is not None else 0
        t = due if wakeup else time.perf_counter()
        step_out = engine.step()
        seconds = time.perf_counter() - t
        if draft_log is not None:
            seconds -= sum(f.seconds for f in draft_log[drafted:])
        if step_out.result is not None:
            loads = lora.num_slot_loads - loads if lora is not None else 0
            proposals = speculator.num_proposals - proposals if speculator is not None else 0
            shape = step_shape(step_out.batch, engine.executor.attention, num_lora_loads=loads, seen=seen,
                               num_proposals=proposals, num_wakeups=int(wakeup))
            if keep:
                observations.append(Observation(shape, seconds))
        step += 1
    return observations


@dataclass
class Calibration:
    """A calibrated profile with the fit that made it and the steps it was fitted to."""

    profile: Hardware
    deployment: Deployment
    efficiency: Efficiency
    observations: list[Observation]
    report: dict
    grid_passes: int = 1
    """How many passes of the step grid the observations' medians are over."""

    def profile_dict(self, meta: dict) -> dict:
        return {**self.profile.to_dict(), "_calibration": {**meta, "grid_passes": self.grid_passes, "fit": self.report}}


def _draft_log(engine: Engine) -> list[DraftForward] | None:
    """The draft model's forward-step log, when the engine speculates with a draft model and calibrate records it."""
    speculator = engine.scheduler.speculator
    proposer = speculator.proposer if speculator is not None else None
    return proposer.forward_log if isinstance(proposer, DraftModelProposer) else None


def calibrate(llm: LLMEngine, name: str, quiet: bool = False, adapters: Sequence[LoRARequest] = (),
              max_context: int = 2048, grid_passes: int | None = None) -> Calibration:
    """Measure peaks and the step grid on `llm`'s device, then fit the cost model to the steps.

    The peaks and the grid (with its wake-up steps) are measured `grid_passes` times, one whole pass after
    another (None: as many as `GRID_BUDGET_S` allows, at most `MAX_GRID_PASSES`); each grid point and each peak
    keeps its median over the passes (`median_per_point`).

    With LoRA on, steps under `adapters` (or, if none are given, random ones of `max_lora_rank`) fit the
    LoRA terms too. With speculative decoding on, the grid runs without it and `speculation_phases` with it:
    their verification steps, an n-gram proposer's lookups (`proposer_overhead_s`) and a draft model's forward
    steps, timed apart from the target's (`draft_step_overhead_s`). `max_context`: the longest context measured.
    """
    if grid_passes is not None and grid_passes < 1:
        raise ValueError(f"grid_passes must be at least 1, got {grid_passes}; leave it unset for as many as fit "
                         f"in {GRID_BUDGET_S:.0f} s")
    check_steps_timed_apart(llm)
    speculator = llm.scheduler.speculator
    llm.scheduler.speculator = None
    try:
        return _calibrate(llm, name, quiet, adapters, max_context, speculator, grid_passes)
    finally:
        llm.scheduler.speculator = speculator


def _calibrate(llm: LLMEngine, name: str, quiet: bool, adapters: Sequence[LoRARequest], max_context: int,
               speculator: Speculator | None, grid_passes: int | None) -> Calibration:
    device = llm.device
    dtype = llm.model.dtype
    seen = RUN_IN_THIS_PROCESS.copy()  # a count this process ran before is not new
    peaks, grid = _grid_passes(llm, seen, max_context, grid_passes, quiet)
    observations = median_per_point(grid)
    flops, bandwidth = (float(np.median(p)) for p in zip(*peaks))
    label = device_name(device)
    match = catalog_match(label) if device.type == "cuda" else None
    weight_dtype = WEIGHT_DTYPES[dtype]
    peak = {weight_dtype: flops}
    profile = Hardware(
        name=name, description=f"{label}, calibrated {datetime.date.today()}",
        peak_flops=peak, memory_bandwidth=bandwidth, memory_bytes=device_memory_bytes(device),
        interconnect_bandwidth=match.interconnect_bandwidth if match else bandwidth / 10,
        interconnect_latency_s=match.interconnect_latency_s if match else 5e-6,
        max_gpus_per_node=match.max_gpus_per_node if match else 1, cache_bytes=last_level_cache_bytes(device),
        attention_backend=llm.executor.attention.backend,
    )
    lora = llm.lora_manager
    quantization = llm.quantization_config
    deployment = Deployment(replace(llm.model_config, name="calibrated"), profile, weight_dtype=weight_dtype,
                            max_lora_rank=lora.config.max_lora_rank if lora else 0,
                            quantization=quantization.method, quantization_group_size=quantization.group_size,
                            quantize_lm_head=quantization.quantize_lm_head)
    sched = llm.scheduler.config
    if llm.structured_output is not None:  # the grammar's per-row cost, when the engine can run grammars
        grammar = (llm.structured_output, StructuredOutputsParams(regex="[a-z ]{0,64}"))
        for _, entries in constrained_phases(llm.model_config.vocab_size, sched.max_num_seqs):
            observations += record_steps(llm.engine, entries, seen, grammar=grammar)
    pairs = _lora_steps(llm, adapters, seen) if lora is not None else []
    observations += [twin for _, twin in pairs]
    forwards: list[DraftForward] = []
    if speculator is not None:
        observations += _speculative_steps(llm, speculator, seen, forwards)
    efficiency = fit_efficiency(deployment, observations)
    if pairs:  # the LoRA terms price what adapters add to their twins (the base terms are fitted without them)
        efficiency = fit_lora_terms(deployment, efficiency, pairs)
        observations += [under for under, _ in pairs]
    report = fit_report(deployment, efficiency, observations)
    if pairs:  # the LoRA steps' error beside their twins': what the LoRA terms add to the base terms' error
        for label, steps in (("lora steps", [a for a, _ in pairs]), ("lora twins", [b for _, b in pairs])):
            report[label] = fit_report(deployment, efficiency, steps)["all"]
    draft = speculator.proposer if speculator is not None else None
    if isinstance(draft, DraftModelProposer):
        efficiency, report["draft"] = _fit_draft(deployment, efficiency, draft, forwards)
    profile = replace(profile, efficiency=asdict(efficiency))
    deployment = replace(deployment, hardware=profile)
    return Calibration(profile, deployment, efficiency, observations, report, len(grid))


def _grid_passes(llm: LLMEngine, seen: SeenTokenCounts, max_context: int, passes: int | None,
                 quiet: bool) -> tuple[list[tuple[float, float]], list[list[list[Observation]]]]:
    """(matmul FLOP/s, bytes/s) and the grid's steps (pass -> phase -> steps) of each pass: the grid phases, then
    the wake-up phases, on fresh prompts each pass (the warm-up runs in the first only)."""
    sched, model = llm.scheduler.config, llm.model_config
    peaks, grid = [], []
    start = time.perf_counter()
    while passes is None or len(grid) < passes:
        # the peak of the GEMM the engine runs, so fitted efficiencies stay fractions of it
        peaks.append(measure_peaks(llm.device, llm.model.dtype, packed=llm.model.prepacked))
        seed = 10 * len(grid)
        phases = [(label, entries, 0.0) for label, entries in calibration_phases(
            model.max_model_len, model.vocab_size, sched.max_num_batched_tokens, sched.max_num_seqs, seed=seed,
            max_context=max_context)]
        phases += [("wake-up", entries, WAKEUP_IDLE_S) for entries in wakeup_phases(model.vocab_size, seed=seed + 3)]
        steps: list[list[Observation]] = []
        label = "calibrating" if passes == 1 else f"calibrating, pass {len(grid) + 1}"
        with prefix_caching(llm.scheduler.kv), Progress(label, len(phases), enabled=not quiet, unit="phases") as bar:
            for i, (phase, entries, idle_s) in enumerate(phases):
                warm_up = phase == "warm-up"  # unrecorded, and needed once
                run = not warm_up or not grid
                steps.append(record_steps(llm.engine, entries, seen, keep=not warm_up, idle_s=idle_s) if run else [])
                bar.update(i + 1, phase)
        grid.append(steps)
        if passes is None:  # as many passes as the budget holds, judged by the first pass's time
            passes = max(MIN_GRID_PASSES, min(MAX_GRID_PASSES, int(GRID_BUDGET_S // (time.perf_counter() - start))))
    return peaks, grid


def _speculative_steps(llm: LLMEngine, speculator: Speculator, seen: SeenTokenCounts,
                       forwards: list[DraftForward]) -> list[Observation]:
    """The speculation phases' steps, speculation on; a draft model's forward steps are added to `forwards`."""
    draft = speculator.proposer if isinstance(speculator.proposer, DraftModelProposer) else None
    llm.scheduler.speculator = speculator
    if draft is not None:
        draft.forward_log = forwards
    try:
        observations = []
        for entries in speculation_phases(llm.model_config.vocab_size,
                                          min(llm.scheduler.config.max_num_seqs, speculator.config.max_batch_size)):
            observations += record_steps(llm.engine, entries, seen)
        return observations
    finally:
        llm.scheduler.speculator = None
        if draft is not None:
            draft.forward_log = None


def _fit_draft(target: Deployment, efficiency: Efficiency, draft: DraftModelProposer,
               forwards: Sequence[DraftForward]) -> tuple[Efficiency, dict]:
    """The target's efficiency with the draft's measured step overhead, and the fit's report on the draft's steps."""
    deployment = replace(target, model=replace(draft.config, name="calibrated-draft"), max_lora_rank=0)
    steps = [Observation(draft_step_shape(f.contexts, f.fed, draft.attention), f.seconds) for f in forwards]
    drafting = draft_efficiency(efficiency, draft.config.num_layers, target.model.num_layers)
    overhead = fit_draft_step_overhead(deployment, drafting, steps)
    report = fit_report(deployment, replace(drafting, step_overhead_s=overhead), steps)["all"]
    return replace(efficiency, draft_step_overhead_s=overhead), report


def _lora_steps(llm: LLMEngine, adapters: Sequence[LoRARequest],
                seen: SeenTokenCounts) -> list[tuple[Observation, Observation]]:
    """The LoRA phases' steps, each paired with its base twin, under `adapters` or under random adapters written
    to a temporary directory."""
    lora, sched = llm.lora_manager, llm.scheduler.config
    with tempfile.TemporaryDirectory() as root:
        if not adapters:
            adapters = write_random_adapters(lora.shapes, len(lora.layers), Path(root), lora.config.max_loras,
                                             lora.config.max_lora_rank)
        for adapter in adapters:
            lora.add(adapter)
        ids = [a.lora_int_id for a in adapters]
        runs = [record_steps(llm.engine, entries, seen, adapters=[ids[k - 1] for k in which])
                for _, entries, which in lora_phases(llm.model_config.vocab_size, sched.max_num_seqs,
                                                     min(len(ids), lora.config.max_loras))]
        return [pair for under, twin in zip(runs[::2], runs[1::2]) for pair in zip(under, twin)]


@contextlib.contextmanager
def prefix_caching(kv: KVCacheManager) -> Iterator[None]:
    """Prefix caching on for the calibration grid, whatever the engine serves with: the grid's long-context
    points reuse one computed prefix (the other phases' prompts are all fresh). An engine that serves without it
    forgets every block hash made here."""
    serving = kv.enable_caching
    kv.enable_caching = True
    try:
        yield
    finally:
        kv.enable_caching = serving
        if not serving:
            kv.pool.reset_prefix_cache()
