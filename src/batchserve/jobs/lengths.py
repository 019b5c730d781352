"""Output lengths from evidence: a censored length distribution per prompt-length bucket.

A completion that stopped (EOS, a stop string) tells its length; one that hit
max_tokens tells only that its natural length is at least that, so each
bucket's distribution is the Kaplan-Meier estimate, which counts such a
completion as "still going" up to its limit and no further. Mass beyond the
longest observed stop is unknown: a request drawing it runs to its own
max_tokens (an upper bound, as without evidence). Bootstrap resamples of the
observations give draws that spread as far as the evidence is uncertain.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Completion:
    """One observed completion: its prompt length, its limit, how long it ran and whether the limit stopped it."""

    prompt_len: int
    max_tokens: int
    length: int
    censored: bool

    def to_list(self) -> list[int]:
        return [self.prompt_len, self.max_tokens, self.length, int(self.censored)]

    @classmethod
    def from_list(cls, row: Sequence[int]) -> Completion:
        prompt_len, max_tokens, length, censored = row
        return cls(int(prompt_len), int(max_tokens), int(length), bool(censored))


class LengthDistribution:
    """Kaplan-Meier over (length, censored) pairs: lengths with their probabilities, plus the unknown tail."""

    def __init__(self, observations: Sequence[Completion]) -> None:
        lengths = np.array([o.length for o in observations], dtype=np.int64)
        stopped = np.array([not o.censored for o in observations], dtype=bool)
        times = np.unique(lengths[stopped])
        survival, values, masses = 1.0, [], []
        for t in times:
            at_risk = np.count_nonzero(lengths >= t)
            events = np.count_nonzero((lengths == t) & stopped)
            mass = survival * events / at_risk
            values.append(int(t))
            masses.append(mass)
            survival -= mass
        self.values = np.array(values, dtype=np.int64)
        self.masses = np.array(masses, dtype=np.float64)
        self.tail = max(0.0, survival)
        """Probability of running past every observed stop: such a draw runs to its request's max_tokens."""

    def draw(self, max_tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One length per limit in `max_tokens`, each at most its limit and at least 1."""
        probs = np.append(self.masses, self.tail)
        pick = rng.choice(len(probs), size=len(max_tokens), p=probs / probs.sum())
        natural = np.append(self.values, np.iinfo(np.int64).max)[pick]
        return np.clip(natural, 1, max_tokens)


class LengthModel:
    """Output-length distributions per prompt-length bucket, bucket edges at the job's prompt-length quantiles.

    A bucket with fewer than `min_samples` observed completions uses all of them pooled.
    """

    def __init__(self, observations: Sequence[Completion], job_prompt_lens: Sequence[int], num_buckets: int,
                 min_samples: int) -> None:
        if not observations:
            raise ValueError("no observed completions to learn output lengths from")
        quantiles = np.linspace(0, 1, num_buckets + 1)[1:-1]
        self.edges = np.unique(np.quantile(np.asarray(job_prompt_lens, dtype=np.float64), quantiles)) \
            if len(job_prompt_lens) else np.array([])
        self.observations = list(observations)
        self.min_samples = min_samples
        self._of_bucket = self.bucket(np.array([o.prompt_len for o in self.observations]))

    def bucket(self, prompt_lens: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.edges, prompt_lens, side="right")

    def distributions(self, observations: Sequence[Completion]) -> list[LengthDistribution]:
        """One distribution per bucket from these observations (a thin bucket borrows the pooled one)."""
        pooled = LengthDistribution(observations)
        of_bucket = self.bucket(np.array([o.prompt_len for o in observations]))
        out = []
        for b in range(len(self.edges) + 1):
            mine = [o for o, ob in zip(observations, of_bucket) if ob == b]
            out.append(LengthDistribution(mine) if len(mine) >= self.min_samples else pooled)
        return out

    def resample(self, rng: np.random.Generator) -> list[LengthDistribution]:
        """Distributions of a bootstrap resample (within each bucket): one plausible world the evidence allows."""
        pick: list[int] = []
        for b in np.unique(self._of_bucket):
            members = np.flatnonzero(self._of_bucket == b)
            pick.extend(rng.choice(members, len(members)).tolist())
        return self.distributions([self.observations[i] for i in pick])

    def draw(self, prompt_lens: Sequence[int], max_tokens: Sequence[int], dists: list[LengthDistribution],
             rng: np.random.Generator) -> np.ndarray:
        """A length for each (prompt length, limit), from its bucket's distribution."""
        buckets = self.bucket(np.asarray(prompt_lens))
        limits = np.asarray(max_tokens, dtype=np.int64)
        out = np.empty(len(limits), dtype=np.int64)
        for b, dist in enumerate(dists):
            mask = buckets == b
            if mask.any():
                out[mask] = dist.draw(limits[mask], rng)
        return out
