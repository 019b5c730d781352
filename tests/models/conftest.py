"""Shared fixtures for the model tests: tiny HF checkpoints (the oracle) and a minimal paged executor."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Hashable

import pytest
import torch

from random_weights import randomize

from batchserve.models import AttentionMetadata, CausalLM, allocate_kv_cache

# The models here are tiny: intra-op threads only add sync overhead, and on a busy 2-core machine
# OpenMP's spinning barriers made each matmul ~50x slower.
torch.set_num_threads(1)

ARCH_CONFIGS = {
    "LlamaForCausalLM": {},
    "MistralForCausalLM": {},
    "Qwen2ForCausalLM": {"tie_word_embeddings": True},
    # explicit head_dim that differs from hidden/heads, as in real Qwen3 checkpoints
    "Qwen3ForCausalLM": {"head_dim": 32},
    # MoE: 8 experts, top-2; Qwen2-MoE with its shared expert and a dense layer, Qwen3-MoE renormalising its top-k
    "MixtralForCausalLM": {"num_local_experts": 8, "num_experts_per_tok": 2},
    "Qwen2MoeForCausalLM": {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                            "shared_expert_intermediate_size": 48, "num_hidden_layers": 3, "mlp_only_layers": [1]},
    "Qwen3MoeForCausalLM": {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                            "norm_topk_prob": True, "num_hidden_layers": 3},
}
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, vocab_size=300, max_position_embeddings=256, rms_norm_eps=1e-6)


def make_hf_model(architecture: str, **overrides) -> torch.nn.Module:
    """A random fp32 transformers model whose weights are large enough that attention is far from uniform."""
    import transformers

    kwargs = {**SMALL, **ARCH_CONFIGS.get(architecture, {}), **overrides}
    config_cls = getattr(transformers, architecture.replace("ForCausalLM", "Config"))
    config = config_cls(**kwargs)
    torch.manual_seed(0)
    model = getattr(transformers, architecture)._from_config(config, attn_implementation="eager")
    randomize(model)
    return model.eval()


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory) -> Callable[..., tuple[torch.nn.Module, Path]]:
    """hf_checkpoint(arch, **config) -> (transformers model, saved directory); cached per argument set."""
    cache: dict[str, tuple[torch.nn.Module, Path]] = {}

    def build(architecture: str, save_kwargs: dict | None = None, **overrides) -> tuple[torch.nn.Module, Path]:
        key = repr((architecture, sorted(overrides.items()), sorted((save_kwargs or {}).items())))
        if key not in cache:
            model = make_hf_model(architecture, **overrides)
            path = tmp_path_factory.mktemp(architecture)
            model.save_pretrained(path, **(save_kwargs or {}))
            cache[key] = model, path
        return cache[key]

    return build


def hf_logits(model: torch.nn.Module, token_ids: list[int]) -> torch.Tensor:
    """transformers' logits [len, vocab] for one sequence alone (no cache, no padding)."""
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].float()


class PagedRunner:
    """A minimal executor: sequences get blocks from a shuffled pool, each step runs as one flat batch."""

    def __init__(self, model: CausalLM, block_size: int = 4, num_blocks: int = 96, seed: int = 0):
        self.model, self.block_size = model, block_size
        self.kv_caches = allocate_kv_cache(model.config, num_blocks, block_size, model.dtype, model.device)
        self.free = list(range(num_blocks))
        random.Random(seed).shuffle(self.free)  # scattered, non-contiguous block tables
        self.block_tables: dict[Hashable, list[int]] = {}
        self.num_computed: dict[Hashable, int] = {}
        self.tokens: dict[Hashable, list[int]] = {}

    def share_prefix(self, seq: Hashable, source: Hashable, num_tokens: int) -> None:
        """Start `seq` with `source`'s first num_tokens (whole blocks) already cached: a prefix-cache hit."""
        assert num_tokens % self.block_size == 0
        self.block_tables[seq] = self.block_tables[source][: num_tokens // self.block_size]
        self.num_computed[seq] = num_tokens
        self.tokens[seq] = self.tokens[source][:num_tokens]

    def step(self, chunks: list[tuple[Hashable, list[int]]]) -> list[torch.Tensor]:
        """Compute each (seq, new tokens) chunk in ONE forward; returns each chunk's logits [n, vocab]."""
        ids, positions, slots, qsl, ctx, tables = [], [], [], [0], [], []
        for seq, new in chunks:
            table = self.block_tables.setdefault(seq, [])
            start = self.num_computed.setdefault(seq, 0)
            self.tokens.setdefault(seq, []).extend(new)
            while len(table) * self.block_size < start + len(new):
                table.append(self.free.pop())
            for pos in range(start, start + len(new)):
                slots.append(table[pos // self.block_size] * self.block_size + pos % self.block_size)
            ids += new
            positions += range(start, start + len(new))
            qsl.append(qsl[-1] + len(new))
            ctx.append(start)
            tables.append(list(table))
            self.num_computed[seq] = start + len(new)
        meta = AttentionMetadata(slot_mapping=torch.tensor(slots), query_start_loc=qsl, context_lens=ctx,
                                 block_tables=tables, block_size=self.block_size)
        hidden = self.model(torch.tensor(ids), torch.tensor(positions), self.kv_caches, meta)
        logits = self.model.compute_logits(hidden)
        return [logits[qsl[i]:qsl[i + 1]] for i in range(len(chunks))]


def random_tokens(n: int, vocab: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


LOGIT_TOL = 1e-4  # fp32 logits against transformers


def check_prefill_then_decode(hf: torch.nn.Module, model: CausalLM, lengths: tuple[int, ...] = (7, 19, 33),
                              steps: int = 5) -> PagedRunner:
    """One flat prefill of all prompts, then `steps` batched greedy decode steps; all logits vs HF."""
    vocab = model.config.vocab_size
    runner = PagedRunner(model, block_size=4)
    prompts = [random_tokens(n, vocab, seed=n) for n in lengths]
    outs = runner.step(list(enumerate(prompts)))
    for prompt, out in zip(prompts, outs):
        assert float((out - hf_logits(hf, prompt)).abs().max()) < LOGIT_TOL

    decoded: list[list[torch.Tensor]] = [[] for _ in prompts]
    last = [out[-1] for out in outs]
    for _ in range(steps):
        outs = runner.step([(i, [int(logits.argmax())]) for i, logits in enumerate(last)])
        assert all(out.shape[0] == 1 for out in outs)
        last = [out[-1] for out in outs]
        for i, logits in enumerate(last):
            decoded[i].append(logits)
    for i, prompt in enumerate(prompts):
        reference = hf_logits(hf, runner.tokens[i])[len(prompt):len(prompt) + steps]
        assert float((torch.stack(decoded[i]) - reference).abs().max()) < LOGIT_TOL
    return runner


# Helpers reach tests as fixtures, which works under every pytest import mode.
@pytest.fixture(name="hf_logits")
def _hf_logits() -> Callable[[torch.nn.Module, list[int]], torch.Tensor]:
    return hf_logits


@pytest.fixture(name="paged_runner", scope="session")
def _paged_runner() -> type[PagedRunner]:
    return PagedRunner


@pytest.fixture(name="make_hf_model")
def _make_hf_model() -> Callable[..., torch.nn.Module]:
    return make_hf_model


@pytest.fixture(name="prefill_then_decode")
def _prefill_then_decode() -> Callable[..., PagedRunner]:
    return check_prefill_then_decode


@pytest.fixture(name="random_tokens")
def _random_tokens() -> Callable[[int, int, int], list[int]]:
    return random_tokens
