"""Every analysis of a finished (or partly finished) study, as report sections with their figures.

The numbers come from :mod:`transferscope.analysis`; the words, tables and figures are written here.
:func:`analyze_study` computes, from a study directory, the sections the report adds to the
paper's figures and tables: whether the base networks trained long enough, representation
similarity (CKA), transferability predicted without training (LogME, H-score, linear probe),
first-layer filters, freeze or fine-tune by target size, an optional comparison with another
study, and the provenance of the runs. Figures and CSV tables are written into ``out_dir``.

An analysis that cannot run leaves a note in the report instead of stopping it: one that needs the
images (CKA, the estimate) where the study was opened without its dataset (``study.data`` is None:
moved, changed, or on another machine) says so and is skipped; sections that say what is missing
(a base network without weights) name the network and its recorded status; an analysis that fails
prints one line and appends its traceback to the study's errors.log.
"""

from __future__ import annotations

import math
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

import transferscope.analysis.convergence as conv
import transferscope.analysis.recommend as rec
from transferscope.analysis.cache import AnalysisCache, Entry, Inputs, snapshot, written_since
from transferscope.analysis.estimate import (
    TRUSTED_RHO,
    computed,
    estimate,
    measured_transfer,
    score_correlations,
    score_cost,
    validation,
)
from transferscope.analysis.filters import study_filters
from transferscope.analysis.networks import weights_absence
from transferscope.analysis.similarity import base_curve, base_matrix, finetune_table, study_similarity
from transferscope.errors import UserError, one_line
from transferscope.progress import ReportProgress
from transferscope.provenance import provenance
from transferscope.record import RunRecord
from transferscope.report.analysis_figures import (
    MAX_FILTERS,
    plot_cka_curves,
    plot_cka_heatmaps,
    plot_convergence,
    plot_estimates,
    plot_filters,
    plot_finetune_curve,
    plot_freeze_map,
    plot_target_sizes,
    save,
)
from transferscope.report.reading import Comparison, compare_studies, interval, reading, signed
from transferscope.report.tables import format_cell as _cell
from transferscope.report.text import MISSING, ci_text, markdown_table, number, slug
from transferscope.stats import CONFIDENCE, PAIR, ROLE_LABELS, done_runs
from transferscope.store import Store
from transferscope.study import Study
from transferscope.treatments import TREATMENTS, base_key, treatment


@dataclass(frozen=True)
class Section:
    """One report section: a level-2 heading ``title`` and a Markdown ``body``."""

    title: str
    body: str

    @property
    def anchor(self) -> str:
        return slug(self.title)

    def markdown(self) -> str:
        return f"## {self.title}\n\n{self.body.rstrip()}\n"


@dataclass
class Analysis:
    """What :func:`analyze_study` found: report sections (in order), the reading (one claim per
    paragraph), the provenance section, tables by name, figure files and notes."""

    sections: list[Section] = field(default_factory=list)
    reading: list[str] = field(default_factory=list)
    provenance: Section | None = None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    comparison: Comparison | None = None
    #: every analysis asked for was computed or served from the cache (none failed or lacked its inputs)
    complete: bool = True
    convergence: conv.Convergence | None = None


# ---------------------------------------------------------------------------------- helpers


def _records_classes(records: list[RunRecord]) -> dict[tuple[int, str], int]:
    """Classes per (replicate, task), from the recorded splits."""
    out: dict[tuple[int, str], int] = {}
    for r in records:
        if r.split is not None:  # the target T of a study from a pretrained network is B
            out[r.replicate, r.target] = len(r.split.A if r.target == "A" else r.split.B)
    return out


def _no_images(study) -> str:
    """Why a study has no images, as a clause: "the dataset cannot be loaded here: ..."."""
    missing = str(study.missing or "it was opened without them")
    return missing if missing.startswith("the dataset") else f"the dataset is not available here ({missing})"


# ------------------------------------------------------------------------------ convergence


def _val_images(study, records: list[RunRecord]) -> dict[tuple[int, str], int] | None:
    """Validation images per (replicate, task) of the base networks, for the noise floor; None
    where the study has no images (run records do not hold these counts)."""
    if study.data is None:
        return None
    tasks = {(r.replicate, r.target) for r in records if treatment(r.role).is_base}
    return {t: len(study.task(*t).val) for t in tasks}


def _convergence_section(records: list[RunRecord], study, done: pd.DataFrame, out: Path, title: str,
                         analysis: Analysis) -> Section:

    epochs, schedule = study.config.train.epochs, study.config.train.schedule
    val_images = _val_images(study, records)
    train = study.config.train
    c = conv.check_convergence(records, epochs, val_images=val_images,
                               plateau_window=train.plateau_window if train.budget == "plateau" else None)
    analysis.convergence = c
    analysis.tables["convergence"] = c.networks
    c.networks.to_csv(out / "convergence.csv", index=False)
    full = c.networks.loc[c.networks["target_size"].isna()]
    k = conv.tail_length(epochs)
    lines = ["Each base network's validation top-1 over its last k = max(3, ceil(20% of the epochs)) epochs "
             + (f"(here k = {k}) " if k >= conv.MIN_TAIL else "")
             + f"is fitted by a least-squares line; a slope above {c.threshold} top-1 per epoch "
             f"({c.threshold * 100:g} points per epoch) flags it as **still improving**, unless the rise it implies "
             "over the tail (slope x (k - 1)) is within the noise of one validation measurement (twice the binomial "
             "standard error, 2 sqrt(p(1-p)/n_val)): then it is *rising within noise*.\n"]
    if schedule != "constant":
        lines.append(f"A flat end is necessary, not sufficient: the {schedule} schedule lowers the learning rate, which "
                     "flattens every curve at its end, converged or not. So each curve is also fitted over the last half "
                     f"(at least 3) of the epochs at which its learning rate was at least {conv.HIGH_RATE:g} of its peak; still rising there (the same threshold, "
                     "beyond the larger of the noise floor and the curve's own epoch-to-epoch scatter there), the "
                     "network was **cut short**: it was improving at a useful rate when the "
                     "schedule began to lower the rate, and counts as still improving.\n")
    if val_images is None and c.assessable:
        lines.append("The validation set sizes are not known here (they are counted from the dataset, and "
                     f"{_no_images(study)}): the noise floor is not applied, so a network flagged still improving may "
                     "be rising within noise.\n")
    if not c.assessable and full.empty:
        lines.append("No base network trained on all of its data has finished: convergence cannot be assessed.\n")
    elif not c.assessable and epochs < conv.MIN_TAIL:
        lines.append(f"With {epochs} epoch(s) per network there are fewer than 3 points to fit: convergence cannot "
                     "be assessed, and nothing shows that the base networks converged. Train for more epochs.\n")
    elif not c.assessable:
        lines.append("No finished base network trained on all of its data has 3 or more recorded epochs to fit: "
                     "convergence cannot be assessed.\n")
    else:
        analysis.figures.append(save(plot_convergence(c.curves, c.networks, title), out / "convergence.png"))
        lines.append("![Validation top-1 of each finished base network trained on all of its data, with the fitted "
                     "tail slope (red: still improving)](convergence.png)\n")
        def verdict(r) -> str:
            if r.rising_end:
                return "**yes**"
            return "**cut short**" if r.cut_short else "rising within noise" if r.slope_above else "no"

        high = schedule != "constant"
        rows = [[r.key, str(r.epochs), str(r.k), number(r.slope, sign=True, digits=4), number(r.rise, sign=True),
                 number(r.noise), number(r.final_val), number(r.best_val),
                 *([f"{number(r.high_slope, sign=True, digits=4)} ({r.high_epochs} epochs)"] if high else []),
                 verdict(r)] for r in full.itertuples()]
        lines.append(markdown_table(["base network", "epochs", "tail k", "slope per epoch", "rise over tail", "noise floor",
                                     "final val top-1", "best val top-1",
                                     *(["slope while the rate was high"] if high else []), "still improving"], rows))
        reduced = c.networks.loc[c.networks["target_size"].notna()]
        if len(reduced):
            lines.append(f"Base networks trained on reduced target data (target sizes): "
                         f"{int(reduced['still_improving'].sum())} of {len(reduced)} still improving.\n")
        flagged = full.loc[full["still_improving"]]
        if len(flagged):
            verb = "was" if len(flagged) == 1 else "were"
            short = int(flagged["cut_short"].sum())
            lines.append(f"**{len(flagged)} of {len(full)} base networks {verb} still improving when training "
                         "stopped**" + (f" ({short} of them cut short by the schedule: still rising while the learning "
                                        "rate was high, flat only because it fell)" if short else "") + ". "
                         "This undermines the comparisons with base: with unconverged base networks, copied layers "
                         "act as a head start rather than as features, so BnB and AnB can match or beat base at low n "
                         "and the fine-tuning gain (AnB+ - base) is inflated; the specificity and co-adaptation "
                         "estimates then mix feature generality with training time. "
                         f"Suggested: {c.advice}.\n")
        else:
            lines.append("No base network trained on all of its data was still improving at the end.\n")
    if study.config.train.budget == "plateau":
        lines.append(_plateau_text(records, study.config.train))
    hs = conv.head_start(done) if len(done) else None
    if hs is not None:
        stats = ci_text(hs.mean, hs.ci_low, hs.ci_high, f"{hs.replicates} replicate" + ("s" if hs.replicates != 1 else ""),
                        sign=True)
        if hs.detected:
            said = ("significantly above zero: the head-start symptom. Copied layers that beat their own network "
                    "retrained from that point act as a head start, not as features")
        elif math.isfinite(hs.p) and hs.p < 1.0 - CONFIDENCE:
            said = "significantly below zero: no head start"
        elif not math.isfinite(hs.ci_high):
            said = "no interval with one replicate, so the data cannot tell whether there is a head start"
        else:
            said = (f"the data cannot tell it from zero: no head start is detected, but one of up to "
                    f"{number(hs.ci_high, sign=True)} is within the interval")
        lines.append(f"The symptom on the study's own numbers: BnB - base at n = {hs.n} (each replicate's difference "
                     f"paired within it; 95% interval over replicates) is {stats}, {said}.\n")
    return Section("Was the study trained long enough?", "\n".join(lines))


def _plateau_text(records: list[RunRecord], train) -> str:
    """The budget each base network found on its validation plateaus, and why it stopped."""
    finders = [r for r in records if r.budget is not None and r.budget.found_by == r.key and r.status == "done"]
    if not finders:
        return "The training budget is found on validation plateaus (`train.budget = \"plateau\"`); no base network " \
               "has found one yet.\n"
    rows = []
    for r in sorted(finders, key=lambda r: r.key):
        rates = [h.get("lr") for h in r.history]
        drops = [str(i + 1) for i in range(1, len(rates)) if rates[i] is not None and rates[i - 1] is not None
                 and rates[i] < rates[i - 1]]
        rows.append([r.key, str(r.budget.steps), str(r.budget.epochs), ", ".join(drops) or "none",
                     r.budget.stopped or MISSING])
    return ("**Budget found on validation plateaus** (`train.budget = \"plateau\"`): each base network trained on all "
            f"its data divided its learning rate by {train.step_gamma:g} when the least-squares slope of its validation "
            f"top-1, over the last {train.plateau_window} epochs and over the last half of the epochs since the rate "
            f"last changed, was at most {train.plateau_threshold:g} per epoch, and stopped at "
            f"the plateau after {train.plateau_drops} drop(s) or at train.epochs = {train.epochs}; every other run on "
            "its task trained as many optimisation steps, its rate dropped at the same steps.\n\n"
            + markdown_table(["base network", "steps", "epochs", "rate divided from epoch", "stopped at"], rows))


# ------------------------------------------------------------------------------------- CKA


def _cka_section(store: Store, study, frame: pd.DataFrame, out: Path, title: str, analysis: Analysis,
                 batch_size: int, max_images: int, on_step: Callable[[int, int], None] | None = None) -> Section:

    sim = study_similarity(store, study, frame, batch_size=batch_size, max_images=max_images, on_step=on_step)
    analysis.notes += [f"CKA: {n}" for n in sim.notes]
    not_compared = "".join(f"- replicate {r}: {why}\n" for r, why in sim.skipped.items())
    if sim.bases.empty:
        return Section("Representation similarity (CKA)", "Not computed: no replicate has the weights of both its "
                       "base networks.\n\n" + not_compared)
    curve = base_curve(sim)
    ft = finetune_table(sim, "source")
    ft_target = finetune_table(sim, "target base")
    pd.concat([sim.bases.assign(kind="baseA vs baseB"), sim.finetuned.assign(kind="fine-tuned")],
              ignore_index=True).to_csv(out / "cka.csv", index=False)
    analysis.tables.update(cka_bases=sim.bases, cka_finetuned=sim.finetuned, cka_curve=curve)
    analysis.figures.append(save(plot_cka_curves(curve, ft, sim.layer_names, title), out / "cka_layers.png"))
    heatmaps = plot_cka_heatmaps(base_matrix(sim), ft, sim.layer_names, title)
    analysis.figures.append(save(heatmaps, out / "cka_heatmap.png"))
    names = sim.layer_names
    targets = study.config.treatments.targets
    lines = [
        (f"Linear CKA between layer outputs on the target task's test images (at most {sim.images} per task), with "
         f"the unbiased HSIC estimator (Song et al. 2012) averaged over random minibatches of about {sim.batch_size} "
         "images (Nguyen et al. 2021). 1: the same representation up to rotation and scale; near 0: unrelated. "
         "Layer outputs are flattened. Cells: mean [95% CI over replicates] (replicates, values behind them: for "
         "baseA vs baseB one per target task's images, for fine-tuned networks one per network); each replicate "
         + ("counts once, as the mean over its two targets' images and directions.\n" if len(targets) > 1 else
            f"counts once (one target task here, {targets[0]}).\n")),
        ("![CKA per layer: baseA vs baseB, and each fine-tuned network vs the base it copied from (filled markers: "
         "copied layers; open: re-initialised)](cka_layers.png)\n"),
        ("![Layer-by-layer CKA: baseA vs baseB (every pair of layers), and fine-tuned networks vs their source at "
         "each cut point and layer](cka_heatmap.png)\n"),
    ]
    rows = [[f"{r.layer} {names[r.layer - 1]}", _cell(r.mean, r.ci_low, r.ci_high, r.replicates, r.networks)]
            for r in curve.itertuples()]
    lines.append(markdown_table(["layer", "CKA(baseA, baseB), same layer"], rows))
    for role, label in ((t.role, f"{t.label} vs {'baseB' if t.copies == 'target' else 'baseA'}")
                        for t in TREATMENTS if t.analysed):
        sub = ft.loc[ft["role"] == role]
        if sub.empty:
            continue
        layers = sorted(set(sub["layer"]))
        rows = []
        for n, g in sub.groupby("n"):
            by_layer = g.set_index("layer")
            cells = [_cell(*by_layer.loc[la, ["mean", "ci_low", "ci_high"]], int(by_layer.loc[la, "replicates"]),
                           int(by_layer.loc[la, "networks"]))
                     if la in by_layer.index else MISSING for la in layers]
            rows.append([f"n={n}", *cells])
        lines.append(f"How far fine-tuning moved each layer, {label} (its source), per cut point n (rows) and layer "
                     "(columns); layers 1..n were copied, the rest re-initialised:\n")
        lines.append(markdown_table(["", *[f"{la} {names[la - 1]}" for la in layers]], rows))
    lines.append("Every value per network in [cka.csv](cka.csv).\n")
    if not_compared:
        lines.append(f"Not compared ({len(sim.skipped)} of {len(sim.skipped) + sim.bases['replicate'].nunique()} "
                     "replicates), for want of a base network's weights:\n\n" + not_compared)
    if len(curve):
        hi, lo = curve.loc[curve["mean"].idxmax()], curve.loc[curve["mean"].idxmin()]
        lines.append(f"baseA and baseB are most alike at layer {int(hi.layer)} ({names[int(hi.layer) - 1]}: "
                     f"{_cell(hi['mean'], hi.ci_low, hi.ci_high, int(hi.replicates), int(hi.networks))}) and least at layer "
                     f"{int(lo.layer)} ({names[int(lo.layer) - 1]}: "
                     f"{_cell(lo['mean'], lo.ci_low, lo.ci_high, int(lo.replicates), int(lo.networks))}).\n")
    if not ft_target.empty:
        last = ft_target.loc[ft_target["layer"] == ft_target["layer"].max()]
        lines.append("AnB+ against baseB (the network trained on B from scratch) at the classifier layer, per n: "
                     + ", ".join(f"n={int(r.n)}: {number(r.mean)}" for r in last.itertuples()) + ".\n")
    return Section("Representation similarity (CKA)", "\n".join(lines))


# -------------------------------------------------------------------------------- estimate


def _estimate_section(store: Store, study, frame: pd.DataFrame, out: Path, title: str, analysis: Analysis,
                      max_features: int, on_step: Callable[[int, int], None] | None = None) -> Section:

    est = estimate(store, study=study, max_features=max_features, out=out / "estimate.csv", on_step=on_step)
    analysis.notes += [f"estimate: {n}" for n in est.notes]
    scores = est.scores
    measured = measured_transfer(frame)
    corr = score_correlations(scores, frame)
    analysis.tables.update(estimate=scores, estimate_correlations=corr)
    shown = computed(scores)  # the short AnB only where it was asked for
    analysis.figures.append(save(plot_estimates(scores, measured, shown, title), out / "estimate.png"))
    seconds = float(scores["seconds"].sum())
    short_s, anb_s = score_cost(scores, frame)
    fraction = scores["short_steps"] / scores["full_steps"]
    lines = [
        ("Scores of the frozen features an AnB network gets (layer n of the source base network, on the target "
         "task's images), computed from the base networks alone in "
         f"{seconds:.1f} s of scoring: LogME (You et al. 2021; the evidence's largest maximum, found on the "
         "feature spectrum), H-score (Bao et al. 2019, Ledoit-Wolf-shrunk covariance) on the training images, and a "
         "ridge linear probe (ridge chosen on the validation images, top-1 on the test images). Features: the "
         f"layer's output flattened when it has at most {est.max_features} values per image, otherwise conv maps "
         "average-pooled to the largest square grid that fits (feature counts below). "
         "`transferscope estimate DIR` computes the same after training only the base networks.\n"),
    ]
    if scores["stitch_top1"].notna().any():
        lines.append("The stitched base maps layer n of the source base network linearly into the target's own base "
                     "network (a 1x1 map of channels on conv maps, ridge regression on the training images), runs "
                     "the target base network's layers n+1..L on it, and fine-tunes the map and those layers for "
                     "one epoch on the training images: its test top-1 estimates the AnB accuracy itself "
                     f"(Lenc & Vedaldi 2015; Bansal et al. 2021), in {scores['stitch_seconds'].sum():.1f} s.\n")
    if fraction.notna().any():
        cost = (f"{short_s:.1f} s, {short_s / anb_s:.1%} of the {anb_s:.1f} s the AnB runs it predicts took"
                if math.isfinite(anb_s) and anb_s > 0 else f"{scores['short_seconds'].sum():.1f} s")
        lines.append("The short AnB trains the AnB network itself (layers 1..n copied and frozen, its own upper layers, "
                     f"initialisation and data order) for {fraction.mean():.0%} of its optimisation steps, its schedule "
                     f"compressed to the shorter run, on the frozen layers' outputs computed once: {cost} (wall time, "
                     "the study's threads per run).\n")
    else:
        short_v = next((v for v in validation() if v.score == "short_top1"), None)
        lines.append("Not computed here: the short AnB (the AnB network trained for a few % of its steps; "
                     "`transferscope estimate DIR --short 0.08`)"
                     + (f", weak on {len(short_v.weak_on)} of {len(short_v.rhos)} validation sets of docs/estimate.md"
                        if short_v and short_v.weak_on else "") + ".\n")
    lines.append("![Measured AnB test top-1 and each score against the cut point (mean and 95% CI over replicates, "
                 "each the mean of its directions)](estimate.png)\n")
    agg = scores.groupby(["n", "layer"], as_index=False).agg(
        features=("features", "max"), logme=("logme", "mean"), h_score=("h_score", "mean"),
        probe=("probe_top1", "mean"), stitch=("stitch_top1", "mean"), short=("short_top1", "mean"))
    meas = measured.groupby("n")["measured"].mean() if not measured.empty else pd.Series(dtype=float)
    short = "short_top1" in shown
    rows = [[f"{r.n} {r.layer}", str(r.features), number(r.logme, digits=4), number(r.h_score), number(r.probe),
             number(r.stitch), *([number(r.short)] if short else []),
             number(meas[r.n]) if r.n in meas.index else MISSING]
            for r in agg.itertuples()]
    lines.append(markdown_table(["n", "features", "LogME", "H-score", "probe top-1", "stitched top-1",
                                 *(["short AnB top-1"] if short else []), "measured AnB top-1"], rows))
    pairs = len(scores[list(PAIR)].drop_duplicates())
    planned = study.config.treatments.replicates * len(study.config.treatments.targets)
    lines.append(("Means over replicates and directions" if pairs == planned else
                  f"Means over the {pairs} of {planned} (replicate, target) pairs scored (the notes say why the others "
                  "are not)") + "; per network in [estimate.csv](estimate.csv).\n")
    if measured.empty:
        lines.append("No AnB run has finished yet, so the scores cannot be checked against measured transfer.\n")
    else:
        crow = [[r.label, _rho_interval(r), _rho(r.rho_means, r.p_means, r.cut_points)] for r in corr.itertuples()]
        lines.append("Spearman rank correlation with the measured AnB test top-1 across cut points "
                     "(scipy.stats.spearmanr): within each replicate (score and measured accuracy averaged over its "
                     "two directions, which share its base networks), then the mean over replicates with a 95% "
                     "Student-t interval over replicates, truncated to [-1, 1]; and between the per-n means (the "
                     "shape of the curve), with a two-sided p-value, exact (all rank permutations) for at most 8 "
                     "cut points.\n")
        lines.append(markdown_table(["score", "per replicate: mean rho [95% CI] (replicates)",
                             "per-n means: rho (p, cut points)"], crow))
        weak = [r.label for r in corr.itertuples() if not r.rho >= TRUSTED_RHO]
        if weak:
            lines.append(f"Weak in this study (mean rho below {TRUSTED_RHO}, or undefined): {', '.join(weak)}. Their "
                         "ranking of the cut points is not a reason to freeze or copy a layer here; the measured curve "
                         "is.\n")
        validated = [v for v in validation() if v.weak_on and v.score in shown]
        if validated:
            lines.append("On the validation sets of docs/estimate.md, weak on some: " + "; ".join(
                f"{v.label} on {', '.join(v.weak_on)}" for v in validated) + ". No recommendation in this report rests "
                "on a score: they come from the measured runs.\n")
        if (points := int(corr["cut_points"].max())) < 5:
            lines.append(f"With {points} cut point{'s' if points != 1 else ''} a rank correlation of the means is "
                         + ("coarse (few possible values); read it as a sign, not a measurement.\n" if points >= 3
                            else "undefined (it needs 3 or more).\n"))
    return Section("Predicting the curve without training", "\n".join(lines))


def _rho_interval(r) -> str:
    count = f"{r.replicates} replicate" + ("" if r.replicates == 1 else "s")
    if not math.isfinite(r.rho):
        return f"{MISSING} ({count}; undefined)"
    return ci_text(r.rho, r.rho_low, r.rho_high, count, sign=True, digits=2)


def _rho(rho: float, p: float, count: int) -> str:
    if not math.isfinite(rho):
        return f"{MISSING} ({count} points; undefined)"
    return f"{rho:+.2f} (p = {p:.2g}, {count})"


# ------------------------------------------------------------------------------------ filters


def _filters_section(store: Store, study, frame: pd.DataFrame, out: Path, title: str, analysis: Analysis) -> Section:

    name = "First-layer filters"
    absent = {t: weights_absence(store, frame, base_key(0, t)) for t in ("A", "B")}
    panels = study_filters(store, study, frame, replicate=0)
    if not panels:
        if all(absent.values()):
            return Section(name, "No filters to show: neither base network of replicate 0 has weights ("
                           + "; ".join(str(w) for w in absent.values()) + ").\n")
        return Section(name, "Layer 1 of this architecture has no Conv2d: no filters to show.\n")
    analysis.figures.append(save(plot_filters(panels, title + ", replicate 0"), out / "filters.png"))
    rows: list[list] = []  # as plot_filters draws them: a row per base network, then its fine-tuned networks
    for panel in panels:
        if panel.label.startswith("base") or not rows:
            rows.append([])
        rows[-1].append(panel)
    drawn = "; ".join(", ".join(p.label.split(" (")[0] for p in row) for row in rows)
    bases = [row[0].label for row in rows]
    with_finetuned = [row[0].label for row in rows if len(row) > 1]
    alt = (f"First-layer filters of {' and '.join(bases)}"
           + (" and of fine-tuned networks that copied layer 1 from " + " and ".join(with_finetuned)
              if with_finetuned else ""))
    text = ("The weights of the first Conv2d in layer 1, one tile per filter (where a layer has more than "
            f"{MAX_FILTERS}, the {MAX_FILTERS} of largest L2 norm in each base network, and the same filters in the "
            "networks that copied it), each normalised to [0, 1] on its own "
            f"(colour for RGB input, grey otherwise). Replicate 0, one row per base network shown ({drawn}): the base "
            "network, then the fine-tuned transfers whose layer 1 was copied from it, at the smallest and largest cut "
            "point whose network has weights.\n\n"
            f"![{alt}](filters.png)\n")
    missing = [f"base{t}: {why}" for t, why in absent.items() if why]
    if missing:
        text += "\nNot shown: " + "; ".join(missing) + ".\n"
    lonely = [row[0].label for row in rows if len(row) == 1]
    if lonely:
        why = ("eval.save_weights = \"bases\" keeps no fine-tuned network"
               if study.config.eval.save_weights == "bases"
               else "no fine-tuned transfer that copied its layer 1 has finished with weights")
        text += f"\nNo fine-tuned network is shown beside {' or '.join(lonely)}: {why}.\n"
    changes = [p for p in panels if p.change is not None]
    if changes:
        text += ("\nRelative change of the filters by fine-tuning, |W - W_source| / |W_source|: "
                 + "; ".join(f"{p.label.split(' (')[0]}: {p.change:.1%}" for p in changes) + ".\n")
    return Section(name, text)


# ------------------------------------------------------------------------------ target sizes


def _sizes_section(frame: pd.DataFrame, records: list[RunRecord], out: Path, title: str, analysis: Analysis) -> Section:

    name = "Freeze or fine-tune, by target size"
    if not rec.has_sizes(frame):
        return Section(name, "This study ran no reduced-target-data runs. Set `treatments.target_sizes` (fractions "
                       "such as 0.05 or images per class such as 10) to measure, at each size, whether frozen or "
                       "fine-tuned transfer beats training from scratch.\n")
    runs = rec.size_runs(frame, _records_classes(records))
    summary = rec.size_summary(runs)
    summary.to_csv(out / "target_sizes.csv", index=False)
    analysis.tables["target_sizes"] = summary
    analysis.figures.append(save(plot_target_sizes(summary, title), out / "target_sizes.png"))
    recs = rec.recommend(runs)

    def size(r: rec.Recommendation) -> str:
        return r.size_label if r.size_label.endswith("per class") else f"{r.size_label} ({r.per_class:.0f} per class)"

    rows = [[size(r), r.best, _cell(r.mean, r.ci_low, r.ci_high, r.replicates, r.networks),
             interval(r.vs_scratch, r.vs_low, r.vs_high, r.vs_replicates) if r.best != "train from scratch" else MISSING,
             r.verdict, ", ".join(r.indistinguishable) or "none"] for r in recs]
    ran = [treatment(role) for role in dict.fromkeys(summary["role"]) if not treatment(role).is_base]
    split = study_design(records) == "split"
    lines = [
        ("At each amount of target training data (the full study is the full size): test top-1 of a base network "
         "trained from scratch on that data and of " + ", ".join(
             f"{t.label} ({'a linear probe on frozen layers 1..n' if t.head == 'linear' else 'copied layers ' + ('fine-tuned' if t.fine_tuned else 'frozen')})"
             for t in ran) + (", both directions averaged within each replicate" if split else "") + ".\n"),
        ("![Test top-1 against training images per class, frozen and fine-tuned transfer at each cut point against "
         "training from scratch](target_sizes.png)\n"),
        markdown_table(["target size", "best (highest mean)", "test top-1 [95% CI] (replicates, networks)",
                "margin over scratch, paired [95% CI]", "against scratch", "not distinguishable from the best"],
               rows, align=":--"),
        ("The margin is paired by replicate and target; every interval is over replicates"
         + (" (the mean of the two directions of each)" if split else "") + ". \"Not distinguishable from the best\": "
         "alternatives whose "
         "paired difference to the best has a 95% CI including 0 (or fewer than 2 replicates). The best is chosen on the "
         "same test accuracies, so its margin is optimistic when candidates are close. All cells in "
         "[target_sizes.csv](target_sizes.csv).\n"),
    ]
    lines.append(_budget_text(runs))
    lines.append(_map_text(summary))
    diff = rec.finetune_minus_freeze(runs)
    if not diff.empty:
        diff.to_csv(out / "finetune_minus_freeze.csv", index=False)
        analysis.tables["finetune_minus_freeze"] = diff
        analysis.figures.append(save(plot_freeze_map(diff, title), out / "freeze_map.png"))
        analysis.figures.append(save(plot_finetune_curve(diff, title), out / "finetune_curve.png"))
        lines += [
            ("**Fine-tune or freeze?** Fine-tuned minus frozen test top-1 at each cut point and target size, paired "
             "by replicate and target, mean [95% CI] over replicates; the copied layers hold the parameters that "
             "fine-tuning frees (all cells in [finetune_minus_freeze.csv](finetune_minus_freeze.csv)).\n"),
            "![Fine-tuned minus frozen, by cut point and target size](freeze_map.png)\n",
            "![Fine-tuned minus frozen against training images per class](finetune_curve.png)\n",
            markdown_table(["pair", "target size", "n", "copied parameters", "fine-tuned - frozen [95% CI]"],
                           [[f"{r.fine_tuned} - {r.frozen}", r.size_label, str(r.n),
                             f"{r.copied_params:,.0f}" if math.isfinite(r.copied_params) else MISSING,
                             interval(r.mean, r.ci_low, r.ci_high, int(r.replicates))] for r in diff.itertuples()],
                           align=":--"),
        ]
    return Section(name, "\n".join(lines))


def _map_text(summary: pd.DataFrame) -> str:
    """Every candidate at every size: accuracy [95% CI], margin over scratch, what it trains and how
    long it took."""
    rows = [[r.size_label, r.candidate, _cell(r.mean, r.ci_low, r.ci_high, int(r.replicates), int(r.networks)),
             interval(r.vs_scratch, r.vs_low, r.vs_high, int(r.vs_replicates)) if not treatment(r.role).is_base else MISSING,
             f"{r.trainable_params:,.0f}" if math.isfinite(r.trainable_params) else MISSING,
             f"{r.train_time_s:.1f}" if math.isfinite(r.train_time_s) else MISSING] for r in summary.itertuples()]
    return ("**The map.** Every choice at every target size: test top-1 [95% CI] (replicates, networks), its "
            "margin over training from scratch on the same data (paired, [95% CI] over replicates), the "
            "parameters it trains and its measured training time per network (mean, seconds; a frozen run "
            "counts the time to carry its job's shared prefix outputs up to its layer n).\n\n"
            + markdown_table(["target size", "choice", "test top-1", "margin over scratch", "trainable parameters",
                              "training time (s)"], rows, align=":--"))


def study_design(records: list[RunRecord]) -> str:
    """The design the records come from: "pretrained" where any run copies the pretrained network."""
    return "pretrained" if any(treatment(r.role).copies == "pretrained" for r in records) else "split"


_BUDGET_RULES = {
    "steps": ("each network on reduced target data trained for as many optimisation steps as the networks on its "
              "task's full training set, so for more epochs (`treatments.size_budget = \"steps\"`)"),
    "epochs": ("every network trained for `train.epochs` epochs whatever its target size, so for fewer optimisation "
               "steps on less data (`treatments.size_budget = \"epochs\"`): a smaller size is also a shorter "
               "training, which handicaps training from scratch against transfer"),
}


def _budget_text(runs: pd.DataFrame) -> str:
    """How long the networks of each target size trained, as their records say: the comparison
    depends on it."""
    trained = runs.loc[[treatment(role).head == "layers" for role in runs["role"]]]  # a probe takes no steps
    recorded = trained.dropna(subset=["budget_rule"]) if "budget_rule" in trained else trained.iloc[0:0]
    if recorded.empty:
        return ("The training budget of these runs is not recorded (they predate it: every size then trained for "
                "`train.epochs` epochs).\n")

    def span(values: pd.Series) -> str:
        lo, hi = int(values.min()), int(values.max())
        return f"{lo}" if lo == hi else f"{lo}-{hi}"

    rules = [_BUDGET_RULES.get(r, f"rule {r!r}") for r in dict.fromkeys(recorded["budget_rule"])]
    sizes = sorted(recorded.groupby("size_label", sort=False), key=lambda item: item[1]["per_class"].mean())
    per_size = "; ".join(f"{label}: {span(g['budget_epochs'])} epochs, {span(g['budget_steps'])} steps"
                         for label, g in sizes)
    missing = len(trained) - len(recorded)
    return ("Training budget: " + "; ".join(rules) + f". Per network trained by SGD, by target size: {per_size}."
            + (f" {missing} of these runs have no recorded budget." if missing else "") + "\n")


# ------------------------------------------------------------------------------- provenance


def _provenance_section(store: Store, records: list[RunRecord]) -> Section:

    now = provenance()
    prov = [r.provenance for r in records]
    commits = Counter(p.git.get("commit") if p else None for p in prov)
    dirty = Counter(str(p.git.get("dirty") if p else None) for p in prov)
    versions = Counter(tuple(sorted(p.versions.items())) if p else () for p in prov)
    hosts = Counter(p.host if p else None for p in prov)
    devices = Counter(f"{r.device} {r.precision}" for r in records if r.device)
    finished = sorted(r.finished_at for r in records if r.finished_at)
    lines = [f"- Runs recorded: {len(records)}" + (f", finished {finished[0]} to {finished[-1]}" if finished else "")]
    lines.append("- Git commits of the runs: " + "; ".join(f"`{c}` ({k} runs)" for c, k in commits.most_common())
                 + " (dirty working tree: " + ", ".join(f"{d}: {k}" for d, k in dirty.most_common()) + ")")
    for v, k in versions.most_common():
        lines.append(f"- Versions ({k} runs): " + ", ".join(f"{name} {ver}" for name, ver in v))
    lines.append("- Hosts: " + ", ".join(f"{h} ({k})" for h, k in hosts.most_common()))
    if devices:
        lines.append("- Device and precision: " + ", ".join(f"{d} ({k})" for d, k in devices.most_common()))
    git = now["git"]
    same = ("the runs' commit" if set(commits) == {git["commit"]} else f"transferscope commit `{git['commit']}`",
            "their versions" if {tuple(sorted(now["versions"].items()))} == set(versions) else
            ", ".join(f"{k} {v}" for k, v in now["versions"].items()))  # each said once
    lines.append(f"- This report: {same[0]} (dirty: {git['dirty']}), {same[1]}")
    config = store.config_path.read_text(encoding="utf-8") if store.config_path.is_file() else "(no config.toml)"
    body = ("\n".join(lines) + "\n\nThe study's resolved configuration (`config.toml`):\n\n```toml\n"
            + config.rstrip() + "\n```\n")
    return Section("Provenance", body)


# ------------------------------------------------------------------------------------- main


def _say(line: str) -> None:
    """One line on the terminal (stderr), as the data cache's messages."""
    print(line, file=sys.stderr, flush=True)


#: each analysis (as ``report.analyses`` names it) -> its name in the report's notes and messages
LABELS = {"convergence": "convergence", "cka": "CKA", "estimate": "estimate", "filters": "filters",
          "target_sizes": "target sizes", "comparison": "comparison"}


def _record_files(store: Store, records: list[RunRecord], full_only: bool) -> list[Path]:
    return [store.run_path(r.key) for r in records if not (full_only and r.target_size is not None)]


def _inputs(store: Store, study, records: list[RunRecord], name: str, params: dict, compare: Path | None) -> Inputs:
    """What analysis ``name`` reads, for its cache key: the configuration (but its name, where runs
    execute and what the report computes), the run records it reads (all of them where it reads
    the reduced-target-data runs, else those on all of their data), the weights files where it
    loads networks, the data's fingerprint where it reads images, and its parameters."""
    config = {k: v for k, v in study.config.to_dict().items() if k not in ("name", "execution", "report")}
    inputs = Inputs().add("config", config).add("params", params)
    inputs.files("records", _record_files(store, records, full_only=name not in ("convergence", "target_sizes")))
    if name in ("cka", "estimate", "filters"):
        inputs.files("weights", (store.root / "weights").glob("*.safetensors"))
    if name in ("convergence", "cka", "estimate"):
        inputs.add("data", study.info.get("fingerprint"))
    if name == "comparison" and compare is not None:
        other = Store(compare)
        inputs.add("compare", str(Path(compare).resolve())).files("compare_config", [other.config_path])
        inputs.files("compare_records", (other.root / "runs").glob("*.json"))
    return inputs


def analyze_study(store: Store | str | Path, study=None, out_dir: str | Path | None = None, *,
                  compare: str | Path | None = None, cka: bool = True, estimate: bool = True,
                  cka_batch_size: int = 256, max_images: int = 2048, max_features: int = 2048,
                  analyses: Iterable[str] | None = None, cache: bool | AnalysisCache = False,
                  progress: ReportProgress | bool = False) -> Analysis:
    """Run the analyses of the study in ``store`` and write their figures and tables into
    ``out_dir`` (default: the study's report folder). ``compare``: another study directory
    (e.g. the dissimilar split) whose AnB - base curve is compared with this one's.

    ``analyses``: which ones (names as in ``report.analyses``: :data:`LABELS`; default: the study's
    ``report.analyses``, all of them unless it says otherwise). ``cache``: serve each analysis
    whose inputs are unchanged from ``DIR/cache/analyses`` and store what is computed
    (:mod:`transferscope.analysis.cache`; an :class:`AnalysisCache` to read its ``hits`` and
    ``misses`` afterwards). ``progress``: a line per analysis on stderr (or a
    :class:`~transferscope.progress.ReportProgress`).

    A study opened without its images (``Study.open(store, images=False)``) loads them only if an
    analysis that reads them has to be computed.

    Pass the result to :func:`transferscope.report.write_report` (``analysis=``) to put it in
    report.md and report.html."""

    store = store if isinstance(store, Store) else Store(store)
    if study is None:

        study = Study.open(store)
    out = Path(out_dir) if out_dir is not None else store.root / "report"
    records = store.records()
    if not any(r.status == "done" for r in records):
        return Analysis(notes=["no finished runs: nothing analysed"])  # and nothing written
    out.mkdir(parents=True, exist_ok=True)
    frame = store.frame()
    frame = frame.loc[frame["role"].isin(list(ROLE_LABELS))] if len(frame) else frame
    full = frame.loc[frame["target_size"].isna()] if "target_size" in frame else frame
    try:
        done = done_runs(full)
    except Exception:  # noqa: BLE001  (no usable runs: every analysis below copes with an empty table)
        done = full.iloc[0:0]
    cfg = study.config
    title = f"{cfg.data.dataset}, {cfg.model.arch}"
    analysis = Analysis()
    chosen = list(cfg.report.analyses if analyses is None else analyses)
    unknown = [a for a in chosen if a not in LABELS]
    if unknown:
        raise UserError(f"analyses: unknown analysis {unknown[0]!r}; allowed: {', '.join(LABELS)}")
    cache = cache if isinstance(cache, AnalysisCache) else AnalysisCache(store.root, enabled=bool(cache))
    compare = Path(compare) if compare is not None else None
    # the analyses this study can run, in order
    planned = [a for a in LABELS if a in chosen]
    if study.config.design == "pretrained":  # these read the two base networks of the paper's design
        if {"cka", "estimate", "filters"} & set(planned):
            analysis.notes.append("CKA, the predicted curve and the first-layer filters compare a study's own base "
                                  "networks A and B; a study from a pretrained network has one base network, and "
                                  "these analyses do not read the pretrained network P yet: not computed")
        cka = estimate = False
    params = {a: {} for a in LABELS}
    params.update(cka={"batch_size": cka_batch_size, "max_images": max_images}, estimate={"max_features": max_features})
    skip = {"cka": not cka, "estimate": not estimate, "filters": study.config.design != "split",
            "comparison": compare is None}
    planned = [a for a in planned if not skip.get(a, False)]
    if not isinstance(progress, ReportProgress):
        expected = {LABELS[a]: cache.expected_seconds(a, _inputs(store, study, records, a, params[a], compare).key(a))
                    for a in planned}
        progress = ReportProgress([LABELS[a] for a in planned], expected, enabled=bool(progress))
    holder = {"study": study}

    def with_images():
        """The study with its images, loaded now if it was opened without them."""
        if holder["study"].data is None and holder["study"].missing == "not loaded":
            holder["study"] = Study.open(store)
        return holder["study"]

    def failed(name: str, e: Exception) -> None:
        """One line in the report's notes and on the terminal; the traceback in errors.log (a
        UserError is a condition, not a fault: its message is the whole story)."""
        detail = one_line(e)
        if isinstance(e, UserError):
            analysis.notes.append(f"{name}: not computed ({detail})")
            _say(f"transferscope analysis {name!r} not computed: {detail}")
            return
        try:
            log = store.log_error(f"report:{name}", "".join(traceback.format_exception(e)))
            where, note = f"traceback in {log}", f"; traceback in {log.name}"
        except OSError as log_error:
            where, note = f"its traceback could not be saved ({one_line(log_error)})", ""
        analysis.notes.append(f"{name}: not computed ({detail}{note})")
        _say(f"transferscope analysis {name!r} failed: {detail}; {where}")

    def merge(part: Analysis, section: Section | None) -> None:
        if section is not None:
            analysis.sections.append(section)
        analysis.tables.update(part.tables)
        analysis.figures += [out / Path(f).name for f in part.figures]
        analysis.notes += part.notes
        analysis.convergence = part.convergence or analysis.convergence
        analysis.comparison = part.comparison or analysis.comparison

    def attempt(key: str, fn: Callable[[object, Analysis], Section | None], images: bool | str = False) -> None:
        """Run analysis ``key`` (or serve it from the cache). ``images``: True where it needs the
        images, "optional" where it uses them when they are there (a result computed without
        them is not cached: with them it would differ)."""
        name = LABELS[key]
        if key not in planned:
            return
        progress.started(name)
        start = time.perf_counter()
        inputs_key = _inputs(store, holder["study"], records, key, params[key], compare).key(key)
        entry = cache.load(key, inputs_key, out)  # before the images: a cached result needs none
        if entry is not None:
            cache.hits.append(key)
            cache.keys[key] = inputs_key
            merge(*entry.result)
            progress.finished(name, time.perf_counter() - start, cached=True)
            return
        if images is True:
            study_now = with_images()
            if study_now.data is None:
                analysis.notes.append(f"{name}: not computed: the images are needed and {_no_images(study_now)}")
                progress.finished(name, time.perf_counter() - start, cached=False)
                return
        cache.misses.append(key)
        part = Analysis()
        before = snapshot(out)
        try:
            study_now = with_images() if images else holder["study"]
            section = fn(study_now, part)
        except Exception as e:  # noqa: BLE001  (one analysis failing must not lose the report)
            failed(name, e)
            progress.finished(name, time.perf_counter() - start, cached=False)
            return
        seconds = time.perf_counter() - start
        merge(part, section)
        if study_now.data is not None or images is False:
            cache.save(key, Entry(inputs_key, (part, section), written_since(out, before), seconds))
            cache.keys[key] = inputs_key
        progress.finished(name, seconds, cached=False)

    def steps(done_steps: int, total: int) -> None:
        progress.step(done_steps, total, "replicate and target")

    attempt("convergence", lambda st, part: _convergence_section(records, st, done, out, title, part),
            images="optional")
    attempt("cka", lambda st, part: _cka_section(store, st, full, out, title, part, cka_batch_size, max_images,
                                                 steps),
            images=True)
    attempt("estimate", lambda st, part: _estimate_section(store, st, full, out, title, part, max_features, steps),
            images=True)
    attempt("filters", lambda st, part: _filters_section(store, st, full, out, title, part))
    attempt("target_sizes", lambda st, part: _sizes_section(frame, records, out, title, part))

    def comparison(st, part: Analysis) -> Section:
        part.comparison = compare_studies(compare, store.root)
        c = part.comparison
        return Section("Comparison with another study",
                       f"Frozen transfer, AnB - base (paired within each study, one value per replicate), per "
                       f"cut point: study a = {c.label_a}, study b = {c.label_b} (this one). The difference is "
                       "b - a with a Welch 95% CI over the replicates of each study (the studies' networks are "
                       f"independent).\n\n{c.markdown()}\nWhat the table shows is stated in the Reading.\n\n{c.per_layer()}")

    attempt("comparison", comparison)
    excluded = [LABELS[a] for a in LABELS if a not in chosen and not (a == "comparison" and compare is None)]
    if excluded and analyses is None:
        analysis.notes.append(f"not computed (report.analyses leaves them out): {', '.join(excluded)}")
    elif excluded:
        analysis.notes.append(f"not computed (not among the analyses asked for): {', '.join(excluded)}")
    analysis.complete = all(a in cache.keys for a in planned)
    try:
        analysis.reading = reading(done, analysis.convergence, analysis.comparison) if len(done) else []
    except Exception as e:  # noqa: BLE001
        analysis.complete = False
        failed("reading", e)
    analysis.provenance = _provenance_section(store, records)
    return analysis


__all__ = ["LABELS", "Analysis", "Section", "analyze_study", "signed", "slug"]
