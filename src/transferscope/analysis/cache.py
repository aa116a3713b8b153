"""The report's analyses cached by their inputs, so that reporting an unchanged study recomputes nothing.

Each analysis of :func:`transferscope.report.analyze_study` names what it reads (:class:`Inputs`):
run records and weights files by name, size and modification time, the configuration that
matters to it, the data's fingerprint, its own parameters, and the code (transferscope's version
and a digest of its source files, so an edited analysis is never served from an older one). The
digest of these is the analysis's key. Its result (the report section, its tables and notes, and
the bytes of the figures and CSV files it wrote) is kept in ``DIR/cache/analyses/<name>.pkl``,
written atomically, one file per analysis (the last result: a changed input replaces it).

A complete report also leaves a stamp (:func:`save_report_stamp`): a digest of every file of the
study directory (but this cache), of the report's own files as written, of the study it was
compared with, of the analyses asked for, of the code and of the commit the provenance names.
Where nothing of that has changed, :func:`current_report` answers with the report's path from
file metadata alone, before torch or any analysis is imported (``transferscope report`` on an
unchanged study); any difference falls back to the per-analysis cache above.

The files are pickles, read only from the study's own directory: as trusted as the study's
records; a cache file that cannot be read (damaged, or written by another version) is a miss.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferscope.atomic import atomic_write
from transferscope.provenance import git_commit

#: where a study directory keeps the cached analyses
CACHE_DIR = Path("cache") / "analyses"
#: bumped when an entry's layout changes
FORMAT = 1


@functools.cache
def code_identity() -> str:
    """transferscope's version and a digest of every source file of the package, and of the data
    files the report reads (the estimate's validation figures), computed once per process."""
    from importlib import metadata

    try:
        version = metadata.version("transferscope")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        version = "unknown"
    root = Path(__file__).resolve().parent.parent  # the transferscope package
    digest = hashlib.sha256(f"{version}/{FORMAT}".encode())
    for path in sorted([*root.rglob("*.py"), *root.rglob("validation.json")]):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def file_identity(path: Path) -> tuple[str, int, int] | tuple[str, None, None]:
    """A file's name, size and modification time (ns); None for a missing file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return path.name, None, None
    return path.name, st.st_size, st.st_mtime_ns


@dataclass
class Inputs:
    """What one analysis reads: named parts, each JSON-serialisable (tuples and lists alike)."""

    parts: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: Any) -> Inputs:
        self.parts[name] = value
        return self

    def files(self, name: str, paths: Iterable[Path]) -> Inputs:
        return self.add(name, [file_identity(p) for p in sorted(paths)])

    def key(self, analysis: str) -> str:
        text = json.dumps({"analysis": analysis, "code": code_identity(), **self.parts}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Entry:
    """One cached result: the key it was computed for, the result object, the files it wrote
    (name -> bytes) and how long it took."""

    key: str
    result: Any
    files: dict[str, bytes]
    seconds: float
    format: int = FORMAT


class AnalysisCache:
    """The cache of one study directory. ``hits`` and ``misses`` list the analyses served from it
    and computed, in order (what a caller, or a test, reads to know what was recomputed)."""

    def __init__(self, root: str | Path, enabled: bool = True):
        self.dir = Path(root) / CACHE_DIR
        self.enabled = enabled
        self.hits: list[str] = []
        self.misses: list[str] = []
        #: analysis -> the key of its result in this report (served or computed; absent where it failed)
        self.keys: dict[str, str] = {}
        #: the whole report was current (its stamp matched): no analysis was even looked up
        self.from_stamp = False
        self._entries: dict[str, Entry | None] = {}

    def path(self, analysis: str) -> Path:
        return self.dir / f"{analysis.replace(' ', '_')}.pkl"

    def _read(self, analysis: str) -> Entry | None:
        if analysis not in self._entries:
            self._entries[analysis] = self._read_file(analysis)
        return self._entries[analysis]

    def _read_file(self, analysis: str) -> Entry | None:
        try:
            entry = pickle.loads(self.path(analysis).read_bytes())
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001  (damaged, or classes of another version: recompute)
            return None
        return entry if isinstance(entry, Entry) and entry.format == FORMAT else None

    def expected_seconds(self, analysis: str, key: str) -> float | None:
        """How long the analysis will take: 0 where its result for ``key`` is cached, else as long
        as when it was last computed (whatever its inputs then); None where never."""
        entry = self._read(analysis) if self.enabled else None
        if entry is None:
            return None
        return 0.0 if entry.key == key else entry.seconds

    def load(self, analysis: str, key: str, out: Path) -> Entry | None:
        """The entry for ``key``, its files restored into ``out`` where missing or different;
        None (a miss) otherwise."""
        entry = self._read(analysis) if self.enabled else None
        if entry is None or entry.key != key:
            return None
        for name, data in entry.files.items():
            target = out / name
            try:
                same = target.stat().st_size == len(data) and target.read_bytes() == data
            except FileNotFoundError:
                same = False
            if not same:
                atomic_write(target, data)
        return entry

    def save(self, analysis: str, entry: Entry) -> None:
        if not self.enabled:
            return
        try:
            data = pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001  (a result that cannot be pickled is simply not cached)
            return
        atomic_write(self.path(analysis), data)
        self._entries[analysis] = entry


#: the file in CACHE_DIR holding the stamp of the last complete report
STAMP = "report.stamp.json"


def _tree(root: Path, skip: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(relative path, size, modification time) of every file under ``root``, but hidden files
    (the driver's lock, temporary files) and the top-level folders in ``skip``."""
    rows = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in skip or any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        st = path.stat()
        rows.append((rel.as_posix(), st.st_size, st.st_mtime_ns))
    return rows


def report_stamp(root: str | Path, compare: str | Path | None, analyses) -> str:
    """The digest of everything a report of the study in ``root`` depends on (see the module's
    text). ``analyses``: the analyses asked for (None: the study's ``report.analyses``)."""
    root = Path(root)
    text = json.dumps({"code": code_identity(), "git": git_commit(), "analyses": analyses,
                       "compare": None if compare is None else str(Path(compare).resolve()),
                       "study": _tree(root, ("cache", "logs")),
                       "other": None if compare is None else _tree(Path(compare), ("cache", "logs", "report"))},
                      sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def current_report(root: str | Path, compare: str | Path | None = None, analyses=None) -> Path | None:
    """The path of the study's report where nothing it depends on has changed since it was
    written (its stamp matches), else None."""
    path = Path(root) / CACHE_DIR / STAMP
    try:
        saved = json.loads(path.read_text())
        report = Path(root) / "report" / saved["report"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return report if report.is_file() and saved.get("stamp") == report_stamp(root, compare, analyses) else None


def save_report_stamp(root: str | Path, report: Path, compare: str | Path | None = None, analyses=None) -> None:
    """Stamp a complete report (written last, after every file of it)."""
    data = json.dumps({"stamp": report_stamp(root, compare, analyses), "report": report.name})
    atomic_write(Path(root) / CACHE_DIR / STAMP, data.encode())


def written_since(out: Path, before: dict[str, tuple[int, int]]) -> dict[str, bytes]:
    """The files of ``out`` (not recursive) created or rewritten since ``before`` (:func:`snapshot`)."""
    now = snapshot(out)
    return {name: (out / name).read_bytes() for name, ident in now.items() if before.get(name) != ident}


def snapshot(out: Path) -> dict[str, tuple[int, int]]:
    """Name -> (size, modification time) of the files directly in ``out``."""
    if not out.is_dir():
        return {}
    return {p.name: (st.st_size, st.st_mtime_ns) for p in out.iterdir() if p.is_file() and (st := p.stat())}


__all__ = ["AnalysisCache", "CACHE_DIR", "Entry", "Inputs", "code_identity", "current_report", "file_identity",
           "report_stamp", "save_report_stamp", "snapshot", "written_since"]
