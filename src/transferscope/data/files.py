"""The user's dataset files and folders: listing and reading them, their OS errors as one clear line.

A folder or file the user cannot read (``chmod 000``, another owner, a broken mount) is a mistake
in the input, not a bug: a :class:`~transferscope.errors.UserError` that names the path, says
why, and what to do.
"""

from __future__ import annotations

import errno
import os
import shlex
import stat
from collections.abc import Iterable
from pathlib import Path

from transferscope.errors import UserError


def os_error(path: str | Path, e: OSError, what: str = "file", *, key: str = "data.root", hint: str = "") -> UserError:
    """The UserError for an OSError met while reading ``path`` (a ``what``: "file", "folder",
    "class folder", ...); ``hint`` adds a sentence after the remedy."""
    quoted = shlex.quote(str(path))
    if isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM):
        chmod = "chmod -R u+rX" if "folder" in what else "chmod u+r"
        remedy = f"permission denied; make it readable (e.g. {chmod} {quoted})"
    elif isinstance(e, FileNotFoundError):
        remedy = "it no longer exists (removed while it was being read?); restore it, or run again"
    else:
        remedy = f"{e.strerror or e}; check the disk or mount it lies on"
    return UserError(f"{key}: cannot read {what} {path} ({remedy}){'; ' + hint if hint else ''}")


def list_dir(folder: str | Path, what: str = "folder", *, hint: str = "") -> list[os.DirEntry]:
    """The entries of ``folder``, in no particular order; a UserError when it cannot be listed."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError as e:
        raise os_error(folder, e, what, hint=hint) from None


def check_folder(folder: str | Path, what: str = "folder") -> None:
    """A UserError when ``folder`` exists but cannot be listed or entered (so that its files
    would look missing), or when a folder above it may not be entered. Nothing when it is absent
    or not a folder: the caller says what is missing."""
    try:
        st = os.stat(folder)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        raise os_error(folder, e, what) from None
    if stat.S_ISDIR(st.st_mode) and not os.access(folder, os.R_OK | os.X_OK):
        raise os_error(folder, PermissionError(errno.EACCES, "Permission denied"), what)


def file_stats(root: str | Path, paths: Iterable[str | Path]) -> list[tuple[str, int, int]]:
    """(path relative to ``root``, size in bytes, modification time in ns) of each file."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as e:
            raise os_error(p, e) from None
        out.append((os.path.relpath(p, root), st.st_size, st.st_mtime_ns))
    return out
