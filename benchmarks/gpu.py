"""Images per second per device for CaffeNet at 227 px, and the share of training time spent
waiting for data: transferscope's own training loop (``train_network``) on JPEG files streamed
through DataLoader workers (decoding off the training loop's critical path), against the same
images decoded in memory.

    python -m benchmarks.gpu                       # on CUDA where there is one, else the CPU
    python -m benchmarks.gpu --device cpu --width 0.125 --images 512 --batch 32   # a quick check

The images are random-noise JPEGs of 256 x 256 written to a temporary folder (their decoding costs
what a photo's does; their content does not matter here), resized and centre-cropped to 227 px as
``examples/paper-imagenet.toml`` asks. "waiting" is the time the loop spends blocked on the next
batch (benchmarks/dataload.py's ``timed_feed``); images per second are the trained images over the
wall time of ``train_network`` (one epoch, validation included), the first epoch's warm-up counted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.dataload import timed_feed


def write_jpegs(root: Path, images: int, classes: int = 10, side: int = 256) -> None:
    rng = np.random.default_rng(0)
    for part, count in (("train", images), ("test", max(classes * 2, images // 10))):
        for i in range(count):
            folder = root / part / f"class{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.jpg", quality=90)


def measure(root: Path, device: str, batch: int, width: float, workers: int, streamed: bool) -> dict:
    from transferscope import load_config
    from transferscope.runner import Runner
    from transferscope.seeds import TrainingSeeds
    from transferscope.study import Study
    from transferscope.train import PixelFeed, train_network

    overrides = [f"data.root={root}", "data.dataset=\"imagefolder\"", "data.image_size=227", "data.val_fraction=0.05",
                 "data.test_fraction=0.05", f"data.workers={workers}", "model.arch=\"caffenet\"",
                 f"model.options={{width={width},dropout=0.5}}", f"train.batch_size={batch}", "train.epochs=1",
                 "treatments.names=[\"base\"]", "treatments.replicates=1", f"execution.device=\"{device}\"",
                 f"data.cache_dir={root.parent / (root.name + '-cache')}"]
    if streamed:
        overrides.append("data.memory_limit_gb=0.000001")  # stream every image from its file
    cfg = load_config(overrides=overrides)
    study = Study.prepare(cfg)
    runner = Runner(study, load_source=lambda key: {})
    spec = next(s for s in study.plan if s.role == "base")
    task = study.task(*spec.task_key)
    clock = {"data_s": 0.0, "step_s": 0.0, "batches": 0}
    net = runner.build_network(spec)
    with timed_feed(PixelFeed, clock):
        start = time.perf_counter()
        train_network(net, task, cfg.train, cfg.eval, copied=0, seeds=TrainingSeeds.derive(0, spec.key),
                      flip=study.flip, numerics=runner.numerics)
        if runner.numerics.device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    images = clock["batches"] * batch
    return {"path": "streamed from JPEG files" if streamed else "decoded in memory", "device": str(runner.numerics.device),
            "precision": runner.numerics.name, "images": images, "wall_s": wall, "images_per_s": images / wall,
            "waiting_share": clock["data_s"] / max(clock["data_s"] + clock["step_s"], 1e-9)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=float, default=1.0, help="CaffeNet width (1: the paper's)")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers decoding JPEGs")
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        write_jpegs(root, args.images)
        rows = [measure(root, args.device, args.batch, args.width, args.workers, streamed)
                for streamed in (True, False)]
    for r in rows:
        print(f"{r['path']:<26} {r['device']:<8} {r['precision']:<5} {r['images_per_s']:9.1f} images/s  "
              f"waiting for data {r['waiting_share']:.1%} of the loop ({r['images']} images, {r['wall_s']:.1f} s)")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
