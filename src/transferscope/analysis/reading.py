"""A reading of the results in words: each claim with its 95% CI, and none the intervals do not support.

Differences are paired by replicate and target task (as in the per-layer table). A difference is
called *significant* when its 95% Student-t interval excludes zero; otherwise it is *not
distinguishable from zero*. With one pair no interval exists, and nothing is claimed.

:func:`compare_studies` compares two study directories (e.g. a dissimilar split against a random
one): AnB - base per cut point in each, and the difference between the two studies with a Welch
interval (the studies' networks are independent, so nothing is paired across them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from transferscope.report.stats import done_runs, mean_ci, paired_to_base, relative

_PAIR = ["replicate", "target"]


def signed(x: float) -> str:
    text = f"{x:+.3f}"
    return "0.000" if text in ("-0.000", "+0.000") else text


def interval(mean: float, lo: float, hi: float, count: int) -> str:
    """``+0.012 [-0.003, +0.027] (6 pairs)``; without brackets when there is no interval."""
    noun = "pair" if count == 1 else "pairs"
    if count == 0 or not math.isfinite(mean):
        return "\u2014"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{signed(mean)} ({count} {noun}, no interval)"
    return f"{signed(mean)} [{signed(lo)}, {signed(hi)}] ({count} {noun})"


def _sign(lo: float, hi: float) -> int:
    """+1 significantly above zero, -1 below, 0 not distinguishable (or no interval)."""
    if math.isfinite(lo) and lo > 0:
        return 1
    if math.isfinite(hi) and hi < 0:
        return -1
    return 0


def _ns(ns: list[int]) -> str:
    return ", ".join(map(str, ns))


def _rows(rel: pd.DataFrame, quantity: str) -> pd.DataFrame:
    return rel.loc[rel["quantity"] == quantity].sort_values("n")


def _has_intervals(rows: pd.DataFrame) -> bool:
    return bool(np.isfinite(rows["ci_low"].to_numpy(dtype=float)).any())


def _specificity(rel: pd.DataFrame) -> str | None:
    rows = _rows(rel, "specificity")
    if rows.empty:
        return None
    if not _has_intervals(rows):
        return "Specificity (BnB - AnB) cannot be assessed: one pair per cut point gives no interval."
    sig = rows.loc[rows["ci_low"] > 0]
    if sig.empty:
        top = rows.loc[rows["mean"].idxmax()]
        return ("**Specificity** (BnB - AnB, paired) is not significantly above zero at any cut point; its largest "
                f"mean is at n = {int(top['n'])}: {interval(*top[['mean', 'ci_low', 'ci_high']], int(top['count']))}.")
    first = sig.iloc[0]
    later = [int(n) for n in sig["n"].iloc[1:]]
    text = (f"**Specificity** (BnB - AnB, paired) is first significantly above zero at n = {int(first['n'])}: "
            f"{interval(*first[['mean', 'ci_low', 'ci_high']], int(first['count']))}")
    below = [int(n) for n in rows.loc[rows["n"] < first["n"], "n"]]
    if below:
        text += f"; below it (n = {_ns(below)}) the layers are not distinguishable from general"
    if later:
        text += f"; it is also significant at n = {_ns(later)}"
    return text + "."


def _coadaptation(rel: pd.DataFrame) -> str | None:
    rows = _rows(rel, "co-adaptation")
    if rows.empty:
        return None
    top = rows.loc[rows["mean"].idxmax()]
    stats = interval(*top[["mean", "ci_low", "ci_high"]], int(top["count"]))
    sign = _sign(top["ci_low"], top["ci_high"])
    if top["mean"] <= 0:
        return (f"**Co-adaptation** (base - BnB) costs nothing measurable: its mean is at most {stats} "
                f"(n = {int(top['n'])}).")
    verdict = {1: "significant", 0: "not distinguishable from zero", -1: "significantly negative"}[sign]
    return f"**Co-adaptation** (base - BnB) costs most at n = {int(top['n'])}: {stats}, {verdict}."


def _by_sign(rows: pd.DataFrame) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {1: [], 0: [], -1: []}
    for _, row in rows.iterrows():
        out[_sign(row["ci_low"], row["ci_high"])].append(int(row["n"]))
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
        parts.append(f"is not distinguishable from training from scratch at n = {_ns(groups[0])}")
    paired = paired_to_base(df)
    per_pair = paired.loc[paired["role"] == "transfer+"].groupby(_PAIR)["diff"].mean()
    avg = mean_ci(per_pair)
    return ("**Transfer plus fine-tuning** (AnB+ - base, paired) " + "; ".join(parts)
            + f". Averaged over the cut points: {interval(*avg[:3], avg[3])}"
            + {1: ", significantly above zero.", -1: ", significantly below zero.",
               0: ", not distinguishable from zero."}[_sign(avg[1], avg[2])])


def _frozen(rel: pd.DataFrame, label: str, name: str) -> str | None:
    rows = _rows(rel, label)
    if rows.empty or not _has_intervals(rows):
        return None
    groups = _by_sign(rows)
    parts = []
    if groups[0]:
        parts.append(f"not distinguishable from base at n = {_ns(groups[0])}")
    if groups[-1]:
        worst = rows.loc[rows["mean"].idxmin()]
        parts.append(f"significantly worse at n = {_ns(groups[-1])} (most at n = {int(worst['n'])}: "
                     f"{interval(*worst[['mean', 'ci_low', 'ci_high']], int(worst['count']))})")
    if groups[1]:
        parts.append(f"significantly better at n = {_ns(groups[1])}")
    return f"**{name}** ({label} - base, paired): " + "; ".join(parts) + "."


def head_start(rel: pd.DataFrame) -> str | None:
    """BnB - base at the lowest cut point: significantly above zero is the head-start symptom."""
    rows = _rows(rel, "BnB")
    if rows.empty:
        return None
    low = rows.iloc[0]
    stats = interval(*low[["mean", "ci_low", "ci_high"]], int(low["count"]))
    if _sign(low["ci_low"], low["ci_high"]) > 0:
        return (f"**Head start?** The frozen selffer beats its own base network at n = {int(low['n'])} "
                f"(BnB - base {stats}): the symptom of base networks trained too briefly, where copied layers act as "
                "a head start rather than as features (see *Was the study trained long enough?*).")
    return (f"**Head start?** The frozen selffer does not beat its base at n = {int(low['n'])} "
            f"(BnB - base {stats}), as in the paper.")


def reading(df: pd.DataFrame, convergence=None, comparison: Comparison | None = None) -> list[str]:
    """The reading as a list of Markdown paragraphs (one claim each)."""
    done = done_runs(df)
    if done.loc[done["role"] != "base"].empty:
        return ["Only base networks finished: there is no transfer curve to read yet."]
    rel = relative(done)
    out = [s for s in (_specificity(rel), _coadaptation(rel), _finetune(done, rel),
                       _frozen(rel, "AnB", "Frozen transferred features"),
                       _frozen(rel, "random", "Frozen random features"), head_start(rel)) if s]
    if convergence is not None and convergence.assessable:
        full = convergence.networks.loc[convergence.networks["target_size"].isna()]
        flagged = int(full["still_improving"].sum())
        if flagged:
            verb = "was" if flagged == 1 else "were"
            out.append(f"**Training budget.** {flagged} of {len(full)} base networks {verb} still improving at the end "
                       f"(validation slope > {convergence.threshold} per epoch over the last epochs, beyond noise): "
                       "the claims above about BnB, AnB and AnB+ against base may reflect a head start, not feature "
                       "generality; "
                       f"a budget of about {convergence.suggested_epochs} epochs is suggested.")
        else:
            out.append(f"**Training budget.** None of the {len(full)} base networks was still improving at the end "
                       "(see *Was the study trained long enough?* for the criterion).")
    if comparison is not None:
        out.append(comparison.sentence())
    if not any(_has_intervals(_rows(rel, q)) for q in set(rel["quantity"])):
        out.append("With one network per cell there are no confidence intervals; run more replicates "
                   "(treatments.replicates) before drawing conclusions.")
    return out


# ------------------------------------------------------------------------------- two studies


def welch_ci(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``b`` minus mean of ``a`` with a Welch (unequal variances) t interval."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan"), float("nan")
    diff = float(b.mean() - a.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, float("nan"), float("nan")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(sps.t.ppf((1 + confidence) / 2, dof)) * se
    return diff, diff - half, diff + half


@dataclass
class Comparison:
    """AnB - base per n in two studies, and study b minus study a (Welch 95% CI)."""

    label_a: str
    label_b: str
    table: pd.DataFrame  # n, a_mean, a_low, a_high, a_count, b_mean, ..., diff, diff_low, diff_high

    def sentence(self) -> str:
        t = self.table.dropna(subset=["diff"])
        if t.empty:
            return f"**Two studies.** {self.label_a} and {self.label_b} share no cut point with AnB runs."
        groups = {1: [], 0: [], -1: []}
        for _, row in t.iterrows():
            groups[_sign(row["diff_low"], row["diff_high"])].append(int(row["n"]))
        parts = []
        if groups[-1]:
            parts.append(f"falls significantly further below base in {self.label_b} at n = {_ns(groups[-1])}")
        if groups[1]:
            parts.append(f"stays significantly closer to base in {self.label_b} at n = {_ns(groups[1])}")
        if groups[0]:
            parts.append(f"is not distinguishable between the two at n = {_ns(groups[0])}")
        last = t.iloc[-1]
        return (f"**{self.label_b} against {self.label_a}.** Frozen transfer (AnB - base) " + "; ".join(parts)
                + f". At n = {int(last['n'])}: {signed(last['a_mean'])} in {self.label_a} ({int(last['a_count'])} "
                f"networks), {signed(last['b_mean'])} in {self.label_b} ({int(last['b_count'])}), difference "
                f"{_diff_cell(last)} (Welch 95% CI).")

    def markdown(self) -> str:
        lines = [f"| n | AnB - base, {self.label_a} | AnB - base, {self.label_b} | difference (b - a), Welch 95% CI |",
                 "|--:|--:|--:|--:|"]
        for _, r in self.table.iterrows():
            lines.append(f"| {int(r['n'])} | {interval(r['a_mean'], r['a_low'], r['a_high'], int(r['a_count']))} | "
                         f"{interval(r['b_mean'], r['b_low'], r['b_high'], int(r['b_count']))} | "
                         f"{_diff_cell(r)} |")
        return "\n".join(lines) + "\n"


def _diff_cell(r: pd.Series) -> str:
    if not math.isfinite(r["diff"]):
        return "\u2014"
    if not (math.isfinite(r["diff_low"]) and math.isfinite(r["diff_high"])):
        return f"{signed(r['diff'])} (no interval)"
    return f"{signed(r['diff'])} [{signed(r['diff_low'])}, {signed(r['diff_high'])}]"


def compare_frames(frame_a: pd.DataFrame, frame_b: pd.DataFrame, label_a: str = "study a",
                   label_b: str = "study b") -> Comparison:
    """AnB - base (paired within each study) per n in two run tables, and b - a per n."""

    def per_n(frame: pd.DataFrame) -> dict[int, np.ndarray]:
        if "target_size" in frame:
            frame = frame.loc[frame["target_size"].isna()]
        paired = paired_to_base(frame)
        runs = paired.loc[paired["role"] == "transfer"]
        return {int(n): g["diff"].to_numpy(dtype=float) for n, g in runs.groupby("n")}

    a, b = per_n(frame_a), per_n(frame_b)
    rows = []
    for n in sorted(set(a) | set(b)):
        sa = mean_ci(a.get(n, np.array([])))
        sb = mean_ci(b.get(n, np.array([])))
        diff = welch_ci(a[n], b[n]) if n in a and n in b else (float("nan"),) * 3
        rows.append((n, *sa, *sb, *diff))
    cols = ["n", "a_mean", "a_low", "a_high", "a_count", "b_mean", "b_low", "b_high", "b_count", "diff", "diff_low",
            "diff_high"]
    return Comparison(label_a, label_b, pd.DataFrame(rows, columns=cols))


def study_label(directory: Path) -> str:
    """``<dir name> (<split description>)`` from a study directory."""
    from transferscope.store import Store

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
    from transferscope.store import Store

    frames = []
    for d in (dir_a, dir_b):
        store = Store(d)
        store.load_config()  # a clear error when this is not a study directory
        frames.append(store.frame())
    label_a, label_b = study_label(Path(dir_a)), study_label(Path(dir_b))
    if label_a == label_b:
        label_a, label_b = f"{label_a} [a]", f"{label_b} [b]"
    return compare_frames(frames[0], frames[1], label_a, label_b)
