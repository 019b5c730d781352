"""serving_dtype: "auto" keeps the checkpoint's dtype unless this CPU only emulates it."""

from __future__ import annotations

import pytest

from batchserve.model_config.dtype import cpu_flags, emulated_on_cpu, serving_dtype

AVX2 = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma", "f16c"})
AVX512_BF16 = AVX2 | {"avx512f", "avx512_bf16", "avx512_vnni"}
SAPPHIRE_RAPIDS = AVX512_BF16 | {"amx_bf16", "amx_tile", "avx512_fp16"}
GRAVITON3 = frozenset({"fp", "asimd", "fphp", "asimdhp", "bf16", "sve"})


@pytest.mark.parametrize(("checkpoint", "device", "flags", "served"), [
    ("bfloat16", "cpu", AVX2, "float32"),  # emulated: float32 is several times faster
    ("float16", "cpu", AVX2, "float32"),  # f16c only converts
    ("bfloat16", "cpu", AVX512_BF16, "bfloat16"),
    ("float16", "cpu", AVX512_BF16, "float32"),
    ("float16", "cpu", SAPPHIRE_RAPIDS, "float16"),
    ("bfloat16", "cpu", GRAVITON3, "bfloat16"),
    ("float32", "cpu", AVX2, "float32"),
    ("bfloat16", "cuda", AVX2, "bfloat16"),  # a GPU's own dtypes are its business
    ("bfloat16", "cuda:1", AVX2, "bfloat16"),
])
def test_serving_dtype(checkpoint, device, flags, served):
    assert serving_dtype(checkpoint, device, flags) == served


def test_an_unknown_cpu_keeps_the_checkpoints_dtype():
    assert not emulated_on_cpu("bfloat16", None)


def test_cpu_flags_read_x86_and_arm_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd bf16\n")
    empty = tmp_path / "empty"
    empty.write_text("processor\t: 0\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert cpu_flags(empty) is None
    assert cpu_flags(tmp_path / "missing") is None
