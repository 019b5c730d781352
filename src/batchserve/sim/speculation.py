"""Speculative decoding in the simulator: synthetic drafts, a seeded acceptance model, the proposer's cost.

The engine's own `Speculator` picks k per request per step (the scheduler asks it, as in the engine);
here a `SimProposer` proposes the k synthetic tokens asked for and remembers what the engine's proposer
would have computed for them, and an `AcceptanceModel` draws how many of them the target accepts: each
draft token independently with probability alpha, up to the first rejection (Leviathan et al. 2023, whose
expected tokens per verification, bonus included, is (1 - alpha^(k+1)) / (1 - alpha)).
"""

from __future__ import annotations

import weakref
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..attention_layout import AttentionConfig, decode_layout
from ..core.batch import SYNTHETIC_TOKEN, ScheduledBatch
from ..request import Request
from .cost_model import CostModel, Efficiency, StepShape


@dataclass(frozen=True)
class SpecAcceptance:
    """The workload's side of speculation: how often the target model agrees with the drafts."""

    spec_acceptance_rate: float = 0.7
    """Speculative decoding (with --speculative-config): alpha, the probability that the target accepts a draft
    token (given it accepted the ones before); measure it on a sample (`run --sample`, the run summary's draft
    tokens accepted / proposed) or in a benchmark of the same task and proposer."""
    spec_draft_rate: float = 1.0
    """Fraction of draft lookups that find a draft (an n-gram lookup with no match proposes none, and the request
    decodes one token); measure it as verifications / lookups. A draft model always proposes: 1."""
    spec_acceptance_spread: float = 0.0
    """Per-request alpha: its standard deviation across requests, each drawing its own alpha once from a Beta
    distribution of mean `spec_acceptance_rate` (a workload mixes requests that copy their prompt, alpha near 1,
    with others); 0: every request accepts at `spec_acceptance_rate`."""
    spec_seed: int = 0
    """Seed of the acceptance draws; each request draws from its own stream, so batch order does not matter."""

    def __post_init__(self) -> None:
        for name in ("spec_acceptance_rate", "spec_draft_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        alpha, spread = self.spec_acceptance_rate, self.spec_acceptance_spread
        if spread and not 0 < spread < (alpha * (1 - alpha)) ** 0.5:
            raise ValueError(f"--spec-acceptance-spread must be in [0, {(alpha * (1 - alpha)) ** 0.5:.3f}) at "
                             f"--spec-acceptance-rate {alpha} (a Beta distribution's largest), got {spread}")

    def beta_parameters(self) -> tuple[float, float] | None:
        """(a, b) of the per-request alpha's Beta distribution (mean and standard deviation matched); None: no spread."""
        if not self.spec_acceptance_spread:
            return None
        alpha = self.spec_acceptance_rate
        concentration = alpha * (1 - alpha) / self.spec_acceptance_spread ** 2 - 1
        return alpha * concentration, (1 - alpha) * concentration


def expected_tokens_per_verification(alpha: float, k: float) -> float:
    """Tokens a verification of k drafts yields on average, the bonus token included."""
    return float(k + 1) if alpha == 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


class AcceptanceModel:
    """Draws each verification's accepted drafts from a per-request seeded stream."""

    def __init__(self, acceptance: SpecAcceptance) -> None:
        self.alpha = acceptance.spec_acceptance_rate
        self.beta = acceptance.beta_parameters()
        self.draft_rate = acceptance.spec_draft_rate
        self.seed = acceptance.spec_seed
        self._streams: weakref.WeakKeyDictionary[Request, np.random.Generator] = weakref.WeakKeyDictionary()
        self._alphas: weakref.WeakKeyDictionary[Request, float] = weakref.WeakKeyDictionary()

    def alpha_of(self, req: Request) -> float:
        """The request's own alpha: drawn once from its own stream (apart from its acceptance draws) under a spread."""
        if self.beta is None:
            return self.alpha
        alpha = self._alphas.get(req)
        if alpha is None:
            rng = np.random.default_rng([self.seed, zlib.crc32(req.request_id.encode()), 1])
            alpha = self._alphas[req] = float(rng.beta(*self.beta))
        return alpha

    def _stream(self, req: Request) -> np.random.Generator:
        stream = self._streams.get(req)
        if stream is None:
            stream = self._streams[req] = np.random.default_rng([self.seed, zlib.crc32(req.request_id.encode())])
        return stream

    def finds_draft(self, req: Request) -> bool:
        """Does this lookup find a draft (probability `spec_draft_rate`)?"""
        return self.draft_rate == 1 or self._stream(req).random() < self.draft_rate

    def num_accepted(self, req: Request, k: int) -> int:
        """Drafts accepted of `k`: the leading run of k uniform draws below alpha."""
        return int(np.cumprod(self._stream(req).random(k) < self.alpha_of(req)).sum())


@dataclass(frozen=True)
class Proposal:
    """What the engine's proposer computes for one request in one step."""

    num_drafts: int
    context: int
    """Tokens the draft model already holds in its KV cache before this step's feed."""
    num_fed: int
    """Tokens its first forward step takes (the tokens it has not seen yet); the other steps take one each."""


class SimProposer:
    """The `Proposer` of a simulated replica: synthetic drafts of the asked length, their work recorded.

    It tracks what a draft model's KV cache would hold, as `DraftModelProposer` does: the tokens it was
    fed, of which those past a rejected draft are stale (token values are synthetic here, so a rejected
    draft is taken to differ from the target's token).
    """

    def __init__(self, acceptance: AcceptanceModel | None = None) -> None:
        """`acceptance`: decides which lookups find a draft; None: every one does."""
        self.acceptance = acceptance
        self._fed: weakref.WeakKeyDictionary[Request, int] = weakref.WeakKeyDictionary()
        self.proposals: list[Proposal] = []
        """This step's proposals, drafts later cut or dropped by the scheduler included (their cost was paid)."""

    def propose(self, requests: Sequence[Request], k: Sequence[int]) -> list[list[int]]:
        drafts: list[list[int]] = []
        for req, n in zip(requests, k):
            if n > 0:
                keep = min(self._fed.get(req, 0), req.num_tokens - 1)  # the last token is always fed
                self.proposals.append(Proposal(n, keep, req.num_tokens - keep))
                self._fed[req] = req.num_tokens + n - 1  # every draft but the last is fed back
                if self.acceptance is not None and not self.acceptance.finds_draft(req):
                    n = 0  # the lookup was paid for and found nothing
            drafts.append([SYNTHETIC_TOKEN] * n)
        return drafts

    def release(self, request: Request) -> None:
        self._fed.pop(request, None)

    def take_proposals(self) -> list[Proposal]:
        """This step's proposals, cleared for the next step."""
        proposals, self.proposals = self.proposals, []
        return proposals


def draft_step_shape(contexts: Sequence[int], fed: Sequence[int],
                     attention: AttentionConfig = AttentionConfig()) -> StepShape:
    """One draft forward step as the cost model sees it: row i holds `contexts[i]` tokens and takes `fed[i]` new ones.

    A row taking several tokens runs as a prompt chunk, one taking one as a decode (grouped and padded as
    `attention`, the engine's, groups them); each row takes logits at its last token only (the draft's argmax),
    so every row is one LM-head row and nothing is sampled beyond it.
    """
    chunks = [(c, n) for c, n in zip(contexts, fed) if n > 1]
    decodes = [c + 1 for c, n in zip(contexts, fed) if n == 1]
    keys, groups = decode_layout(decodes, attention.decode_padding_ratio)
    return StepShape(num_prefill_tokens=sum(n for _, n in chunks),
                     prefill_attended_pairs=sum(n * (c + (n + 1) / 2) for c, n in chunks),
                     prefill_context_tokens=sum(c + n for c, n in chunks), num_decodes=len(decodes),
                     decode_context_tokens=sum(decodes), num_sampling=len(contexts), num_prefill_seqs=len(chunks),
                     decode_key_tokens=keys, num_decode_groups=attention.decode_calls(groups))


def draft_step_shapes(proposals: Sequence[Proposal], attention: AttentionConfig = AttentionConfig()) -> list[StepShape]:
    """The draft model's forward steps for a step's proposals, as `DraftModelProposer` runs them.

    Forward step j runs every request proposing more than j drafts: the first takes each one's unseen
    tokens (a prompt chunk after a prefill, one or two tokens after a verification), the later ones one
    token each.
    """
    shapes = []
    for j in range(max((p.num_drafts for p in proposals), default=0)):
        rows = [p for p in proposals if p.num_drafts > j]
        shapes.append(draft_step_shape([p.context + (p.num_fed + j - 1 if j else 0) for p in rows],
                                       [1 if j else p.num_fed for p in rows], attention))
    return shapes


def draft_efficiency(target: Efficiency, draft_layers: int, target_layers: int) -> Efficiency:
    """The efficiency a draft model's forward steps run at, from the target's calibrated one.

    Same device and kernels, so the same fractions of peak. A draft step runs no scheduler and no sampler
    (an argmax over its rows' logits, which the LM head's roofline prices): its fixed cost is the measured
    `draft_step_overhead_s`, not the target step's, and no per-sequence, grammar, adapter, proposer or
    new-shape term applies. The per-token, per-chunk and per-decode-group terms are work done in every layer
    (norms and activations, one attention call per chunk or group per layer), so they scale with the draft's
    share of the layers.
    """
    share = draft_layers / target_layers
    return replace(target, step_overhead_s=target.draft_step_overhead_s, token_overhead_s=target.token_overhead_s * share,
                   chunk_overhead_s=target.chunk_overhead_s * share,
                   decode_group_overhead_s=target.decode_group_overhead_s * share, sequence_overhead_s=0.0,
                   structured_overhead_s=0.0, lora_segment_overhead_s=0.0, new_shape_overhead_s=0.0,
                   proposer_overhead_s=0.0)


def draft_model_time(draft_cost_model: CostModel, proposals: Sequence[Proposal],
                     attention: AttentionConfig = AttentionConfig()) -> float:
    """A draft model's forward steps for a step's proposals, each through its cost model (`draft_efficiency`)."""
    return sum(draft_cost_model.step_time(*shape) for shape in draft_step_shapes(proposals, attention))


class SimSpeculation:
    """A simulated replica's speculation: its proposer (given to the scheduler's `Speculator`), the acceptance
    draws of each verification, and the drafting cost of each step."""

    def __init__(self, acceptance: SpecAcceptance, draft_cost_model: CostModel | None = None,
                 attention: AttentionConfig = AttentionConfig()) -> None:
        """`draft_cost_model`: the draft model's shape on the target's deployment, at its `draft_efficiency`;
        None: n-gram proposals. `attention`: how the engine groups the draft's decodes (the target's config)."""
        self.acceptance = AcceptanceModel(acceptance)
        self.proposer = SimProposer(self.acceptance)
        self.draft_cost_model = draft_cost_model
        self.attention = attention

    def draft_model_time(self, proposals: list[Proposal]) -> float:
        """The draft model's forward steps for this step's proposals (0 for n-gram lookups)."""
        if self.draft_cost_model is None:
            return 0.0
        return draft_model_time(self.draft_cost_model, proposals, self.attention)

    def sampled_tokens(self, batch: ScheduledBatch) -> list[list[int]] | None:
        """Per row: one synthetic token, or a verification's accepted drafts plus one; None without drafts."""
        drafts = batch.spec_token_ids
        if not drafts:
            return None
        return [[SYNTHETIC_TOKEN] * (1 + (self.acceptance.num_accepted(req, len(drafts[req])) if req in drafts else 0))
                for req in batch.requests]


def acceptance_rate_from_counts(num_drafts: int, num_draft_tokens: int, num_accepted_tokens: int) -> float:
    """The alpha under which verifications of the measured mean length accept the measured mean drafts.

    From vLLM's counters (verifications, draft tokens, accepted tokens): solves
    alpha (1 - alpha^k) / (1 - alpha) = accepted / verifications at k = draft tokens / verifications, the
    mean draft length standing in for each one's (a moment match; the acceptance rate per draft token,
    accepted / proposed, is lower than alpha, since drafts past a rejection are never accepted).
    """
    if num_drafts <= 0 or num_draft_tokens <= 0:
        raise ValueError("no verification was measured: the acceptance rate is unknown")
    k, target = num_draft_tokens / num_drafts, num_accepted_tokens / num_drafts
    lo, hi = 0.0, 1.0
    for _ in range(60):  # the mean accepted drafts grows with alpha: bisect
        mid = (lo + hi) / 2
        if expected_tokens_per_verification(mid, k) - 1 < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
