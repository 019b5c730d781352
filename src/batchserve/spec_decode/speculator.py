"""Which requests speculate this step and how far (k per request), and what their drafts achieved.

The scheduler asks for drafts for its decoding requests each step and reports back how many tokens
each verification accepted. k shrinks linearly with the batch, from `num_speculative_tokens` for a
lone request to 1 at `max_batch_size` and 0 above it (a large batch is compute-bound, so verifying
rejected drafts costs real time), and to 1 for a request whose recent drafts were mostly rejected;
it never passes the tokens a request may still produce.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

from ..request import Request
from .config import SpeculativeConfig
from .ngram import NgramProposer
from .proposer import Proposer

ACCEPTANCE_DECAY = 0.5
"""Weight of the past in a request's running acceptance rate: the last few steps dominate."""


def can_speculate(req: Request) -> bool:
    """Speculation is off for rows whose sampling needs one step per token (grammars, logprobs per token)."""
    p = req.sampling_params
    return p.structured_outputs is None and p.logprobs is None and p.prompt_logprobs is None


class Speculator:
    def __init__(self, config: SpeculativeConfig, proposer: Proposer | None = None) -> None:
        """`proposer`: the draft source; None builds the n-gram one (a draft model needs its engine to load it)."""
        if proposer is None:
            if config.method != "ngram":
                raise ValueError(f"speculative method {config.method!r} needs its proposer built by the engine")
            proposer = NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
        self.config = config
        self.proposer = proposer
        self._acceptance: weakref.WeakKeyDictionary[Request, float] = weakref.WeakKeyDictionary()
        self.num_proposals = 0  # requests the proposer was asked for drafts (some found none)
        self.num_drafts = 0  # verification steps that carried a draft
        self.num_draft_tokens = 0
        self.num_accepted_tokens = 0

    def num_tokens_for(self, req: Request, batch_size: int) -> int:
        """k for this request this step (0: decode one token as usual)."""
        cfg = self.config
        if batch_size > cfg.max_batch_size or not can_speculate(req):
            return 0
        room = req.sampling_params.max_tokens - req.num_output_tokens - 1  # the bonus token takes one
        if self._acceptance.get(req, 1.0) < cfg.min_acceptance_rate:
            k = 1
        else:  # from the full k alone down to 1 at max_batch_size: each draft costs more as the batch grows
            k = max(1, cfg.num_speculative_tokens * (cfg.max_batch_size + 1 - batch_size) // cfg.max_batch_size)
        return max(0, min(k, room))

    def propose(self, requests: Sequence[Request], batch_size: int) -> dict[Request, list[int]]:
        """Drafts for decoding requests (those without one are left out) in a batch of `batch_size`."""
        ks = [self.num_tokens_for(r, batch_size) for r in requests]
        chosen = [i for i, k in enumerate(ks) if k > 0]
        if not chosen:
            return {}
        self.num_proposals += len(chosen)
        drafts = self.proposer.propose([requests[i] for i in chosen], [ks[i] for i in chosen])
        return {requests[i]: d for i, d in zip(chosen, drafts) if d}

    def release(self, req: Request) -> None:
        """A request finished: its proposer state goes."""
        self.proposer.release(req)

    def record(self, req: Request, num_draft: int, num_accepted: int) -> None:
        """A verification accepted `num_accepted` of `num_draft` draft tokens."""
        self.num_drafts += 1
        self.num_draft_tokens += num_draft
        self.num_accepted_tokens += num_accepted
        rate = num_accepted / num_draft
        self._acceptance[req] = ACCEPTANCE_DECAY * self._acceptance.get(req, rate) + (1 - ACCEPTANCE_DECAY) * rate
