"""The report's shared formatters (transferscope.report.text) and the one atomic write."""

from __future__ import annotations

import os

import pytest

from transferscope.atomic import atomic_write
from transferscope.report.text import markdown_table, slug


def test_slug_is_the_heading_anchor():
    assert slug("Was the study trained long enough?") == "was-the-study-trained-long-enough"
    assert slug("Representation similarity (CKA)") == "representation-similarity-cka"


def test_markdown_table_aligns_the_first_column_apart():
    assert markdown_table(["a", "b", "c"], [["x", "1", "2"]]) == "| a | b | c |\n|:--|--:|--:|\n| x | 1 | 2 |\n"
    assert markdown_table(["k", "s"], [], align=":--") == "| k | s |\n|:--|:--|\n"
    assert markdown_table(["n", "d"], [["1", "2"]], first="--:") == "| n | d |\n|--:|--:|\n| 1 | 2 |\n"


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
