"""``report.md`` and ``report.html``: the study, the metric, a reading of the results, both figures,
the per-layer table, the analyses (transferscope.analysis) when given, unfinished runs, provenance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from transferscope.errors import UserError
from transferscope.report.figures import write_figures
from transferscope.report.html import write_html
from transferscope.report.reading import reading
from transferscope.stats import (
    HEADLINE_METRIC,
    INTERVAL_METHOD,
    ROLE_LABELS,
    done_runs,
    observed_cut_points,
    summarize,
)
from transferscope.report.tables import (
    MISSING_CELL,
    REPLICATE_UNIT,
    format_cell,
    row_label,
    write_tables,
)
from transferscope.report.text import markdown_table

if TYPE_CHECKING:
    from transferscope.report.sections import Analysis

VALIDATION_METRIC = "val_best_k_mean"
STATUS_ORDER = ("done", "diverged", "failed", "skipped")

_DECOMPOSITION_TEXT = {
    "co-adaptation": (
        "accuracy lost when the upper layers are retrained on top of frozen lower layers from the "
        "same task, because features that co-adapted across the cut cannot be relearned together."
    ),
    "specificity": (
        "further loss when the frozen lower layers come from the other task, i.e. how specific the "
        "first n layers are to the task they were trained on."
    ),
    "fine-tuning gain": (
        "gain of transferring the first n layers from the other task and fine-tuning the whole "
        "network, over training on the target task from scratch."
    ),
}


@dataclass(frozen=True)
class ReportMeta:
    """What the report says about the study besides the run table."""

    dataset: str
    split: str
    arch: str
    replicates: int
    num_layers: int
    cut_points: tuple[int, ...]
    metric_note: str = ""
    best_k: int = 10
    extra_lines: tuple[str, ...] = ()
    #: the paper's design ("split") or a pretrained network transferred to the whole dataset
    design: str = "split"
    #: where a pretrained study's network comes from, in words
    source: str = ""

    @property
    def title(self) -> str:
        """One line naming dataset, split, architecture and replicates (figure titles)."""
        replicates = f"{self.replicates} replicate" + ("s" if self.replicates != 1 else "")
        if self.design == "pretrained":
            return f"{self.dataset}, from {self.source}, {self.arch}, {replicates}"
        return f"{self.dataset}, split {self.split}, {self.arch}, {replicates}"


def write_report(df: pd.DataFrame, meta: ReportMeta, out_dir: Path, analysis: Analysis | None = None) -> Path:
    """Write fig2.png, fig3.png, layers.csv, layers.md, report.md and report.html into ``out_dir``.

    ``analysis`` (from :func:`transferscope.report.sections_study`, whose figures are already in
    ``out_dir``) adds its sections, its reading and the runs' provenance. Returns the path of
    report.md. Raises :class:`UserError` when ``df`` has no finished run.
    """

    out_dir = Path(out_dir)
    if len(df) == 0 or "status" not in df.columns or not (df["status"] == "done").any():
        raise UserError(f"no finished runs to report in {out_dir} ({_status_counts(df)})")
    done = done_runs(df, HEADLINE_METRIC)
    if done.empty:
        raise UserError(
            f"no finished runs to report in {out_dir}: no run with status done has a finite "
            f"{HEADLINE_METRIC}"
        )
    cut_points = observed_cut_points(done, meta.cut_points)
    out_dir.mkdir(parents=True, exist_ok=True)
    c = analysis.comparison if analysis is not None else None
    other = (c.name_a, c.runs_a) if c is not None and c.runs_a is not None else None  # b is this study (analyze_study)
    write_figures(done, out_dir, meta.title, cut_points, other, c.name_b if other else "this study")
    csv_path, md_path, table, legend = write_tables(done, out_dir, cut_points, meta.design)

    sections = [
        f"# Transferability of features: {meta.dataset}\n",
        _study_section(df, meta, cut_points),
        _metric_section(meta),
        _reading_section(done, analysis),
        ("## Figures\n\n"
         "![Fig. 2: top-1 accuracy per network and mean per treatment](fig2.png)\n\n"
         "![Fig. 3: top-1 accuracy relative to base, paired"
         + (f"; this study ({c.name_b}) and {c.name_a} (dashed)" if other else "") + "](fig3.png)\n"),
        (f"## Per-layer table\n\n{legend} Also as [{md_path.name}]({md_path.name}) and "
         f"[{csv_path.name}]({csv_path.name}).\n\n{table}"),
        _decomposition_section() if meta.design == "split" else "",
        *([s.markdown() for s in analysis.sections] if analysis is not None else []),
        _validation_section(df, meta, cut_points),
        _unfinished_section(df),
    ]
    notes = [*meta.extra_lines, *(f"Analysis note: {n}" for n in (analysis.notes if analysis is not None else ()))]
    if notes:
        sections.append("## Notes\n\n" + "\n\n".join(notes) + "\n")
    if analysis is not None and analysis.provenance is not None:
        sections.append(analysis.provenance.markdown())
    report = out_dir / "report.md"
    text = "\n".join(s for s in sections if s)
    report.write_text(text, encoding="utf-8")
    write_html(text, out_dir, f"Transferability of features: {meta.dataset}")
    return report


def _reading_section(done: pd.DataFrame, analysis: Analysis | None) -> str:
    """What the numbers show, in words, each claim with its 95% CI."""

    paragraphs = analysis.reading if analysis is not None and analysis.reading else reading(done)
    if not paragraphs:
        return ""
    return ("## Reading\n\nWhat the numbers show. Differences are paired by replicate and target and summarised "
            "over replicates (the independent unit). A statement about one cell is *significant* when its 95% CI "
            "excludes zero. A statement that scans the cut points (\"significant at n = ...\") is Holm-corrected "
            "over them, so that the chance of any false claim in it stays at most 5% where nothing differs; a cell "
            "whose own interval excludes zero without surviving that correction is named as such. Where an interval "
            "includes zero the data cannot tell, and the reading says so.\n\n"
            + "\n\n".join(paragraphs) + "\n")


def _status_counts(df: pd.DataFrame) -> str:
    """``12 runs (10 done, 1 diverged, 1 failed)``."""
    if "status" not in df.columns or len(df) == 0:
        return "0 runs"
    counts = df["status"].astype(str).value_counts()
    order = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts.index) - set(STATUS_ORDER))
    noun = "run" if len(df) == 1 else "runs"
    return f"{len(df)} {noun} (" + ", ".join(f"{int(counts[s])} {s}" for s in order) + ")"


def _study_section(df: pd.DataFrame, meta: ReportMeta, cut_points: tuple[int, ...]) -> str:
    missing = sorted(set(meta.cut_points) - set(done_runs(df)["n"]))
    lines = [
        "## Study\n",
        f"- Dataset: {meta.dataset}",
        (f"- Split into tasks A and B: {meta.split}" if meta.design == "split" else
         f"- Source: the pretrained network P of {meta.source}; target task T: {meta.split}"),
        f"- Architecture: {meta.arch} (L = {meta.num_layers} layers)",
        f"- Replicates: {meta.replicates}",
        f"- Cut points n: {', '.join(map(str, cut_points)) or 'none'}",
        f"- Runs by status: {_status_counts(df)}",
    ]
    if missing:
        lines.append(f"- Cut points without finished runs: {', '.join(map(str, missing))}")
    lines.append(
        "\nBoth directions are shown under the paper's labels, averaged within each replicate: base covers "
        "baseA and baseB; BnB covers BnB and AnA (selffer, frozen); BnB+ covers BnB+ and AnA+; "
        "AnB covers AnB and BnA (transfer, frozen); AnB+ covers AnB+ and BnA+; random covers "
        "randomA and randomB (first n layers left at their random initialisation, frozen)." if meta.design == "split"
        else "\nbase: trained from scratch on T; PnT: layers 1..n copied from P and frozen, the rest re-initialised "
        "and trained; PnT+: the same with every layer fine-tuned; probe: layers 1..n of P frozen and one linear "
        "classifier on layer n's features (ridge, fitted in closed form); random: layers 1..n left at their random "
        "initialisation, frozen. Each replicate draws its own train/validation/test partition and seeds."
    )
    return "\n".join(lines) + "\n"


def _metric_section(meta: ReportMeta) -> str:
    text = (
        "## Metric\n\n"
        f"The headline metric is top-1 accuracy on the test set (`{HEADLINE_METRIC}`) of each "
        "network's final model, evaluated once after training. Intervals: the "
        f"{INTERVAL_METHOD}. {REPLICATE_UNIT[meta.design]} The paper's own metric, the "
        f"mean of the {meta.best_k} best validation scores seen during training "
        f"(`{VALIDATION_METRIC}`), is optimistic because the same data selects and scores; it is "
        "shown only as a secondary table below."
    )
    if meta.metric_note:
        text += f" {meta.metric_note}"
    return text + "\n"


def _decomposition_section() -> str:
    lines = [
        "## Decomposition\n",
        "Each quantity is a difference paired by replicate and target task, averaged over the two directions "
        "of each replicate, then summarised over replicates.\n",
    ]
    for name, text in _DECOMPOSITION_TEXT.items():
        lines.append(f"- **{row_label('decomposition', name)}**: {text}")
    return "\n".join(lines) + "\n"


def _validation_section(df: pd.DataFrame, meta: ReportMeta, cut_points: tuple[int, ...]) -> str:
    """Means of the optimistic best-k validation metric per treatment and n, if recorded."""
    if VALIDATION_METRIC not in df.columns:
        return ""
    summary = summarize(df, VALIDATION_METRIC, cut_points)
    if summary.empty:
        return ""
    ns = sorted(set(summary["n"]))
    lines = [
        f"## Optimistic validation metric (mean of {meta.best_k} best validation scores)\n",
        "Optimistic: selected and scored on the same validation data. Cells as in the per-layer table.\n",
    ]
    table = []
    for label in ROLE_LABELS.values():
        rows = summary.loc[summary["treatment"] == label].set_index("n")
        if rows.empty:
            continue
        cells = [format_cell(*rows.loc[n, ["mean", "ci_low", "ci_high"]], int(rows.loc[n, "replicates"]),
                             int(rows.loc[n, "networks"])) if n in rows.index else MISSING_CELL for n in ns]
        table.append([label, *cells])
    return "\n".join(lines) + "\n" + markdown_table(["treatment", *(f"n={n}" for n in ns)], table)


def _unfinished_section(df: pd.DataFrame) -> str:
    """List of runs whose status is not done, or nothing when all finished."""
    unfinished = df.loc[df["status"] != "done"]
    if unfinished.empty:
        return ""
    has_treatment = "treatment" in unfinished.columns
    lines = [
        "## Runs not finished\n",
        "These runs are excluded from all statistics.\n",
    ]
    header = ["key", "treatment", "status"] if has_treatment else ["key", "status"]
    rows = [[str(run["key"]), *([str(run["treatment"])] if has_treatment else []), str(run["status"])]
            for _, run in unfinished.sort_values("key").iterrows()]
    return "\n".join(lines) + "\n" + markdown_table(header, rows, align=":--")

