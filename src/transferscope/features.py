"""Frozen work done once: the output of a frozen prefix, computed once per source network and task.

A frozen prefix does not change during a run, so its output on the training images is the same
every epoch. :class:`FeatureBank` pushes a task's images through a source network one layer at a
time, and hands out the output at cut point n to every frozen run that needs it; the next cut
point costs only one more layer. A run then trains its upper layers on these features alone.

With augmentation off the features are exactly what the naive path computes every epoch, so the
two paths give identical results. With augmentation on, the bank holds ``views`` augmented copies
of the training images (each image translated/flipped at random, once), and epoch e trains on view
e mod views: the upper layers still see augmented data, but the same few views recur instead of a
fresh draw every epoch (docs/performance.md measures the effect).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transferscope.data.augment import augment, normalize
from transferscope.data.tasks import Part, Task
from transferscope.models.cutnet import CutNet
from transferscope.precision import Numerics
from transferscope.seeds import generator


@dataclass(frozen=True)
class FrozenFeatures:
    """Outputs of layers 1..n on a task: one tensor per training view, and val and test."""

    n: int
    train_views: tuple[torch.Tensor, ...]
    val: torch.Tensor
    test: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.train_views, self.val, self.test))


def plan_views(net: CutNet, task: Task, numerics: Numerics, cuts: tuple[int, ...], views: int, augmented: bool,
               limit_bytes: float) -> int:
    """How many training views fit in ``limit_bytes`` at the widest of the cut points (and the
    input level); 0 means none fits and the runs must recompute their prefix."""
    if not isinstance(task.train, Part):
        return 0  # streamed datasets recompute: their images do not stay in memory
    wanted = views if augmented else 1
    probe = _run_blocks(net, normalize(task.train.x[:2].to(numerics.device), task.mean, task.std), 0, 0, numerics)
    widest = probe.numel() * 4 // 2  # the float32 input level
    for n in range(1, max(cuts) + 1):
        probe = _run_blocks(net, probe, n - 1, n, numerics)
        widest = max(widest, probe.numel() * probe.element_size() // 2)
    fixed = widest * (len(task.val) + len(task.test))
    per_view = widest * len(task.train)
    return max(0, min(wanted, int((limit_bytes - fixed) // per_view)))


@torch.no_grad()
def _run_blocks(net: CutNet, x: torch.Tensor, start: int, stop: int, numerics: Numerics, batch: int = 512) -> torch.Tensor:
    """Blocks start..stop-1 (0-based) of ``net`` in eval mode, in chunks."""
    if start == stop:
        return numerics.prepare_input(x)
    was_training = net.training
    net.eval()
    out = []
    with numerics.autocast():
        for i in range(0, x.shape[0], batch):
            h = numerics.prepare_input(x[i : i + batch])
            for block in net.blocks[start:stop]:
                h = block(h)
            out.append(h)
    net.train(was_training)
    return torch.cat(out)


class FeatureBank:
    """A source network's layer outputs on one task, advanced one cut point at a time."""

    def __init__(self, net: CutNet, task: Task, numerics: Numerics, *, views: int, augmented: bool, flip: bool,
                 seed: int):
        if not isinstance(task.train, Part):
            raise ValueError("features are cached for in-memory datasets only")
        self.net, self.numerics, self.level = net, numerics, 0
        dev = numerics.device

        def inputs(part: Part) -> torch.Tensor:
            return normalize(part.x.to(dev), task.mean, task.std)

        clean = inputs(task.train)
        if augmented:
            self.train = [augment(clean, generator(seed + v), flip) for v in range(views)]
        else:
            self.train = [clean]
        self.val, self.test = inputs(task.val), inputs(task.test)  # type: ignore[arg-type]

    def at(self, n: int) -> FrozenFeatures:
        if n < self.level:
            raise ValueError(f"the bank is at layer {self.level}; it cannot go back to {n}")
        step = lambda t: _run_blocks(self.net, t, self.level, n, self.numerics)  # noqa: E731
        self.train = [step(t) for t in self.train]
        self.val, self.test = step(self.val), step(self.test)
        self.level = n
        return FrozenFeatures(n, tuple(self.train), self.val, self.test)
