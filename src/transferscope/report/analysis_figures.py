"""Figures of the analyses (transferscope.analysis): CKA curves and heatmaps, predicted against
measured transfer, first-layer filters, accuracy by target size, validation curves.

Like figures.py: :class:`matplotlib.figure.Figure` objects, Agg rendering, no pyplot state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from transferscope.analysis.filters import filter_grid
from transferscope.report.figures import DPI, STYLES, new_figure
from transferscope.stats import over_replicates, per_replicate
from transferscope.treatments import AT_TARGET_SIZES, TREATMENTS, treatment

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _colormap(name: str):
    from matplotlib import colormaps

    return colormaps[name]


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)

#: the fine-tuned roles whose networks are compared with their sources (CKA), and their labels
_ROLE_NAMES = {t.role: t.label for t in TREATMENTS if t.analysed}


def _source_name(role: str) -> str:
    """The base network a role copies from, for target B: baseB (its own task's) or baseA."""
    return "baseB" if treatment(role).copies == "target" else "baseA"


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _band(ax, x, rows: pd.DataFrame, color, label, marker="o", ls="-", fill=True) -> None:
    ax.plot(x, rows["mean"], color=color, marker=marker, ms=4, lw=1.5, ls=ls, label=label)
    lo, hi = rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float)
    if fill and np.isfinite(lo).any():
        ax.fill_between(np.asarray(x, dtype=float), lo, hi, color=color, alpha=0.15, lw=0)


def _legend(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)


def plot_cka_curves(curve: pd.DataFrame, finetune: pd.DataFrame, layer_names: Sequence[str], title: str) -> Figure:
    """Left: CKA(baseA, baseB) per layer. Then one panel per fine-tuned role: CKA(fine-tuned
    network, the base it copied from) per layer, a line per cut point n (filled markers: copied
    layers 1..n; open: re-initialised layers)."""
    roles = [r for r in _ROLE_NAMES if not finetune.empty and (finetune["role"] == r).any()]
    fig = new_figure(figsize=(4.2 * (1 + len(roles)), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, 1 + len(roles), sharey=True))
    layers = np.arange(1, len(layer_names) + 1)
    ax = axes[0]
    if not curve.empty:
        _band(ax, curve["layer"], curve, "black", "baseA vs baseB")
    ax.set_title("baseA vs baseB, same layer", fontsize=10)
    ax.set_ylabel("linear CKA (unbiased)")
    cmap = _colormap("viridis")
    for ax, role in zip(axes[1:], roles):
        rows = finetune.loc[finetune["role"] == role]
        ns = sorted(set(rows["n"]))
        for i, n in enumerate(ns):
            r = rows.loc[rows["n"] == n].sort_values("layer")
            color = cmap(i / max(1, len(ns) - 1) * 0.85)
            ax.plot(r["layer"], r["mean"], color=color, lw=1.4, label=f"n={n}")
            copied = r["layer"] <= n
            ax.scatter(r.loc[copied, "layer"], r.loc[copied, "mean"], color=color, s=22, zorder=3)
            ax.scatter(r.loc[~copied, "layer"], r.loc[~copied, "mean"], facecolors="white", edgecolors=color, s=22,
                       zorder=3)
        src = _source_name(role)
        ax.set_title(f"{_ROLE_NAMES[role]} vs {src} (its source)", fontsize=10)
        ax.legend(loc="lower left", fontsize=8, frameon=False, ncols=2 if len(ns) > 4 else 1)
    for ax in axes:
        ax.set_xticks(layers)
        ax.set_xticklabels([f"{i}\n{name}" for i, name in zip(layers, layer_names)], fontsize=7)
        ax.set_xlabel("layer")
        ax.axhline(1.0, color="0.7", lw=0.8, ls=":")
        ax.grid(True, color="0.92", lw=0.6)
    fig.suptitle(title + " (test images of the target task; mean over replicates and targets)", fontsize=10)
    return fig


def plot_cka_heatmaps(matrix: np.ndarray, finetune: pd.DataFrame, layer_names: Sequence[str], title: str) -> Figure:
    """Left: CKA of every layer of baseA (rows) with every layer of baseB (columns). Then, per
    fine-tuned role, CKA with its source at each layer (columns) for each cut point n (rows)."""
    roles = [r for r in _ROLE_NAMES if not finetune.empty and (finetune["role"] == r).any()]
    fig = new_figure(figsize=(4.3 * (1 + len(roles)) + 1.0, 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, 1 + len(roles)))
    labels = [f"{i + 1} {n}" for i, n in enumerate(layer_names)]
    panels = [(axes[0], matrix, labels, labels, "baseA layer", "baseB layer", "baseA vs baseB")]
    for ax, role in zip(axes[1:], roles):
        table = finetune.loc[finetune["role"] == role].pivot_table(index="n", columns="layer", values="mean")
        src = _source_name(role)
        panels.append((ax, table.to_numpy(), [f"n={n}" for n in table.index], [str(c) for c in table.columns],
                       "cut point n", "layer", f"{_ROLE_NAMES[role]} vs {src}"))
    image = None
    for ax, values, rows, cols, ylabel, xlabel, name in panels:
        if values.size == 0:
            ax.set_axis_off()
            continue
        image = ax.imshow(np.ma.masked_invalid(values), vmin=0, vmax=1, cmap="magma", origin="lower")
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xticks(range(len(cols)), cols, fontsize=7, rotation=45 if len(cols) > 6 else 0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=10)
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v) and values.size <= 100:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 else "black")
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="linear CKA")
    fig.suptitle(title, fontsize=10)
    return fig


def plot_estimates(scores: pd.DataFrame, measured: pd.DataFrame, labels: dict[str, str], title: str) -> Figure:
    """Measured AnB top-1 and each score against the cut point n (mean and 95% CI over replicates,
    each replicate the mean of its two directions)."""
    panels = [("measured", "measured AnB test top-1")] if not measured.empty else []
    panels += list(labels.items())
    fig = new_figure(figsize=(3.3 * len(panels), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (col, label) in zip(axes, panels):
        data = measured if col == "measured" else scores
        table = over_replicates(per_replicate(data, col, ["n"]), ["n"], bounds=None)
        color = STYLES["transfer"].color if col == "measured" else "#31688e"
        _band(ax, table["n"], table, color, label, marker=STYLES["transfer"].marker if col == "measured" else "o")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("cut point n")
        ax.set_xticks(sorted(set(table["n"])))
        ax.grid(True, color="0.92", lw=0.6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


#: at most this many first-layer filters per network are drawn, in columns of this many tiles, each at
#: least this many pixels wide in the saved figure (a ViT's patch embedding has 768 filters)
MAX_FILTERS = 64
FILTER_COLUMNS = 8
MIN_TILE_PX = 32


def shown_filters(weight: torch.Tensor, limit: int = MAX_FILTERS) -> np.ndarray:
    """Indices of the filters to draw: all of them when there are at most ``limit``, otherwise the
    ``limit`` of largest L2 norm, largest first (ties in index order)."""
    norms = weight.detach().double().cpu().flatten(1).norm(dim=1).numpy()
    if len(norms) <= limit:
        return np.arange(len(norms))
    return np.argsort(-norms, kind="stable")[:limit]


def filter_selection(panels: Sequence) -> str:
    """The rule behind the tiles of :func:`plot_filters`, in words: "all 32 filters", or "the 64 of
    largest norm of 768 filters in each base network, the same filters in ..." (two lines)."""
    counts = sorted({p.weight.shape[0] for p in panels if p.weight is not None})
    if not counts or counts[-1] <= MAX_FILTERS:
        return "all " + "/".join(map(str, counts)) + " filters" if counts else "all filters"
    return (f"the {MAX_FILTERS} of largest L2 norm of {'/'.join(map(str, counts))} filters in each base network,\n"
            "the same filters in the networks that copied it, largest first")


def plot_filters(panels: Sequence, title: str) -> Figure:
    """Filter grids: one row per base network (a panel labelled ``base...``), followed in its row
    by the fine-tuned networks that copied it, each titled with its weight change. A layer with
    more than :data:`MAX_FILTERS` filters shows that many (:func:`shown_filters` of the base
    network, the same indices in its fine-tuned networks), so every tile stays at least
    :data:`MIN_TILE_PX` pixels wide; the title says which."""
    rows: list[list] = []
    for p in panels:
        if p.label.startswith("base") or not rows:
            rows.append([])
        rows[-1].append(p)
    images: dict[int, np.ndarray] = {}
    for row in rows:
        chosen = shown_filters(row[0].weight) if row[0].weight is not None else None
        for p in row:
            if chosen is None or p.weight is None:
                images[id(p)] = p.image
            else:
                picked = p.weight[torch.as_tensor(chosen)]
                images[id(p)] = filter_grid(picked, columns=min(FILTER_COLUMNS, len(chosen)))
    cols = max(len(r) for r in rows)
    aspect = max(im.shape[0] / im.shape[1] for im in images.values())
    tiles = max(min(FILTER_COLUMNS, p.weight.shape[0]) if p.weight is not None else 1 for p in panels)
    width = max(3.2, 1.25 * tiles * MIN_TILE_PX / DPI)  # the panel's margins and title take up to a fifth
    fig = new_figure(figsize=(width * cols, (width * aspect + 0.7) * len(rows) + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(len(rows), cols, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    for r, row in enumerate(rows):
        for c, p in enumerate(row):
            ax = axes[r, c]
            ax.imshow(images[id(p)], interpolation="nearest")
            label = p.label.split(" (")[0]
            change = f"\nweights changed {p.change:.1%}" if p.change is not None else "\n(source)"
            ax.set_title(label + change, fontsize=8)
    fig.suptitle(f"{title}\nfirst-layer filters: {filter_selection(panels)}", fontsize=10)
    return fig


def plot_target_sizes(summary: pd.DataFrame, title: str) -> Figure:
    """Test top-1 against training images per class (log scale): base from scratch in every
    panel; one panel per transfer treatment the study ran at several sizes (frozen AnB and
    fine-tuned AnB+; or PnT, PnT+ and the probe), one line per cut point n."""
    shown = [t for t in AT_TARGET_SIZES if (summary["role"] == t.role).any()] or list(AT_TARGET_SIZES[:1])
    fig = new_figure(figsize=(5.5 * len(shown), 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(shown), sharey=True))
    base = summary.loc[summary["role"] == "base"].sort_values("per_class")
    ns = sorted(set(summary.loc[summary["role"] != "base", "n"]))
    cmap = _colormap("plasma")
    panels = [(t.role, f"{t.label}: " + ("a linear probe on layer n" if t.head == "linear" else
                                         f"copied layers {'fine-tuned' if t.fine_tuned else 'frozen'}"))
              for t in shown]
    for ax, (role, name) in zip(axes, panels):
        if not base.empty:
            _band(ax, base["per_class"], base, "black", "base (from scratch)", ls="--")
        for i, n in enumerate(ns):
            rows = summary.loc[(summary["role"] == role) & (summary["n"] == n)].sort_values("per_class")
            if not rows.empty:
                _band(ax, rows["per_class"], rows, cmap(i / max(1, len(ns) - 1) * 0.85), f"n={n}",
                      marker=STYLES[role].marker, fill=False)
        ax.set_xscale("log")
        ax.set_xlabel("training images per class (log scale)")
        ax.set_title(name, fontsize=10)
        ax.grid(True, color="0.92", lw=0.6, which="both")
    axes[0].set_ylabel("test top-1 (mean; band: 95% CI of base)")
    _legend(axes[-1])
    fig.suptitle(title, fontsize=10)
    return fig


def plot_freeze_map(diff: pd.DataFrame, title: str) -> Figure:
    """Fine-tuned minus frozen test top-1 per cut point n (rows) and target size (columns), one
    panel per frozen / fine-tuned pair: red where fine-tuning wins, blue where freezing does;
    each cell gives the mean, and an asterisk where its 95% CI excludes zero."""
    pairs = list(dict.fromkeys(zip(diff["frozen"], diff["fine_tuned"])))
    fig = new_figure(figsize=(1.6 + 1.25 * max(1, diff["size_label"].nunique()) * max(1, len(pairs)), 3.6),
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(pairs))))
    means = np.abs(diff["mean"].to_numpy(dtype=float))
    lim = max(0.02, float(np.nanmax(means))) if np.isfinite(means).any() else 0.02
    image = None
    for ax, (frozen, tuned) in zip(axes, pairs):
        rows = diff.loc[(diff["frozen"] == frozen) & (diff["fine_tuned"] == tuned)]
        sizes = rows.drop_duplicates("size_label").sort_values("per_class")["size_label"].tolist()
        ns = sorted(set(rows["n"]))
        grid = np.full((len(ns), len(sizes)), np.nan)
        for r in rows.itertuples():
            i, j = ns.index(r.n), sizes.index(r.size_label)
            grid[i, j] = r.mean
            star = "*" if np.isfinite(r.ci_low) and (r.ci_low > 0 or r.ci_high < 0) else ""
            ax.text(j, i, f"{r.mean:+.3f}{star}", ha="center", va="center", fontsize=7,
                    color="white" if abs(r.mean) > 0.6 * lim else "black")
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(len(sizes)), sizes, fontsize=8, rotation=30)
        ax.set_yticks(range(len(ns)), [f"n={n}" for n in ns], fontsize=8)
        ax.set_xlabel("target size (training images)")
        ax.set_title(f"{tuned} - {frozen}", fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="fine-tuned - frozen test top-1")
    fig.suptitle(title + " (*: 95% CI excludes 0)", fontsize=10)
    return fig


def plot_finetune_curve(diff: pd.DataFrame, title: str) -> Figure:
    """Fine-tuned minus frozen test top-1 against training images per class (log scale), a line
    per cut point n with its 95% CI band, labelled with the parameters in the copied layers."""
    pairs = list(dict.fromkeys(zip(diff["frozen"], diff["fine_tuned"])))
    fig = new_figure(figsize=(6.0 * max(1, len(pairs)), 4.0))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(pairs)), sharey=True))
    cmap = _colormap("plasma")
    for ax, (frozen, tuned) in zip(axes, pairs):
        rows = diff.loc[(diff["frozen"] == frozen) & (diff["fine_tuned"] == tuned)]
        ns = sorted(set(rows["n"]))
        for i, n in enumerate(ns):
            line = rows.loc[rows["n"] == n].sort_values("per_class")
            params = line["copied_params"].max()
            label = f"n={n} ({params / 1e3:,.1f}k copied parameters)" if np.isfinite(params) else f"n={n}"
            _band(ax, line["per_class"], line, cmap(i / max(1, len(ns) - 1) * 0.85), label)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training images per class (log scale)")
        ax.set_title(f"{tuned} - {frozen}: above 0 fine-tuning wins", fontsize=10)
        ax.grid(True, color="0.92", lw=0.6, which="both")
    axes[0].set_ylabel("fine-tuned - frozen test top-1 (band: 95% CI)")
    _legend(axes[-1])
    fig.suptitle(title, fontsize=10)
    return fig


def plot_convergence(curves: dict[str, list[float]], networks: pd.DataFrame, title: str) -> Figure:
    """Validation top-1 per epoch of each full-data base network; still-improving ones in red,
    with the fitted tail slope."""
    fig = new_figure(figsize=(8.0, 4.0))
    ax = fig.subplots()
    full = networks.loc[networks["target_size"].isna()]
    for row in full.itertuples():
        curve = curves.get(row.key, [])
        epochs = np.arange(1, len(curve) + 1)
        color = "#c0392b" if row.still_improving else "0.35"
        ax.plot(epochs, curve, color=color, lw=1.2, alpha=0.9,
                label=f"{row.key}" + (" (still improving)" if row.still_improving else ""))
        if np.isfinite(row.slope) and row.k >= 2:
            x = epochs[-row.k:]
            y = np.asarray(curve[-row.k:], dtype=float)
            ax.plot(x, y.mean() + row.slope * (x - x.mean()), color=color, lw=2.5, alpha=0.4)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_ylabel("validation top-1")
    ax.grid(True, color="0.92", lw=0.6)
    if len(full) <= 12:
        _legend(ax)
    fig.suptitle(title, fontsize=10)
    return fig
