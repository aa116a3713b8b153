"""Freeze or fine-tune, by the amount of target data (``treatments.target_sizes`` runs).

At each target size (the full study counts as the full size) three kinds of network are compared
on the same test images: a base network trained from scratch on that much target data, AnB
(layers 1..n copied from the other task's base network and frozen) and AnB+ (copied, then
everything fine-tuned), at every cut point n. Both directions (AnB with BnA) are averaged within
each replicate.

The recommendation for a size is the candidate with the best mean test top-1, with its 95% CI
and its margin over training from scratch, paired by replicate and target. Every statistic takes
one value per replicate (the mean of its two directions, which share the replicate's base
networks) and its interval is over replicates (:mod:`transferscope.stats`). Every
alternative whose paired difference to the best has a 95% CI that includes 0 is listed as not
distinguishable from it. The best is picked on the same test accuracies it reports, so its margin
is optimistic when several candidates are close; the list of indistinguishable alternatives is
what the data support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from transferscope.stats import ACCURACY_BOUNDS, DIFFERENCE_BOUNDS, PAIR, mean_ci
from transferscope.treatments import AT_TARGET_SIZES, BASE, TREATMENTS, Treatment, size_label, treatment

#: the roles run at every target size (transferscope.treatments.TREATMENTS, ``at_target_sizes``)
ROLES = (BASE.role, *(t.role for t in AT_TARGET_SIZES))
#: (frozen, fine-tuned) pairs that differ only in whether the copied layers train: AnB and AnB+,
#: PnT and PnT+ (read from the treatment table)
FREEZE_FINETUNE: tuple[tuple[Treatment, Treatment], ...] = tuple(
    (t, u) for t in TREATMENTS for u in TREATMENTS
    if t.at_target_sizes and u.at_target_sizes and t.copies is not None and t.copies == u.copies
    and not t.fine_tuned and u.fine_tuned and t.bn_stats == u.bn_stats and t.head == u.head == "layers")


def candidate_label(role: str, n: int) -> str:
    t = treatment(role)
    if t.is_base:
        return "train from scratch"
    return f"{t.label} n={n} ({'linear probe' if t.head == 'linear' else 'fine-tune' if t.fine_tuned else 'freeze'})"


def size_runs(frame: pd.DataFrame, classes: dict[tuple[int, str], int]) -> pd.DataFrame:
    """Finished base, AnB and AnB+ runs at every size, with ``size`` (NaN: full), ``size_label`` and
    ``per_class`` (training images per class of the target task)."""
    if frame.empty or "target_size" not in frame:
        return pd.DataFrame(columns=[*frame.columns, "size", "size_label", "per_class"])
    runs = frame.loc[(frame["status"] == "done") & frame["role"].isin(ROLES)].copy()
    runs["test_top1"] = pd.to_numeric(runs["test_top1"], errors="coerce")
    runs = runs.loc[np.isfinite(runs["test_top1"].to_numpy(dtype=float))]
    runs["size"] = pd.to_numeric(runs["target_size"], errors="coerce").astype(float)
    runs["size_label"] = [size_label(s) for s in runs["size"]]
    k = np.array([classes.get((int(r), str(t)), np.nan) for r, t in zip(runs["replicate"], runs["target"])], float)
    runs["per_class"] = pd.to_numeric(runs["train_images"], errors="coerce").to_numpy(dtype=float) / k
    runs["n"] = runs["n"].astype(int)
    return runs


def has_sizes(frame: pd.DataFrame) -> bool:
    return "target_size" in frame and bool(pd.to_numeric(frame["target_size"], errors="coerce").notna().any())


def _per_replicate(values: pd.Series) -> pd.Series:
    """(replicate, target)-indexed values -> one value per replicate (the mean of its directions)."""
    return values.groupby(level="replicate").mean()


def size_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per size and candidate: mean test top-1 [95% CI] over replicates, the number of networks,
    and the difference to the base network trained from scratch on the same data, paired by
    replicate and target, over replicates."""
    rows = []
    for label, at_size in runs.groupby("size_label", sort=False):
        base = at_size.loc[at_size["role"] == "base"].groupby(list(PAIR))["test_top1"].mean().rename("_base")
        per_class = float(at_size["per_class"].mean())
        for (role, n), group in at_size.groupby(["role", "n"]):
            cell = group.groupby(list(PAIR))["test_top1"].mean()
            diff = _per_replicate((cell - base).dropna())
            rows.append((label, float(at_size["size"].iloc[0]), per_class, role, int(n), candidate_label(role, int(n)),
                         *mean_ci(_per_replicate(cell), bounds=ACCURACY_BOUNDS), len(group),
                         *mean_ci(diff, bounds=DIFFERENCE_BOUNDS), _mean(group, "trainable_params"),
                         _mean(group, "wall_time_s")))
    cols = ["size_label", "size", "per_class", "role", "n", "candidate", "mean", "ci_low", "ci_high", "replicates",
            "networks", "vs_scratch", "vs_low", "vs_high", "vs_replicates", "trainable_params", "train_time_s"]
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["per_class", "role", "n"], ignore_index=True)


def _mean(group: pd.DataFrame, column: str) -> float:
    values = pd.to_numeric(group[column], errors="coerce") if column in group else pd.Series(dtype=float)
    return float(values.mean()) if values.notna().any() else math.nan


def finetune_minus_freeze(runs: pd.DataFrame) -> pd.DataFrame:
    """Per target size and cut point, for each frozen / fine-tuned pair of the table (AnB and AnB+,
    PnT and PnT+): fine-tuned minus frozen test top-1, paired by replicate and target, mean [95%
    CI] over replicates, with the parameters in the copied layers (what fine-tuning frees: total
    minus trainable parameters of the frozen runs)."""
    rows = []
    for frozen, tuned in FREEZE_FINETUNE:
        for (label, n), at in runs.loc[runs["role"].isin([frozen.role, tuned.role])].groupby(["size_label", "n"],
                                                                                                sort=False):
            f = at.loc[at["role"] == frozen.role]
            diff = _per_replicate((at.loc[at["role"] == tuned.role].groupby(list(PAIR))["test_top1"].mean()
                                   - f.groupby(list(PAIR))["test_top1"].mean()).dropna())
            copied = pd.to_numeric(f["total_params"], errors="coerce") - pd.to_numeric(f["trainable_params"],
                                                                                      errors="coerce")
            rows.append((frozen.label, tuned.label, label, float(at["size"].iloc[0]), float(at["per_class"].mean()),
                         int(n), *mean_ci(diff, bounds=DIFFERENCE_BOUNDS),
                         float(copied.mean()) if copied.notna().any() else math.nan))
    cols = ["frozen", "fine_tuned", "size_label", "size", "per_class", "n", "mean", "ci_low", "ci_high", "replicates",
            "copied_params"]
    return pd.DataFrame(rows, columns=cols).sort_values(["frozen", "per_class", "n"], ignore_index=True)


@dataclass(frozen=True)
class Recommendation:
    size_label: str
    per_class: float
    best: str
    mean: float
    ci_low: float
    ci_high: float
    replicates: int
    networks: int
    vs_scratch: float
    vs_low: float
    vs_high: float
    vs_replicates: int  # replicates behind the margin over scratch
    verdict: str  # against training from scratch
    indistinguishable: tuple[str, ...]  # alternatives not distinguishable from the best


def _cells(at_size: pd.DataFrame, role: str, n: int) -> pd.Series:
    return at_size.loc[(at_size["role"] == role) & (at_size["n"] == n)].groupby(list(PAIR))["test_top1"].mean()


def _verdict(best_role: str, lo: float, hi: float, replicates: int) -> str:
    if best_role == "base":
        return "train from scratch (no transfer treatment has a higher mean)"
    if replicates < 2 or not (math.isfinite(lo) and math.isfinite(hi)):
        return "cannot be compared with training from scratch (fewer than 2 replicates: no interval)"
    if lo > 0:
        return "better than training from scratch"
    if hi < 0:
        return "worse than training from scratch"
    return "the data cannot tell it from training from scratch"


def recommend(runs: pd.DataFrame) -> list[Recommendation]:
    """One recommendation per target size, smallest first."""
    summary = size_summary(runs)
    out = []
    for label in dict.fromkeys(summary["size_label"]):
        rows = summary.loc[summary["size_label"] == label]
        best = rows.loc[rows["mean"].idxmax()]
        at_size = runs.loc[runs["size_label"] == label]
        best_cells = _cells(at_size, best["role"], int(best["n"]))
        close = []
        for _, alt in rows.iterrows():
            if alt["role"] == best["role"] and alt["n"] == best["n"]:
                continue
            diff = _per_replicate((best_cells - _cells(at_size, alt["role"], int(alt["n"]))).dropna())
            _, lo, _, count = mean_ci(diff)
            if count < 2 or not (lo > 0):
                close.append(alt["candidate"])
        out.append(Recommendation(
            label, float(best["per_class"]), best["candidate"], float(best["mean"]), float(best["ci_low"]),
            float(best["ci_high"]), int(best["replicates"]), int(best["networks"]), float(best["vs_scratch"]),
            float(best["vs_low"]), float(best["vs_high"]), int(best["vs_replicates"]),
            _verdict(best["role"], float(best["vs_low"]), float(best["vs_high"]), int(best["vs_replicates"])),
            tuple(close)))
    return out
