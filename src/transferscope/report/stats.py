"""Statistics for the report: Student-t intervals, per-treatment summaries, paired differences.

Both transfer directions are pooled by role (BnB and AnA are both "selffer", AnB and BnA are both
"transfer", ...) and labelled with the paper's names via :data:`ROLE_LABELS`. Only runs with
``status == "done"`` and a finite metric enter any statistic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from transferscope.errors import UserError

HEADLINE_METRIC = "test_top1"

#: Role -> the paper's display label. Its order is the order of treatments in figures and tables.
ROLE_LABELS: dict[str, str] = {
    "base": "base",
    "selffer": "BnB",
    "selffer+": "BnB+",
    "transfer": "AnB",
    "transfer+": "AnB+",
    "random": "random",
}

#: Decomposition name -> (minuend role, subtrahend role); differences paired per replicate, target.
DECOMPOSITION: dict[str, tuple[str, str]] = {
    "co-adaptation": ("base", "selffer"),
    "specificity": ("selffer", "transfer"),
    "fine-tuning gain": ("transfer+", "base"),
}

REQUIRED_COLUMNS = ("key", "replicate", "role", "target", "n", "status")
SUMMARY_COLUMNS = ["treatment", "role", "n", "mean", "ci_low", "ci_high", "count"]
RELATIVE_COLUMNS = ["quantity", "n", "mean", "ci_low", "ci_high", "count"]

_PAIR = ["replicate", "target"]


def mean_ci(
    values: Iterable[float] | np.ndarray | pd.Series, confidence: float = 0.95
) -> tuple[float, float, float, int]:
    """Mean and two-sided Student-t confidence interval of the finite ``values``.

    Returns ``(mean, lo, hi, count)``; non-finite values are ignored. With ``count == 0`` all three
    numbers are NaN; with ``count == 1`` the mean is the value and both bounds are NaN (no spread
    can be estimated from one network).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    arr = arr.ravel()
    arr = arr[np.isfinite(arr)]
    count = int(arr.size)
    if count == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(arr.mean())
    if count == 1:
        return mean, float("nan"), float("nan"), 1
    sem = float(arr.std(ddof=1)) / np.sqrt(count)
    half = float(sps.t.ppf((1.0 + confidence) / 2.0, count - 1)) * sem
    return mean, mean - half, mean + half, count


def done_runs(df: pd.DataFrame, metric: str = HEADLINE_METRIC) -> pd.DataFrame:
    """Check the run table's columns and roles; return finished runs with a finite ``metric``."""
    missing = [c for c in (*REQUIRED_COLUMNS, metric) if c not in df.columns]
    if missing:
        raise UserError(
            f"run table lacks column(s) {', '.join(missing)}; "
            f"required: {', '.join((*REQUIRED_COLUMNS, metric))}"
        )
    unknown = sorted(set(df["role"].dropna().astype(str)) - set(ROLE_LABELS))
    if unknown:
        raise UserError(
            f"run table has unknown role(s) {', '.join(unknown)}; allowed: {', '.join(ROLE_LABELS)}"
        )
    done = df.loc[df["status"] == "done"].copy()
    done[metric] = pd.to_numeric(done[metric], errors="coerce").astype(float)
    done = done.loc[np.isfinite(done[metric].to_numpy())]
    done["n"] = done["n"].astype(int)
    return done


def observed_cut_points(df: pd.DataFrame, extra: Sequence[int] = ()) -> tuple[int, ...]:
    """Sorted union of ``extra`` and the cut points of the non-base runs in ``df``."""
    non_base = df.loc[df["role"] != "base", "n"]
    return tuple(sorted({int(n) for n in extra} | {int(n) for n in non_base}))


def summarize(
    df: pd.DataFrame, metric: str = HEADLINE_METRIC, cut_points: Sequence[int] = ()
) -> pd.DataFrame:
    """Mean, 95% CI and count of ``metric`` per (role, n), directions pooled.

    Non-base roles get a row at every n where they have a finished run. The base networks are the
    same at every n, so their row is repeated at each cut point (``cut_points`` joined with those
    observed); with no cut point at all it appears once at n=0.
    """
    done = done_runs(df, metric)
    rows: list[tuple[object, ...]] = []
    base = done.loc[done["role"] == "base", metric]
    if not base.empty:
        stats = mean_ci(base)
        for n in observed_cut_points(done, cut_points) or (0,):
            rows.append(("base", "base", n, *stats))
    for role, label in ROLE_LABELS.items():
        if role == "base":
            continue
        runs = done.loc[done["role"] == role]
        for n, group in runs.groupby("n", sort=True):
            rows.append((label, role, int(n), *mean_ci(group[metric])))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS).astype({"n": int, "count": int})


def paired_to_base(df: pd.DataFrame, metric: str = HEADLINE_METRIC) -> pd.DataFrame:
    """Each finished non-base run's ``metric`` minus its base (same replicate and target).

    Returns the non-base runs that have a base, with a column ``diff``. Several base networks for
    one (replicate, target) are averaged.
    """
    done = done_runs(df, metric)
    base = done.loc[done["role"] == "base"].groupby(_PAIR)[metric].mean().rename("_base")
    runs = done.loc[done["role"] != "base"].merge(base.reset_index(), on=_PAIR, how="inner")
    runs["diff"] = runs[metric] - runs["_base"]
    return runs.drop(columns="_base")


def relative(df: pd.DataFrame, metric: str = HEADLINE_METRIC) -> pd.DataFrame:
    """Paired differences to base per (treatment, n), then the decomposition per n.

    Rows with ``quantity`` a display label (e.g. "AnB") hold the mean/CI of run minus the base of
    the same replicate and target. Rows named after :data:`DECOMPOSITION` hold, per n, the
    mean/CI of per-(replicate, target) differences between two roles, where both are available.
    """
    done = done_runs(df, metric)
    rows: list[tuple[object, ...]] = []
    paired = paired_to_base(done, metric)
    for role, label in ROLE_LABELS.items():
        runs = paired.loc[paired["role"] == role]
        for n, group in runs.groupby("n", sort=True):
            rows.append((label, int(n), *mean_ci(group["diff"])))
    rows.extend(_decomposition_rows(done, metric))
    return pd.DataFrame(rows, columns=RELATIVE_COLUMNS).astype({"n": int, "count": int})


def _decomposition_rows(done: pd.DataFrame, metric: str) -> list[tuple[object, ...]]:
    """Rows (name, n, mean, lo, hi, count) of :data:`DECOMPOSITION` from finished runs."""
    non_base = done.loc[done["role"] != "base"]
    if non_base.empty:
        return []
    cells = non_base.groupby([*_PAIR, "n", "role"])[metric].mean().unstack("role").reset_index()
    base = done.loc[done["role"] == "base"].groupby(_PAIR)[metric].mean().rename("base")
    cells = cells.merge(base.reset_index(), on=_PAIR, how="left")
    rows: list[tuple[object, ...]] = []
    for name, (plus, minus) in DECOMPOSITION.items():
        if plus not in cells.columns or minus not in cells.columns:
            continue
        diffs = pd.DataFrame({"n": cells["n"], "diff": cells[plus] - cells[minus]})
        for n, group in diffs.groupby("n", sort=True):
            stats = mean_ci(group["diff"])
            if stats[3] > 0:
                rows.append((name, int(n), *stats))
    return rows
