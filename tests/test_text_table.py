"""outputs/text_table.py: lines broken to fit a terminal, tables split to fit it."""

from __future__ import annotations

from text_tables import text_tables

from universal_neurons.outputs.text_table import fitted_table, wrapped_line


def test_a_list_line_breaks_between_items_and_loses_none():
    items = [f"' tok{i} en' {i / 1000:+.4f}" for i in range(40)]  # items hold spaces themselves
    line = "  tokens moved most: " + ", ".join(items)
    lines = wrapped_line(line, 60, ", ")
    assert len(lines) > 1 and max(map(len, lines)) <= 60
    assert all(part.startswith("    ") and not part.startswith("     ") for part in lines[1:])
    assert lines[0].startswith("  tokens moved most: ")
    rejoined = " ".join(part.strip() for part in lines)
    assert rejoined == line.strip()  # every item, in order, none split: "x," + " " + "y"
    assert all(part.endswith(",") for part in lines[:-1])
    for width in range(42, 90):  # the "," a broken line ends with fits too (first item: 40)
        assert max(map(len, wrapped_line(line, width, ", "))) <= width, width


def test_a_word_longer_than_the_width_stays_whole_and_a_short_line_is_kept():
    assert wrapped_line("short line", 60) == ["short line"]
    long = "x" * 80
    assert wrapped_line(f"a {long} b", 60) == ["a", f"  {long}", "  b"]


def test_middle_columns_are_split_into_tables_repeating_the_first_and_tail_columns():
    rows = [["name", *(f"col{i:02d}" for i in range(12)), "tail"]]
    rows += [[f"row{r}", *(f"{r * i:>6}" for i in range(12)), "end"] for r in range(3)]
    lines = fitted_table(rows, 40, tail=1)
    assert max(map(len, lines)) <= 40
    tables = text_tables("\n".join(lines))
    assert len(tables) > 1
    assert all(t[0][0] == "name" and t[0][-1] == "tail" for t in tables)
    assert [c for t in tables for c in t[0][1:-1]] == [f"col{i:02d}" for i in range(12)]
    assert [row[0] for row in tables[-1]] == ["name", "row0", "row1", "row2"]


def test_the_ui_start_up_line_keeps_its_address_whole_within_120_columns():
    from universal_neurons.pipeline.tools.ui import fitted

    address = (
        "http://127.0.0.1:5077/#/experiments/1/runs?workflowType=machine_learning"
        "&viewStateShareKey=headline"
    )
    line = f"MLflow UI: {address}  (store: sqlite:///mlruns.db; Ctrl+C stops it)"
    lines = fitted(line).splitlines()
    assert lines[0] == f"MLflow UI: {address}"
    assert lines[1:] == ["  (store: sqlite:///mlruns.db; Ctrl+C stops it)"]
    assert fitted("short") == "short"
