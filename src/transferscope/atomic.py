"""One atomic file write: a temporary file beside the target, flushed to disk, then renamed over it
(``os.replace``), so a crash or a parallel writer never leaves a half-written file. Used by the
store (records, weights, config) and the data cache."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temporary file next to ``path``, readable as an ordinary file would be (mkstemp makes
    them owner-only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def atomic_write(path: Path, data: bytes | Callable[[Path], object]) -> None:
    """Write ``data`` (bytes, or a function that writes the file at the path it is given) to
    ``path`` atomically; the temporary file is removed whatever happens."""
    fd, tmp = _temp_beside(path)
    try:
        if callable(data):
            os.close(fd)
            data(Path(tmp))
            # the writer may have replaced the file with one of its own permissions (safetensors'
            # save_file writes 0600): the umask's, as for any file written here
            os.chmod(tmp, 0o666 & ~_umask())
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
