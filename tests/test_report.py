"""Tests of transferscope.report on a synthetic study whose effects are known exactly."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from transferscope.errors import UserError
from transferscope.report import ReportMeta, mean_ci, relative, summarize, write_report
from transferscope.stats import holm, replicates_needed, width_note
from transferscope.report.tables import format_cell

REPLICATES = 3
CUT_POINTS = (1, 2, 3, 4)
COADAPT = {1: 0.0, 2: 0.02, 3: 0.04, 4: 0.01}  # base - BnB
TRANSFER_DROP = 0.05  # base - AnB, the same at every n
FT_GAIN = 0.01  # AnB+ - base
RANDOM_SLOPE = 0.1  # base - random = 0.1 * n
LABELS = ("base", "BnB", "BnB+", "AnB", "AnB+", "random")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DIVERGED_KEY = "rep0/AnB/n3"
FAILED_KEY = "rep1/BnA+/n4"


def _base_accuracy(replicate: int, target: str) -> float:
    """Large spread between replicates and tasks, so unpaired intervals are wide."""
    return 0.55 + 0.08 * replicate + (0.03 if target == "B" else 0.0)


def _treatment(role: str, target: str) -> str:
    other = "A" if target == "B" else "B"
    return {
        "selffer": f"{target}n{target}",
        "selffer+": f"{target}n{target}+",
        "transfer": f"{other}n{target}",
        "transfer+": f"{other}n{target}+",
        "random": f"random{target}",
    }[role]


def _accuracy(role: str, base: float, n: int) -> float:
    return {
        "selffer": base - COADAPT[n],
        "selffer+": base,
        "transfer": base - TRANSFER_DROP,
        "transfer+": base + FT_GAIN,
        "random": base - RANDOM_SLOPE * n,
    }[role]


def _run(key: str, replicate: int, treatment: str, role: str, target: str, source: str | None,
         n: int, accuracy: float, status: str = "done") -> dict[str, object]:
    return {
        "key": key, "replicate": replicate, "treatment": treatment, "role": role,
        "target": target, "source": source, "n": n, "status": status, "test_top1": accuracy,
        "val_best_k_mean": accuracy + 0.02, "trainable_params": 1000, "total_params": 2000,
        "wall_time_s": 12.5,
    }


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    """3 replicates x 2 targets x n=1..4; one AnB run diverged, one AnB+ (BnA+) run failed."""
    rows = []
    for rep in range(REPLICATES):
        for target in ("A", "B"):
            other = "A" if target == "B" else "B"
            base = _base_accuracy(rep, target)
            rows.append(_run(f"rep{rep}/base{target}", rep, f"base{target}", "base", target,
                             None, 0, base))
            for n in CUT_POINTS:
                for role in ("selffer", "selffer+", "transfer", "transfer+", "random"):
                    name = _treatment(role, target)
                    key = f"rep{rep}/{name}/n{n}"
                    source = {"selffer": target, "selffer+": target, "random": None}.get(
                        role, other)
                    if key == DIVERGED_KEY:  # a garbage accuracy that must not enter stats
                        rows.append(_run(key, rep, name, role, target, source, n, 0.1,
                                         "diverged"))
                    elif key == FAILED_KEY:
                        rows.append(_run(key, rep, name, role, target, source, n, math.nan,
                                         "failed"))
                    else:
                        rows.append(_run(key, rep, name, role, target, source, n,
                                         _accuracy(role, base, n)))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def meta() -> ReportMeta:
    return ReportMeta(dataset="synthetic", split="random 5/5", arch="tinynet", replicates=3,
                      num_layers=5, cut_points=CUT_POINTS, metric_note="Synthetic numbers.",
                      extra_lines=("Provenance: test fixture.",))


@pytest.fixture(scope="module")
def report_dir(runs: pd.DataFrame, meta: ReportMeta, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "nested" / "out"
    path = write_report(runs, meta, out)
    assert path == out / "report.md"
    return out


def _one(frame: pd.DataFrame, column: str, value: str, n: int) -> pd.Series:
    rows = frame.loc[(frame[column] == value) & (frame["n"] == n)]
    assert len(rows) == 1, (value, n, rows)
    return rows.iloc[0]


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of every pipe-table line in ``markdown`` (header, rule and body), stripped."""
    return [[cell.strip() for cell in line.strip()[1:-1].split("|")]
            for line in markdown.splitlines() if line.startswith("|") and line.rstrip().endswith("|")]


def _all_base() -> list[float]:
    return [_base_accuracy(r, t) for r in range(REPLICATES) for t in ("A", "B")]


# --- mean_ci -------------------------------------------------------------------------------------

def test_mean_ci_matches_hand_computation() -> None:
    values = [0.5, 0.6, 0.7, 0.9]
    mean = 0.675
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    half = sps.t.ppf(0.975, 3) * sd / 2.0
    m, lo, hi, count = mean_ci(values)
    assert count == 4
    assert m == pytest.approx(mean)
    assert lo == pytest.approx(mean - half)
    assert hi == pytest.approx(mean + half)
    assert half == pytest.approx(0.2718, abs=1e-4)  # t(0.975, 3) = 3.182, sd = 0.1708

    m90, lo90, hi90, _ = mean_ci(values, confidence=0.90)
    assert hi90 - lo90 == pytest.approx(2 * sps.t.ppf(0.95, 3) * sd / 2.0)
    assert hi90 - lo90 < hi - lo


def test_mean_ci_small_and_non_finite() -> None:
    assert mean_ci([0.4, math.nan, 0.6])[:1] == (pytest.approx(0.5),)
    assert mean_ci([0.4, math.nan, 0.6])[3] == 2
    m, lo, hi, count = mean_ci([0.7])
    assert (m, count) == (0.7, 1) and math.isnan(lo) and math.isnan(hi)
    m, lo, hi, count = mean_ci([])
    assert count == 0 and all(math.isnan(x) for x in (m, lo, hi))
    assert mean_ci([0.3, 0.3, 0.3])[1:3] == (pytest.approx(0.3), pytest.approx(0.3))
    with pytest.raises(ValueError):
        mean_ci([1.0, 2.0], confidence=1.5)


# --- summarize -----------------------------------------------------------------------------------

def test_summarize_takes_one_value_per_replicate(runs: pd.DataFrame) -> None:
    summary = summarize(runs)
    assert list(summary.columns) == ["treatment", "role", "n", "mean", "ci_low", "ci_high", "replicates",
                                     "networks", "sd", "p"]
    base_mean = float(np.mean(_all_base()))

    bnb2 = _one(summary, "treatment", "BnB", 2)
    # 3 replicates of 2 directions each: 6 networks, but 3 independent values
    assert bnb2["role"] == "selffer" and (bnb2["replicates"], bnb2["networks"]) == (3, 6)
    assert bnb2["mean"] == pytest.approx(base_mean - COADAPT[2])
    per_replicate = [np.mean([_base_accuracy(r, t) - COADAPT[2] for t in "AB"]) for r in range(3)]
    half = sps.t.ppf(0.975, 2) * np.std(per_replicate, ddof=1) / math.sqrt(3)
    assert bnb2["ci_high"] - bnb2["mean"] == pytest.approx(half)  # t with 2 degrees of freedom, not 5

    for n in CUT_POINTS:  # the same base networks at every n
        base = _one(summary, "treatment", "base", n)
        assert (base["replicates"], base["networks"]) == (3, 6) and base["mean"] == pytest.approx(base_mean)
        assert _one(summary, "treatment", "random", n)["mean"] == pytest.approx(
            base_mean - RANDOM_SLOPE * n)

    # The diverged run (accuracy 0.1) and the failed run are excluded: replicate 0 of AnB at n = 3
    # keeps its one remaining direction, which stands for the whole replicate.
    anb3 = _one(summary, "treatment", "AnB", 3)
    assert (anb3["replicates"], anb3["networks"]) == (3, 5)
    kept = [_base_accuracy(0, "A") - TRANSFER_DROP] + [
        np.mean([_base_accuracy(r, t) - TRANSFER_DROP for t in "AB"]) for r in (1, 2)]
    assert anb3["mean"] == pytest.approx(np.mean(kept))
    assert _one(summary, "treatment", "AnB+", 4)["networks"] == 5
    assert len(summary) == 6 * len(CUT_POINTS)


def test_intervals_stay_within_their_range() -> None:
    """Two replicates near the ceiling: the t interval (+-12.7 standard errors) would leave [0, 1]."""
    rows = [_run(f"b{r}{t}", r, f"base{t}", "base", t, None, 0, acc)
            for r, accs in enumerate([(0.985, 0.99), (0.997, 1.0)]) for t, acc in zip("AB", accs)]
    rows += [_run(f"x{r}{t}", r, "AnB", "transfer", t, "A", 1, acc)
             for r, accs in enumerate([(0.08, 0.1), (0.997, 1.0)]) for t, acc in zip("AB", accs)]
    frame = pd.DataFrame(rows)
    base = _one(summarize(frame), "treatment", "base", 1)
    assert base["mean"] - sps.t.ppf(0.975, 1) * base["sd"] / math.sqrt(2) > 0.9  # untruncated lower bound
    assert base["ci_high"] == 1.0 and 0.9 < base["ci_low"] < base["mean"]
    anb = _one(relative(frame), "quantity", "AnB", 1)
    assert (anb["ci_low"], anb["ci_high"]) == (-1.0, 1.0) and anb["mean"] == pytest.approx(-0.44875)
    assert "+-12.7 standard errors" in width_note([2, 3])
    assert width_note([5, 10]) == ""


def test_holm_adjustment() -> None:
    """Holm (1979): sorted p * (m, m - 1, ...), made monotone, capped at 1; NaN not in the family."""
    adjusted = holm([0.01, 0.04, 0.03, math.nan, 0.5])
    assert adjusted[:3] == pytest.approx([0.04, 0.09, 0.09])  # 0.01*4, max(0.03*3, 0.04*2)
    assert adjusted[4] == pytest.approx(0.5) and math.isnan(adjusted[3])
    assert holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])


def test_replicates_needed() -> None:
    # t(0.975, R-1) * 0.05 / sqrt(R) < 0.05 first holds at R = 7 (2.447 / 2.646 = 0.925)
    assert replicates_needed(0.05, 0.05) == 7
    assert replicates_needed(-0.05, 0.05) == 7
    assert replicates_needed(0.0, 0.05) is None and replicates_needed(1e-6, 1.0) is None


# --- relative and decomposition ------------------------------------------------------------------

def test_relative_is_paired_by_replicate_and_target(runs: pd.DataFrame) -> None:
    rel = relative(runs)
    summary = summarize(runs)
    assert list(rel.columns) == ["quantity", "n", "mean", "ci_low", "ci_high", "replicates", "networks", "sd", "p"]
    for n in CUT_POINTS:
        anb = _one(rel, "quantity", "AnB", n)
        assert anb["mean"] == pytest.approx(-TRANSFER_DROP, abs=1e-12)
        assert anb["ci_low"] == pytest.approx(-TRANSFER_DROP, abs=1e-9)
        assert anb["ci_high"] == pytest.approx(-TRANSFER_DROP, abs=1e-9)
        assert (anb["replicates"], anb["networks"]) == (3, 5 if n == 3 else 6)
        # Unpaired, the same runs spread widely.
        unpaired = _one(summary, "treatment", "AnB", n)
        assert unpaired["ci_high"] - unpaired["ci_low"] > 0.1

        assert _one(rel, "quantity", "BnB", n)["mean"] == pytest.approx(-COADAPT[n], abs=1e-12)
        assert _one(rel, "quantity", "BnB+", n)["mean"] == pytest.approx(0.0, abs=1e-12)
        assert _one(rel, "quantity", "AnB+", n)["mean"] == pytest.approx(FT_GAIN, abs=1e-12)
        assert _one(rel, "quantity", "random", n)["mean"] == pytest.approx(-RANDOM_SLOPE * n)
    assert "base" not in set(rel["quantity"])


def test_relative_pairing_uses_matching_base() -> None:
    """Swapping a base between replicates must change the paired difference."""
    rows = [
        _run("b0", 0, "baseB", "base", "B", None, 0, 0.50),
        _run("b1", 1, "baseB", "base", "B", None, 0, 0.90),
        _run("a0", 0, "AnB", "transfer", "B", "A", 1, 0.45),
        _run("a1", 1, "AnB", "transfer", "B", "A", 1, 0.80),
        _run("bA", 0, "baseA", "base", "A", None, 0, 0.10),  # other task: must not pair
    ]
    rel = relative(pd.DataFrame(rows))
    anb = _one(rel, "quantity", "AnB", 1)
    assert anb["replicates"] == 2
    assert anb["mean"] == pytest.approx(-0.075)  # (-0.05 + -0.10) / 2
    half = sps.t.ppf(0.975, 1) * np.std([-0.05, -0.10], ddof=1) / math.sqrt(2)
    assert anb["ci_high"] - anb["mean"] == pytest.approx(half)


def test_decomposition_values(runs: pd.DataFrame) -> None:
    rel = relative(runs)
    for n in CUT_POINTS:
        co = _one(rel, "quantity", "co-adaptation", n)
        spec = _one(rel, "quantity", "specificity", n)
        gain = _one(rel, "quantity", "fine-tuning gain", n)
        assert co["mean"] == pytest.approx(COADAPT[n], abs=1e-12)
        assert (co["replicates"], co["networks"]) == (3, 6)
        assert spec["mean"] == pytest.approx(TRANSFER_DROP - COADAPT[n], abs=1e-12)
        assert spec["networks"] == (5 if n == 3 else 6)  # the diverged AnB leaves 5 pairs in 3 replicates
        assert spec["replicates"] == 3
        assert spec["ci_high"] - spec["ci_low"] == pytest.approx(0.0, abs=1e-9)
        assert gain["mean"] == pytest.approx(FT_GAIN, abs=1e-12)
        assert gain["networks"] == (5 if n == 4 else 6)


# --- write_report --------------------------------------------------------------------------------

def test_report_files_are_written(report_dir: Path) -> None:
    for name in ("fig2.png", "fig3.png", "layers.csv", "layers.md", "report.md"):
        assert (report_dir / name).stat().st_size > 0, name
    for name in ("fig2.png", "fig3.png"):
        path = report_dir / name
        assert path.read_bytes()[:8] == PNG_MAGIC
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600
        assert image.std() > 0.05  # not a blank canvas


def test_layer_table_has_every_treatment_and_n(report_dir: Path, runs: pd.DataFrame) -> None:
    table = pd.read_csv(report_dir / "layers.csv")
    assert list(table.columns) == ["section", "quantity", "n", "mean", "ci_low", "ci_high",
                                   "replicates", "networks", "p"]
    for column in ("n", "mean", "ci_low", "ci_high", "replicates", "networks", "p"):
        assert pd.api.types.is_numeric_dtype(table[column]), column
    accuracy = table.loc[table["section"] == "accuracy"]
    decomposition = table.loc[table["section"] == "decomposition"]
    for n in CUT_POINTS:
        for label in LABELS:
            _one(accuracy, "quantity", label, n)
        for name in ("co-adaptation", "specificity", "fine-tuning gain"):
            _one(decomposition, "quantity", name, n)
    assert _one(decomposition, "quantity", "specificity", 2)["mean"] == pytest.approx(0.03)

    markdown = (report_dir / "layers.md").read_text()
    bnb2 = _one(summarize(runs), "treatment", "BnB", 2)
    cell = format_cell(bnb2["mean"], bnb2["ci_low"], bnb2["ci_high"], int(bnb2["replicates"]),
                       int(bnb2["networks"]))
    assert cell.endswith("] (3 rep, 6 net)") and cell in markdown
    assert format_cell(-0.0004, -0.001, 0.0002, 3, 6) == "0.000 [-0.001, 0.000] (3 rep, 6 net)"
    assert format_cell(0.5, math.nan, math.nan, 1, 2) == "0.500 (1 rep, 2 net)"
    rows = table_rows(markdown)
    assert ["quantity", "n=1", "n=2", "n=3", "n=4"] in rows
    labels = [row[0] for row in rows]
    for label in ("BnB", "AnB+", "random", "AnB - base", "co-adaptation (base - BnB)", "specificity (BnB - AnB)",
                  "fine-tuning gain (AnB+ - base)"):
        assert label in labels, label
    assert "-0.050 [-0.050, -0.050] (3 rep, 6 net)" in markdown
    assert "Student-t interval over replicates" in markdown


def test_report_markdown_contents(report_dir: Path) -> None:
    text = (report_dir / "report.md").read_text()
    assert text.startswith("# ")
    assert "random 5/5" in text and "tinynet" in text and "synthetic" in text
    assert "126 runs (124 done, 1 diverged, 1 failed)" in text
    assert "Cut points n: 1, 2, 3, 4" in text
    assert "![" in text and "](fig2.png)" in text and "](fig3.png)" in text
    assert "optimistic" in text.lower() and "val_best_k_mean" in text
    assert "Synthetic numbers." in text and "Provenance: test fixture." in text
    # Non-done runs are listed with their status...
    rows = table_rows(text)
    assert [DIVERGED_KEY, "AnB", "diverged"] in rows and [FAILED_KEY, "BnA+", "failed"] in rows
    # ...and the secondary validation table holds means of val_best_k_mean (test + 0.02), with
    # their intervals over replicates, in the cells of the per-layer table.
    base_val = np.mean(_all_base()) + 0.02
    assert any(row[0] == "base" and re.fullmatch(rf"{base_val:.3f} \[0\.\d{{3}}, 0\.\d{{3}}\] \(3 rep, 6 net\)", row[1])
               for row in rows)
    for name in ("co-adaptation", "specificity", "fine-tuning gain"):
        assert f"**{name}" in text


def test_subset_study_without_warnings(runs: pd.DataFrame, tmp_path: Path) -> None:
    subset = runs.loc[runs["role"].isin(["base", "transfer"]) & (runs["n"] != 2)]
    meta = ReportMeta(dataset="subset", split="random 5/5", arch="tinynet", replicates=3,
                      num_layers=6, cut_points=(1, 2, 3, 4, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = write_report(subset, meta, tmp_path)
    text = path.read_text()
    assert "Cut points without finished runs: 2, 5" in text
    assert "Runs not finished" in text and DIVERGED_KEY in text
    for name in ("fig2.png", "fig3.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    table = pd.read_csv(tmp_path / "layers.csv")
    assert set(table["quantity"]) == {"base", "AnB"}
    assert set(table.loc[table["section"] == "relative", "n"]) == {1, 3, 4}
    assert (table.loc[table["section"] == "relative", "mean"] + TRANSFER_DROP).abs().max() < 1e-9
    assert "AnB" in [row[0] for row in table_rows((tmp_path / "layers.md").read_text())]


def test_base_only_study(runs: pd.DataFrame, tmp_path: Path) -> None:
    meta = ReportMeta(dataset="d", split="s", arch="a", replicates=1, num_layers=3,
                      cut_points=())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = write_report(runs.loc[runs["role"] == "base"].head(1), meta, tmp_path)
    assert "1 run (1 done)" in path.read_text()
    assert (tmp_path / "fig3.png").read_bytes()[:8] == PNG_MAGIC
    table = pd.read_csv(tmp_path / "layers.csv")
    assert table[["section", "quantity", "n", "replicates", "networks"]].values.tolist() == [
        ["accuracy", "base", 0, 1, 1]]


def test_no_finished_runs_raise_user_error(runs: pd.DataFrame, tmp_path: Path,
                                           meta: ReportMeta) -> None:
    with pytest.raises(UserError, match="no finished runs to report in"):
        write_report(pd.DataFrame(), meta, tmp_path / "empty")
    with pytest.raises(UserError, match="no finished runs to report in"):
        write_report(runs.assign(status="failed"), meta, tmp_path / "failed")
    assert not (tmp_path / "empty").exists() and not (tmp_path / "failed").exists()


def test_missing_column_is_a_user_error(runs: pd.DataFrame, tmp_path: Path,
                                        meta: ReportMeta) -> None:
    with pytest.raises(UserError, match="replicate"):
        write_report(runs.drop(columns="replicate"), meta, tmp_path)


def test_filters_figure_is_legible_for_a_wide_first_layer() -> None:
    """768 filters of 16x16 (vit_b_16's patch embedding): the 64 of largest norm, each tile at least
    MIN_TILE_PX pixels wide in the saved figure, the fine-tuned network showing the same filters, the
    rule in the title; a narrow layer is drawn whole."""
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from transferscope.analysis.filters import FilterPanel, filter_grid
    from transferscope.report.analysis_figures import (
        DPI, FILTER_COLUMNS, MAX_FILTERS, MIN_TILE_PX, plot_filters, shown_filters)

    gen = torch.Generator().manual_seed(0)
    base = torch.randn(768, 3, 16, 16, generator=gen) * torch.linspace(0.1, 1.0, 768).roll(100).view(-1, 1, 1, 1)
    tuned = base + 0.01 * torch.randn(base.shape, generator=gen)
    chosen = shown_filters(base)
    norms = base.flatten(1).norm(dim=1)
    assert len(chosen) == MAX_FILTERS and set(chosen.tolist()) == set(norms.argsort(descending=True)[:64].tolist())
    assert norms[chosen[0]] == norms.max() and (shown_filters(base[:10]) == np.arange(10)).all()

    panels = [FilterPanel("baseA", "r0-baseA", filter_grid(base), None, base),
              FilterPanel("AnB+ n=1 (from baseA)", "k", filter_grid(tuned), 0.01, tuned)]
    fig = plot_filters(panels, "vit")
    FigureCanvasAgg(fig).draw()
    for ax in fig.axes[:2]:
        image = ax.images[0]
        assert image.get_array().shape[:2] == (8 * 17 + 1, 8 * 17 + 1)  # 64 tiles of 16 px and a 1 px gap
        tile = image.get_window_extent().width * DPI / fig.dpi / FILTER_COLUMNS
        assert tile >= MIN_TILE_PX, tile
    # the fine-tuned panel shows the base's chosen filters, in the same places
    expected = filter_grid(tuned[torch.as_tensor(chosen)], columns=FILTER_COLUMNS)
    assert np.allclose(fig.axes[1].images[0].get_array(), expected)
    assert "64 of largest L2 norm of 768 filters" in fig.get_suptitle()

    small = torch.randn(32, 1, 5, 5, generator=gen)
    fig = plot_filters([FilterPanel("baseB", "r0-baseB", filter_grid(small), None, small)], "convnet")
    FigureCanvasAgg(fig).draw()
    image = fig.axes[0].images[0]
    assert "all 32 filters" in fig.get_suptitle() and image.get_array().shape[:2] == (4 * 6 + 1, 8 * 6 + 1)
    assert image.get_window_extent().width * DPI / fig.dpi / FILTER_COLUMNS >= MIN_TILE_PX


def test_fig3_and_the_comparison_show_both_studies(runs: pd.DataFrame, meta: ReportMeta, tmp_path: Path) -> None:
    """`report --compare`: Fig. 3 draws the other study (dashed, open markers, named by its
    directory) beside this one, and the comparison's per-layer table has both studies' cells per row."""
    from transferscope.report import Analysis, compare_frames
    from transferscope.report.figures import plot_fig3

    other = runs.copy()
    other.loc[other["role"] == "transfer", "test_top1"] -= 0.1  # frozen transfer 0.1 worse in the other study
    c = compare_frames(other, runs, "dissimilar (natural vs man-made)", "random (random 5/5)", "dissimilar", "random")

    fig = plot_fig3(runs, "t", CUT_POINTS, other=("dissimilar", other), name="random")
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    mine, theirs = lines["AnB \u2212 base, random"], lines["AnB \u2212 base, dissimilar"]
    assert np.allclose(theirs.get_ydata(), np.asarray(mine.get_ydata()) - 0.1)
    assert mine.get_linestyle() == "-" and theirs.get_linestyle() == "--" and theirs.get_markerfacecolor() == "white"
    assert {f"{q} \u2212 base, {s}" for q in ("BnB", "BnB+", "AnB+", "random") for s in ("random", "dissimilar")} <= set(lines)
    assert "dashed, open markers: dissimilar" in fig.axes[0].get_title()
    assert len(fig.axes[0].collections) == 5  # CI bands for this study only

    rows = table_rows(c.per_layer())
    assert rows[0] == ["quantity", "n", "a: dissimilar", "b: random"]
    by_key = {(r[0], r[1]): r[2:] for r in rows[2:]}
    for n in CUT_POINTS:
        a, b = by_key["AnB - base", str(n)]
        assert float(a.split()[0]) == pytest.approx(float(b.split()[0]) - 0.1, abs=1.5e-3)
        assert by_key["BnB", str(n)][0] == by_key["BnB", str(n)][1]
    assert {q for q, _ in by_key} >= {"base", "AnB", "specificity (BnB - AnB)"} and len(by_key) == len(rows) - 2

    text = write_report(runs, meta, tmp_path, analysis=Analysis(comparison=c)).read_text()
    assert "paired; this study (random) and dissimilar (dashed)](fig3.png)" in text
    assert matplotlib.image.imread(tmp_path / "fig3.png").shape[1] > 800
