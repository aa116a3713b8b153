"""Progress of a study on stderr: runs done of total, the current run and epoch, time left."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Estimates time left from the epochs trained so far in this process."""

    def __init__(self, total_runs: int, total_epochs: int, stream: TextIO | None = None, enabled: bool = True):
        self.total_runs, self.total_epochs = total_runs, total_epochs
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.enabled and self.stream.isatty()
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
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        elif final:
            self.stream.write(text + "\n")
        self.stream.flush()

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
