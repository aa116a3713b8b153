"""Statistics for the report: one value per replicate, Student-t intervals over replicates.

**The replicate is the unit.** A replicate is one class split with its own seeds. Both transfer
directions of a replicate (AnB, whose target is B, and BnA, whose target is A) share that split and
the replicate's two base networks, so they are not independent observations: pooling them as if
they were makes intervals too narrow and overstates the evidence (six networks from three
replicates are three observations, not six). Every statistic here therefore

1. reduces the runs of a cell to **one value per replicate**: the mean of its directions where both
   ran (a paired difference is taken within a direction first, then averaged over directions);
2. builds a two-sided 95% **Student-t interval over those replicate values**, and a t-test p-value
   of "mean = 0" for differences;
3. **truncates** the interval to the range the quantity can take, [0, 1] for an accuracy and
   [-1, 1] for a difference of accuracies. The truth lies in that range, so truncating never
   loses coverage; tests/test_coverage.py measures the coverage by simulation.

Tables carry both counts: ``replicates`` (the n of the interval) and ``networks`` (the runs behind
it). With two replicates the t multiplier is 12.7 (one degree of freedom), so intervals are wide by
construction: :func:`width_note` says so in words.

Directions share a role (BnB and AnA are both "selffer", AnB and BnA are both "transfer",
...), labelled with the paper's names via :data:`ROLE_LABELS`. Only runs with
``status == "done"`` and a finite metric enter any statistic. Every function takes ``by``: extra
columns (for example a study name) whose groups are summarised separately in one call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from transferscope.errors import UserError
from transferscope.treatments import DECOMPOSITION as CONTRASTS
from transferscope.treatments import TREATMENTS

HEADLINE_METRIC = "test_top1"
CONFIDENCE = 0.95

#: the range of an accuracy and of a difference of two accuracies; intervals are truncated to it
ACCURACY_BOUNDS = (0.0, 1.0)
DIFFERENCE_BOUNDS = (-1.0, 1.0)

#: Role -> the paper's display label (transferscope.treatments.TREATMENTS). Its order is the order
#: of treatments in figures and tables.
ROLE_LABELS: dict[str, str] = {t.role: t.label for t in TREATMENTS}

#: Decomposition name -> (minuend role, subtrahend role); differences paired per replicate, target.
DECOMPOSITION: dict[str, tuple[str, str]] = {c.name: (c.minuend, c.subtrahend) for c in CONTRASTS}

#: what a difference is paired by: a run and its base share replicate and target task
PAIR: tuple[str, str] = ("replicate", "target")

REQUIRED_COLUMNS = ("key", "replicate", "role", "target", "n", "status")
#: the columns of an interval over replicates (:func:`over_replicates`)
INTERVAL_COLUMNS = ["mean", "ci_low", "ci_high", "replicates", "networks", "sd", "p"]
SUMMARY_COLUMNS = ["treatment", "role", "n", *INTERVAL_COLUMNS]
RELATIVE_COLUMNS = ["quantity", "n", *INTERVAL_COLUMNS]

INTERVAL_METHOD = (
    "95% CI: a Student-t interval over replicates (each replicate one value), truncated to [0, 1] for "
    "accuracies and [-1, 1] for differences"
)


def t_bounds(
    mean: np.ndarray, sd: np.ndarray, count: np.ndarray, confidence: float = CONFIDENCE,
    bounds: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised two-sided Student-t interval ``mean +- t * sd / sqrt(count)``, NaN where
    ``count < 2``, truncated to ``bounds`` when given."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    mean, sd = np.asarray(mean, dtype=float), np.asarray(sd, dtype=float)
    count = np.asarray(count, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        dof = np.where(count >= 2, count - 1, np.nan)
        half = sps.t.ppf((1.0 + confidence) / 2.0, dof) * sd / np.sqrt(count)
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = np.clip(lo, *bounds), np.clip(hi, *bounds)
    return lo, hi


def t_pvalue(mean: np.ndarray, sd: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Two-sided one-sample t-test p-value of "the mean is 0" (NaN with fewer than 2 values).

    It agrees with :func:`t_bounds`: p < 1 - confidence exactly when the interval excludes 0."""
    mean, sd = np.asarray(mean, dtype=float), np.asarray(sd, dtype=float)
    count = np.asarray(count, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.abs(mean) / (sd / np.sqrt(count))
        p = 2.0 * sps.t.sf(t, np.where(count >= 2, count - 1, np.nan))
    p = np.where((count >= 2) & (sd == 0), np.where(mean == 0, 1.0, 0.0), p)
    return np.where(count >= 2, p, np.nan)


def mean_ci(
    values: Iterable[float] | np.ndarray | pd.Series, confidence: float = CONFIDENCE,
    bounds: tuple[float, float] | None = None,
) -> tuple[float, float, float, int]:
    """Mean and two-sided Student-t confidence interval of the finite ``values``, which must be
    independent (one per replicate: see the module docstring).

    Returns ``(mean, lo, hi, count)``; non-finite values are ignored. With ``count == 0`` all three
    numbers are NaN; with ``count == 1`` the mean is the value and both bounds are NaN (no spread
    can be estimated from one value). ``bounds`` truncates the interval.
    """
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float).ravel()
    arr = arr[np.isfinite(arr)]
    count = int(arr.size)
    if count == 0:
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(arr.mean())
    sd = float(arr.std(ddof=1)) if count > 1 else float("nan")
    lo, hi = t_bounds(np.array(mean), np.array(sd), np.array(count), confidence, bounds)
    return mean, float(lo), float(hi), count


def per_replicate(runs: pd.DataFrame, value: str, by: Sequence[str]) -> pd.DataFrame:
    """One row per (``by``, replicate): ``value``, the mean of the replicate's finite values (its
    directions, and any repeated networks), and ``networks``, how many runs it averages."""
    finite = runs.loc[np.isfinite(runs[value].to_numpy(dtype=float)), [*by, "replicate", value]]
    grouped = finite.groupby([*by, "replicate"], sort=True)[value]
    return grouped.agg(value="mean", networks="size").reset_index()


def over_replicates(
    per_rep: pd.DataFrame, by: Sequence[str], bounds: tuple[float, float] | None,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Interval over replicates per group of ``by`` from :func:`per_replicate`'s table.

    Columns ``by`` + :data:`INTERVAL_COLUMNS`: the mean of the replicate values, its truncated
    Student-t interval, the number of replicates and of networks, the standard deviation between
    replicates and the two-sided p-value of "mean = 0"."""
    if per_rep.empty:
        return pd.DataFrame(columns=[*by, *INTERVAL_COLUMNS])
    agg = per_rep.groupby(list(by), sort=True).agg(
        mean=("value", "mean"), sd=("value", "std"), replicates=("value", "size"),
        networks=("networks", "sum")).reset_index()
    agg["ci_low"], agg["ci_high"] = t_bounds(agg["mean"], agg["sd"], agg["replicates"], confidence, bounds)
    agg["p"] = t_pvalue(agg["mean"], agg["sd"], agg["replicates"])
    return agg[[*by, *INTERVAL_COLUMNS]].astype({"replicates": int, "networks": int})


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
    df: pd.DataFrame, metric: str = HEADLINE_METRIC, cut_points: Sequence[int] = (),
    by: Sequence[str] = (),
) -> pd.DataFrame:
    """Mean of ``metric`` per (role, n) over replicates, with its interval and both counts.

    Non-base roles get a row at every n where they have a finished run. The base networks are the
    same at every n, so their row is repeated at each cut point (``cut_points`` joined with those
    observed); with no cut point at all it appears once at n=0.
    """
    by = list(by)
    done = done_runs(df, metric)
    per_rep = per_replicate(done, metric, [*by, "role", "n"])
    cells = over_replicates(per_rep, [*by, "role", "n"], ACCURACY_BOUNDS)
    base = cells.loc[cells["role"] == "base"].drop(columns="n")
    ns = observed_cut_points(done, cut_points) or (0,)
    base = base.merge(pd.DataFrame({"n": list(ns)}), how="cross")
    rows = pd.concat([base, cells.loc[cells["role"] != "base"]], ignore_index=True)
    rows["treatment"] = rows["role"].map(ROLE_LABELS)
    rows["_order"] = rows["role"].map({role: i for i, role in enumerate(ROLE_LABELS)})
    rows = rows.sort_values([*by, "_order", "n"], ignore_index=True)
    return rows[[*by, *SUMMARY_COLUMNS]].astype({"n": int})


def paired_to_base(df: pd.DataFrame, metric: str = HEADLINE_METRIC, by: Sequence[str] = ()) -> pd.DataFrame:
    """Each finished non-base run's ``metric`` minus its base (same replicate and target).

    Returns the non-base runs that have a base, with a column ``diff``. Several base networks for
    one (replicate, target) are averaged.
    """
    pair = [*by, *PAIR]
    done = done_runs(df, metric)
    base = done.loc[done["role"] == "base"].groupby(pair)[metric].mean().rename("_base")
    runs = done.loc[done["role"] != "base"].merge(base.reset_index(), on=pair, how="inner")
    runs["diff"] = runs[metric] - runs["_base"]
    return runs.drop(columns="_base")


def relative(df: pd.DataFrame, metric: str = HEADLINE_METRIC, by: Sequence[str] = ()) -> pd.DataFrame:
    """Paired differences to base per (treatment, n), then the decomposition per n.

    Rows with ``quantity`` a display label (e.g. "AnB") hold run minus the base of the same
    replicate and target, averaged over the directions of each replicate, then summarised over
    replicates. Rows named after :data:`DECOMPOSITION` hold, per n, the difference between two
    roles paired the same way, where both are available.
    """
    by = list(by)
    per_rep = paired_differences(df, metric, by)
    if per_rep.empty:
        return pd.DataFrame(columns=[*by, *RELATIVE_COLUMNS])
    rows = over_replicates(per_rep, [*by, "quantity", "n"], DIFFERENCE_BOUNDS)
    order = {q: i for i, q in enumerate([*ROLE_LABELS.values(), *DECOMPOSITION])}
    rows = rows.assign(_order=rows["quantity"].map(order)).sort_values([*by, "_order", "n"], ignore_index=True)
    return rows[[*by, *RELATIVE_COLUMNS]].astype({"n": int})


def paired_differences(df: pd.DataFrame, metric: str = HEADLINE_METRIC, by: Sequence[str] = ()) -> pd.DataFrame:
    """The per-replicate paired differences that :func:`relative` summarises: one row per
    (``by``, quantity, n, replicate) with ``value``, the difference averaged over the replicate's
    directions, and ``networks``, how many differences it averages.

    ``quantity`` is a display label (e.g. "AnB": the run minus the base of the same replicate and
    target) or a :data:`DECOMPOSITION` name (the difference of two roles paired the same way).
    """
    by = list(by)
    done = done_runs(df, metric)
    paired = paired_to_base(done, metric, by)
    paired["quantity"] = paired["role"].map(ROLE_LABELS)
    parts = [paired[[*by, *PAIR, "quantity", "n", "diff"]], _decomposition_diffs(done, metric, by)]
    parts = [part for part in parts if not part.empty]
    if not parts:
        return pd.DataFrame(columns=[*by, "quantity", "n", "replicate", "value", "networks"])
    per_rep = per_replicate(pd.concat(parts, ignore_index=True), "diff", [*by, "quantity", "n"])
    order = {q: i for i, q in enumerate([*ROLE_LABELS.values(), *DECOMPOSITION])}
    per_rep = per_rep.assign(_order=per_rep["quantity"].map(order))
    return per_rep.sort_values([*by, "_order", "n", "replicate"], ignore_index=True).drop(columns="_order")


def paired_table(df: pd.DataFrame, metric: str = HEADLINE_METRIC) -> pd.DataFrame:
    """:func:`paired_differences` for each target size, as a table to export: ``quantity``, ``n``,
    ``target_size`` (NaN: the full target data, the rows the report's "X - base" lines summarise),
    ``replicate``, ``diff`` and ``networks``. A run is paired with the base of its replicate, target
    and size."""
    full = -1.0  # a stand-in for NaN while grouping (groupby drops NaN keys)
    sizes = pd.to_numeric(df["target_size"], errors="coerce") if "target_size" in df else float("nan")
    table = paired_differences(df.assign(target_size=sizes).fillna({"target_size": full}), metric, ["target_size"])
    table["target_size"] = table["target_size"].astype(float).where(table["target_size"] != full)
    table = table.rename(columns={"value": "diff"})
    return table[["quantity", "n", "target_size", "replicate", "diff", "networks"]]


def _decomposition_diffs(done: pd.DataFrame, metric: str, by: list[str]) -> pd.DataFrame:
    """Per (replicate, target, n) and :data:`DECOMPOSITION` name: minuend minus subtrahend role."""
    pair = [*by, *PAIR]
    columns = [*pair, "quantity", "n", "diff"]
    non_base = done.loc[done["role"] != "base"]
    if non_base.empty:
        return pd.DataFrame(columns=columns)
    cells = non_base.groupby([*pair, "n", "role"])[metric].mean().unstack("role").reset_index()
    base = done.loc[done["role"] == "base"].groupby(pair)[metric].mean().rename("base")
    cells = cells.merge(base.reset_index(), on=pair, how="left")
    parts = [
        cells[[*pair, "n"]].assign(quantity=name, diff=cells[plus] - cells[minus])
        for name, (plus, minus) in DECOMPOSITION.items()
        if plus in cells.columns and minus in cells.columns
    ]
    if not parts:
        return pd.DataFrame(columns=columns)
    out = pd.concat(parts, ignore_index=True)
    return out.loc[np.isfinite(out["diff"].to_numpy(dtype=float)), columns]


def holm(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (familywise error control over the finite ``p``; NaN
    entries stay NaN and are not counted in the family)."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def t_multiplier(replicates: int, confidence: float = CONFIDENCE) -> float:
    """The Student-t multiplier of a ``confidence`` interval over ``replicates`` values."""
    return float(sps.t.ppf((1.0 + confidence) / 2.0, replicates - 1)) if replicates >= 2 else float("nan")


def replicates_needed(mean: float, sd: float, confidence: float = CONFIDENCE, limit: int = 1000) -> int | None:
    """The fewest replicates whose interval would exclude zero if the true difference were
    ``mean`` and replicates spread by ``sd`` as observed: ``t(R - 1) * sd / sqrt(R) < |mean|``.
    None when no finite number up to ``limit`` would (or ``mean`` is 0)."""
    if not (np.isfinite(mean) and np.isfinite(sd)) or mean == 0:
        return None
    if sd == 0:
        return 2
    r = np.arange(2, limit + 1)
    ok = sps.t.ppf((1.0 + confidence) / 2.0, r - 1) * sd / np.sqrt(r) < abs(mean)
    return int(r[ok][0]) if ok.any() else None


def width_note(replicates: Iterable[int]) -> str:
    """A plain sentence when the fewest replicates behind an interval make it wide, else ''."""
    counts = [int(r) for r in replicates if int(r) >= 1]
    if not counts:
        return ""
    fewest = min(counts)
    if fewest == 1:
        return ("Cells with one replicate have no interval: the spread between replicates cannot be estimated "
                "from one. Run more replicates (`treatments.replicates`).")
    if fewest <= 3:
        return (f"With {fewest} replicates a 95% interval spans +-{t_multiplier(fewest):.1f} standard errors "
                f"(Student-t, {fewest - 1} degree{'s' if fewest > 2 else ''} of freedom), so intervals are wide by "
                f"construction; 5 replicates give +-{t_multiplier(5):.1f}, 10 give +-{t_multiplier(10):.1f}.")
    return ""
