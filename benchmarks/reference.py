"""The same study as a careful user would write it in plain PyTorch (benchmark 4's baseline).

torchvision ``ImageFolder`` + ``DataLoader(num_workers=2)`` reading the JPEG files every epoch with
the usual transforms (ToTensor, Normalize; RandomCrop(32, padding=4, padding_mode="reflect") and
RandomHorizontalFlip for training; reflect padding as transferscope pads: with the default zero
padding the reference's base networks trailed by 0.037 ± 0.030 test top-1 after 3 epochs, which
would measure the padding rather than the engine), fp32, PyTorch's default thread count, the same conv net and recipe (SGD with momentum
and weight decay, cosine schedule, the same epochs and batch size; validation top-1 every epoch,
test top-1 once at the end). Frozen layers are ``requires_grad=False`` and kept in eval mode (their
BatchNorm statistics fixed). Runs execute one after another: the base networks, then BnB, BnB+,
AnB, AnB+ and random-frozen at every cut point, for both targets.

The only thing borrowed from transferscope is *which* files each task uses (:func:`task_files`), so
that both sides train and test on exactly the same images; everything else is ordinary PyTorch.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


# ---------------------------------------------------------------------------- which images


def task_files(config, replicate: int, task: str) -> dict[str, tuple[list[str], list[int]]]:
    """The files (and task labels) of each part of ``task`` in ``replicate``, exactly as
    transferscope partitions them: its own split and partition functions, applied to the folder's
    file list instead of decoded pixels."""
    from pathlib import Path

    from transferscope.data.imagefolder import scan_folder
    from transferscope.data.registry import ImageData
    from transferscope.data.splits import split_classes
    from transferscope.data.tasks import make_task
    from transferscope.seeds import derive_seed

    scan = scan_folder(Path(config.data.root).expanduser().resolve())
    n = len(scan.paths)
    # the index of each file stands in for its pixels: make_task returns the indices it chose
    index = torch.arange(n, dtype=torch.int64)
    fake = ImageData(y=torch.from_numpy(scan.labels), class_names=scan.class_names, x=torch.zeros(n, 1, 1, 1, dtype=torch.uint8),
                     is_test=None if scan.is_test is None else torch.from_numpy(scan.is_test), name="index")
    split = split_classes(config.split, fake, replicate)
    d = config.data
    # make_task selects rows of data.x; pass the indices as a (N, 1, 1, 1) "image" tensor
    object.__setattr__(fake, "x", index.view(n, 1, 1, 1))
    t = make_task(fake, task, split.classes(task), d.val_fraction, d.test_fraction,
                  seed=derive_seed("partition", config.seed, replicate, task), train_per_class=d.train_per_class)
    out = {}
    for part in ("train", "val", "test"):
        p = getattr(t, part)
        out[part] = ([scan.paths[int(i)] for i in p.x.view(-1)], p.y.tolist())
    return out


class FileList(datasets.ImageFolder):
    """An ImageFolder restricted to a list of its files, with the task's labels."""

    def __init__(self, root: str, files: list[str], labels: list[int], transform: Callable):
        chosen = {os.path.abspath(f): y for f, y in zip(files, labels)}
        super().__init__(root, transform=transform, is_valid_file=lambda p: os.path.abspath(p) in chosen,
                         allow_empty=True)
        self.samples = [(p, chosen[os.path.abspath(p)]) for p, _ in self.samples]
        self.targets = [y for _, y in self.samples]
        self.imgs = self.samples


# ---------------------------------------------------------------------------- the network


def conv_net(num_classes: int, widths=(32, 64, 128), fc=(128, 64), image_size: int = 32) -> nn.Sequential:
    """conv3x3-BN-ReLU-maxpool blocks, then Linear-ReLU blocks, then the classifier: one
    Sequential entry per layer (the function transferscope's ``convnet`` computes; it pools before
    the ReLU, which gives the same values and gradients)."""
    blocks: list[nn.Module] = []
    cin, side = 3, image_size
    for w in widths:
        blocks.append(nn.Sequential(nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                                    nn.ReLU(inplace=True), nn.MaxPool2d(2)))
        cin, side = w, side // 2
    fin = cin * side * side
    for j, f in enumerate(fc):
        blocks.append(nn.Sequential(*([nn.Flatten()] if j == 0 else []), nn.Linear(fin, f), nn.ReLU(inplace=True)))
        fin = f
    blocks.append(nn.Sequential(nn.Linear(fin, num_classes)))
    return nn.Sequential(*blocks)


# ---------------------------------------------------------------------------- training


@dataclass
class Recipe:
    epochs: int = 4
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eval_batch_size: int = 512
    loader_workers: int = 2


@torch.no_grad()
def accuracy(net: nn.Module, loader: DataLoader) -> float:
    net.eval()
    correct = total = 0
    for x, y in loader:
        correct += (net(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total


def train(net: nn.Sequential, frozen: int, loaders: dict[str, DataLoader], r: Recipe,
          clock: dict[str, float]) -> dict[str, Any]:
    for block in list(net)[:frozen]:
        block.requires_grad_(False)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=r.lr, momentum=r.momentum,
                          weight_decay=r.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=r.epochs)
    history = []
    for _ in range(r.epochs):
        net.train()
        for block in list(net)[:frozen]:
            block.eval()  # frozen BatchNorm keeps its statistics
        it = iter(loaders["train"])
        while True:
            t0 = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t2 = time.perf_counter()
            clock["data_wait_s"] += t1 - t0
            clock["step_s"] += t2 - t1
        sched.step()
        history.append(accuracy(net, loaders["val"]))
    return {"val_top1": history[-1], "test_top1": accuracy(net, loaders["test"]), "history": history}


def run_reference(config, *, recipe: Recipe | None = None, widths=(32, 64, 128), fc=(128, 64),
                  padding_mode: str = "reflect", log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Every run of the study described by the transferscope ``config`` (its data root, split,
    replicates, cut points, treatments and targets), the plain-PyTorch way. Returns the runs and
    the wall time."""
    r = recipe or Recipe(epochs=config.train.epochs, batch_size=config.train.batch_size, lr=config.train.lr,
                         momentum=config.train.momentum, weight_decay=config.train.weight_decay,
                         eval_batch_size=config.eval.batch_size)
    root = os.path.abspath(os.path.expanduser(config.data.root))
    normalize = transforms.Normalize(CIFAR_MEAN, CIFAR_STD)
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4, padding_mode=padding_mode), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    eval_tf = transforms.Compose([transforms.ToTensor(), normalize])
    t = config.treatments
    cuts = list(range(1, len(widths) + len(fc) + 1)) if t.cut_points == "all" else sorted(t.cut_points)
    start = time.perf_counter()
    clock = {"data_wait_s": 0.0, "step_s": 0.0}
    runs: list[dict[str, Any]] = []

    def loaders_for(rep: int, task: str) -> dict[str, DataLoader]:
        files = task_files(config, rep, task)
        out = {}
        for part, (paths, labels) in files.items():
            folder = os.path.join(root, "test" if part == "test" and os.path.isdir(os.path.join(root, "test")) else "train") \
                if os.path.isdir(os.path.join(root, "train")) else root
            ds = FileList(folder, paths, labels, train_tf if part == "train" and config.train.augment else eval_tf)
            out[part] = DataLoader(ds, batch_size=r.batch_size if part == "train" else r.eval_batch_size,
                                   shuffle=part == "train", drop_last=part == "train", num_workers=r.loader_workers,
                                   persistent_workers=r.loader_workers > 0)
        out["classes"] = len(set(files["train"][1]))  # type: ignore[assignment]
        return out

    for rep in range(t.replicates):
        loaders = {task: loaders_for(rep, task) for task in ("A", "B")}
        seed = 1000 * rep

        def fresh(task: str, tag: int) -> nn.Sequential:
            torch.manual_seed(seed + tag)
            return conv_net(loaders[task]["classes"], widths, fc)

        def record(treatment: str, role: str, target: str, n: int, net: nn.Sequential, frozen: int, t0: float) -> None:
            out = train(net, frozen, loaders[target], r, clock)
            runs.append({"replicate": rep, "treatment": treatment, "role": role, "target": target, "n": n,
                         "test_top1": out["test_top1"], "val_top1": out["val_top1"],
                         "wall_time_s": time.perf_counter() - t0})
            log(f"reference r{rep} {treatment} n={n}: test top-1 {out['test_top1']:.3f} ({time.perf_counter() - t0:.1f} s)")

        base: dict[str, nn.Sequential] = {}
        for task in ("A", "B"):
            t0 = time.perf_counter()
            base[task] = fresh(task, 1 if task == "A" else 2)
            record(f"base{task}", "base", task, 0, base[task], 0, t0)
        randoms = {task: fresh(task, 3 if task == "A" else 4) for task in ("A", "B")}
        for n in cuts:
            for target in t.targets:
                source = "A" if target == "B" else "B"
                for name in t.names:
                    if name == "base":
                        continue
                    t0 = time.perf_counter()
                    net = fresh(target, 100 + 10 * n + (0 if target == "A" else 5) + len(runs))
                    if name == "random":
                        donor, role, treatment = randoms[target], "random", f"random{target}"
                    else:
                        own = name.startswith("BnB")
                        donor = base[target] if own else base[source]
                        role = ("selffer" if own else "transfer") + ("+" if name.endswith("+") else "")
                        treatment = f"{target if own else source}n{target}{'+' if name.endswith('+') else ''}"
                    for i in range(n):
                        net[i].load_state_dict(copy.deepcopy(donor[i].state_dict()))
                    frozen = 0 if name.endswith("+") else n
                    record(treatment, role, target, n, net, frozen, t0)
        loaders.clear()  # the replicate's persistent loader workers end here
    return {"runs": runs, "wall_time_s": time.perf_counter() - start, "threads": torch.get_num_threads(), **clock,
            "loader_workers": r.loader_workers}


def _summary(runs: list[dict[str, Any]]) -> str:
    import pandas as pd

    f = pd.DataFrame(runs)
    return f.groupby(["role", "n"]).test_top1.agg(["mean", "std", "count"]).to_string()


if __name__ == "__main__":
    import argparse

    from transferscope import load_config

    ap = argparse.ArgumentParser(description="the plain-PyTorch reference study")
    ap.add_argument("study", nargs="?", default=None)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    cfg = load_config(a.study, a.set)
    res = run_reference(cfg, log=print)
    print(_summary(res["runs"]))
    print(f"wall time {res['wall_time_s']:.1f} s")
