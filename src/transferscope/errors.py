"""The one exception type for a user's mistake.

Anything raised as :class:`UserError` is shown by the CLI as a single line (no traceback) and
ends the process with exit code 2. Its message names the field or file, what was wrong, and what
is allowed.
"""


class UserError(Exception):
    """A mistake in the user's input: configuration, files, names, ranges."""


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message (the traceback goes to
    a log)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class Interrupted(BaseException):
    """SIGINT or SIGTERM ended the command (a BaseException, like KeyboardInterrupt, so no
    ``except Exception`` swallows it). ``summary`` says what was kept."""

    def __init__(self, signum: int, summary: str = ""):
        super().__init__(signum)
        self.signum = signum
        self.summary = summary


_stop_signal: int | None = None


def request_stop(signum: int, frame: object = None) -> None:
    """The SIGINT/SIGTERM handler: raise :class:`Interrupted` now, and remember the signal so that
    :func:`check_stop` raises it again where the first was swallowed (a signal handler's exception
    that lands in a ``__del__`` or weakref callback is only printed)."""
    global _stop_signal
    _stop_signal = signum
    raise Interrupted(signum)


def check_stop() -> None:
    """Raise :class:`Interrupted` if a stop was requested (called between a study's events)."""
    if _stop_signal is not None:
        raise Interrupted(_stop_signal)
