"""A reading of the results in words: each claim with its 95% CI, and none the intervals do not support.

Differences are paired by replicate and target task and summarised over replicates, the
independent unit (see :mod:`transferscope.stats`). A claim about one cell is *significant*
when its 95% interval excludes zero. A claim that scans the cut points ("significantly above zero
at n = 3, 4, 5", "first significant at n = 3") is Holm-corrected over the cut points of that
quantity, which keeps the chance of any false claim in it at most 5% where nothing differs; cells
whose own interval excludes zero without surviving the correction are named as such, so the
reading never contradicts the per-layer table. Where an interval includes zero the data cannot
tell, and the reading says so, with the number of replicates that would tell a difference of the
observed size at the observed spread. With one replicate no interval exists, and nothing is
claimed.

:func:`compare_studies` compares two study directories (e.g. a dissimilar split against a random
one): AnB - base per cut point in each, and the difference between the two studies with a Welch
interval over the replicates of each (the studies' networks are independent, so nothing is paired
across them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from transferscope.stats import (
    CONFIDENCE,
    DIFFERENCE_BOUNDS,
    HEADLINE_METRIC,
    done_runs,
    holm,
    mean_ci,
    paired_to_base,
    per_replicate,
    relative,
    replicates_needed,
    t_pvalue,
    width_note,
)
from transferscope.report.tables import format_cell, layer_table, row_label
from transferscope.report.text import MISSING, ci_text, markdown_table, number
from transferscope.store import Store

#: a claim is significant when its (Holm-adjusted, where it scans cut points) p-value is below this
ALPHA = 1.0 - CONFIDENCE


def signed(x: float) -> str:
    return number(x, sign=True)


def interval(mean: float, lo: float, hi: float, replicates: int) -> str:
    """``+0.012 [-0.003, +0.027] (3 replicates)``; without brackets when there is no interval."""
    return MISSING if replicates == 0 else ci_text(mean, lo, hi, _count(replicates), sign=True)


def _stats(row: pd.Series) -> str:
    return interval(row["mean"], row["ci_low"], row["ci_high"], int(row["replicates"]))


def _ns(ns: list[int]) -> str:
    return ", ".join(map(str, ns))


def scan(rows: pd.DataFrame) -> pd.DataFrame:
    """The cut points of one quantity (rows of :func:`~transferscope.stats.relative`), with
    ``p_holm`` (Holm-adjusted over these cut points), ``sign`` (+1 / -1 significantly above / below
    zero after the correction, 0 where the data cannot tell or there is no interval) and
    ``cell_sign`` (the same from the cell's own interval)."""
    out = rows.sort_values("n").copy()
    out["p_holm"] = holm(out["p"].to_numpy(dtype=float))
    direction = np.sign(out["mean"].to_numpy(dtype=float))
    out["sign"] = np.where(out["p_holm"].to_numpy() < ALPHA, direction, 0).astype(int)
    out["cell_sign"] = np.where(out["p"].to_numpy(dtype=float) < ALPHA, direction, 0).astype(int)
    return out


def _rows(rel: pd.DataFrame, quantity: str) -> pd.DataFrame:
    return scan(rel.loc[rel["quantity"] == quantity])


def _has_intervals(rows: pd.DataFrame) -> bool:
    return bool(np.isfinite(rows["ci_low"].to_numpy(dtype=float)).any())


def _family(rows: pd.DataFrame) -> str:
    k = int(np.isfinite(rows["p"].to_numpy(dtype=float)).sum())
    return {0: "no intervals", 1: "one cut point with an interval"}.get(k, f"Holm-corrected over {k} cut points")


def _uncorrected(rows: pd.DataFrame) -> str:
    """Cells whose own interval excludes zero but whose claim does not survive the correction."""
    only = rows.loc[(rows["cell_sign"] != 0) & (rows["sign"] == 0), "n"]
    if only.empty:
        return ""
    ns = [int(n) for n in only]
    verb = "excludes" if len(ns) == 1 else "exclude"
    return (f" (per cell, the interval{'s' if len(ns) > 1 else ''} at n = {_ns(ns)} {verb} zero: not significant "
            "after the correction for the cut points scanned)")


def cannot_tell(row: pd.Series) -> str:
    """Why an interval that includes zero says nothing either way, and, where the replicates have a
    spread, how many replicates would make a difference of the observed size exclude zero."""
    replicates = int(row["replicates"])
    if replicates < 2:
        return "one replicate gives no interval, so the data cannot tell; run at least 3 (`treatments.replicates`)"
    needed = replicates_needed(float(row["mean"]), float(row["sd"]))
    if needed is None:
        return "the data cannot tell it from zero"
    if needed <= replicates:  # significant per cell, but not after a correction
        return "the data cannot tell it from zero after the correction"
    return (f"the data cannot tell it from zero; at this spread between replicates, a difference of this size "
            f"would need about {needed} replicates for its interval to exclude zero")


def _specificity(rel: pd.DataFrame) -> str | None:
    rows = _rows(rel, "specificity")
    if rows.empty:
        return None
    if not _has_intervals(rows):
        return ("Specificity (BnB - AnB) cannot be assessed: one replicate per cut point gives no interval, so "
                "the data cannot tell.")
    sig = rows.loc[rows["sign"] > 0]
    negative = [int(n) for n in rows.loc[rows["sign"] < 0, "n"]]
    tail = f"; it is significantly below zero at n = {_ns(negative)}" if negative else ""
    if sig.empty:
        top = rows.loc[rows["mean"].idxmax()]
        return (f"**Specificity** (BnB - AnB, paired): no cut point shows it significantly above zero "
                f"({_family(rows)}){_uncorrected(rows)}{tail}. Its largest mean is at n = {int(top['n'])}: "
                f"{_stats(top)}; {cannot_tell(top)}.")
    first = sig.iloc[0]
    later = [int(n) for n in sig["n"].iloc[1:]]
    text = (f"**Specificity** (BnB - AnB, paired) is first significantly above zero at n = {int(first['n'])} "
            f"({_family(rows)}): {_stats(first)}")
    below = [int(n) for n in rows.loc[rows["n"] < first["n"], "n"]]
    if below:
        text += f"; below it (n = {_ns(below)}) the data cannot tell the layers from general"
    if later:
        text += f"; it is also significant at n = {_ns(later)}"
    return text + _uncorrected(rows) + tail + "."


def _coadaptation(rel: pd.DataFrame) -> str | None:
    rows = _rows(rel, "co-adaptation")
    if rows.empty:
        return None
    top = rows.loc[rows["mean"].idxmax()]
    n, stats = int(top["n"]), _stats(top)
    if not _has_intervals(rows):
        return f"**Co-adaptation** (base - BnB): its largest mean is at n = {n}: {stats}; {cannot_tell(top)}."
    sign = int(top["sign"])
    if top["mean"] <= 0:
        verdict = "significantly below zero, so BnB beats its base there" if sign < 0 else cannot_tell(top)
        return (f"**Co-adaptation** (base - BnB; {_family(rows)}): no cut point has a positive mean; the largest "
                f"is at n = {n}: {stats}; {verdict}.")
    verdict = "significant" if sign > 0 else cannot_tell(top)
    return f"**Co-adaptation** (base - BnB; {_family(rows)}) costs most at n = {n}: {stats}; {verdict}."


def _by_sign(rows: pd.DataFrame) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {1: [], 0: [], -1: []}
    for n, sign in zip(rows["n"], rows["sign"]):
        out[int(sign)].append(int(n))
    return out


def _finetune(df: pd.DataFrame, rel: pd.DataFrame) -> str | None:
    rows = _rows(rel, "AnB+")
    if rows.empty:
        return None
    groups = _by_sign(rows)
    parts = []
    if groups[1]:
        parts.append(f"beats training from scratch significantly at n = {_ns(groups[1])}")
    if groups[-1]:
        parts.append(f"is significantly worse than training from scratch at n = {_ns(groups[-1])}")
    if groups[0]:
        parts.append(f"the data cannot tell it from training from scratch at n = {_ns(groups[0])}")
    paired = paired_to_base(df)
    values = per_replicate(paired.loc[paired["role"] == "transfer+"], "diff", [])["value"].to_numpy()
    avg = mean_ci(values, bounds=DIFFERENCE_BOUNDS)
    p = float(t_pvalue(avg[0], values.std(ddof=1) if len(values) > 1 else math.nan, len(values)))
    verdict = (", significantly above zero." if p < ALPHA and avg[0] > 0
               else ", significantly below zero." if p < ALPHA else ", the data cannot tell it from zero.")
    return (f"**Transfer plus fine-tuning** (AnB+ - base, paired; {_family(rows)}): " + "; ".join(parts)
            + _uncorrected(rows) + f". Averaged over the cut points (one value per replicate): "
            f"{interval(*avg[:3], avg[3])}" + verdict)


def _frozen(rel: pd.DataFrame, label: str, name: str) -> str | None:
    rows = _rows(rel, label)
    if rows.empty or not _has_intervals(rows):
        return None
    groups = _by_sign(rows)
    parts = []
    if groups[0]:
        parts.append(f"the data cannot tell it from base at n = {_ns(groups[0])}")
    if groups[-1]:
        worst = rows.loc[rows["mean"].idxmin()]
        parts.append(f"significantly worse at n = {_ns(groups[-1])} (most at n = {int(worst['n'])}: "
                     f"{_stats(worst)})")
    if groups[1]:
        parts.append(f"significantly better at n = {_ns(groups[1])}")
    return f"**{name}** ({label} - base, paired; {_family(rows)}): " + "; ".join(parts) + _uncorrected(rows) + "."


def head_start(rel: pd.DataFrame) -> str | None:
    """BnB - base at the lowest cut point (one cell, no correction): significantly above zero is
    the head-start symptom."""
    rows = _rows(rel, "BnB")
    if rows.empty:
        return None
    low = rows.iloc[0]
    n, stats = int(low["n"]), _stats(low)
    if low["cell_sign"] > 0:
        return (f"**Head start?** The frozen selffer beats its own base network at n = {n} "
                f"(BnB - base {stats}): the symptom of base networks trained too briefly, where copied layers act as "
                "a head start rather than as features (see *Was the study trained long enough?*).")
    if low["cell_sign"] < 0:
        return (f"**Head start?** None: the frozen selffer is significantly below its base at n = {n} "
                f"(BnB - base {stats}).")
    if not math.isfinite(low["ci_high"]):
        return (f"**Head start?** With one replicate the data cannot tell whether the frozen selffer beats its base "
                f"at n = {n} (BnB - base {stats}); run at least 3 replicates (`treatments.replicates`).")
    return (f"**Head start?** The data cannot tell whether the frozen selffer beats its base at n = {n} "
            f"(BnB - base {stats}): no head start is detected, but one of up to {signed(low['ci_high'])} is within "
            f"the interval" + ("" if low["mean"] <= 0 else f"; {cannot_tell(low)}") + ".")


def reading(df: pd.DataFrame, convergence=None, comparison: Comparison | None = None) -> list[str]:
    """The reading as a list of Markdown paragraphs (one claim each)."""
    done = done_runs(df)
    if done.loc[done["role"] != "base"].empty:
        return ["Only base networks finished: there is no transfer curve to read yet."]
    rel = relative(done)
    out = [s for s in (_specificity(rel), _coadaptation(rel), _finetune(done, rel),
                       _frozen(rel, "AnB", "Frozen transferred features"),
                       _frozen(rel, "PnT", "Frozen pretrained features"),
                       _frozen(rel, "PnT+", "Pretrained, fine-tuned"),
                       _frozen(rel, "probe", "A linear probe on the pretrained features"),
                       _frozen(rel, "random", "Frozen random features"), head_start(rel)) if s]
    if convergence is not None and convergence.assessable:
        full = convergence.networks.loc[convergence.networks["target_size"].isna()]
        flagged = int(full["still_improving"].sum())
        if flagged:
            verb = "was" if flagged == 1 else "were"
            noise = ("beyond noise" if full.loc[full["still_improving"], "noise"].notna().all()
                     else "not checked against noise: the validation set sizes are not known here")
            short = int(full["cut_short"].sum()) if "cut_short" in full else 0
            how = (f"validation slope > {convergence.threshold} per epoch over the last epochs"
                   + (f", or, for {short} of them, while the learning rate was still at least half "
                      "its peak: cut short by the schedule" if short else "") + f", {noise}")
            out.append(f"**Training budget.** {flagged} of {len(full)} base networks {verb} still improving when "
                       f"training stopped ({how}): "
                       "the claims above about BnB, AnB and AnB+ against base may reflect a head start, not feature "
                       "generality; "
                       f"suggested: {convergence.advice}.")
        else:
            which = "The one base network was not" if len(full) == 1 else f"None of the {len(full)} base networks was"
            out.append(f"**Training budget.** {which} still improving when training stopped "
                       "(see *Was the study trained long enough?* for the criterion).")
    if comparison is not None:
        out.append(comparison.sentence())
    if not _has_intervals(rel):
        out.append(no_intervals(done, rel))
    elif note := width_note(rel["replicates"]):
        out.append(f"**Few replicates.** {note}")
    return out


def no_intervals(done: pd.DataFrame, rel: pd.DataFrame) -> str:
    """Why no cell has a confidence interval, in the study's own counts: replicates with finished
    runs, and replicates and networks per cell (an interval needs two replicates; the networks of
    one replicate, its two directions, share its split and base networks and count once)."""
    replicates = sorted({int(r) for r in done.loc[done["role"] != "base", "replicate"]})
    networks = int(rel["networks"].max()) if len(rel) else 0
    shared = (f" (up to {networks} networks per cell: the directions of a replicate share its split and base "
              f"networks, so they give one value, not {networks})" if networks > 1 else "")
    if len(replicates) <= 1:
        which = f" (replicate {replicates[0]})" if replicates else ""
        lead = f"Transfer runs have finished in one replicate only{which}, so each cell has one replicate{shared}"
    else:
        lead = (f"Transfer runs have finished in {len(replicates)} replicates, but each cell has values from only one "
                f"of them{shared}")
    return (f"**No confidence intervals.** {lead}; an interval needs at least 2 replicates, so the data cannot tell "
            "any of these differences from zero. Run more replicates (`treatments.replicates`, 5 or more) before "
            "drawing conclusions.")


# ------------------------------------------------------------------------------- two studies


def welch_ci(a: np.ndarray, b: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """Mean of ``b`` minus mean of ``a`` with a Welch (unequal variances) t interval truncated to
    [-2, 2] (the range of a difference of two accuracy differences) and its two-sided p-value.
    Each array holds one value per replicate of its study."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        return (float("nan"),) * 4
    diff = float(b.mean() - a.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, float("nan"), float("nan"), float("nan")
    if a.var() == 0 and b.var() == 0:
        return diff, diff, diff, 1.0 if diff == 0 else 0.0
    test = sps.ttest_ind(b, a, equal_var=False)
    ci = test.confidence_interval(confidence)
    return diff, max(float(ci.low), -2.0), min(float(ci.high), 2.0), float(test.pvalue)


@dataclass
class Comparison:
    """AnB - base per n in two studies (over each study's replicates), and study b minus study a
    (Welch 95% CI; claims across cut points Holm-corrected)."""

    label_a: str
    label_b: str
    table: pd.DataFrame  # n, a_mean, a_low, a_high, a_count, b_mean, ..., diff, diff_low, diff_high, p
    #: each study's runs on all of their data (the per-layer table and Fig. 3 show both), and its short
    #: name (a directory's name)
    runs_a: pd.DataFrame | None = None
    runs_b: pd.DataFrame | None = None
    name_a: str = "study a"
    name_b: str = "study b"

    def sentence(self) -> str:
        t = self.table.dropna(subset=["diff"])
        if t.empty:
            return f"**Two studies.** {self.label_a} and {self.label_b} share no cut point with AnB runs."
        t = t.assign(p_holm=holm(t["p"].to_numpy(dtype=float)))
        groups: dict[int, list[int]] = {1: [], 0: [], -1: []}
        for _, row in t.iterrows():
            sign = int(np.sign(row["diff"])) if row["p_holm"] < ALPHA else 0
            groups[sign].append(int(row["n"]))
        parts = []
        if groups[-1]:
            parts.append(f"falls significantly further below base in {self.label_b} at n = {_ns(groups[-1])}")
        if groups[1]:
            parts.append(f"stays significantly closer to base in {self.label_b} at n = {_ns(groups[1])}")
        if groups[0]:
            parts.append(f"the data cannot tell the two apart at n = {_ns(groups[0])}")
        k = int(np.isfinite(t["p"].to_numpy(dtype=float)).sum())
        last = t.iloc[-1]
        return (f"**{self.label_b} against {self.label_a}.** Frozen transfer (AnB - base"
                + (f"; Holm-corrected over {k} cut points" if k > 1 else "") + ") " + "; ".join(parts)
                + f". At n = {int(last['n'])}: {signed(last['a_mean'])} in {self.label_a} ({_count(last['a_count'])}),"
                f" {signed(last['b_mean'])} in {self.label_b} ({_count(last['b_count'])}), difference "
                f"{_diff_cell(last)} (Welch 95% CI over replicates).")

    def markdown(self) -> str:
        rows = [[str(int(r["n"])), interval(r["a_mean"], r["a_low"], r["a_high"], int(r["a_count"])),
                 interval(r["b_mean"], r["b_low"], r["b_high"], int(r["b_count"])), _diff_cell(r)]
                for _, r in self.table.iterrows()]
        return markdown_table(["n", f"AnB - base, {self.label_a}", f"AnB - base, {self.label_b}",
                               "difference (b - a), Welch 95% CI"], rows, first="--:")

    def per_layer(self) -> str:
        """Both studies' per-layer tables side by side: a row per quantity and cut point with each
        study's cell (as in its own per-layer table), under a sentence naming the columns; empty
        without the runs."""
        if self.runs_a is None or self.runs_b is None:
            return ""
        tables = [layer_table(done_runs(runs, HEADLINE_METRIC)).set_index(["section", "quantity", "n"])
                  for runs in (self.runs_a, self.runs_b)]
        keys = list(dict.fromkeys([*tables[0].index, *tables[1].index]))
        order = {(s, q): i for i, (s, q, _) in enumerate(keys)}  # sections and quantities in their first order
        rows = [[row_label(s, q), str(n), *(_layer_cell(t, (s, q, n)) for t in tables)]
                for s, q, n in sorted(keys, key=lambda k: (order[k[:2]], k[2]))]
        return (f"The per-layer table of both studies, side by side (cells as in the per-layer table): study a = {self.name_a}, "
                f"study b = {self.name_b} (this one).\n\n"
                + markdown_table(["quantity", "n", f"a: {self.name_a}", f"b: {self.name_b}"], rows))


def _count(replicates: float) -> str:
    return f"{int(replicates)} replicate" + ("" if int(replicates) == 1 else "s")


def _layer_cell(table: pd.DataFrame, key: tuple) -> str:
    if key not in table.index:
        return MISSING
    r = table.loc[key]
    return format_cell(r["mean"], r["ci_low"], r["ci_high"], int(r["replicates"]), int(r["networks"]))


def _diff_cell(r: pd.Series) -> str:
    return ci_text(r["diff"], r["diff_low"], r["diff_high"], sign=True)


def compare_frames(frame_a: pd.DataFrame, frame_b: pd.DataFrame, label_a: str = "study a",
                   label_b: str = "study b", name_a: str | None = None, name_b: str | None = None) -> Comparison:
    """AnB - base (paired within each study, one value per replicate) per n in two run tables, and
    b - a per n. ``name_a``, ``name_b``: short names (default: the labels)."""

    def full(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.loc[frame["target_size"].isna()] if "target_size" in frame else frame

    def per_n(frame: pd.DataFrame) -> dict[int, np.ndarray]:
        paired = paired_to_base(full(frame))
        per_rep = per_replicate(paired.loc[paired["role"] == "transfer"], "diff", ["n"])
        return {int(n): g["value"].to_numpy(dtype=float) for n, g in per_rep.groupby("n")}

    a, b = per_n(frame_a), per_n(frame_b)
    rows = []
    for n in sorted(set(a) | set(b)):
        sa = mean_ci(a.get(n, np.array([])), bounds=DIFFERENCE_BOUNDS)
        sb = mean_ci(b.get(n, np.array([])), bounds=DIFFERENCE_BOUNDS)
        diff = welch_ci(a[n], b[n]) if n in a and n in b else (float("nan"),) * 4
        rows.append((n, *sa, *sb, *diff))
    cols = ["n", "a_mean", "a_low", "a_high", "a_count", "b_mean", "b_low", "b_high", "b_count", "diff", "diff_low",
            "diff_high", "p"]
    return Comparison(label_a, label_b, pd.DataFrame(rows, columns=cols), full(frame_a), full(frame_b),
                      name_a or label_a, name_b or label_b)


def study_label(directory: Path) -> str:
    """``<dir name> (<split description>)`` from a study directory."""

    store = Store(directory)
    splits = store.load_splits()
    desc = splits[min(splits)]["description"] if splits else store.load_config().split.kind
    return f"{Path(directory).name} ({desc})"


def compare_studies(dir_a: str | Path, dir_b: str | Path) -> Comparison:
    """Compare frozen transfer (AnB - base, per n) between two study directories, e.g. a random
    split (``dir_a``) and a dissimilar one (``dir_b``).

    >>> comparison = compare_studies("results/random", "results/natural-vs-manmade")  # doctest: +SKIP
    >>> print(comparison.sentence()); print(comparison.markdown())                     # doctest: +SKIP
    """

    frames = []
    for d in (dir_a, dir_b):
        store = Store(d)
        store.load_config()  # a clear error when this is not a study directory
        frames.append(store.frame())
    label_a, label_b = study_label(Path(dir_a)), study_label(Path(dir_b))
    name_a, name_b = Path(dir_a).resolve().name, Path(dir_b).resolve().name
    if label_a == label_b:
        label_a, label_b = f"{label_a} [a]", f"{label_b} [b]"
    if name_a == name_b:
        name_a, name_b = f"{name_a} [a]", f"{name_b} [b]"
    return compare_frames(frames[0], frames[1], label_a, label_b, name_a, name_b)
