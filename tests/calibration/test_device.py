"""What calibrate reads of the device besides its peaks: the CPU's last-level cache, from sysfs."""

from __future__ import annotations

import torch

from batchserve.calibration.device import last_level_cache_bytes


def test_the_last_level_cache_is_the_highest_levels_size(tmp_path) -> None:
    for index, (level, size) in enumerate([(1, "48K"), (1, "32K"), (2, "1024K"), (3, "32768K")]):
        d = tmp_path / f"index{index}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "size").write_text(f"{size}\n")
    assert last_level_cache_bytes(torch.device("cpu"), tmp_path) == 32 * 2**20


def test_no_cache_figure_where_the_kernel_gives_none_or_off_the_cpu(tmp_path) -> None:
    assert last_level_cache_bytes(torch.device("cpu"), tmp_path) == 0.0
    (tmp_path / "index0").mkdir()  # a directory without its files
    assert last_level_cache_bytes(torch.device("cpu"), tmp_path) == 0.0
    (tmp_path / "index0" / "level").write_text("3\n")
    (tmp_path / "index0" / "size").write_text("lotsK\n")  # a size it cannot parse
    assert last_level_cache_bytes(torch.device("cpu"), tmp_path) == 0.0
    assert last_level_cache_bytes(torch.device("meta"), tmp_path) == 0.0
