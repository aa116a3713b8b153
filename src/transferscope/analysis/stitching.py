"""Model stitching: the source network's layer-n outputs, mapped into the target's own base network.

AnB asks how well upper layers trained on task T do on top of layers 1..n of the network trained
on S, frozen. The stitch asks it of the upper layers T already has, adapted to S's features:

1. a linear map from baseS's layer-n outputs to baseT's (a 1x1 convolution on conv maps: one map
   of channels shared by every position), fitted in closed form by ridge regression on T's training
   images (Lenc & Vedaldi 2015); where layer n of baseT only ever outputs values >= 0 (after a
   ReLU) the mapped outputs are clipped at 0 as well;
2. the BatchNorm statistics of a copy of baseT's layers n+1..L recomputed on the mapped outputs
   (a ridge fit shrinks its outputs' spread, and in a residual network every later block sees it);
3. the map and that copy fine-tuned together on T's labels (Bansal et al. 2021 train the stitch by
   the task's loss) for :data:`EPOCHS` epoch over the frozen layer-n outputs, with the study's
   recipe (SGD, momentum, weight decay, batch size, numerics) at :data:`LR_SCALE` of its learning rate.

Its score is the test top-1 of the result on T's test images: an estimate of the AnB accuracy
itself, not only of its rank. Fitted to baseT's *features* alone (``epochs=0``) the map is exact
at the stem and near the head, but in the middle of a residual stream its small errors pass through
every later block and skip connection and the stitched network falls 0.1-0.2 below AnB, which
retrains those blocks; the short fine-tuning closes most of that gap (docs/estimate.md). Unlike a
short AnB, whose re-initialised deep tops of low cut points are further from their end after a few
steps than the shallow tops of high ones, every cut point starts from a trained top.

Cost: one forward pass of each base network over T's training images and of the source over the
test images (every cut point's outputs from the same pass), then per cut point one pass of layers
n+1..L for the BatchNorm statistics and one epoch of them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transferscope.analysis.networks import for_inference, layer_outputs
from transferscope.config import TrainConfig
from transferscope.data.tasks import Task
from transferscope.models import CutNet
from transferscope.precision import Numerics

#: the ridge, relative to the mean diagonal of the regression's Gram matrix
RIDGE = 1e-3
#: positions (rows of the regression) drawn from the training images, at most
MAX_ROWS = 50_000
#: epochs the map and the target's upper layers are fine-tuned for (0: the ridge map alone)
EPOCHS = 1
#: their learning rate, relative to the study's ``train.lr`` (a trained top is fine-tuned, not trained)
LR_SCALE = 0.1
#: memory for the source's outputs on the training images at every cut point, at most (fewer images beyond)
MAX_BYTES = 2 * 2**30


def rows(h: torch.Tensor) -> torch.Tensor:
    """A layer output as rows of channels: (N, C, H, W) -> (N*H*W, C), (N, T, C) -> (N*T, C), (N, D) as it is."""
    if h.dim() == 4:
        return h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
    return h.reshape(-1, h.shape[-1])


def unrows(r: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`rows` for an output shaped like ``like`` (channels-last for conv maps)."""
    if like.dim() == 4:
        n, _, height, width = like.shape
        return r.reshape(n, height, width, -1).permute(0, 3, 1, 2)
    return r.reshape(*like.shape[:-1], -1)


class Stitch:
    """Ridge regression from one network's layer outputs to another's, accumulated batch by batch."""

    def __init__(self, ridge: float = RIDGE):
        self.ridge = ridge
        self.gram: torch.Tensor | None = None  # (C_S + 1, C_S + 1), float64
        self.cross: torch.Tensor | None = None  # (C_S + 1, C_T)
        self.nonnegative = True
        self.weight: torch.Tensor | None = None

    def add(self, source: torch.Tensor, target: torch.Tensor) -> None:
        """Add matching rows (positions) of the two outputs, (M, C_S) and (M, C_T)."""
        x = torch.cat([source.double(), source.new_ones(len(source), 1, dtype=torch.float64)], 1)
        gram, cross = x.T @ x, x.T @ target.double()
        self.gram = gram if self.gram is None else self.gram + gram
        self.cross = cross if self.cross is None else self.cross + cross
        self.nonnegative &= bool((target >= 0).all())

    def fit(self) -> Stitch:
        if self.gram is None or self.cross is None:
            raise ValueError("a stitch needs rows to fit")
        gram = self.gram + self.ridge * float(self.gram.diagonal().mean()) * torch.eye(
            len(self.gram), dtype=torch.float64, device=self.gram.device)
        self.weight = torch.linalg.solve(gram, self.cross).float()
        return self

    def __call__(self, source: torch.Tensor) -> torch.Tensor:
        """The mapped layer output (the shape of ``source``, the target's channels)."""
        if self.weight is None:
            raise ValueError("fit the stitch first")
        return apply_map(source.float(), self.weight, self.nonnegative)


def apply_map(source: torch.Tensor, weight: torch.Tensor, nonnegative: bool) -> torch.Tensor:
    """``source``'s channels mapped by ``weight`` ((C_S + 1, C_T): the map, then the bias row),
    clipped at 0 where ``nonnegative``; shaped like ``source``."""
    out = rows(source) @ weight[:-1].to(source.dtype) + weight[-1].to(source.dtype)
    return unrows(out.clamp_min(0) if nonnegative else out, source)


class StitchedTop(nn.Module):
    """A fitted :class:`Stitch` as a trainable map, then a copy of the target's layers n+1..L."""

    def __init__(self, stitch: Stitch, top: Sequence[nn.Module]):
        super().__init__()
        if stitch.weight is None:
            raise ValueError("fit the stitch first")
        self.map = nn.Parameter(stitch.weight.clone())
        self.nonnegative = stitch.nonnegative
        self.top = nn.Sequential(*copy.deepcopy(list(top)))

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        h = apply_map(source, self.map, self.nonnegative)
        if h.dim() == 4:
            h = h.contiguous(memory_format=torch.channels_last)
        return self.top(h)


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, inputs: torch.Tensor, batch_size: int) -> None:
    """Replace the running statistics of every BatchNorm in ``model`` by those of ``inputs`` (the
    exact average over its batches, then the layers' own momentum again); ``model`` ends in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.train()
    for i in range(0, len(inputs), batch_size):
        model(inputs[i : i + batch_size])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def fine_tune(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, train: TrainConfig, epochs: int,
              numerics: Numerics, seed: int = 0) -> list[float]:
    """Train ``model`` on (``inputs``, ``labels``) for ``epochs`` epochs with the study's recipe at
    :data:`LR_SCALE` of its learning rate (no augmentation: ``inputs`` are frozen layer outputs),
    seeded shuffles; the mean training loss of each epoch. ``model`` ends in eval mode."""
    opt = torch.optim.SGD(model.parameters(), lr=train.lr * LR_SCALE, momentum=train.momentum,
                          weight_decay=train.weight_decay)
    g = torch.Generator().manual_seed(seed)
    size = min(train.batch_size, len(inputs))
    losses = []
    model.train()
    for _ in range(epochs):
        order, total, steps = torch.randperm(len(inputs), generator=g), 0.0, 0
        for i in range(0, len(inputs) - size + 1, size):  # full batches: BatchNorm of one image is undefined
            pick = order[i : i + size]
            with numerics.autocast():
                loss = F.cross_entropy(model(inputs[pick]), labels[pick])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
        losses.append(total / max(1, steps))
    model.eval()
    return losses


def stitch_scores(source: CutNet, target: CutNet, task: Task, train_x: torch.Tensor, train_y: torch.Tensor,
                  test_x: torch.Tensor, test_y: torch.Tensor, cuts: tuple[int, ...], train: TrainConfig, *,
                  epochs: int = EPOCHS, numerics: Numerics | None = None, ridge: float = RIDGE,
                  max_rows: int = MAX_ROWS, max_bytes: int = MAX_BYTES, seed: int = 0,
                  batch_size: int = 256) -> dict[int, float]:
    """Stitched test top-1 at every cut point: the stitch from ``source``'s layer n to ``target``'s
    fitted on ``train_x`` (at most ``max_rows`` positions, a seeded random draw per batch), the
    BatchNorm statistics of a copy of ``target``'s layers n+1..L recomputed on its outputs, both
    fine-tuned for ``epochs`` on (``train_x``, ``train_y``) with ``train``'s recipe, then run on
    ``test_x``. One pass of each network over ``train_x`` serves every cut point: the source's
    layer outputs are kept for as many training images as ``max_bytes`` holds (a seeded draw; the
    fine-tuning sees those). Both networks in eval mode; ``target`` is not changed. Images uint8,
    normalised with ``task``'s statistics; ``numerics``: the autocast of every pass (default fp32)."""
    numerics = numerics or Numerics(torch.device("cpu"), None, True)
    keep_dtype = numerics.dtype or torch.float32
    upto, g = max(cuts), torch.Generator().manual_seed(seed)
    stitches = {n: Stitch(ridge) for n in cuts}
    kept: dict[int, list[torch.Tensor]] = {n: [] for n in cuts}
    keep, seen = None, 0
    with torch.no_grad(), numerics.autocast():
        for outs_s, outs_t in zip(layer_outputs(source, train_x, task, upto, batch_size),
                                  layer_outputs(for_inference(target), train_x, task, upto, batch_size)):
            if keep is None:  # which images' outputs are kept: as many as max_bytes holds at every cut point
                per_image = sum(outs_s[n - 1][0].numel() for n in cuts) * keep_dtype.itemsize
                count = min(len(train_x), max(train.batch_size, max_bytes // per_image))
                keep = torch.zeros(len(train_x), dtype=torch.bool)
                keep[torch.randperm(len(train_x), generator=g)[:count]] = True
            mask = keep[seen : seen + len(outs_s[0])]
            seen += len(outs_s[0])
            for n in cuts:
                xs, xt = rows(outs_s[n - 1]), rows(outs_t[n - 1])
                rows_kept = max(1, round(max_rows * len(outs_s[0]) / len(train_x)))
                if rows_kept < len(xs):
                    pick = torch.randperm(len(xs), generator=g)[:rows_kept]
                    xs, xt = xs[pick], xt[pick]
                stitches[n].add(xs, xt)
                if epochs:  # the fine-tuning's inputs
                    kept[n].append(outs_s[n - 1][mask].to(keep_dtype))
    models = {}
    for n in cuts:
        models[n] = StitchedTop(stitches[n].fit(), target.blocks[n:])
        if epochs:
            inputs = torch.cat(kept.pop(n))
            if inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with numerics.autocast():
                recompute_batchnorm(models[n], inputs, batch_size)
            fine_tune(models[n], inputs, train_y[keep], train, epochs, numerics, seed=seed * 1000 + n)
            del inputs
    correct, start = dict.fromkeys(cuts, 0), 0
    with torch.no_grad(), numerics.autocast():
        for outs in layer_outputs(source, test_x, task, upto, batch_size):
            y = test_y[start : start + len(outs[0])]
            start += len(outs[0])
            for n in cuts:
                correct[n] += int((models[n](outs[n - 1]).argmax(1).cpu() == y).sum())
    return {n: correct[n] / max(1, len(test_y)) for n in cuts}
