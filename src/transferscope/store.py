"""Where results are stored: one directory per study, one file per finished run.

Layout of a study directory::

    config.toml             the resolved configuration (a resume must match it); its plan
                            covers every run recorded here
    study.json              what else a resume must match: the data's fingerprint (and its
                            shape, classes and counts, so status and report work without it),
                            the resolved device and precision, and the scheme of random streams
    splits.json             each replicate's class split, with class names
    runs/<key>.json         one record per finished run (record.RunRecord; written atomically when
                            it finishes)
    weights/<key>.safetensors   base network weights (the sources of every transfer), and the
                            fine-tuned networks' in float16 (eval.save_weights)
    errors.log              the tracebacks behind failed runs' one-line errors
    report/                 figures, tables and report.md
    .lock                   held (flock) by the one driver running the study

Every file is written to a temporary name and renamed into place, so a process killed at any
moment leaves either the whole file or none of it: at most the run in progress is lost.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save

from transferscope.atomic import atomic_write
from transferscope.config import StudyConfig, dump_toml, load_config, toml_value
from transferscope.errors import UserError
from transferscope.record import RecordError, RunRecord, runs_frame

CONFIG_FILE = "config.toml"
#: keys that only choose which runs the study has: a study directory may be resumed with others
PLAN_KEYS = {"treatments.names", "treatments.cut_points", "treatments.targets", "treatments.replicates",
             "treatments.target_sizes"}
#: the one execution setting that changes what a run computes: torch splits its reductions by
#: thread count (the number of workers and the executor do not change a number on the CPU)
EXECUTION_IDENTITY_KEYS = {"execution.threads"}


def _is_identity(key: str) -> bool:
    """Whether a configuration key is part of a study's identity: every key but the name, the
    plan and where runs execute."""
    if key == "name" or key in PLAN_KEYS or key.startswith("report."):  # what the report computes
        return False
    return not key.startswith("execution.") or key in EXECUTION_IDENTITY_KEYS


def _diffs(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value in ``a``, value in ``b``) for every leaf where two config trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(a.keys() | b.keys()) for d in _diffs(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def _refusal(root: Path, diffs: list[tuple[str, Any, Any]]) -> str:
    """Why a study directory refuses a configuration, and the --set options that resume it."""
    shown = "; ".join(f"{k}: recorded {_shown(old)}, now {_shown(new)}" for k, old, new in diffs)
    back = [shlex.quote(f"{k}={toml_value(old)}") for k, old, _ in diffs if old is not None]
    resume = (" ".join(f"--set {b}" for b in back) if len(back) == len(diffs)
              else f"the configuration in {root / CONFIG_FILE}")
    return (f"{root}: holds a study with a different configuration (differs in {shown}); to resume it use "
            f"{resume}, or use another --output")


def _shown(value: Any) -> str:
    return "unset" if value is None else toml_value(value)


#: float tensors of fine-tuned networks are kept in float16 (half the bytes; the analyses that read
#: them, CKA and filter changes, see differences far above its 2^-11 relative rounding)
HALF = torch.float16


def os_error_line(e: OSError, path: str | Path | None = None, *, resume: bool = True) -> str:
    """One line for an operating-system error on a study's files: the file, what went wrong, and
    what to do."""
    where = path if path is not None else (e.filename or "a study file")
    why = e.strerror or str(e)
    advice = {
        errno.ENOSPC: "free some space (or choose another --output)",
        errno.EDQUOT: "free some space within your quota (or choose another --output)",
        errno.EACCES: "make it writable by you (or choose another --output)",
        errno.EPERM: "make it writable by you (or choose another --output)",
        errno.EROFS: "the file system is read-only: choose another --output",
        errno.ENOTDIR: "a part of the path is a file, not a folder: choose another --output",
        errno.EEXIST: "it is a file, not a folder: choose another --output",
    }.get(e.errno or 0, "check the path (or choose another --output)")
    tail = "; what is recorded is kept: run the same command to resume" if resume else ""
    return f"{where}: {why}; {advice}{tail}"


class StudyLocked(UserError):
    """Another driver holds the study directory."""


class Store:
    """A study directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- the directory and its one driver ---------------------------------------------------------
    def make_root(self) -> None:
        """Create the study directory (a clear error where it cannot be)."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root}: is a file, not a study directory; choose another --output")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the study directory {self.root}: " + os_error_line(e, e.filename or self.root,
                                                                                               resume=False)) from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the study for one driver: an exclusive flock on ``.lock``, released when the block
        ends or the process dies (the OS drops it). A second driver gets :class:`StudyLocked`
        naming the holder (host, pid, since when)."""
        self.make_root()
        path = self.root / ".lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise UserError(os_error_line(e, path, resume=False)) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
                raise StudyLocked(f"{self.root}: another transferscope driver is running this study ({holder}); "
                                  "wait for it to finish or stop it, or use another --output") from None
            since = time.strftime("%Y-%m-%d %H:%M:%S %Z")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}, since {since}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock (the holder line stays: it is only read under contention)

    # -- configuration ------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    def exists(self) -> bool:
        return self.config_path.is_file()

    def load_config(self) -> StudyConfig:
        if not self.exists():
            raise UserError(f"{self.root}: not a transferscope study directory (no {CONFIG_FILE})")
        return load_config(self.config_path)

    def init(self, config: StudyConfig, identity: dict[str, Any], plan: list[str]) -> None:
        """Start a new study here, or check that the one here is the same study: the same
        configuration (but for its name, plan and where runs execute), the same data and numerics
        (``identity``), and a plan (run keys) that keeps every recorded run. Call it holding
        :meth:`lock`; it removes the temporary files a killed process left behind."""
        if self.exists():
            recorded = self.load_config()
            # the name and where runs execute do not change what a run computes (torch's thread
            # count does), and the plan may grow (more replicates, cut points, treatments): each
            # run's result depends only on its own key and the rest of the configuration
            changed = _diffs(recorded.to_dict(), config.to_dict())
            diffs = [d for d in changed if _is_identity(d[0])]
            if diffs:
                raise UserError(_refusal(self.root, diffs))
            self._check_identity(identity)
            self._check_plan(recorded, config, set(plan))
            for stale in [*self.root.glob("runs/.*.tmp"), *self.root.glob("weights/.*.tmp"), *self.root.glob(".*.tmp")]:
                stale.unlink(missing_ok=True)
            if changed:
                atomic_write(self.config_path, dump_toml(config).encode())
        else:
            atomic_write(self.config_path, dump_toml(config).encode())
        atomic_write(self.root / STUDY_FILE, json.dumps(identity, indent=1).encode())

    def identity(self) -> dict[str, Any]:
        """study.json: the data's fingerprint and description, the resolved numerics, the scheme of
        random streams ({} for a study written before it existed)."""
        path = self.root / STUDY_FILE
        if not path.is_file():
            return {}
        try:
            out = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: unreadable ({e}); delete it: the next run writes it again") from None
        if not isinstance(out, dict):
            raise UserError(f"{path}: not a study description (a JSON object); delete it: the next run writes it again")
        return out

    def _check_identity(self, identity: dict[str, Any]) -> None:
        old = self.identity()
        if old.get("streams") != identity.get("streams") and next(self.root.glob("runs/*.json"), None):
            raise UserError(f"{self.root}: its runs drew their random numbers as an earlier version of transferscope "
                            "did (class splits seeded with split.seed + replicate; data order, augmentation and "
                            "dropout from one stream), and this version draws each from its own named stream: the "
                            "runs it would add could not be compared with those recorded. status, export and report "
                            "still read it; to run the study with this version use another --output")
        if not old:
            return  # written by a version without study.json: nothing to compare yet
        was, now = old.get("data", {}), identity.get("data", {})
        if was.get("fingerprint") != now.get("fingerprint"):
            raise UserError(f"{self.root}: the dataset changed since this study ran ({_data_change(was, now)}); "
                            "its runs must all see the same images: restore the data, or use another --output")
        for key, value in identity.get("numerics", {}).items():
            before = old.get("numerics", {}).get(key)
            if before is not None and before != value:
                setting = {"device": "execution.device", "precision": "train.precision"}.get(key, key)
                raise UserError(f"{self.root}: its runs ran with {key} {before}, this machine gives {value}; "
                                f"their numbers would not be comparable: resume with --set {setting}={before} where "
                                "that is available, or use another --output")

    def _check_plan(self, recorded: StudyConfig, config: StudyConfig, plan: set[str]) -> None:
        keys = {r.key for r in self.records()}
        dropped = sorted(keys - plan)
        if not dropped:
            return
        changed = [(k, old, new) for k, old, new in _diffs(recorded.to_dict(), config.to_dict()) if k in PLAN_KEYS]
        shown = "; ".join(f"{k}: recorded {_shown(old)}, now {_shown(new)}" for k, old, new in changed)
        back = " ".join(f"--set {shlex.quote(f'{k}={toml_value(old)}')}" for k, old, _ in changed if old is not None)
        raise UserError(f"{self.root}: this plan leaves out {len(dropped)} recorded run(s) (e.g. "
                        f"{', '.join(dropped[:3])}){f' ({shown})' if shown else ''}; a study's plan may grow but "
                        f"must keep every recorded run: resume with {back or 'the plan in ' + str(self.config_path)}, "
                        "or use another --output")

    def save_splits(self, splits: dict[int, dict[str, Any]]) -> None:
        atomic_write(self.root / "splits.json", json.dumps({f"r{r}": s for r, s in splits.items()}, indent=2).encode())

    def load_splits(self) -> dict[int, dict[str, Any]]:
        """The class splits the study ran with (so status and report need no split file)."""
        path = self.root / "splits.json"
        if not path.is_file():
            return {}
        try:
            return {int(k[1:]): v for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError, AttributeError) as e:
            raise UserError(f"{path}: unreadable ({e}); delete it and run the study again to rewrite it") from None

    # -- runs -------------------------------------------------------------------------------------
    def run_path(self, key: str) -> Path:
        return self.root / "runs" / f"{key}.json"

    def record(self, record: RunRecord) -> None:
        atomic_write(self.run_path(record.key), record.to_json().encode())

    def records(self) -> list[RunRecord]:
        """Every recorded run, in key order; one line naming the file where one is not a record."""
        out = []
        for path in sorted((self.root / "runs").glob("*.json")):
            try:
                text = path.read_text()
            except OSError as e:
                raise UserError(f"{path}: unreadable run record ({e}); delete it to run that network again") from None
            try:
                record = RunRecord.from_json(text)
                if record.key != path.stem:
                    raise RecordError(f"its key {record.key!r} does not match the file name")
            except RecordError as e:
                raise UserError(f"{path}: not a transferscope run record ({e}); delete it to run that network "
                                "again") from None
            except ValueError as e:
                raise UserError(f"{path}: unreadable run record ({e}); delete it to run that network again") from None
            out.append(record)
        return out

    # -- errors -----------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.root / "errors.log"

    def log_error(self, key: str, text: str) -> Path:
        """Append the traceback behind run ``key``'s one-line error to errors.log."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.log_path, "a") as f:
            f.write(f"=== {stamp} {key}\n{text.rstrip()}\n\n")
        return self.log_path

    # -- weights ----------------------------------------------------------------------------------
    def weights_path(self, key: str) -> Path:
        return self.root / "weights" / f"{key}.safetensors"

    def save_weights(self, key: str, state: dict[str, torch.Tensor], half: bool = False) -> None:
        """Write a network's weights; with ``half``, float tensors in float16 where they fit
        (a tensor beyond float16's range stays float32)."""
        tensors = {}
        for k, v in state.items():
            v = v.detach().contiguous()
            if half and v.is_floating_point() and v.dtype != HALF and bool(torch.isfinite(v.to(HALF)).all()):
                v = v.to(HALF)
            tensors[k] = v
        atomic_write(self.weights_path(key), save(tensors))

    def load_weights(self, key: str) -> dict[str, torch.Tensor]:
        """A network's weights, float tensors as float32."""
        path = self.weights_path(key)
        try:
            state = load_file(path)
        except (OSError, Exception) as e:  # safetensors raises its own error types
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"{path}: cannot read network weights ({detail}); delete {self.run_path(key)} "
                            "to train that network again") from None
        return {k: v.float() if v.dtype == HALF else v for k, v in state.items()}

    # -- tables -----------------------------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        """One row per recorded run: identity, status, metrics, sizes and time."""
        return runs_frame(self.records())


STUDY_FILE = "study.json"


def _data_change(was: dict[str, Any], now: dict[str, Any]) -> str:
    """What differs between two data descriptions, in words."""
    parts = []
    if was.get("images") != now.get("images"):
        parts.append(f"{was.get('images')} images recorded, {now.get('images')} now")
    old_classes, new_classes = was.get("class_names", []), now.get("class_names", [])
    if old_classes != new_classes:
        added, gone = sorted(set(new_classes) - set(old_classes)), sorted(set(old_classes) - set(new_classes))
        parts.append("classes " + ", ".join([*(f"+{c}" for c in added[:5]), *(f"-{c}" for c in gone[:5])]
                                            or ["reordered"]))
    counts = [f"{c}: {n} -> {now['per_class'][c]}" for c, n in was.get("per_class", {}).items()
              if c in now.get("per_class", {}) and now["per_class"][c] != n]
    if counts:
        parts.append("images per class " + ", ".join(counts[:5]) + (" ..." if len(counts) > 5 else ""))
    if was.get("image_shape") != now.get("image_shape"):
        parts.append(f"image shape {was.get('image_shape')} recorded, {now.get('image_shape')} now")
    return "; ".join(parts) or "same counts, different pixels or files"
