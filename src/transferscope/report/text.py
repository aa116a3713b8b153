"""The report's formatters, one of each: a number (:func:`number`), an estimate with its interval
(:func:`ci_text`, every cell and every claim), the anchor of a heading (:func:`slug`) and a pipe
table (:func:`markdown_table`, written by pandas)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import pandas as pd

#: what a cell without data shows
MISSING = "\u2014"


def number(x: float, sign: bool = False, digits: int = 3) -> str:
    """``0.912``, or with ``sign`` ``+0.012``; a value that rounds to zero is ``0.000`` (no sign);
    a dash for NaN."""
    if not math.isfinite(x):
        return MISSING
    text = f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"
    return text[1:] if text.startswith(("-", "+")) and float(text) == 0 else text


def ci_text(mean: float, lo: float, hi: float, count: str = "", sign: bool = False,
             say_no_interval: bool = True, digits: int = 3) -> str:
    """The one format of an estimate: ``0.912 [0.901, 0.923] (3 rep, 6 net)``, with ``sign``
    ``+0.012 [-0.003, +0.027] (3 replicates)``; where the bounds are NaN ``+0.012 (1 replicate, no
    interval)`` (or without the words where a caption says it: ``say_no_interval=False``); a dash
    where there is no estimate. ``count`` (in parentheses) says what it is over."""
    if not math.isfinite(mean):
        return MISSING
    value = number(mean, sign, digits)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        words = [w for w in (count, "no interval" if say_no_interval else "") if w]
        return f"{value} ({', '.join(words)})" if words else value
    return f"{value} [{number(lo, sign, digits)}, {number(hi, sign, digits)}]" + (f" ({count})" if count else "")


def slug(title: str) -> str:
    """``Was the study trained long enough?`` -> ``was-the-study-trained-long-enough``."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "--:",
                   first: str = ":--") -> str:
    """A pipe table (pandas ``DataFrame.to_markdown``, i.e. tabulate), its columns padded to one
    width: the first column aligned by ``first`` (``":--"`` left, the default; ``"--:"`` right),
    the others by ``align`` (right by default). Cells are written as given (no number parsing, so
    ``+0.012`` keeps its sign); each line ends with a newline."""
    colalign = [_ALIGN[first], *[_ALIGN[align]] * (len(header) - 1)]
    frame = pd.DataFrame([list(r) for r in rows], columns=list(header), dtype=object)
    text = frame.to_markdown(index=False, tablefmt="pipe", colalign=colalign, disable_numparse=True)
    if not len(frame):  # tabulate drops the alignment of a table without rows
        head, rule = text.splitlines()
        text = head + "\n|" + "|".join(_rule(len(cell), a) for cell, a in zip(rule.strip("|").split("|"), colalign)) + "|"
    return text + "\n"


#: a pipe table's alignment mark -> tabulate's name for it
_ALIGN = {":--": "left", "--:": "right", ":-:": "center"}


def _rule(width: int, align: str) -> str:
    """The separator cell of a column ``width`` characters wide, aligned as ``align``."""
    dashes = "-" * (width - 1)
    return {"left": ":" + dashes, "right": dashes + ":", "center": ":" + dashes[1:] + ":"}[align]
