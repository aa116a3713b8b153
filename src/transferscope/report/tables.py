"""Per-layer table: accuracy per treatment, paired difference to base, and the decomposition.

The tidy form (``layers.csv``) has one row per (section, quantity, n) with numeric columns; the
Markdown form (``layers.md``) has one row per quantity and one column per cut point.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from transferscope.stats import (
    DECOMPOSITION,
    HEADLINE_METRIC,
    INTERVAL_METHOD,
    ROLE_LABELS,
    relative,
    summarize,
    width_note,
)
from transferscope.analysis.estimate import SCORES, TRUSTED_RHO, Estimate, computed, validation
from transferscope.report.text import MISSING, ci_text, markdown_table, number

SECTIONS = ("accuracy", "relative", "decomposition")
TABLE_COLUMNS = ["section", "quantity", "n", "mean", "ci_low", "ci_high", "replicates", "networks", "p"]
MISSING_CELL = MISSING

#: what a replicate is, and why it is the independent unit, by study design
REPLICATE_UNIT = {
    "split": ("The replicate (one class split with its seeds) is the independent unit: both directions of a "
              "replicate share its base networks, so each replicate counts once, as the mean of its directions."),
    "pretrained": ("The replicate (one partition of the target data into training, validation and test images, "
                   "with its seeds) is the independent unit: its networks share that partition and its base "
                   "network, so each replicate counts once."),
}


def table_legend(design: str = "split") -> str:
    return (f"Cells: mean [95% CI] (replicates, networks). {REPLICATE_UNIT[design]} "
            f"{INTERVAL_METHOD}; no interval with one replicate; {MISSING_CELL} where no network finished. "
            "Rows \"X - base\" are paired by replicate and task. Intervals are per cell: "
            "read across cut points, about one in twenty excludes zero by chance where nothing differs.")




def layer_table(
    df: pd.DataFrame, cut_points: Sequence[int] = (), metric: str = HEADLINE_METRIC
) -> pd.DataFrame:
    """Tidy per-layer table with columns :data:`TABLE_COLUMNS`, sections in :data:`SECTIONS`."""
    accuracy = (
        summarize(df, metric, cut_points)
        .rename(columns={"treatment": "quantity"})
        .assign(section="accuracy", p=float("nan"))  # "mean accuracy = 0" is no hypothesis
    )
    rel = relative(df, metric)
    is_decomposition = rel["quantity"].isin(list(DECOMPOSITION))
    parts = [
        accuracy,
        rel.loc[~is_decomposition].assign(section="relative"),
        rel.loc[is_decomposition].assign(section="decomposition"),
    ]
    parts = [part[TABLE_COLUMNS] for part in parts if not part.empty]
    if not parts:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def format_cell(mean: float, lo: float, hi: float, replicates: int, networks: int) -> str:
    """A table cell: ``0.912 [0.901, 0.923] (3 rep, 6 net)``; without bounds when they are NaN
    (the caption says why); a dash for no data."""
    if replicates == 0:
        return MISSING_CELL
    return ci_text(mean, lo, hi, f"{replicates} rep, {networks} net", say_no_interval=False)


def row_label(section: str, quantity: str) -> str:
    """Display name of a table row, e.g. ``AnB - base`` or ``specificity (BnB - AnB)``."""
    if section == "relative":
        return f"{quantity} - base"
    if section == "decomposition":
        plus, minus = DECOMPOSITION[quantity]
        return f"{quantity} ({ROLE_LABELS[plus]} - {ROLE_LABELS[minus]})"
    return quantity


def layers_markdown(table: pd.DataFrame, cut_points: Sequence[int] = ()) -> str:
    """Markdown table: one row per (section, quantity), one column per cut point."""
    ns = sorted({int(n) for n in cut_points} | {int(n) for n in table["n"]})
    body = []
    for section in SECTIONS:
        rows = table.loc[table["section"] == section]
        for quantity in dict.fromkeys(rows["quantity"]):
            by_n = rows.loc[rows["quantity"] == quantity].set_index("n")
            cells = [
                format_cell(*by_n.loc[n, ["mean", "ci_low", "ci_high"]], int(by_n.loc[n, "replicates"]),
                            int(by_n.loc[n, "networks"]))
                if n in by_n.index
                else MISSING_CELL
                for n in ns
            ]
            body.append([row_label(section, quantity), *cells])
    return markdown_table(["quantity", *(f"n={n}" for n in ns)], body)


def legend(table: pd.DataFrame, design: str = "split") -> str:
    """:func:`table_legend`, and a plain sentence when few replicates make the intervals wide."""
    note = width_note(table["replicates"]) if len(table) else ""
    return f"{table_legend(design)} {note}" if note else table_legend(design)


def write_tables(
    df: pd.DataFrame, out_dir: Path, cut_points: Sequence[int] = (), design: str = "split"
) -> tuple[Path, Path, str, str]:
    """Write ``layers.csv`` and ``layers.md``; return their paths, the Markdown table and its
    legend."""
    table = layer_table(df, cut_points)
    markdown, text = layers_markdown(table, cut_points), legend(table, design)
    csv_path, md_path = out_dir / "layers.csv", out_dir / "layers.md"
    table.to_csv(csv_path, index=False)
    md_path.write_text(f"# Per-layer results (test top-1)\n\n{text}\n\n{markdown}", encoding="utf-8")
    return csv_path, md_path, markdown, text


def format_estimate(result: Estimate) -> str:
    """The mean of each score per target and cut point, as aligned text (for the CLI)."""
    s = result.scores
    short = "short_top1" in computed(s)  # opt-in: no column where it was not asked for
    header = (f"{'target':<7}{'source':<7}{'n':>3}  {'layer':<10}{'features':>9}{'LogME':>10}{'H-score':>10}"
              f"{'probe top-1':>13}{'stitched':>10}" + (f"{'short AnB':>11}" if short else ""))
    lines = [header]
    agg = s.groupby(["target", "source", "n", "layer", "features"], as_index=False)[list(SCORES)].mean()
    for row in agg.itertuples():
        lines.append(f"{row.target:<7}{row.source:<7}{row.n:>3}  {row.layer:<10}{row.features:>9}"
                     f"{number(row.logme, digits=4):>10}{number(row.h_score):>10}{number(row.probe_top1):>13}"
                     f"{number(row.stitch_top1):>10}" + (f"{number(row.short_top1):>11}" if short else ""))
    reps = s["replicate"].nunique()
    lines.append(f"means over {reps} replicate(s); features of layer n of the source base network on the target's "
                 f"images (at most {result.max_features} per image, wider conv maps average-pooled)")
    lines += [f"note: {n}" for n in result.notes]
    lines += validation_lines()
    return "\n".join(lines)


def validation_lines() -> list[str]:
    """How each score has fared on the validation sets (docs/estimate.md), with a warning in
    words for a score that tracked the measured curve weakly on any of them."""
    validated = validation()
    if not validated:
        return []
    lines = [f"how each score has tracked measured AnB elsewhere (mean over replicates of the rank correlation across "
             f"cut points; weak: below {TRUSTED_RHO}; docs/estimate.md):"]
    for v in validated:
        figures = ", ".join(f"{name} {number(rho, sign=True, digits=2)}" for name, rho in v.rhos.items())
        verdict = ("tracked it on every validation set" if not v.weak_on else
                   f"weak on {len(v.weak_on)} of {len(v.rhos)} sets: do not choose layers on it alone")
        lines.append(f"  {v.label}: {figures}; {verdict}")
    return lines
