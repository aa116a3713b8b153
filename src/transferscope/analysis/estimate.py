"""Predicting the transfer curve without training: score the source network's features at every
cut point for the target task.

For target task T, source S (the other task) and cut point n, the features are the outputs of
layer n of baseS on T's images (normalised with T's statistics, as an SnT run sees them, without
augmentation). They are flattened where a layer has at most ``max_features`` values per image;
wider conv maps are average-pooled to the largest square grid that fits (down to global average
pooling), see :func:`~transferscope.analysis.networks.reduce_features`. The scores:

- LogME on T's training images (higher: the features explain the labels better),
- H-score on T's training images (Ledoit-Wolf-shrunk covariance),
- a ridge linear probe trained on T's training images, its ridge chosen on T's validation images,
  scored as top-1 on T's test images,
- a stitched base (:mod:`~transferscope.analysis.stitching`): layer n of baseS mapped linearly
  into baseT (ridge, fitted on T's training images), baseT's own upper layers on top, the map and
  those layers fine-tuned for one epoch on T's training images, scored as top-1 on T's test
  images (needs baseT's weights too),
- on request (``short``), a short AnB (:mod:`~transferscope.analysis.short_transfer`): the AnB
  network itself, trained for a small fraction of its steps on the frozen features, scored as
  top-1 on T's test images. Opt-in: it tracked the measured curve weakly on the validation sets
  (docs/estimate.md) at 2-3x the stitched base's cost.

Only the base networks need to be trained, so this takes seconds to minutes (the short AnB runs,
which train, are timed: ``short_seconds``). Where the study has
run, :func:`score_correlations` gives the Spearman rank correlation of each score with the measured
AnB test top-1 across cut points, per replicate and summarised over replicates.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps

from transferscope.analysis.networks import features_at, for_inference, load_network, part_images, weights_absence
from transferscope.analysis.short_transfer import short_transfer
from transferscope.analysis.stitching import stitch_scores
from transferscope.analysis.transferability import h_score, linear_probe, logme
from transferscope.errors import UserError
from transferscope.precision import Numerics, torch_threads
from transferscope.runner import Runner
from transferscope.stats import DIFFERENCE_BOUNDS, mean_ci
from transferscope.store import Store
from transferscope.study import Study
from transferscope.treatments import base_key, other

#: test images the stitched base is scored on, at most (a seeded subset: its binomial standard
#: error at 2500 images is at most 1 point, and the top of each cut point runs on every one)
STITCH_TEST_IMAGES = 2500

#: score column -> display name
SCORES = {"logme": "LogME", "h_score": "H-score", "probe_top1": "linear probe (test top-1)",
          "stitch_top1": "stitched base (test top-1)", "short_top1": "short AnB (test top-1)"}
COLUMNS = ["replicate", "target", "source", "n", "layer", "features", "train_images", "logme", "h_score",
           "probe_top1", "probe_val_top1", "seconds", "stitch_top1", "stitch_seconds", "short_top1", "short_steps",
           "full_steps", "short_seconds"]


@dataclass
class Estimate:
    """One row per (replicate, target, n): the scores of baseS's layer-n features for task T."""

    scores: pd.DataFrame
    max_features: int
    notes: list[str] = field(default_factory=list)


def _study(store: Store, study):
    if study is None:

        study = Study.open(store)
    return study


def estimate(directory: str | Path | Store, *, study=None, max_features: int = 2048, max_images: int | None = 5000,
             device: str = "cpu", short: float | None = None, out: str | Path | None = None,
             on_step: Callable[[int, int], None] | None = None) -> Estimate:
    """Score every cut point of a study whose base networks are trained (a study run with
    ``treatments.names = ["base"]`` is enough). ``max_images`` caps the images of each part (train,
    validation, test) of each task (a seeded subset) for LogME, H-score and the probe. ``short``:
    the share of an AnB run's steps its short run trains (None, the default: no short runs, its
    columns NaN; :data:`~transferscope.analysis.short_transfer.FRACTION` is the validated share); they run with the
    study's ``execution.threads``, as its own runs did, so their seconds compare with the runs'.
    With ``out``, the table is also written there as CSV. ``on_step(done, total)`` is called after
    each (replicate, target)."""
    store = directory if isinstance(directory, Store) else Store(directory)
    study = _study(store, study)
    cuts = tuple(study.cut_points)
    frame = store.frame()
    runner = Runner(study, store.load_weights) if short else None
    numerics = Numerics.resolve(study.config.train, torch.device(device))
    records = {r.key: r for r in store.records()} if short else {}
    rows, notes, absent = [], [], {}
    for r in range(study.config.treatments.replicates):
        for target in study.config.treatments.targets:
            source = other(target)
            key = base_key(r, source)
            why = weights_absence(store, frame, key)
            if why:
                absent[key] = why
                notes.append(f"replicate {r}: {why}, so it has no weights; target {target} not scored")
                continue
            study.images()  # a clear error where the study has no images
            net = for_inference(load_network(store, study, key, r, source, device))
            task = study.task(r, target)
            parts, images = {}, {}
            for name in ("train", "val", "test"):
                x, y = images[name] = part_images(getattr(task, name), max_images, seed=r)
                parts[name] = (features_at(net, x, task, cuts, max_features), y.numpy())
            stitched, stitch_s = dict.fromkeys(cuts, math.nan), math.nan
            if not weights_absence(store, frame, base_key(r, target)):
                start = time.perf_counter()
                own = load_network(store, study, base_key(r, target), r, target, device)
                with torch_threads(study.config.execution.threads):  # as the AnB runs it predicts
                    test_x, test_y = part_images(task.test, STITCH_TEST_IMAGES, seed=r)
                    stitched = stitch_scores(net, own, task, *images["train"], test_x, test_y, cuts,
                                             study.config.train, numerics=numerics, seed=r)
                stitch_s = (time.perf_counter() - start) / len(cuts)
            shorts = {}
            if runner is not None:
                with torch_threads(study.config.execution.threads):
                    shorts = {s.n: s for s in short_transfer(runner, r, target, cuts, records, (short,))}
            for n in cuts:
                start = time.perf_counter()
                ftr, ytr = parts["train"][0][n], parts["train"][1]
                probe = linear_probe((ftr, ytr), (parts["val"][0][n], parts["val"][1]),
                                     (parts["test"][0][n], parts["test"][1]))
                s = shorts.get(n)
                rows.append((r, target, source, n, net.block_names[n - 1], ftr.shape[1], ftr.shape[0],
                             logme(ftr, ytr), h_score(ftr, ytr), probe.top1, probe.val_top1,
                             time.perf_counter() - start, stitched[n], stitch_s,
                             *((s.test_top1, s.steps, s.full_steps, s.seconds) if s else (math.nan,) * 4)))
            if on_step is not None:
                on_step(r * len(study.config.treatments.targets) + study.config.treatments.targets.index(target) + 1,
                        study.config.treatments.replicates * len(study.config.treatments.targets))
    if not rows:
        if not all(why.endswith("is not recorded") for why in absent.values()):
            raise UserError(f"{store.root}: no base network has weights to score: " + "; ".join(absent.values()))
        raise UserError(f"{store.root}: no base network weights to score; train the base networks first, e.g. "
                        "transferscope run STUDY --set 'treatments.names=[\"base\"]' -o DIR")
    result = Estimate(pd.DataFrame(rows, columns=COLUMNS), max_features, notes)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        result.scores.to_csv(out, index=False)
    return result


def measured_transfer(frame: pd.DataFrame) -> pd.DataFrame:
    """Measured AnB (frozen transfer, full data) test top-1 per replicate, target and n."""
    if frame.empty:
        return pd.DataFrame(columns=["replicate", "target", "n", "measured"])
    sel = (frame["status"] == "done") & (frame["role"] == "transfer")
    if "target_size" in frame:
        sel &= frame["target_size"].isna()
    runs = frame.loc[sel, ["replicate", "target", "n", "test_top1"]].rename(columns={"test_top1": "measured"})
    return runs.groupby(["replicate", "target", "n"], as_index=False)["measured"].mean()


def score_cost(scores: pd.DataFrame, frame: pd.DataFrame, column: str = "short_seconds") -> tuple[float, float]:
    """Seconds a score took (``column``: ``short_seconds`` or ``stitch_seconds``), and the recorded
    wall time of the AnB runs it predicts, both over the (replicate, target, n) that have a recorded
    AnB run (a study may run one direction only; both with the study's ``execution.threads``): NaN
    where there are none."""
    if column not in scores or scores[column].isna().all() or frame.empty:
        return math.nan, math.nan
    sel = (frame["status"] == "done") & (frame["role"] == "transfer")
    if "target_size" in frame:
        sel &= frame["target_size"].isna()
    runs = frame.loc[sel, ["replicate", "target", "n", "wall_time_s"]]
    joined = scores.dropna(subset=[column]).merge(runs, on=["replicate", "target", "n"], how="inner")
    if joined.empty:
        return math.nan, math.nan
    return float(joined[column].sum()), float(joined["wall_time_s"].sum())


#: a score whose mean per-replicate rank correlation with measured AnB falls below this on a
#: validation set, or in the study at hand, is called weak there (the target of issue 16)
TRUSTED_RHO = 0.8


@dataclass(frozen=True)
class Validated:
    """How one score fared on the validation sets (docs/estimate.md, benchmarks/estimate_validation.py):
    per set, the mean over replicates of its rank correlation with measured AnB across cut points."""

    score: str
    label: str
    rhos: dict[str, float]  # validation set -> mean rho over replicates

    @property
    def weak_on(self) -> list[str]:
        """The sets where it tracked the measured curve weakly (or where it was undefined)."""
        return [name for name, rho in self.rhos.items() if not rho >= TRUSTED_RHO]


def validation(path: Path | None = None) -> list[Validated]:
    """Each score's figures on the validation sets, as measured by
    ``python -m benchmarks.estimate_validation --write`` (``path``, default the package's
    analysis/validation.json; empty where absent)."""
    if path is None:
        from importlib.resources import files

        path = files("transferscope.analysis") / "validation.json"  # type: ignore[assignment]
    if not path.is_file():
        return []
    sets = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for score, label in SCORES.items():
        rhos = {s["name"]: float(s["scores"][score]["rho"]) if score in s["scores"] else math.nan for s in sets}
        out.append(Validated(score, label, rhos))
    return out


def computed(scores: pd.DataFrame, labels: dict[str, str] | None = None) -> dict[str, str]:
    """The scores of ``labels`` (column -> name, default :data:`SCORES`) that ``scores`` has a value
    of: the short AnB only where it was asked for."""
    labels = SCORES if labels is None else labels
    return {col: label for col, label in labels.items() if col in scores and scores[col].notna().any()}


def score_correlations(scores: pd.DataFrame, frame: pd.DataFrame, labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Spearman rank correlation of each score (``labels``: column -> name, default :data:`SCORES`)
    with the measured AnB top-1 across cut points.

    ``rho``: within each replicate, over its cut points (score and measured accuracy each averaged
    over the replicate's two directions, which share its base networks), then the mean over
    replicates with a 95% Student-t interval over replicates truncated to [-1, 1]; the replicate is
    the independent unit. ``rho_means``: between the mean score and the mean measured accuracy at
    each n (the shape of the curve), with an exact permutation p-value. NaN where fewer than 3 cut
    points or a constant series. A score not computed (every value NaN: the short AnB unless asked
    for) has no row."""
    joined = scores.merge(measured_transfer(frame), on=["replicate", "target", "n"], how="inner")
    labels = computed(scores, labels)
    per_rep = joined.groupby(["replicate", "n"], as_index=False)[[*labels, "measured"]].mean()
    rows = []
    for col, label in labels.items():
        rhos = [_spearman(g[col], g["measured"])[0] for _, g in per_rep.groupby("replicate")]
        means = per_rep.groupby("n")[[col, "measured"]].mean()
        rows.append((col, label, *mean_ci(rhos, bounds=DIFFERENCE_BOUNDS), *_spearman(means[col], means["measured"]),
                     len(means)))
    return pd.DataFrame(rows, columns=["score", "label", "rho", "rho_low", "rho_high", "replicates", "rho_means",
                                       "p_means", "cut_points"])


#: up to this many points the p-value is exact (every permutation); beyond, scipy's t approximation
EXACT_POINTS = 8


def _spearman(a: pd.Series, b: pd.Series) -> tuple[float, float]:
    """Spearman's rho and its two-sided p-value: exact (the permutation distribution of the ranks)
    for at most :data:`EXACT_POINTS` points, where scipy's t approximation is far too small (it
    gives p ~ 1e-24 for a perfect rank order of 5 points, whose exact p is 2/120)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")
    rho = float(sps.spearmanr(a, b).statistic)
    if len(a) > EXACT_POINTS:
        return rho, float(sps.spearmanr(a, b).pvalue)
    ra, rb = sps.rankdata(a), sps.rankdata(b)
    perms = np.array(list(itertools.permutations(rb)))
    rhos = np.array([np.corrcoef(ra, p)[0, 1] for p in perms])
    return rho, float(np.mean(np.abs(rhos) >= abs(rho) - 1e-12))
