"""Output lengths from evidence: a posterior over each prompt group's output-length distribution.

A completion that stopped (EOS, a stop string) tells its length; one that hit
max_tokens tells only that its natural length is at least that (censored).
One plausible distribution given the evidence (a posterior draw) is a
Bayesian bootstrap of censored data (Rubin 1981; Lo 1993) under a Dirichlet
process prior: the observed completions get Dirichlet(a, ..., a) weights and
the prior gets weight `prior_weight`; the completions' part is the weighted
Kaplan-Meier estimate (a capped completion counts as still going up to its
cap and its mass moves to later stops; past every observed stop a request runs
to its own max_tokens). The Bayesian bootstrap proper has a = 1; with a
handful of completions it is too sure of itself (its variance of a mean is the
plug-in variance over n + 1, and a small sample of skewed lengths looks
tighter than it is), so the weights' `concentration` a is lower (1/2 in
`EstimateConfig`: the p10-p90 then covers about 80% of synthetic jobs sampled
at 5% of 200, `tests/jobs/test_length_coverage.py`; larger samples get a
somewhat wide range).

The prior says what the evidence cannot: a natural length log-uniform between
1 and twice the request's max_tokens (scale-free, Jeffreys' prior for a
scale; ln 2 / ln(2 max_tokens) of it runs to the limit, 14% at 128 tokens).
So n capped completions of n leave room for shorter ones, and when no
completion stopped it is the only source of lengths. Its weight is small; a
log-uniform's mass sits at short lengths, so it biases a well-observed job
little (a uniform one pulled short-answer jobs up by 10% and more).

Groups (`jobs.prompt_groups`: prompts alike in what they ask and how long
they are) pool partially: a group mixes its own completions (their Dirichlet
weights) with every group's pooled (as `group_prior_weight`
pseudo-completions), so a thin group leans on the whole job and a
well-sampled one on its own evidence. The prior takes the same share of each
(it counts once for the job, not once per group).
Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Completion:
    """One observed completion: its prompt length, its limit, how long it ran, whether the limit stopped it, and
    its request's custom_id (None in records from before it was kept)."""

    prompt_len: int
    max_tokens: int
    length: int
    censored: bool
    custom_id: str | None = None

    def to_list(self) -> list[int | str]:
        row: list[int | str] = [self.prompt_len, self.max_tokens, self.length, int(self.censored)]
        return row if self.custom_id is None else [*row, self.custom_id]

    @classmethod
    def from_list(cls, row: Sequence[int | str]) -> Completion:
        prompt_len, max_tokens, length, censored, *custom_id = row
        return cls(int(prompt_len), int(max_tokens), int(length), bool(censored),
                   str(custom_id[0]) if custom_id else None)


@dataclass(frozen=True)
class LengthDistribution:
    """Natural output lengths: stop lengths with their probabilities, the chance of running to the request's
    max_tokens (`tail`), and the chance of a length from the prior (`prior_mass`: log-uniform on 1..2 max_tokens)."""

    values: np.ndarray
    masses: np.ndarray
    tail: float
    prior_mass: float = 0.0

    @classmethod
    def kaplan_meier(cls, observations: Sequence[Completion], weights: np.ndarray | None = None) -> LengthDistribution:
        """The (weighted) Kaplan-Meier estimate; mass past every observed stop is the tail."""
        lengths = np.array([o.length for o in observations], dtype=np.int64)
        stopped = np.array([not o.censored for o in observations], dtype=bool)
        w = np.ones(len(lengths)) if weights is None else np.asarray(weights, dtype=np.float64)
        survival, values, masses = 1.0, [], []
        for t in np.unique(lengths[stopped]):
            at_risk = w[lengths >= t].sum()
            mass = survival * w[(lengths == t) & stopped].sum() / at_risk
            values.append(int(t))
            masses.append(mass)
            survival -= mass
        return cls(np.array(values, dtype=np.int64), np.array(masses, dtype=np.float64), max(0.0, survival))

    @classmethod
    def prior(cls) -> LengthDistribution:
        """Log-uniform natural lengths between 1 and twice the request's max_tokens."""
        return cls(np.empty(0, dtype=np.int64), np.empty(0), tail=0.0, prior_mass=1.0)

    @classmethod
    def mixture(cls, parts: Sequence[tuple[LengthDistribution, float]]) -> LengthDistribution:
        """The distributions mixed in proportion to their weights (at least one weight > 0)."""
        parts = [(d, w) for d, w in parts if w > 0]
        total = sum(w for _, w in parts)
        return cls(np.concatenate([d.values for d, _ in parts]),
                   np.concatenate([w / total * d.masses for d, w in parts]),
                   sum(w / total * d.tail for d, w in parts), sum(w / total * d.prior_mass for d, w in parts))

    def draw(self, max_tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One length per limit in `max_tokens`, each at most its limit and at least 1."""
        limits = np.asarray(max_tokens, dtype=np.int64)
        probs = np.concatenate([self.masses, [self.tail, self.prior_mass]])
        pick = rng.choice(len(probs), size=len(limits), p=probs / probs.sum())
        natural = np.concatenate([self.values, [np.iinfo(np.int64).max, 0]])[pick]
        prior = pick == len(probs) - 1
        natural[prior] = np.ceil(np.exp(rng.uniform(0, np.log(2 * limits[prior])))).astype(np.int64)
        return np.clip(natural, 1, limits)


class LengthModel:
    """Output-length distributions per prompt group (`jobs.prompt_groups`), with their posterior:
    `posterior(rng)` draws one plausible set, `expected()` is the posterior mean. Each set holds one distribution
    per group and, last, the job's pooled one (for group -1)."""

    def __init__(self, observations: Sequence[Completion], groups: Sequence[int], num_groups: int,
                 prior_weight: float, group_prior_weight: float, concentration: float) -> None:
        """`groups`: each observation's group, or -1 for a completion of no request of this job (another job's
        record teaches the pooled lengths only)."""
        if not observations:
            raise ValueError("no observed completions to learn output lengths from")
        self.observations = list(observations)
        self._of_group = np.asarray(groups, dtype=np.int64)
        if len(self._of_group) != len(self.observations) or not (
                (self._of_group >= -1) & (self._of_group < num_groups)).all():
            raise ValueError(f"need a group in -1..{num_groups - 1} for each of {len(self.observations)} completions")
        self.num_groups = num_groups
        self.prior_weight = prior_weight
        self.group_prior_weight = group_prior_weight
        self.concentration = concentration

    def posterior(self, rng: np.random.Generator) -> list[LengthDistribution]:
        """One draw per group from the posterior: Dirichlet weights on the completions and on each prior."""
        weights = rng.standard_gamma(self.concentration, len(self.observations))
        return self._distributions(weights, _gamma(rng, self.prior_weight),
                                   lambda: _gamma(rng, self.group_prior_weight))

    def expected(self) -> list[LengthDistribution]:
        """The posterior mean: every completion its concentration, each prior its pseudo-count."""
        return self._distributions(np.full(len(self.observations), self.concentration), self.prior_weight,
                                   lambda: self.group_prior_weight)

    def _distributions(self, weights: np.ndarray, prior_weight: float,
                       group_prior_weight: Callable[[], float]) -> list[LengthDistribution]:
        """Per group: its own completions' Kaplan-Meier mixed with the pooled one (`group_prior_weight()`
        against its completions' weights); the prior takes the same share of each (it counts once for the job).
        The pooled one last."""
        prior = LengthDistribution.prior()
        share = prior_weight / (prior_weight + weights.sum())

        def with_prior(members: np.ndarray) -> LengthDistribution:
            chosen = [o for o, m in zip(self.observations, members) if m]
            return LengthDistribution.mixture([(LengthDistribution.kaplan_meier(chosen, weights[members]),
                                                1 - share), (prior, share)])

        pooled = with_prior(np.ones(len(self.observations), dtype=bool))
        out = []
        for g in range(self.num_groups):
            mine = self._of_group == g
            out.append(LengthDistribution.mixture([(with_prior(mine), weights[mine].sum()),
                                                   (pooled, group_prior_weight())]) if mine.any() else pooled)
        return out + [pooled]

    def predict(self, groups: Sequence[int], max_tokens: Sequence[int], rng: np.random.Generator) -> np.ndarray:
        """A posterior predictive draw: one plausible world, then a length for each (group, limit) in it."""
        return self.draw(groups, max_tokens, self.posterior(rng), rng)

    def draw(self, groups: Sequence[int], max_tokens: Sequence[int], dists: list[LengthDistribution],
             rng: np.random.Generator) -> np.ndarray:
        """A length for each (group, limit), from its group's distribution (the pooled one for group -1)."""
        of = np.asarray(groups, dtype=np.int64)
        limits = np.asarray(max_tokens, dtype=np.int64)
        out = np.empty(len(limits), dtype=np.int64)
        for g in np.unique(of):
            mask = of == g
            out[mask] = dists[g].draw(limits[mask], rng)
        return out


def sample_size_for(job_tokens: np.ndarray, sample: int, num_requests: int, target: float,
                    concentration: float) -> int | None:
    """The sample that would narrow the job's output-token p10-p90 (`job_tokens`: its posterior predictive draws
    given a sample of `sample` requests) to about +-`target` of its median, where this one leaves it wider; None
    where it does not. Under Dirichlet(`concentration`) weights the posterior variance of a mean goes as
    1 / (concentration * sample + 1), so the size grows about as the square of the half-width. At most the job."""
    t10, t50, t90 = np.percentile(job_tokens, [10, 50, 90])
    half = (t90 - t10) / 2 / t50
    if half <= target:
        return None
    return min(num_requests, math.ceil(((concentration * sample + 1) * (half / target) ** 2 - 1) / concentration))


def _gamma(rng: np.random.Generator, shape: float) -> float:
    """A Gamma(shape) draw (normalised Gamma draws are Dirichlet weights); 0 for a prior of weight 0."""
    return float(rng.standard_gamma(shape)) if shape > 0 else 0.0


