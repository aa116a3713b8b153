"""The report's small Markdown formatters, one of each: the anchor of a heading (:func:`slug`) and
a pipe table (:func:`markdown_table`)."""

from __future__ import annotations

import re
from collections.abc import Sequence


def slug(title: str) -> str:
    """``Was the study trained long enough?`` -> ``was-the-study-trained-long-enough``."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "--:",
                   first: str = ":--") -> str:
    """A pipe table: the first column aligned by ``first`` (left by default), the others by
    ``align`` (right by default); each line ends with a newline."""
    lines = ["| " + " | ".join(header) + " |", f"|{first}|" + f"{align}|" * (len(header) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
