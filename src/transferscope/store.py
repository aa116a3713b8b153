"""Where results are stored: one directory per study, one file per finished run.

Layout of a study directory::

    config.toml             the resolved configuration (a resume must match it)
    splits.json             each replicate's class split, with class names
    runs/<key>.json         one record per finished run (written atomically when it finishes)
    weights/<key>.safetensors   base network weights (the sources of every transfer)
    report/                 figures, tables and report.md

Every file is written to a temporary name and renamed into place, so a process killed at any
moment leaves either the whole file or none of it: at most the run in progress is lost.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from transferscope.config import StudyConfig, dump_toml, load_config, toml_value
from transferscope.errors import UserError

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
    if key == "name" or key in PLAN_KEYS:
        return False
    return not key.startswith("execution.") or key in EXECUTION_IDENTITY_KEYS


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


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


class Store:
    """A study directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

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

    def init(self, config: StudyConfig) -> None:
        """Start a new study here, or check that the one here has the same configuration (and
        remove the temporary files a killed process left behind)."""
        if self.exists():
            recorded = self.load_config()
            # the name and where runs execute do not change what a run computes (torch's thread
            # count does), and the plan may grow or shrink (more replicates, cut points,
            # treatments): each run's result depends only on its own key and the rest of the
            # configuration
            changed = _diffs(recorded.to_dict(), config.to_dict())
            diffs = [d for d in changed if _is_identity(d[0])]
            if diffs:
                raise UserError(_refusal(self.root, diffs))
            if changed:
                atomic_write(self.config_path, dump_toml(config).encode())
            for stale in [*self.root.glob("runs/.*.tmp"), *self.root.glob("weights/.*.tmp"), *self.root.glob(".*.tmp")]:
                stale.unlink(missing_ok=True)
            return
        atomic_write(self.config_path, dump_toml(config).encode())

    def save_splits(self, splits: dict[int, dict[str, Any]]) -> None:
        atomic_write(self.root / "splits.json", json.dumps({f"r{r}": s for r, s in splits.items()}, indent=2).encode())

    def load_splits(self) -> dict[int, dict[str, Any]]:
        """The class splits the study ran with (so status and report need no split file)."""
        path = self.root / "splits.json"
        if not path.is_file():
            return {}
        try:
            return {int(k[1:]): v for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: unreadable ({e}); delete it and run the study again to rewrite it") from None

    # -- runs -------------------------------------------------------------------------------------
    def run_path(self, key: str) -> Path:
        return self.root / "runs" / f"{key}.json"

    def is_recorded(self, key: str) -> bool:
        return self.run_path(key).is_file()

    def record(self, record: dict[str, Any]) -> None:
        atomic_write(self.run_path(record["key"]), json.dumps(record, indent=1).encode())

    def records(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted((self.root / "runs").glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError) as e:
                raise UserError(f"{path}: unreadable run record ({e}); delete it to run that network again") from None
        return out

    # -- weights ----------------------------------------------------------------------------------
    def weights_path(self, key: str) -> Path:
        return self.root / "weights" / f"{key}.safetensors"

    def save_weights(self, key: str, state: dict[str, torch.Tensor]) -> None:
        path = self.weights_path(key)
        fd, tmp = _temp_beside(path)
        os.close(fd)
        try:
            save_file({k: v.detach().contiguous() for k, v in state.items()}, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_weights(self, key: str) -> dict[str, torch.Tensor]:
        path = self.weights_path(key)
        try:
            return load_file(path)
        except (OSError, Exception) as e:  # safetensors raises its own error types
            raise UserError(f"{path}: cannot read base network weights ({e}); delete {self.run_path(key)} "
                            "to train that network again") from None

    # -- tables -----------------------------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        """One row per recorded run: identity, status, metrics, sizes and time."""
        return runs_frame(self.records())


def runs_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in records:
        rows.append({
            "key": r["key"], "replicate": r["replicate"], "treatment": r["treatment"], "role": r["role"],
            "target": r["target"], "source": r["source"], "n": r["n"], "target_size": r.get("target_size"),
            "train_images": r.get("train_images"), "status": r["status"],
            **r.get("metrics", {}),
            "trainable_params": r.get("trainable_params"), "total_params": r.get("total_params"),
            "wall_time_s": r.get("wall_time_s"), "budget_rule": r.get("budget", {}).get("rule"),
            "budget_epochs": r.get("budget", {}).get("epochs"), "budget_steps": r.get("budget", {}).get("steps"),
            "epochs_run": len(r.get("history", [])), "steps_run": r.get("steps_run"),
            "diverged_epoch": r.get("diverged_epoch"), "error": r.get("error"),
            "init_seed": r.get("seeds", {}).get("init"), "data_seed": r.get("seeds", {}).get("data"),
            "split_A": " ".join(r.get("split", {}).get("A", [])), "split_B": " ".join(r.get("split", {}).get("B", [])),
        })
    cols = ["key", "replicate", "treatment", "role", "target", "source", "n", "status", "test_top1"]
    frame = pd.DataFrame(rows, columns=None if rows else cols)
    for col in ("test_top1", "val_top1", "val_best_k_mean"):
        if col not in frame:
            frame[col] = float("nan")
    return frame
