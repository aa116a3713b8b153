"""The run record: everything a study keeps of one run, as one typed object.

A :class:`RunRecord` is built where a run ends (runner.py; the driver for a run that never
trained), written by the store as ``runs/<key>.json`` (:meth:`RunRecord.to_json`), read back by
:meth:`RunRecord.from_json`, which says in one line what makes a file not a record, and turned
into the table of runs by :func:`runs_frame`, the one place a record becomes a row (and
:func:`history_frame`, the one place its history becomes rows).

The JSON layout is the one earlier versions wrote (provenance at the top level), so their records
load: only the identity fields and the status are required; every other field may be absent.
Fields this version does not know are ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import pandas as pd

from transferscope.seeds import Seeds
from transferscope.train import Budget

#: a run's outcome: done, or why not
STATUSES = ("done", "diverged", "failed", "skipped")


class RecordError(ValueError):
    """What makes a JSON value not a run record (one line)."""


@dataclass(frozen=True)
class Split:
    """The class split of the run's replicate, by class name."""

    A: tuple[str, ...]
    B: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class FeatureCache:
    """How a frozen run's shared prefix outputs were held: views of the training set in memory."""

    views: int
    memory_mb: float
    build_time_s: float


@dataclass(frozen=True)
class Provenance:
    """What produced the run: library versions, the git commit (and whether it was dirty), the
    machine."""

    versions: dict[str, str | None]
    git: dict[str, Any]
    host: str | None = None
    machine: str | None = None


@dataclass(frozen=True)
class RunRecord:
    # -- identity (the run's RunSpec) and outcome: every record has these ----------------------
    key: str
    replicate: int
    treatment: str  # the run's paper-style name: baseA, AnB+, BnA, randomB, ...
    role: str  # its treatment's role (treatments.ROLES)
    target: str  # "A" or "B"
    n: int  # the cut point; 0 for base networks
    status: str  # one of STATUSES
    source: str | None = None  # the task whose base network donates layers 1..n
    target_size: float | int | None = None  # reduced target data (fraction or images per class); None: all
    frozen_layers: int = 0
    copied_layers: int = 0
    source_network: str | None = None  # the network layers 1..n are copied from
    depends_on: str | None = None  # the run that must be done first (its base network)
    # -- what it trained on and for how long --------------------------------------------------------
    train_images: int | None = None
    budget: Budget | None = None
    split: Split | None = None
    seeds: Seeds | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the study's resolved configuration
    # -- what came out --------------------------------------------------------------------------------
    error: str | None = None  # failed or skipped: why, in one line
    history: tuple[dict[str, float], ...] = ()  # one row per epoch
    metrics: dict[str, float] = field(default_factory=dict)  # test_top1, val_top1, val_best_k_mean, ...
    diverged_epoch: int | None = None
    steps_run: int | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    wall_time_s: float | None = None
    feature_cache: FeatureCache | None = None  # frozen runs trained on shared prefix outputs
    # -- what produced it ------------------------------------------------------------------------------
    precision: str | None = None
    device: str | None = None
    provenance: Provenance | None = None
    finished_at: str | None = None

    @property
    def test_top1(self) -> float | None:
        return self.metrics.get("test_top1")

    # -- JSON ---------------------------------------------------------------------------------------
    def to_json(self) -> str:
        out = asdict(self)
        if out["seeds"] is not None and out["seeds"]["data"] is None:
            del out["seeds"]["data"]  # only earlier versions' records have it
        if out["budget"] is not None:  # what a plateau budget adds, only where there is one
            out["budget"] = {k: v for k, v in out["budget"].items()
                             if v is not None or k not in ("drops", "found_by", "stopped")}
        prov = out.pop("provenance") or {}
        finished = out.pop("finished_at")
        return json.dumps({**out, **prov, "finished_at": finished}, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> RunRecord:
        """The record in ``text``; :class:`RecordError` says what makes it not one (invalid JSON is
        a ``ValueError`` from :mod:`json`)."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, d: Any) -> RunRecord:
        if not isinstance(d, dict):
            raise RecordError(f"a JSON {type(d).__name__}, not an object")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise RecordError(f"no {', '.join(missing)}")
        wrong = [f"{k} is {type(d[k]).__name__}, not {t.__name__}" for k, t in _REQUIRED.items()
                 if not isinstance(d[k], t) or (t is int and isinstance(d[k], bool))]
        if wrong:
            raise RecordError("; ".join(wrong))
        if d["status"] not in STATUSES:
            raise RecordError(f"status {d['status']!r} is not one of {', '.join(STATUSES)}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        if any(k in d for k in ("versions", "git", "host", "machine")):
            values["provenance"] = {k: d.get(k) for k in ("versions", "git", "host", "machine")}
        for name, typed in _NESTED.items():
            if values.get(name) is not None:
                try:
                    values[name] = typed(values[name])
                except (TypeError, ValueError, KeyError) as e:
                    raise RecordError(f"{name}: {e}") from None
        return cls(**values)


def _split(d: dict[str, Any]) -> Split:
    return Split(tuple(d["A"]), tuple(d["B"]), d["description"])


def _budget(d: dict[str, Any]) -> Budget:
    drops = d.get("drops")
    return Budget(**{**d, "drops": None if drops is None else tuple(drops)})


_REQUIRED = {"key": str, "replicate": int, "treatment": str, "role": str, "target": str, "n": int, "status": str}
_NESTED = {"budget": _budget, "split": _split, "seeds": lambda d: Seeds(**d),
           "feature_cache": lambda d: FeatureCache(**d), "provenance": lambda d: Provenance(**d),
           "history": lambda rows: tuple(dict(r) for r in rows), "metrics": dict, "config": dict}


# -- the table of runs ------------------------------------------------------------------------------
#: columns every table of runs has, even an empty one
FRAME_COLUMNS = ("key", "replicate", "treatment", "role", "target", "source", "n", "status", "test_top1",
                 "val_top1", "val_best_k_mean")


def runs_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per run: identity, status, metrics (a column each), sizes, budget, time, seeds, split."""
    rows = []
    for r in records:
        budget, seeds, split = r.budget, r.seeds, r.split
        rows.append({
            "key": r.key, "replicate": r.replicate, "treatment": r.treatment, "role": r.role, "target": r.target,
            "source": r.source, "n": r.n, "target_size": r.target_size, "train_images": r.train_images,
            "status": r.status, **r.metrics, "trainable_params": r.trainable_params, "total_params": r.total_params,
            "wall_time_s": r.wall_time_s, "budget_rule": budget.rule if budget else None,
            "budget_epochs": budget.epochs if budget else None, "budget_steps": budget.steps if budget else None,
            "epochs_run": len(r.history), "steps_run": r.steps_run, "diverged_epoch": r.diverged_epoch,
            "error": r.error, "init_seed": seeds.init if seeds else None,
            "order_seed": seeds.order if seeds else None, "augment_seed": seeds.augment if seeds else None,
            "split_A": " ".join(split.A) if split else "", "split_B": " ".join(split.B) if split else "",
        })
    frame = pd.DataFrame(rows, columns=None if rows else list(FRAME_COLUMNS[:9]))
    for col in FRAME_COLUMNS[8:]:
        if col not in frame:
            frame[col] = math.nan
    return frame


#: the columns that name a run in the table of epochs (:func:`history_frame`), before the epoch
HISTORY_ID_COLUMNS = ("key", "replicate", "treatment", "role", "n", "target", "target_size")


def history_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per run and epoch (a long table): the run's identity (:data:`HISTORY_ID_COLUMNS`),
    ``epoch``, then a column per value its history rows hold (``train_loss``, ``lr``, ``val_top1``,
    ...). A run without history rows (a skipped one, say) has no row."""
    rows = [{"key": r.key, "replicate": r.replicate, "treatment": r.treatment, "role": r.role, "n": r.n,
             "target": r.target, "target_size": r.target_size, **row}
            for r in records for row in r.history]
    frame = pd.DataFrame(rows, columns=None if rows else [*HISTORY_ID_COLUMNS, "epoch"])
    if "target_size" in frame and frame["target_size"].isna().all():
        frame["target_size"] = frame["target_size"].astype(float)
    first = [*HISTORY_ID_COLUMNS, "epoch"]
    return frame[first + [c for c in frame.columns if c not in first]]
