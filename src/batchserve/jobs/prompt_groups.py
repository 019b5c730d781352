"""Prompt groups: a job's requests grouped by what their prompts ask and how long they are.

How long an answer runs follows what the prompt asks for (one word, a poem,
three facts, a summary of a long document) more than anything else a job
shows before it runs, and prompt length tells kinds of prompt apart only where
they differ in length. So an estimate samples across groups and learns output
lengths per group. On synthetic 480-request jobs of five kinds of
instruction, all of one length, a 24-request sample's estimate erred by 0.69x
the RMS of a sample spread by prompt length alone, its range 0.66x as wide; on real
SmolLM2 jobs whose kinds differ in length too, it was as accurate as
prompt-length tertiles, with a 30-35% narrower range that still covered
80-95% of samples (bench/RESULTS.md, session 31).

Each prompt is described by its template tokens (those some prompts share but
not nearly all: a shared system prompt says nothing of how prompts differ, a
token only one prompt has nothing of what it shares with others), as a random
projection of their presence scaled to unit length, beside its log length in
standard deviations of the job's; k-means (k-means++ seeds, then Lloyd's
iterations) groups them. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_CHUNK = 1 << 20
"""(prompt, token) rows projected at once: a chunk's directions take 128 MiB at 32 dimensions."""


@dataclass(frozen=True)
class GroupingConfig:
    """How a job's prompts are grouped for its sample and its output-length model."""

    samples_per_group: int = 4
    """Observed requests (sampled, or finished in an earlier run of the job) per group: each group's lengths rest
    on a few of its own, and it borrows the rest from the whole job's."""
    max_groups: int = 16
    """At most this many groups, however many requests were observed."""
    dims: int = 32
    """Dimensions of the random projection of a prompt's template tokens."""
    max_share: float = 0.9
    """A token in more than this share of the job's prompts (a shared system prompt, the chat template) is not a
    template token."""
    length_weight: float = 1.0
    """Weight of a prompt's log length (in standard deviations of the job's) beside its template tokens' unit
    vector: a job of one template with documents of many lengths is grouped by length."""
    iterations: int = 50
    """At most this many Lloyd iterations (they stop once no prompt changes group)."""
    fit_rows: int = 20_000
    """k-means is fitted to at most this many prompts (drawn at random); the rest join their nearest center. A
    100,000-prompt job groups in seconds."""
    restarts: int = 8
    """k-means runs from this many k-means++ seedings; the one of least within-group squares is kept (one run can
    settle with two kinds of prompt in a group and another kind split in two)."""
    seed: int = 0
    """Seeds the random projection and k-means: a job's groups are the same in its estimate and its run."""

    def __post_init__(self) -> None:
        for name in ("samples_per_group", "max_groups", "dims", "iterations", "fit_rows", "restarts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1], got {self.max_share}")
        if self.length_weight < 0:
            raise ValueError(f"length_weight must be >= 0, got {self.length_weight}")

    def num_groups(self, observed: int) -> int:
        """Groups for a job of which `observed` requests have known output lengths."""
        return max(1, min(self.max_groups, observed // self.samples_per_group))


def prompt_features(prompts: Sequence[Sequence[int]], config: GroupingConfig) -> np.ndarray:
    """One row per prompt: its template tokens' random projection (unit length, or zero with none), then its
    weighted standardized log length. A token's direction depends on its id alone."""
    n = len(prompts)
    lens = np.array([len(p) for p in prompts], dtype=np.int64)
    content = np.zeros((n, config.dims), dtype=np.float32)
    if lens.sum():
        tokens = np.concatenate([np.asarray(p, dtype=np.int64) for p in prompts])
        width = int(tokens.max()) + 1
        keys = np.repeat(np.arange(n, dtype=np.int64), lens) * width + tokens
        keys.sort()
        keys = keys[np.r_[True, keys[1:] != keys[:-1]]]  # each (prompt, token) once, by prompt
        owners, tokens = keys // width, keys % width
        share = np.bincount(tokens, minlength=width)  # how many prompts hold each token
        template = (share >= 2) & (share <= config.max_share * n)
        keep = template[tokens]
        owners, tokens = owners[keep], tokens[keep]
        directions = np.random.default_rng(config.seed).standard_normal((width, config.dims), dtype=np.float32)
        for lo in range(0, len(owners), _CHUNK):  # a chunk's rows summed per prompt, without all rows at once
            own, tok = owners[lo:lo + _CHUNK], tokens[lo:lo + _CHUNK]
            starts = np.flatnonzero(np.r_[True, own[1:] != own[:-1]])
            content[own[starts]] += np.add.reduceat(directions[tok], starts, axis=0)
        norms = np.linalg.norm(content, axis=1, keepdims=True)
        content = np.divide(content, norms, out=np.zeros_like(content), where=norms > 0)
    log_len = np.log1p(lens)
    spread = log_len.std() if n else 0.0
    length = (log_len - log_len.mean()) / spread if spread > 0 else np.zeros(n)
    return np.column_stack([content, config.length_weight * length]).astype(np.float32)


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int) -> tuple[np.ndarray, float]:
    """At most k cluster centers (those some row is nearest; fewer where there are fewer distinct rows) and the
    rows' within-cluster sum of squares: k-means++ seeds, then Lloyd's iterations."""
    centers = [x[rng.integers(len(x))]]
    closest = ((x - centers[0]) ** 2).sum(axis=1)  # each row's squared distance to its nearest seed
    while len(centers) < k and closest.sum() > 0:
        centers.append(x[rng.choice(len(x), p=closest / closest.sum())])
        closest = np.minimum(closest, ((x - centers[-1]) ** 2).sum(axis=1))
    c = np.array(centers)
    labels = np.full(len(x), -1)
    for _ in range(iterations):
        new = nearest(x, c)
        if np.array_equal(new, labels):
            break
        labels = new
        c = np.array([x[labels == j].mean(axis=0) if (labels == j).any() else c[j] for j in range(len(c))])
    return c[np.unique(labels)], float(((x - c[labels]) ** 2).sum())


def prompt_groups(features: np.ndarray, num_groups: int, config: GroupingConfig) -> np.ndarray:
    """Each prompt's group (rows of `prompt_features`), 0..at most num_groups - 1 (all 0 for one group): k-means
    fitted to at most `config.fit_rows` of them, every prompt then in the group of its nearest center."""
    if num_groups <= 1 or not len(features):
        return np.zeros(len(features), dtype=np.int64)
    rng = np.random.default_rng(config.seed)
    fit = features.astype(np.float64)
    if len(fit) > config.fit_rows:
        fit = fit[np.sort(rng.choice(len(fit), config.fit_rows, replace=False))]
    runs = [kmeans(fit, num_groups, rng, config.iterations) for _ in range(config.restarts)]
    return nearest(features, min(runs, key=lambda run: run[1])[0])


def nearest(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Each row's nearest center (squared Euclidean distance)."""
    return ((x**2).sum(axis=1)[:, None] - 2 * x @ centers.T + (centers**2).sum(axis=1)[None, :]).argmin(axis=1)
