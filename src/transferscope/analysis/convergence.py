"""Was the study trained long enough? The base networks' validation curves, checked for a rising tail.

For each base network the slope of validation top-1 over the last ``k = max(3, ceil(20% of the
epochs))`` epochs is fitted by least squares; a network is *still improving* when that slope
exceeds ``threshold`` (0.002 top-1 per epoch, i.e. 0.2 points per epoch) and, where the number of
validation images is known, the rise it implies over the tail (slope x (k - 1)) also exceeds the
noise floor of one validation measurement, twice its binomial standard error
``2 sqrt(p (1 - p) / n_val)``: on a small validation set a few images changing their answer
between epochs make a slope of that size by chance. With fewer than 3 recorded epochs no slope
is fitted.

Why it matters (the paper's pitfall): with base networks far from converged, copied layers act
as a head start rather than as features, so frozen selffers (BnB) and transfers (AnB) can beat
their own base at low n, the opposite of the paper's curves for the wrong reason; the fine-tuning
gain (AnB+ - base) is inflated the same way.

A flat tail is necessary, not sufficient: a decaying schedule (cosine, step) flattens every
curve at its end because the learning rate goes to zero, converged or not. So each curve is also
read where the learning rate was still high: over the last half (at least 3) of the epochs at
which the recorded learning rate was at least half its peak (the first half of a cosine schedule,
the epochs before the first drop of a step or plateau schedule). A network still rising there,
above the same threshold and beyond the noise of one measurement (the larger of the binomial
floor and the curve's own epoch-to-epoch scatter there, which at a high rate is several points),
was **cut short**: it was improving at a useful rate when the schedule began to lower the rate,
and its flat end is the schedule's, not convergence; it counts as still improving. With a constant rate the two windows are the same. (A plateau-triggered schedule lowers
the rate only after a plateau, so it passes this check by construction.)

And the symptom is checked on the study's own numbers (:func:`head_start`): BnB - base at the
lowest cut point, paired within each replicate, with its 95% interval over replicates (the
replicate-level interval of :func:`transferscope.stats.relative`); significantly above zero, the
copied layers acted as a head start.

Suggested budget for a flagged study: if accuracy grows like ``log(epoch)`` its slope falls as
``1/epoch``, so the slope s measured at the end of E epochs reaches the threshold after about
``E * s / threshold`` epochs; the suggestion is the larger of that and 2E, rounded up to 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from transferscope.record import RunRecord
from transferscope.stats import CONFIDENCE, relative
from transferscope.treatments import treatment

THRESHOLD = 0.002
TAIL_FRACTION = 0.2
MIN_TAIL = 3
#: the learning rate, as a fraction of the run's peak, at or above which a curve is read for the
#: cut-short check (cosine: the first half of the epochs; step or plateau: before the first drop)
HIGH_RATE = 0.5


def tail_length(epochs: int) -> int:
    """k = max(3, ceil(20% of the epochs)), at most the number of epochs."""
    return min(epochs, max(MIN_TAIL, math.ceil(TAIL_FRACTION * epochs)))


def tail_slope(values: list[float] | np.ndarray, k: int | None = None) -> tuple[float, int]:
    """Least-squares slope per epoch of the last k values (default :func:`tail_length`), and k;
    NaN when fewer than 3 values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    k = tail_length(len(v)) if k is None else min(k, len(v))
    if k < MIN_TAIL:
        return float("nan"), k
    y = v[-k:]
    return float(np.polyfit(np.arange(k, dtype=float), y, 1)[0]), k


def high_rate_window(curve: list[float], lrs: list[float]) -> list[float]:
    """The validation values of the epochs up to the last one whose learning rate was at least
    :data:`HIGH_RATE` of the run's peak (the whole curve where no rate was recorded or it never
    fell that low)."""
    rates = np.asarray(lrs, dtype=float)
    if len(rates) != len(curve) or not np.isfinite(rates).all() or not len(rates) or rates.max() <= 0:
        return list(curve)
    high = np.flatnonzero(rates >= HIGH_RATE * rates.max() * (1 - 1e-9))
    return list(curve[: int(high[-1]) + 1])


def suggest_epochs(epochs: int, slope: float, threshold: float = THRESHOLD) -> int:
    """max(2E, E * slope / threshold), rounded up to a multiple of 5."""
    wanted = max(2 * epochs, math.ceil(epochs * slope / threshold - 1e-9)) if slope > threshold else epochs
    return int(math.ceil(wanted / 5 - 1e-9) * 5)


@dataclass
class Convergence:
    """``networks``: one row per base network: key, replicate, target, target_size, epochs, k,
    slope, rise, noise, final_val, best_val, the same over the high-rate window (high_epochs,
    high_slope, high_rise), rising_end (rising beyond noise over the last k epochs), cut_short
    (rising beyond noise over the high-rate window's last k), still_improving (either) and
    slope_above (the end's slope above the threshold, within noise or not). ``curves``: key -> validation top-1 per epoch."""

    networks: pd.DataFrame
    curves: dict[str, list[float]]
    threshold: float
    epochs: int
    #: under ``train.budget = "plateau"``: its detector's window (the budget is found, not set)
    plateau_window: int | None = None

    @property
    def flagged(self) -> pd.DataFrame:
        return self.networks.loc[self.networks["still_improving"]]

    @property
    def assessable(self) -> bool:
        """Whether a base network trained on all of its data has a tail slope (3 epochs or more).
        Reduced-data networks do not count: with ``treatments.size_budget = "steps"`` they train
        for more epochs than ``train.epochs``, and they say nothing about the study's budget."""
        full = self.networks.loc[self.networks["target_size"].isna()]
        return bool(full["slope"].notna().any())

    @property
    def suggested_epochs(self) -> int | None:
        """A training budget for the whole study where a full-data base network is still improving:
        from the steepest slope at the end (:func:`suggest_epochs`), and at least twice the epochs
        where one was cut short (a slope read mid-schedule says the schedule was short, not by how
        much: ``train.budget = "plateau"`` finds it from the data)."""
        full = self.flagged.loc[self.flagged["target_size"].isna()]
        if full.empty:
            return None
        rising = full.loc[full["rising_end"], "slope"]
        wanted = suggest_epochs(self.epochs, float(rising.max()), self.threshold) if len(rising) else self.epochs
        twice = int(math.ceil(2 * self.epochs / 5 - 1e-9) * 5)
        return max(wanted, twice) if full["cut_short"].any() else wanted


    @property
    def advice(self) -> str | None:
        """What to change, in words with the setting: more epochs for a fixed budget; for a budget
        found on plateaus, a longer detector window (a base cut short dropped its rate while still
        climbing) or, where one ran to the maximum, a higher ``train.epochs``."""
        wanted = self.suggested_epochs
        if wanted is None:
            return None
        if self.plateau_window is None:
            return (f"`train.epochs = {wanted}` (the larger of twice the current {self.epochs} epochs and, where a "
                    f"network was still rising at the end, the epochs at which the steepest slope would fall to "
                    f"{self.threshold} if accuracy grew like log(epoch)), or let the data find it: "
                    "`train.budget = \"plateau\"` with `train.schedule = \"step\"`")
        full = self.flagged.loc[self.flagged["target_size"].isna()]
        at_max = bool((full["epochs"] >= self.epochs).any())
        return (f"a longer plateau window, `train.plateau_window = {2 * self.plateau_window}` (a rate dropped while "
                "its curve still climbed beyond noise)" + (f", and a higher maximum than `train.epochs = {self.epochs}`, "
                                                            "which a base network reached" if at_max else ""))


def noise_floor(accuracy: float, images: int | None) -> float:
    """Twice the binomial standard error of an accuracy measured on ``images`` images (NaN if
    unknown); an accuracy of 0 or 1 counts as one image away from it."""
    if not images or not math.isfinite(accuracy):
        return float("nan")
    p = min(max(accuracy, 1.0 / images), 1.0 - 1.0 / images)  # at 0 or 1, as if one image differed
    return 2.0 * math.sqrt(p * (1.0 - p) / images)


def check_convergence(records: list[RunRecord], epochs: int, threshold: float = THRESHOLD,
                      val_images: dict[tuple[int, str], int] | None = None,
                      plateau_window: int | None = None) -> Convergence:
    """Check every finished base network's recorded validation curve. ``val_images``: the number
    of validation images per (replicate, task), for the noise floor; ``plateau_window``: the
    detector's window where the budget was found on plateaus (``train.budget = "plateau"``)."""
    rows, curves = [], {}
    for rec in records:
        if not treatment(rec.role).is_base or rec.status != "done":
            continue
        curve = [float(h.get("val_top1", float("nan"))) for h in rec.history]
        curves[rec.key] = curve
        size = rec.target_size
        final = curve[-1] if curve else float("nan")
        noise = noise_floor(final, (val_images or {}).get((rec.replicate, rec.target)))
        slope, k, rise, steep, rising = _tail(curve, threshold, noise)
        high = high_rate_window(curve, [float(h.get("lr", float("nan"))) for h in rec.history])
        if len(high) < len(curve):  # the rate fell below half its peak: read the curve before that too
            floors = (noise_floor(high[-1], (val_images or {}).get((rec.replicate, rec.target))), scatter_floor(high))
            high_noise = max((f for f in floors if math.isfinite(f)), default=float("nan"))  # NaN: none known
            high_slope, _, high_rise, _, cut_short = _tail(high, threshold, high_noise, k=high_tail_length(len(high)))
        else:
            high_slope, high_rise, cut_short = float("nan"), float("nan"), False
        rows.append((rec.key, rec.replicate, rec.target, float("nan") if size is None else float(size),
                     len(curve), k, slope, rise, noise, final, max(curve) if curve else float("nan"),
                     len(high), high_slope, high_rise, rising, cut_short, rising or cut_short, steep))
    frame = pd.DataFrame(rows, columns=["key", "replicate", "target", "target_size", "epochs", "k", "slope", "rise",
                                        "noise", "final_val", "best_val", "high_epochs", "high_slope", "high_rise",
                                        "rising_end", "cut_short", "still_improving", "slope_above"])
    return Convergence(frame.sort_values("key", ignore_index=True), curves, threshold, epochs, plateau_window)


def scatter_floor(curve: list[float]) -> float:
    """Twice the curve's own noise of one measurement: the robust spread (1.4826 x the median
    absolute deviation) of its epoch-to-epoch changes around their median, over sqrt 2 (a change is
    the difference of two measurements). NaN with fewer than 3 changes."""
    changes = np.diff(np.asarray(curve, dtype=float))
    changes = changes[np.isfinite(changes)]
    if len(changes) < 3:
        return float("nan")
    mad = float(np.median(np.abs(changes - np.median(changes))))
    return 2.0 * 1.4826 * mad / math.sqrt(2.0)


def high_tail_length(epochs: int) -> int:
    """The epochs the cut-short reading fits: the last half of the high-rate window (at least 3).
    Longer than the end's tail: at a high rate validation top-1 jumps by several points from one
    epoch to the next (a 500-image CIFAR-10 validation set: -0.08 to +0.11 at lr 0.05), so a line
    through 3 of them reads noise as a trend."""
    return min(epochs, max(MIN_TAIL, math.ceil(epochs / 2)))


def _tail(curve: list[float], threshold: float, noise: float,
          k: int | None = None) -> tuple[float, int, float, bool, bool]:
    """(slope, k, rise over the tail, slope above the threshold, rising beyond the noise floor)."""
    slope, k = tail_slope(curve, k)
    rise = slope * (k - 1) if math.isfinite(slope) else float("nan")
    steep = bool(math.isfinite(slope) and slope > threshold)
    return slope, k, rise, steep, steep and not (math.isfinite(noise) and rise <= noise)


@dataclass(frozen=True)
class HeadStart:
    """BnB - base at the lowest cut point n: mean and 95% interval over replicates (each
    replicate's difference paired within it), the two-sided p-value, and whether it is
    significantly above zero (the head-start symptom)."""

    n: int
    mean: float
    ci_low: float
    ci_high: float
    replicates: int
    p: float

    @property
    def detected(self) -> bool:
        return bool(math.isfinite(self.p) and self.p < 1.0 - CONFIDENCE and self.mean > 0)


def head_start(done: pd.DataFrame) -> HeadStart | None:
    """The head-start check on a study's finished runs (:class:`HeadStart`); None without BnB runs."""
    if done.empty:
        return None
    rel = relative(done)
    rows = rel.loc[rel["quantity"] == "BnB"].sort_values("n")
    if rows.empty:
        return None
    low = rows.iloc[0]
    return HeadStart(int(low["n"]), float(low["mean"]), float(low["ci_low"]), float(low["ci_high"]),
                     int(low["replicates"]), float(low["p"]))
