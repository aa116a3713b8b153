"""What produced a result: library versions and the project's git commit (with a dirty flag)."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> dict[str, object]:
    """The commit of the checkout this package runs from, or nulls when it is not a checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


@functools.cache
def provenance() -> dict[str, object]:
    return {
        "versions": {"python": platform.python_version(),
                     **{d: _version(d) for d in ("transferscope", "torch", "torchvision", "numpy", "scikit-learn")}},
        "git": git_commit(),
        "host": platform.node(),
        "machine": platform.machine(),
    }
