"""Coverage of the report's intervals and the Reading's false-positive rate, measured by simulation.

Each simulated study has R replicates, both directions (targets A and B), a base network per
direction and a treatment (AnB) at every cut point. A run's test top-1 is

    truth(role, n) + direction(role, target) + split(r) + shared(r, role, n) + noise

where ``split(r)`` is the replicate's class split (it moves every network of the replicate),
``shared(r, role, n)`` is what both directions of a replicate have in common beyond it (the
same two base networks serve both), and ``noise`` is each run's own seed. The true treatment mean
is ``truth + mean(direction over targets)``; the true paired difference subtracts the base's.
Every simulated study goes through the project's own summary code (``summarize`` and ``relative``
with ``by=["study"]``, and the Reading's ``scan``), and the test counts how often the nominal 95%
intervals cover the truth. ``python tests/test_coverage.py`` prints the table quoted in
docs/statistics.md, with what pooling both directions as independent networks gives.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from transferscope.report.reading import scan
from transferscope.stats import relative, summarize

STUDIES = 2000
CUT_POINTS = (1, 2, 3, 4, 5)
BASE, DROP = 0.75, 0.06  # true base accuracy; AnB - base = -DROP * (n - 1) / 4, 0 at n = 1
DIRECTION = {("base", "A"): 0.03, ("base", "B"): -0.01, ("transfer", "A"): -0.02, ("transfer", "B"): 0.04}
SPLIT_SD, SHARED_SD, NOISE_SD = 0.05, 0.015, 0.01


def simulate(replicates: int, drop: float = DROP, seed: int = 0, direction: float = 1.0,
             studies: int = STUDIES) -> pd.DataFrame:
    """A run table of ``studies`` studies (column ``study``), each with ``replicates`` replicates;
    ``direction`` scales the direction effects."""
    rng = np.random.default_rng(seed)
    effect = {key: direction * value for key, value in DIRECTION.items()}
    s, r, t, n = np.meshgrid(np.arange(studies), np.arange(replicates), np.arange(2), np.array(CUT_POINTS),
                             indexing="ij")
    split = rng.normal(0, SPLIT_SD, (studies, replicates))[s, r]
    target = np.array(["A", "B"])[t]
    parts = []
    base = (s[..., 0], r[..., 0], t[..., 0])  # one base network per replicate and direction
    parts.append(pd.DataFrame({
        "study": base[0].ravel(), "replicate": base[1].ravel(), "target": target[..., 0].ravel(), "n": 0,
        "role": "base",
        "test_top1": (BASE + np.vectorize(lambda x: effect[("base", x)])(target[..., 0]) + split[..., 0]
                      + rng.normal(0, SHARED_SD, (studies, replicates))[base[0], base[1]]
                      + rng.normal(0, NOISE_SD, base[0].shape)).ravel()}))
    truth = BASE - drop * (n - 1) / (len(CUT_POINTS) - 1)
    shared = rng.normal(0, SHARED_SD, (studies, replicates, len(CUT_POINTS)))[s, r, n - 1]
    parts.append(pd.DataFrame({
        "study": s.ravel(), "replicate": r.ravel(), "target": target.ravel(), "n": n.ravel(), "role": "transfer",
        "test_top1": (truth + np.vectorize(lambda x: effect[("transfer", x)])(target) + split + shared
                      + rng.normal(0, NOISE_SD, s.shape)).ravel()}))
    frame = pd.concat(parts, ignore_index=True)
    return frame.assign(key=np.arange(len(frame)).astype(str), status="done")


def true_mean(role: str, n: int, direction: float = 1.0) -> float:
    shift = direction * np.mean([DIRECTION[(role, t)] for t in "AB"])
    return BASE + shift - (DROP * (n - 1) / (len(CUT_POINTS) - 1) if role == "transfer" else 0.0)


def coverage(rows: pd.DataFrame, truth: float) -> float:
    return float(((rows["ci_low"] <= truth) & (truth <= rows["ci_high"])).mean())


def pooled_coverage(frame: pd.DataFrame, direction: float = 1.0) -> tuple[float, float]:
    """What the report gave before, at n = 3: a t interval over every network (or every pair),
    both directions counted as independent observations."""
    from scipy import stats as sps

    def cover(values: pd.DataFrame, truth: float) -> float:
        g = values.groupby("study")["v"]
        mean, sd, k = g.mean(), g.std(), g.size()
        half = sps.t.ppf(0.975, k - 1) * sd / np.sqrt(k)
        return float(((mean - half <= truth) & (truth <= mean + half)).mean())

    at3 = frame.loc[frame["n"].isin([0, 3])]
    runs = at3.loc[at3["role"] == "transfer"].assign(v=lambda f: f["test_top1"])
    base = at3.loc[at3["role"] == "base"].set_index(["study", "replicate", "target"])["test_top1"]
    diff = runs.set_index(["study", "replicate", "target"])["test_top1"] - base
    return (cover(runs, true_mean("transfer", 3, direction)),
            cover(diff.rename("v").reset_index(), true_mean("transfer", 3, direction) - true_mean("base", 3, direction)))


@pytest.mark.parametrize("replicates", [3, 5, 10])
def test_nominal_95_percent_intervals_cover_the_truth(replicates: int) -> None:
    frame = simulate(replicates, seed=replicates)
    summary = summarize(frame, by=["study"])
    rel = relative(frame, by=["study"])
    for n in (1, 3, 5):
        cell = summary.loc[(summary["role"] == "transfer") & (summary["n"] == n)]
        diff = rel.loc[(rel["quantity"] == "AnB") & (rel["n"] == n)]
        assert len(cell) == len(diff) == STUDIES and (cell["replicates"] == replicates).all()
        # 2,000 studies: the standard error of a 95% coverage is 0.5 points, so 93-97% is +-4 of them
        assert 0.93 <= coverage(cell, true_mean("transfer", n)) <= 0.97
        assert 0.93 <= coverage(diff, true_mean("transfer", n) - true_mean("base", n)) <= 0.97
    base = summary.loc[(summary["role"] == "base") & (summary["n"] == 1)]
    assert 0.93 <= coverage(base, true_mean("base", 1)) <= 0.97


def test_pooling_directions_as_independent_is_miscalibrated() -> None:
    """The simulation can tell a wrong unit. Counting both directions as independent networks
    undercovers when the directions share more than the split (here without direction effects)
    and overcovers when direction effects inflate the spread between networks."""
    mean_cov, diff_cov = pooled_coverage(simulate(3, seed=11, direction=0.0), direction=0.0)
    assert mean_cov < 0.90 and diff_cov < 0.90
    assert pooled_coverage(simulate(3, seed=12), direction=1.0)[1] > 0.99


def _claims(rel: pd.DataFrame) -> pd.DataFrame:
    """Per study: does the Reading claim a significant AnB - base at any cut point (Holm), and would
    it have without the correction (per-cell intervals)?"""
    rows = rel.loc[rel["quantity"] == "AnB"]
    out = [(study, bool((s["sign"] != 0).any()), bool((s["cell_sign"] != 0).any()))
           for study, group in rows.groupby("study") for s in [scan(group)]]
    return pd.DataFrame(out, columns=["study", "holm", "per_cell"])


def test_reading_false_positive_rate_is_controlled_over_cut_points() -> None:
    """No difference anywhere (AnB = base at every n): how often does the Reading claim one?"""
    claims = _claims(relative(simulate(5, drop=0.0, seed=7), by=["study"]))
    # Holm keeps the familywise rate at most 5% (sampling error of a 5% rate over 2,000: 0.5 points)
    assert claims["holm"].mean() <= 0.065
    # scanning 5 cut points with uncorrected intervals claims something far more often
    assert claims["per_cell"].mean() > 0.12


if __name__ == "__main__":
    print("replicates | direction effects | treatment mean at n=3: coverage (pooled networks) | "
          "AnB - base at n=3: coverage (pooled)")
    for direction in (1.0, 0.0):
        for reps in (3, 5, 10):
            frame = simulate(reps, seed=reps, direction=direction)
            summary, rel = summarize(frame, by=["study"]), relative(frame, by=["study"])
            cell = summary.loc[(summary["role"] == "transfer") & (summary["n"] == 3)]
            diff = rel.loc[(rel["quantity"] == "AnB") & (rel["n"] == 3)]
            old = pooled_coverage(frame, direction)
            truth = true_mean("transfer", 3, direction)
            print(f"{reps:>10} | {'yes' if direction else 'no':>17} | {coverage(cell, truth):.3f} ({old[0]:.3f}) | "
                  f"{coverage(diff, truth - true_mean('base', 3, direction)):.3f} ({old[1]:.3f})")
    for reps in (3, 5, 10):
        claims = _claims(relative(simulate(reps, drop=0.0, seed=100 + reps), by=["study"]))
        print(f"null study, {reps} replicates: the Reading claims AnB differs from base at some n in "
              f"{claims['holm'].mean():.3f} of studies (Holm); per-cell intervals would in "
              f"{claims['per_cell'].mean():.3f}")
