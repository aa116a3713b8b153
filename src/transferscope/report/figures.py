"""The paper's Fig. 2 (every network, means per treatment) and Fig. 3 (relative to base).

Figures are built as :class:`matplotlib.figure.Figure` objects (Agg rendering, no pyplot state).
Treatments without finished runs are left out; nothing is drawn for an empty series.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from transferscope.stats import (
    HEADLINE_METRIC,
    ROLE_LABELS,
    done_runs,
    observed_cut_points,
    relative,
    summarize,
)
from transferscope.treatments import TREATMENTS, Style, roles_in

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def new_figure(**kwargs: Any) -> Figure:
    """A matplotlib Figure (no pyplot, no global state); matplotlib is imported on the first one,
    so a command that draws nothing does not pay for it."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)

X_LABEL = "Layer n at which network is chopped and retrained"
Y_LABEL = "Top-1 accuracy (test)"
DPI = 130


#: role -> how it is drawn, and which roles each figure draws besides base, from the treatment table
STYLES: dict[str, Style] = {t.role: t.style for t in TREATMENTS}
_FIG2_ROLES = roles_in("fig2")
_FIG3_ROLES = roles_in("fig3")


def plot_fig2(df: pd.DataFrame, title: str, cut_points: Sequence[int] = ()) -> Figure:
    """Fig. 2: top, one marker per network; bottom, treatment means with 95% CI bands over
    replicates (:mod:`transferscope.stats`)."""
    done = done_runs(df, HEADLINE_METRIC)
    ns = observed_cut_points(done, cut_points)
    fig = new_figure(figsize=(9.0, 8.0))
    top, bottom = fig.subplots(2, 1, sharex=True)

    rng = np.random.default_rng(0)
    for role in ("base", *_FIG2_ROLES):
        runs = done.loc[done["role"] == role]
        if runs.empty:
            continue
        style = STYLES[role]
        at = np.zeros(len(runs)) if role == "base" else runs["n"].to_numpy(dtype=float)
        x = at + style.offset + rng.uniform(-style.spread, style.spread, len(runs))
        top.scatter(
            x,
            runs[HEADLINE_METRIC],
            marker=style.marker,
            facecolors=style.face or style.color,
            edgecolors=style.color,
            linewidths=0.8,
            s=30,
            label=ROLE_LABELS[role],
            zorder=3,
        )

    summary = summarize(done, HEADLINE_METRIC, ns)
    base = summary.loc[summary["role"] == "base"]
    if not base.empty:
        xs = np.array([0, *ns], dtype=float)
        row = base.iloc[0]
        style = STYLES["base"]
        bottom.plot(xs, np.full(len(xs), row["mean"]), color=style.color, ls="--", lw=1.0,
                    label="base")
        bottom.scatter([0.0], [row["mean"]], marker=style.marker, facecolors=style.face,
                       edgecolors=style.color, s=36, zorder=3)
        if np.isfinite(row["ci_low"]):
            bottom.fill_between(xs, row["ci_low"], row["ci_high"], color="0.6", alpha=0.2, lw=0)
    for role in _FIG2_ROLES:
        _mean_line(bottom, summary.loc[summary["role"] == role], role, ROLE_LABELS[role])

    pooled = done["target"].nunique() > 1  # the split design's two directions, drawn together
    top.set_title("Each marker is one network" + (" (both directions pooled)" if pooled else ""), fontsize=10)
    bottom.set_title("Mean per treatment over replicates, shaded 95% CI over replicates", fontsize=10)
    for ax in (top, bottom):
        ax.set_ylabel(Y_LABEL)
        _finish_axes(ax, ns)
    bottom.set_xlabel(X_LABEL)
    fig.suptitle(title)
    return fig


def plot_fig3(df: pd.DataFrame, title: str, cut_points: Sequence[int] = (),
              other: tuple[str, pd.DataFrame] | None = None, name: str = "this study") -> Figure:
    """Fig. 3: each treatment minus the base of the same replicate and task, mean with 95% CI over
    replicates. ``other`` (a name and its run table) adds a second study in the same colours,
    dashed with open markers and without bands, and the legend names both (``name``: this one)."""
    done = done_runs(df, HEADLINE_METRIC)
    ns = observed_cut_points(done, cut_points)
    rel = relative(done, HEADLINE_METRIC)
    fig = new_figure(figsize=(9.0, 5.0))
    ax = fig.subplots()
    ax.axhline(0.0, color="black", ls="--", lw=1.0, label="base (reference)")
    studies = [(rel, "", False)]
    if other is not None:
        other_done = done_runs(other[1], HEADLINE_METRIC)
        ns = tuple(sorted(set(ns) | set(observed_cut_points(other_done))))
        studies = [(rel, f", {name}", False), (relative(other_done, HEADLINE_METRIC), f", {other[0]}", True)]
    for table, suffix, dashed in studies:
        for role in _FIG3_ROLES:
            label = ROLE_LABELS[role]
            _mean_line(ax, table.loc[table["quantity"] == label], role, f"{label} \u2212 base{suffix}", dashed)
    ax.set_title(
        "Paired difference to the base network of the same replicate and task; mean and 95% CI over "
        "replicates" + (f"\nsolid with bands: {name}; dashed, open markers: {other[0]}" if other else ""),
        fontsize=10
    )
    ax.set_ylabel("Top-1 accuracy (test) relative to base")
    ax.set_xlabel(X_LABEL)
    _finish_axes(ax, ns)
    fig.suptitle(title)
    return fig


def write_figures(
    df: pd.DataFrame, out_dir: Path, title: str, cut_points: Sequence[int] = (),
    other: tuple[str, pd.DataFrame] | None = None, name: str = "this study",
) -> tuple[Path, Path]:
    """Write ``fig2.png`` and ``fig3.png`` into ``out_dir``; return their paths. ``other`` (a name
    and a run table) is drawn beside this study (``name``) in Fig. 3."""
    paths = (out_dir / "fig2.png", out_dir / "fig3.png")
    plot_fig2(df, title, cut_points).savefig(paths[0], dpi=DPI, bbox_inches="tight")
    plot_fig3(df, title, cut_points, other, name).savefig(paths[1], dpi=DPI, bbox_inches="tight")
    return paths


def _mean_line(ax: Axes, rows: pd.DataFrame, role: str, label: str, dashed: bool = False) -> None:
    """Line through the means in ``rows`` (columns n, mean, ci_low, ci_high) with a CI band;
    ``dashed``: dashed with open markers and no band (a second study)."""
    if rows.empty:
        return
    rows = rows.sort_values("n")
    style = STYLES[role]
    ax.plot(rows["n"], rows["mean"], color=style.color, marker=style.marker, ms=5, lw=1.6,
            label=label, zorder=3, **({"ls": (0, (4, 2)), "mfc": "white"} if dashed else {}))
    lo, hi = rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float)
    if np.isfinite(lo).any() and not dashed:
        ax.fill_between(rows["n"].to_numpy(dtype=float), lo, hi, color=style.color, alpha=0.15,
                        lw=0)


def _finish_axes(ax: Axes, ns: Sequence[int]) -> None:
    """Integer ticks at 0 and every cut point, light grid, legend outside the plotting area."""
    ticks = [0, *ns]
    ax.set_xticks(ticks)
    ax.set_xlim(-0.5, max(ticks) + 0.5)
    ax.grid(True, color="0.9", lw=0.6)
    ax.set_axisbelow(True)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                  fontsize=9)
