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
read where the learning rate was still high: over the last ``k`` epochs (same rule for ``k``) at
which the recorded learning rate was above a tenth of its peak (the first 80% of a cosine schedule,
the epochs before the first drop of a step schedule dividing by 10). A network still rising there, beyond the same
threshold and noise floor, was **cut short**: it was improving at a useful rate when the schedule
began to lower the rate, and its flat end is the schedule's, not convergence; it counts as still
improving. With a constant rate the two windows are the same. (A plateau-triggered schedule lowers
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
#: the learning rate, as a fraction of the run's peak, above which a curve is read for the
#: cut-short check (cosine: the first 80% of the epochs; step with gamma 0.1: before the first drop)
HIGH_RATE = 0.1


def tail_length(epochs: int) -> int:
    """k = max(3, ceil(20% of the epochs)), at most the number of epochs."""
    return min(epochs, max(MIN_TAIL, math.ceil(TAIL_FRACTION * epochs)))


def tail_slope(values: list[float] | np.ndarray) -> tuple[float, int]:
    """Least-squares slope per epoch of the last k values, and k; NaN when fewer than 3 values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    k = tail_length(len(v))
    if k < MIN_TAIL:
        return float("nan"), k
    y = v[-k:]
    return float(np.polyfit(np.arange(k, dtype=float), y, 1)[0]), k


def high_rate_window(curve: list[float], lrs: list[float]) -> list[float]:
    """The validation values of the epochs up to the last one whose learning rate was above
    :data:`HIGH_RATE` of the run's peak (the whole curve where no rate was recorded or it never
    fell that low)."""
    rates = np.asarray(lrs, dtype=float)
    if len(rates) != len(curve) or not np.isfinite(rates).all() or not len(rates) or rates.max() <= 0:
        return list(curve)
    high = np.flatnonzero(rates > HIGH_RATE * rates.max())
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
        """A training budget for the whole study where a full-data base network is still improving
        (at the end, or where its learning rate was high: the steeper of the two slopes)."""
        full = self.flagged.loc[self.flagged["target_size"].isna()]
        if full.empty:
            return None
        steepest = float(np.nanmax(np.concatenate([full["slope"].to_numpy(float),
                                                   full.loc[full["cut_short"], "high_slope"].to_numpy(float)])))
        return suggest_epochs(self.epochs, steepest, self.threshold)


def noise_floor(accuracy: float, images: int | None) -> float:
    """Twice the binomial standard error of an accuracy measured on ``images`` images (NaN if
    unknown); an accuracy of 0 or 1 counts as one image away from it."""
    if not images or not math.isfinite(accuracy):
        return float("nan")
    p = min(max(accuracy, 1.0 / images), 1.0 - 1.0 / images)  # at 0 or 1, as if one image differed
    return 2.0 * math.sqrt(p * (1.0 - p) / images)


def check_convergence(records: list[RunRecord], epochs: int, threshold: float = THRESHOLD,
                      val_images: dict[tuple[int, str], int] | None = None) -> Convergence:
    """Check every finished base network's recorded validation curve. ``val_images``: the number
    of validation images per (replicate, task), for the noise floor."""
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
        if len(high) < len(curve):  # the rate fell to a tenth of its peak: read the curve before that too
            high_slope, _, high_rise, _, cut_short = _tail(high, threshold, noise_floor(
                high[-1], (val_images or {}).get((rec.replicate, rec.target))))
        else:
            high_slope, high_rise, cut_short = float("nan"), float("nan"), False
        rows.append((rec.key, rec.replicate, rec.target, float("nan") if size is None else float(size),
                     len(curve), k, slope, rise, noise, final, max(curve) if curve else float("nan"),
                     len(high), high_slope, high_rise, rising, cut_short, rising or cut_short, steep))
    frame = pd.DataFrame(rows, columns=["key", "replicate", "target", "target_size", "epochs", "k", "slope", "rise",
                                        "noise", "final_val", "best_val", "high_epochs", "high_slope", "high_rise",
                                        "rising_end", "cut_short", "still_improving", "slope_above"])
    return Convergence(frame.sort_values("key", ignore_index=True), curves, threshold, epochs)


def _tail(curve: list[float], threshold: float, noise: float) -> tuple[float, int, float, bool, bool]:
    """(slope, k, rise over the tail, slope above the threshold, rising beyond the noise floor)."""
    slope, k = tail_slope(curve)
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
