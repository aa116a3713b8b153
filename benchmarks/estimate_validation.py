"""How well each score of ``transferscope estimate`` tracks the measured AnB curve, on real data.

    python -m benchmarks.estimate_validation [--only NAME ...] [--work DIR] [--write]

For each validation set (a dataset, a split and an architecture: :data:`SETS`), a study of the
base networks and AnB at every cut point (3 replicates, each its own class split or, for a split
by groups, its own seeds), then the estimate of every score from the base networks alone (the
short AnB included), each score's Spearman rank correlation with the measured AnB over cut points
(per replicate, then the mean with a 95% interval over replicates; and of the per-n means), and
the short AnB's cost against the AnB runs it predicts. Prints a table per set; with ``--write``,
also writes the figures the ``estimate`` command prints (src/transferscope/analysis/validation.json)
and the table of docs/estimate.md (between its ``validation`` markers).

Data: CIFAR-10 and Omniglot from ``../shared/data`` (extracted once into the benchmark cache),
Fashion-MNIST from the Debian package ``dataset-fashion-mnist``; a set whose data is absent is
skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import REPO, bench_cache, cifar10_root, log, machine_line, md_table

OMNIGLOT_ZIP = REPO.parent / "shared" / "data" / "omniglot-small" / "images_background_small1.zip"
FASHION = Path("/usr/share/datasets/fashion-mnist")
VALIDATION_JSON = REPO / "src" / "transferscope" / "analysis" / "validation.json"
DOC = REPO / "docs" / "estimate.md"
BEGIN, END = "<!-- validation:begin -->", "<!-- validation:end -->"
#: every validation study: the base networks and AnB at every cut point, 3 replicates
COMMON = ['treatments.names=["base", "AnB"]', "treatments.replicates=3"]


def omniglot_root() -> Path:
    """Omniglot's small background set 1 (Balinese, Early Aramaic, Greek, Korean, Latin), extracted once."""
    root = bench_cache() / "omniglot-small1"
    if not (root / ".complete").exists():
        if not OMNIGLOT_ZIP.exists():
            raise FileNotFoundError(f"{OMNIGLOT_ZIP} not found")
        shutil.rmtree(root, ignore_errors=True)
        with zipfile.ZipFile(OMNIGLOT_ZIP) as z:
            z.extractall(root)
        (root / ".complete").write_text("ok\n")
    return root / "images_background_small1"


def cifar10() -> list[str]:
    return [f"data.root={cifar10_root()}"]


def fashion() -> list[str]:
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        raise FileNotFoundError(f"{FASHION}: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    return [f"data.root={FASHION}"]


def omniglot() -> list[str]:
    return [f"data.root={omniglot_root()}"]


@dataclass(frozen=True)
class ValidationSet:
    name: str
    description: str
    config: str | None  # an example's configuration file, or None for the defaults
    overrides: tuple[str, ...]
    data: object  # () -> the data overrides (raises FileNotFoundError where the data is absent)


CIFAR = ("examples/cifar10.toml", ())
FASHION_SET = (None, ("data.dataset=fashion-mnist", "data.train_per_class=500", "train.epochs=12"))
OMNIGLOT = (None, ("data.dataset=imagefolder", "data.image_size=16", "data.val_fraction=0.1", "data.test_fraction=0.1",
                   'split.kind="groups"', 'split.a_groups=["Balinese", "Korean"]',
                   'split.b_groups=["Early_Aramaic", "Greek", "Latin"]', "train.epochs=30"))
RESNET = ("model.arch=resnet18",)

SETS = [
    ValidationSet("cifar10-convnet", "CIFAR-10 JPEG, random 5/5, 500 images/class, convnet, 12 epochs",
                  *CIFAR, cifar10),
    ValidationSet("cifar10-resnet18", "CIFAR-10 JPEG, random 5/5, 500 images/class, ResNet-18, 12 epochs",
                  CIFAR[0], RESNET, cifar10),
    ValidationSet("fashion-mnist-convnet", "Fashion-MNIST, random 5/5, 500 images/class, convnet, 12 epochs",
                  *FASHION_SET, fashion),
    ValidationSet("fashion-mnist-resnet18", "Fashion-MNIST, random 5/5, 500 images/class, ResNet-18, 12 epochs",
                  FASHION_SET[0], FASHION_SET[1] + RESNET, fashion),
    ValidationSet("omniglot-alphabets-convnet", "Omniglot background set 1 by alphabet (Balinese + Korean vs "
                  "Early Aramaic + Greek + Latin), 16 px, convnet, 30 epochs", *OMNIGLOT, omniglot),
    ValidationSet("omniglot-alphabets-resnet18", "Omniglot by alphabet as above, ResNet-18, 30 epochs",
                  OMNIGLOT[0], OMNIGLOT[1] + RESNET, omniglot),
]


def validate(vs: ValidationSet, work: Path) -> dict:
    """Run the study of ``vs`` (resumed where it is already in ``work``), its estimate, and the scores' correlations."""
    import torch

    from transferscope import load_config, run_study
    from transferscope.analysis.estimate import SCORES, estimate, score_correlations, score_cost
    from transferscope.analysis.short_transfer import FRACTION as SHORT_FRACTION
    from transferscope.store import Store

    overrides = [*vs.data(), *vs.overrides, *COMMON]
    cfg = load_config(REPO / vs.config if vs.config else None, overrides)
    out = work / vs.name
    threads = torch.get_num_threads()
    before = len(Store(out).records()) if (out / "study.json").exists() else 0
    start = time.perf_counter()
    try:
        run_study(cfg, out, progress=False, report=False)
    finally:
        torch.set_num_threads(threads)
    study_s = time.perf_counter() - start
    if len(Store(out).records()) == before:
        study_s = 0.0  # nothing trained: the study was reused from the work folder
    start = time.perf_counter()
    est = estimate(Store(out), short=SHORT_FRACTION)  # the opt-in short AnB too: it is validated here
    estimate_s = time.perf_counter() - start
    frame = Store(out).frame()
    references = reference_scores(out, est.scores)
    corr = score_correlations(references, frame, {**SCORES, **REFERENCES})
    short_s, anb_s = score_cost(est.scores, frame)
    stitch_s, stitch_anb_s = score_cost(est.scores, frame, "stitch_seconds")
    base_s = float(frame.loc[frame["role"] == "base", "wall_time_s"].sum())
    log(f"{vs.name}: study {study_s:.0f} s, estimate {estimate_s:.0f} s")
    scores = {}
    for r in corr.itertuples():
        scores[r.score] = {"label": {**SCORES, **REFERENCES}[r.score], "rho": r.rho, "rho_low": r.rho_low, "rho_high": r.rho_high,
                           "replicates": int(r.replicates), "rho_means": r.rho_means, "p_means": r.p_means,
                           "cut_points": int(r.cut_points)}
    return {"name": vs.name, "description": vs.description,
            "command": command(vs), "scores": scores,
            "short_fraction": float((est.scores["short_steps"] / est.scores["full_steps"]).mean()),
            "short_s": short_s, "anb_s": anb_s, "stitch_s": stitch_s, "stitch_anb_s": stitch_anb_s,
            "base_s": base_s, "study_s": study_s, "estimate_s": estimate_s}


#: what a score has to beat, next to the scores: the measured curve measured again (the AnB runs
#: re-run with other seeds: no score can track the curve better than the curve tracks itself), and
#: the prior that needs no measurement at all (a deeper cut keeps less of the target's own training)
REFERENCES = {"retest": "AnB re-run, other seeds (ceiling)", "depth": "-n (deeper cut, lower AnB)"}


def reference_scores(out: Path, scores):
    """``scores`` with the columns of :data:`REFERENCES`: every AnB run of the study re-run from
    other seeds (initialisation, data order, augmented views; the same frozen layers and budget), its
    test top-1; and -n."""
    from transferscope.analysis.estimate import measured_transfer
    from transferscope.analysis.short_transfer import short_transfer
    from transferscope.atomic import atomic_write
    from transferscope.precision import torch_threads
    from transferscope.runner import Runner
    from transferscope.store import Store
    from transferscope.study import Study

    store = Store(out)
    study = Study.open(store)
    runner, records = Runner(study, store.load_weights), {r.key: r for r in store.records()}
    cache = out / "retest.json"  # the re-runs cost as much as the AnB runs: trained once per study
    again = {tuple(k): v for k, v in json.loads(cache.read_text())} if cache.exists() else {}
    measured = measured_transfer(store.frame())[["replicate", "target"]].drop_duplicates()  # what AnB measured
    with torch_threads(study.config.execution.threads):
        for r, target in measured.itertuples(index=False):
            if all((int(r), str(target), int(n)) in again for n in study.cut_points):
                continue
            for run in short_transfer(runner, r, target, tuple(study.cut_points), records, (1.0,), views=None,
                                      salt="retest"):
                again[int(r), str(target), int(run.n)] = run.test_top1
            atomic_write(cache, json.dumps([[list(k), v] for k, v in sorted(again.items())]).encode())
    scores = scores.copy()
    scores["retest"] = [again.get((int(r), str(t), int(n)), math.nan)
                        for r, t, n in zip(scores["replicate"], scores["target"], scores["n"])]
    scores["depth"] = -scores["n"].astype(float)
    return scores


def command(vs: ValidationSet) -> str:
    """The ``transferscope run`` command line of the set's study (data paths as placeholders)."""
    root = () if vs.data is fashion else ("data.root=DATA",)  # Fashion-MNIST: the Debian package's folder
    sets = " ".join(f"--set '{o}'" for o in (*root, *vs.overrides, *COMMON))
    return f"transferscope run {vs.config or ''} {sets} -o DIR && transferscope estimate DIR --short 0.08".replace("  ", " ")


def rho_text(s: dict) -> str:
    if not math.isfinite(s["rho"]):
        return "undefined"
    return f"{s['rho']:+.2f} [{s['rho_low']:+.2f}, {s['rho_high']:+.2f}]"


def table(results: list[dict]) -> str:
    labels = {k: v["label"] for r in results for k, v in r["scores"].items()}
    rows = []
    for r in results:
        cost = f"{r['short_s'] / r['anb_s']:.1%}" if r["anb_s"] else "-"
        stitch_anb = r.get("stitch_anb_s", r["anb_s"])
        stitch = f"{r['stitch_s'] / stitch_anb:.1%}" if stitch_anb and "stitch_s" in r else "-"
        rows.append([r["name"], *(rho_text(r["scores"][k]) if k in r["scores"] else "-" for k in labels),
                     *(f"{r['scores'][k]['rho_means']:+.2f}" if k in r["scores"] and
                       math.isfinite(r["scores"][k]["rho_means"]) else "-" for k in labels), cost, stitch])
    head = ["validation set", *(f"{v}: rho per replicate" for v in labels.values()),
            *(f"{v}: rho of means" for v in labels.values()), "short AnB cost / AnB cost",
            "stitched base cost / AnB cost"]
    return md_table(head, rows)


def write_doc(results: list[dict]) -> None:
    text = DOC.read_text()
    block = (f"{BEGIN}\n\nMeasured on: {machine_line_safe()}.\n\n{table(results)}\n\n"
             + "\n".join(f"- `{r['name']}`: {r['description']}; " + study_time(r) + f", its estimate "
                         f"{r['estimate_s']:.0f} s. `{r['command']}`" for r in results) + f"\n\n{END}")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    DOC.write_text(text[:start] + block + text[end:])


def study_time(r: dict) -> str:
    return (f"the study {r['study_s'] / 60:.1f} min" if r["study_s"] >= 1 else
            "the study reused from an earlier run in the work folder")


def machine_line_safe() -> str:
    from benchmarks.common import machine

    return machine_line(machine())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", help="validation sets to run (default: all)")
    p.add_argument("--work", type=Path, default=bench_cache() / "estimate-validation",
                   help="where the studies go (a finished one is reused)")
    p.add_argument("--write", action="store_true", help="write validation.json and docs/estimate.md's table")
    args = p.parse_args(argv)
    chosen = [vs for vs in SETS if not args.only or vs.name in args.only]
    results, skipped = [], []
    for vs in chosen:
        try:
            results.append(validate(vs, args.work))
        except FileNotFoundError as e:
            skipped.append(f"{vs.name}: {e}")
            log(f"skipped {vs.name}: {e}")
            continue
        print(table(results[-1:]), flush=True)
    if args.write and results:
        known = {r["name"]: r for r in json.loads(VALIDATION_JSON.read_text())} if VALIDATION_JSON.exists() else {}
        known.update({r["name"]: r for r in results})
        ordered = [known[vs.name] for vs in SETS if vs.name in known]
        VALIDATION_JSON.write_text(json.dumps(ordered, indent=1) + "\n")
        write_doc(ordered)
    for s in skipped:
        print(f"skipped {s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
