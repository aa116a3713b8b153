"""The report's shared formatters (transferscope.report.text) and the one atomic write."""

from __future__ import annotations

import math
import os

import pytest

from transferscope.atomic import atomic_write
from transferscope.report.reading import interval
from transferscope.report.tables import format_cell
from transferscope.report.text import MISSING, ci_text, markdown_table, number, slug


def test_slug_is_the_heading_anchor():
    assert slug("Was the study trained long enough?") == "was-the-study-trained-long-enough"
    assert slug("Representation similarity (CKA)") == "representation-similarity-cka"


def test_markdown_table_aligns_the_first_column_apart():
    assert markdown_table(["a", "b", "c"], [["x", "1", "2"]]) == (
        "| a   |   b |   c |\n|:----|----:|----:|\n| x   |   1 |   2 |\n")
    assert markdown_table(["k", "s"], [], align=":--") == "| k   | s   |\n|:----|:----|\n"
    assert markdown_table(["n", "d"], [["1", "2"]], first="--:") == "|   n |   d |\n|----:|----:|\n|   1 |   2 |\n"


def test_markdown_table_writes_cells_as_given_in_columns_of_one_width():
    table = markdown_table(["quantity", "n=1", "n=1"], [["AnB - base", "+0.012 [-0.003, +0.027] (3 rep, 6 net)", MISSING],
                                                        ["BnB", "1,000", "-0.000"]])
    lines = table.splitlines()
    assert lines[2] == "| AnB - base | +0.012 [-0.003, +0.027] (3 rep, 6 net) |      \u2014 |"
    assert lines[3] == "| BnB        |                                  1,000 | -0.000 |"  # no number parsing
    assert len({len(line) for line in lines}) == 1 and lines[1].startswith("|:---") and lines[1].endswith("-:|")


def test_one_number_format_without_a_sign_on_zero():
    assert number(0.91249) == "0.912" and number(-0.0004) == "0.000" and number(0.0004, sign=True) == "0.000"
    assert number(-0.0126, sign=True) == "-0.013" and number(0.0126, sign=True) == "+0.013"
    assert number(0.12345, digits=4) == "0.1235" and number(math.nan) == MISSING


def test_one_estimate_format_for_cells_and_claims():
    nan = math.nan
    assert ci_text(0.912, 0.9011, 0.9234, "3 rep, 6 net") == "0.912 [0.901, 0.923] (3 rep, 6 net)"
    assert ci_text(0.012, -0.003, 0.027, "3 replicates", sign=True) == "+0.012 [-0.003, +0.027] (3 replicates)"
    assert ci_text(0.012, nan, nan, "1 replicate", sign=True) == "+0.012 (1 replicate, no interval)"
    assert ci_text(0.012, nan, nan, sign=True) == "+0.012 (no interval)"
    assert ci_text(nan, 0.1, 0.2, "3 replicates") == MISSING
    assert ci_text(0.456, 0.31, 0.6, "3 replicates", sign=True, digits=2) == "+0.46 [+0.31, +0.60] (3 replicates)"
    # the table cell and the reading's claim are that one format with their own counts
    assert format_cell(0.5, nan, nan, 1, 2) == "0.500 (1 rep, 2 net)"  # the caption says why there is no interval
    assert format_cell(0.5, 0.4, 0.6, 0, 0) == MISSING
    assert interval(-0.0004, -0.01, 0.009, 3) == "0.000 [-0.010, +0.009] (3 replicates)"
    assert interval(0.02, nan, nan, 1) == "+0.020 (1 replicate, no interval)"


def test_atomic_write_takes_bytes_or_a_writer_and_leaves_no_temporary_file(tmp_path):
    atomic_write(tmp_path / "sub" / "a.bin", b"abc")
    atomic_write(tmp_path / "b.txt", lambda p: p.write_text("def"))
    assert (tmp_path / "sub" / "a.bin").read_bytes() == b"abc" and (tmp_path / "b.txt").read_text() == "def"
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o666 & ~mask

    def broken(p):
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "b.txt", broken)
    assert (tmp_path / "b.txt").read_text() == "def"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "b.txt", "sub"]
