"""Progress on stderr: of a study (runs done of total, the current run and epoch, time left) and of
its report (which analysis, how far, time left).

On a terminal the current state is one line, redrawn in place with ``rich`` (cropped to the
terminal's width), and finished events stay above it. Elsewhere (a log file, a pipe) only finished
events are written, one plain line each.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.control import Control
from rich.segment import ControlType
from rich.text import Text


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class _Line:
    """Where progress goes: a line redrawn in place on a terminal, plain final lines otherwise."""

    def __init__(self, stream: TextIO | None, enabled: bool):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.enabled and self.stream.isatty()
        self.console = Console(file=self.stream, force_terminal=True, highlight=False) if self.tty else None

    def write(self, text: str, final: bool) -> None:
        if not self.enabled:
            return
        if self.console is not None:
            line = Text(text, no_wrap=True, overflow="ellipsis")
            line.truncate(max(self.console.width - 1, 10), overflow="ellipsis")
            self.console.control(Control((ControlType.CARRIAGE_RETURN,), (ControlType.ERASE_IN_LINE, 2)))
            self.console.print(line, end="\n" if final else "", style="bold" if not final else None)
        elif final:
            self.stream.write(text + "\n")
        self.stream.flush()


class Progress:
    """Estimates time left from the epochs trained so far in this process."""

    def __init__(self, total_runs: int, total_epochs: int, stream: TextIO | None = None, enabled: bool = True):
        self.total_runs, self.total_epochs = total_runs, total_epochs
        self._out = _Line(stream, enabled)
        self.stream, self.enabled, self.tty = self._out.stream, enabled, self._out.tty
        self.done_runs = self.done_epochs = 0
        self.start = time.perf_counter()
        self.key = ""
        self.epochs = 1

    def eta(self) -> str:
        if not self.done_epochs:
            return "?"
        rate = (time.perf_counter() - self.start) / self.done_epochs
        return _clock(rate * (self.total_epochs - self.done_epochs))

    def _line(self, text: str, final: bool) -> None:
        self._out.write(text, final)

    def message(self, text: str) -> None:
        self._line(text, final=True)

    def run_started(self, key: str, epochs: int) -> None:
        self.key, self.epochs = key, epochs

    def epoch_done(self, epoch: int, row: dict[str, float]) -> None:
        self.done_epochs += 1
        self._line(f"[{self.done_runs}/{self.total_runs}] {self.key} epoch {epoch}/{self.epochs} "
                   f"val top-1 {row.get('val_top1', float('nan')):.3f} | elapsed "
                   f"{_clock(time.perf_counter() - self.start)} | left ~{self.eta()}", final=False)

    def run_finished(self, key: str, status: str, metric: float | None, skipped_epochs: int = 0) -> None:
        self.done_runs += 1
        self.done_epochs += skipped_epochs  # epochs a diverged run did not train
        shown = f"test top-1 {metric:.3f}" if metric is not None else status
        self._line(f"[{self.done_runs}/{self.total_runs}] {key}: {shown} | elapsed "
                   f"{_clock(time.perf_counter() - self.start)} | left ~{self.eta()}", final=True)


class ReportProgress:
    """The report's analyses, one after another: which one, how far into it (its steps, such as
    replicates), and time left, estimated from how long each analysis took when it was last
    computed (``expected``, seconds; None where unknown) and from the current one's steps."""

    def __init__(self, names: list[str], expected: dict[str, float | None] | None = None,
                 stream: TextIO | None = None, enabled: bool = True):
        self.names = list(names)
        self.expected = dict(expected or {})
        self._out = _Line(stream, enabled)
        self.start = time.perf_counter()
        self.index = 0
        self.current = ""
        self.current_start = self.start

    def _left(self, fraction: float | None = None) -> str:
        """Time left: the current analysis's remaining share (from its steps, else its expected
        time) plus the expected time of those after it."""
        rest = self.names[self.index + 1:] if self.current else self.names[self.index:]
        if any(self.expected.get(n) is None for n in rest):
            return "?"
        left = sum(self.expected[n] for n in rest)  # type: ignore[misc]
        if self.current:
            spent = time.perf_counter() - self.current_start
            if fraction:
                left += spent / fraction - spent
            elif self.expected.get(self.current) is not None:
                left += max(0.0, self.expected[self.current] - spent)  # type: ignore[operator]
            else:
                return "?"
        return _clock(left)

    def _status(self, text: str, fraction: float | None = None) -> str:
        return (f"report [{self.index + 1}/{len(self.names)}] {text} | elapsed "
                f"{_clock(time.perf_counter() - self.start)} | left ~{self._left(fraction)}")

    def started(self, name: str) -> None:
        if name in self.names:
            self.index = self.names.index(name)
        self.current, self.current_start = name, time.perf_counter()
        self._out.write(self._status(f"{name}..."), final=False)

    def step(self, done: int, total: int, what: str = "") -> None:
        """``done`` of ``total`` steps of the current analysis are finished."""
        fraction = done / total if total else None
        self._out.write(self._status(f"{self.current}: {what or 'step'} {done}/{total}", fraction), final=False)

    def finished(self, name: str, seconds: float, cached: bool) -> None:
        self.expected[name] = 0.0
        how = "unchanged inputs, from the cache" if cached else f"{seconds:.1f} s"
        self.current = ""
        self.index = min(self.index + 1, len(self.names))
        self._out.write(f"report [{self.index}/{len(self.names)}] {name}: {how} | elapsed "
                        f"{_clock(time.perf_counter() - self.start)} | left ~{self._left()}", final=True)

    def message(self, text: str) -> None:
        self._out.write(text, final=True)
