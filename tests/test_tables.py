"""The one table renderer: column widths, alignment, stretching to a report width, title frame."""

from __future__ import annotations

from batchserve.tables import align_rows, banner, render_table


def test_columns_are_as_wide_as_their_widest_cell_or_their_least_width() -> None:
    lines = align_rows([["a", "1"], ["bbb", "22"]], ("<", ">4"))
    assert lines == ["a      1", "bbb   22"]


def test_width_stretches_the_first_column_so_values_end_at_the_edge() -> None:
    lines = align_rows([["Requests:", "12"], ["Duration (s):", "3.50"]], ("<", ">"), sep="", width=20)
    assert lines == ["Requests:         12", "Duration (s):   3.50"]


def test_a_title_frames_the_table_and_a_header_can_be_underlined() -> None:
    table = render_table([["x", "1.0"]], ("<6", ">8"), ["name", "value"], title="t", underline=True)
    assert table.splitlines() == ["====== t ======", "name      value", "---------------", "x           1.0",
                                  "==============="]


def test_banner_centres_the_text_in_the_fill() -> None:
    assert banner("Latency", 15, "-") == "--- Latency ---"
