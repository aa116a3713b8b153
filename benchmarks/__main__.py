"""The benchmark suite's command line. See docs/performance.md."""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import REPO, Section, contention, cpu_clock, dump_json, load_average, log, machine, machine_line

BENCHMARKS = {  # name -> module; the order they run in
    "versus": "benchmarks.versus",      # 4. against a hand-written PyTorch study
    "parallel": "benchmarks.parallel",  # 6. workers=2 vs 1 (reuses benchmark 4's study)
    "flops": "benchmarks.flops",        # 2. FLOP/s vs matmul; bf16 vs fp32 accuracy
    "frozen": "benchmarks.frozen",      # 3. frozen work once
    "dataload": "benchmarks.dataload",  # 5. data never the bottleneck
    "scaling": "benchmarks.scaling",    # 7. scaling figures
}

FULL = {
    # benchmark 4 (and 3, 5, 6): the first 400 training / 200 test JPEGs of every class (a folder of
    # symbolic links); 250 training images per class, 20% of the rest... see versus.study_overrides
    "cifar_subset": (400, 200),
    "tpc": 250, "val_fraction": 0.2, "replicates": 2, "epochs": 3, "cut_points": "all",
    "acc_tpc": 150, "acc_epochs": 3,                       # bf16 vs fp32 on CIFAR with the paper-style net
    "a_epochs": 3, "b_exact_epochs": 5, "b_aug_epochs": 8, "b_aug_replicates": 3,
    "data_epochs": 2,
    # benchmark 7: a smaller subset, 2 epochs; grid around (cut points, replicates, train/class)
    "scale_subset": (200, 100), "scale_val_fraction": 0.1, "scale_epochs": 2,
    "grid": {"base": (2, 1, 100), "cuts": [1, 2, 5], "replicates": [1, 2], "tpc": [50, 100, 180],
             "reference_at": [(1, 1, 100), (2, 1, 100)]},
}
QUICK = {
    "cifar_subset": (60, 40),
    "tpc": 40, "val_fraction": 0.2, "replicates": 2, "epochs": 1, "cut_points": "[1, 5]",
    "acc_tpc": 40, "acc_epochs": 1,
    "a_epochs": 1, "b_exact_epochs": 1, "b_aug_epochs": 2, "b_aug_replicates": 2,
    "data_epochs": 1,
    "scale_subset": (60, 40), "scale_val_fraction": 0.2, "scale_epochs": 1,
    "grid": {"base": (1, 1, 20), "cuts": [1, 2], "replicates": [1, 2], "tpc": [20, 40], "reference_at": [(1, 1, 20)]},
}


@dataclass
class Context:
    quick: bool
    out: Path
    work: Path
    docs: Path
    write_docs: bool
    threads: int
    workers: int
    default_threads: int
    verbose: bool
    sizes: dict[str, Any]
    memo: dict[str, Any] = field(default_factory=dict)

    @property
    def cifar_subset(self) -> tuple[int, int]:
        return tuple(self.sizes["cifar_subset"])  # type: ignore[return-value]

    @property
    def ts_cache(self) -> Path:
        return self.work / "ts-cache"


def wait_quiet(limit_s: float, threshold: float = 1.0) -> None:
    """Wait until the 1-minute load average stays below ``threshold`` for a minute (at most limit_s)."""
    if limit_s <= 0:
        return
    start, quiet_since = time.time(), None
    while time.time() - start < limit_s:
        la = load_average()
        if la is None:
            return
        if la[0] < threshold:
            quiet_since = quiet_since or time.time()
            if time.time() - quiet_since >= 60:
                return
        else:
            quiet_since = None
        time.sleep(5)
    log(f"the machine did not get quiet in {limit_s:.0f} s (load {load_average()}); running anyway")


def render(results: dict[str, Any]) -> str:
    """Markdown of a suite run: the summary of checks, then every benchmark's tables."""
    m = results["machine"]
    lines = [f"Machine: {machine_line(m)}.",
             f"Run: `{results['command']}` at {results['started']}, {results['total_s'] / 60:.1f} min in all"
             + (" (quick mode: smoke sizes, the figures mean little)" if results["quick"] else "") + ".",
             "Other work on the machine during each benchmark (average cores used by processes other than "
             "the suite's own, from /proc/stat minus the suite's CPU time; the suite itself uses up to 2): "
             + "; ".join(f"{s['name']} {s['contention'].get('other_cores', float('nan')):.2f}"
                         + (f" (+{s['contention']['steal_cores']:.2f} stolen)" if s["contention"].get("steal_cores", 0) > 0.01 else "")
                         for s in results["sections"] if s.get("contention")) + ".", "",
             "| benchmark | check | value | target | met |", "|---|---|---|---|---|"]
    for s in results["sections"]:
        for c in s["checks"]:
            v = c["value"]
            lines.append(f"| {s['title'].split('.')[0]} | {c['what']} | {v:.3g} | {c['target']} | "
                         f"{'yes' if c['ok'] else '**no**'} |" if isinstance(v, (int, float)) else
                         f"| {s['title'].split('.')[0]} | {c['what']} | {v} | {c['target']} | {'yes' if c['ok'] else '**no**'} |")
    for s in results["sections"]:
        lines += ["", f"### {s['title']}", "", f"({s['seconds']:.0f} s)", "", s["markdown"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every benchmark (a minute or two)")
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    ap.add_argument("--out", type=Path, default=None, help="results folder [results/bench, or results/bench-quick]")
    ap.add_argument("--docs", choices=("auto", "yes", "no"), default="auto",
                    help="write docs/performance.md and docs/scaling.png (auto: for a full run of every benchmark)")
    ap.add_argument("--threads", type=int, default=1, help="threads for the FLOP/s measurements [1, as in a worker]")
    ap.add_argument("--workers", type=int, default=2, help="transferscope's execution.workers in the fast runs [2]")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="first wait (at most this long) until the 1-minute load average stays below 1 for a minute")
    ap.add_argument("--render", type=Path, metavar="RESULTS_JSON", help="only rewrite the docs from a results.json")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)

    if a.render:
        from benchmarks.docs import write_docs

        write_docs(json.loads(a.render.read_text()), REPO / "docs")
        return 0
    out = a.out or REPO / "results" / ("bench-quick" if a.quick else "bench")
    names = a.only or list(BENCHMARKS)
    write = a.docs == "yes" or (a.docs == "auto" and not a.quick and not a.only)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    default_threads = torch.get_num_threads()
    ctx = Context(a.quick, out, work, REPO / "docs", write, a.threads, a.workers, default_threads, a.verbose,
                  QUICK if a.quick else FULL)
    wait_quiet(a.wait_quiet)
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    t0 = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(), "quick": a.quick, "started": started, "sizes": ctx.sizes,
                               "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
                               "sections": []}
    log(machine_line(results["machine"]))
    failed = []
    for name in names:
        log(f"--- {name}")
        la0 = (load_average() or (float("nan"),))[0]
        clock0 = cpu_clock()
        t = time.perf_counter()
        try:
            section: Section = importlib.import_module(BENCHMARKS[name]).run(ctx)
        except Exception:  # noqa: BLE001  (report it, run the others)
            traceback.print_exc()
            failed.append(name)
            continue
        finally:
            torch.set_num_threads(default_threads)
        section.seconds = time.perf_counter() - t
        d = section.to_dict()
        d["load_before"], d["load_after"] = la0, (load_average() or (float("nan"),))[0]
        d["contention"] = contention(clock0, cpu_clock(), section.seconds)
        results["sections"].append(d)
        for c in section.checks:
            log(f"{name}: {c['what']}: {c['value']:.3g} (target {c['target']}): {'met' if c['ok'] else 'NOT met'}")
        results["total_s"] = time.perf_counter() - t0
        dump_json(results, out / "results.json")  # after every benchmark: a crash keeps what was measured
    results["total_s"] = time.perf_counter() - t0
    results["failed"] = failed
    dump_json(results, out / "results.json")
    md = render(results)
    (out / "results.md").write_text(md)
    print(md)
    if write:
        from benchmarks.docs import write_docs

        write_docs(results, ctx.docs)
        log(f"wrote {ctx.docs / 'performance.md'}")
    log(f"results: {out / 'results.json'}, {out / 'results.md'}; {results['total_s'] / 60:.1f} min")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
