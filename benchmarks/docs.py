"""docs/performance.md from a suite run's results.json (``python -m benchmarks --render FILE``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HEADER = """# Performance

What transferscope does to make a study fast, and what it measures on this machine. Every figure
below comes from one run of the benchmark suite (issue #4); absolute times are noisy on a shared
2-core machine, so each benchmark measures its comparison within the same run and reports the
**ratio**.

## Reproduce

```bash
make bench                                   # the full suite (about 20 minutes here); rewrites this file
.venv/bin/python -m benchmarks --quick       # a smoke run at tiny sizes (a couple of minutes), results/bench-quick
.venv/bin/python -m benchmarks --only flops frozen   # some benchmarks (results/bench; docs untouched)
.venv/bin/python -m benchmarks --render results/bench/results.json   # rewrite this file from saved results
```

Results are written to `results/bench/results.json` (every figure) and `results/bench/results.md`
(these tables). The CIFAR-10 JPEGs are extracted once from `../shared/data/cifar10-jpeg.tar.gz`
(or `$CIFAR10_JPEG_TARBALL`) into `~/.cache/transferscope-bench` (or `$TRANSFERSCOPE_BENCH_CACHE`),
and the studies read a subset folder of symbolic links to the first images of every class.
`--wait-quiet SECONDS` waits for the machine to be idle first.

## What each shortcut does

- **Frozen work done once** (`train.frozen_features = "cached"`, the default). Frozen runs that share
  a source network and a target form one job. `features.FeatureBank` pushes the target task's
  images through the source network once, one layer at a time, and every frozen run of the job
  trains only its upper layers on the stored outputs of layer n (the next cut point costs one more
  layer). With augmentation off the stored features are exactly what the naive path computes
  every epoch, so the metrics are identical. With augmentation on, the bank holds
  `train.feature_views` (V, default 4) augmented copies of the training images (each image
  translated and flipped at random once), and epoch e trains on view e mod V: the upper layers
  still see augmented data, but the same V views recur instead of a fresh draw every epoch.
  The views (and val/test features) must fit `train.feature_memory_gb`; fewer views are kept
  otherwise, and none (the runs recompute) if even one does not fit. With
  `treatments.frozen_bn = "train-affine"` the prefix is not constant and nothing is cached.
- **In-memory uint8 data, batched augmentation.** Datasets that fit `data.memory_limit_gb` are
  decoded once into a uint8 tensor (cached on disk for the next study); each batch is indexed,
  normalised and augmented (random translation by reflect-pad-and-crop, flips for photos) as a
  whole batch on the device: no per-image Python, no DataLoader processes.
- **bf16 and channels_last** (`train.precision = "auto"`, `train.channels_last = true`). bf16
  autocast where the CPU (AVX-512 bf16 / AMX) or GPU supports it; NHWC memory layout for convolutions.
- **A lean training step** (`train.py`). SGD runs as PyTorch's fused kernel (one pass over every
  parameter: half the step time of an fc suffix on this CPU), the loss scaler exists only for fp16,
  an evaluation synchronises with the device once, and switching train/eval mode leaves frozen
  blocks alone. These matter most for the smallest runs, the classifier trained on layer 5's
  cached features, whose whole run takes tens of milliseconds.
- **Parallel runs** (`execution.workers`, one per core by default, `execution.threads` = 1 each).
  Jobs go to worker processes as soon as the base network they copy from is recorded. Results do
  not depend on the number of workers.

The naive schedule used for comparison is the same engine with all of this off:
`train.frozen_features = "recompute"`, `execution.workers = 1`, `train.precision = "fp32"`,
`train.channels_last = false`.

## Results
"""


FINDINGS = Path(__file__).with_name("findings.md")
#: measured by hand, outside the suite (the report phase, the dry run's estimate): appended as written
REPORT_PHASE = Path(__file__).with_name("report_phase.md")


def write_docs(results: dict[str, Any], docs: Path) -> None:
    """HEADER, then benchmarks/findings.md (a hand-written reading of the recorded run, where
    present), then the tables of ``results``, then benchmarks/report_phase.md (measured by hand)."""
    from benchmarks.__main__ import render

    docs.mkdir(parents=True, exist_ok=True)
    findings = FINDINGS.read_text().strip() if FINDINGS.exists() else ""
    body = render(results)
    by_hand = "\n" + REPORT_PHASE.read_text().strip() + "\n" if REPORT_PHASE.exists() else ""
    (docs / "performance.md").write_text(HEADER + ("\n" + findings + "\n" if findings else "") + "\n" + body + by_hand)
