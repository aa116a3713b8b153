"""Model stitching: the source network's layer-n outputs, mapped into the target's own base network.

AnB asks how well upper layers trained on task T do on top of layers 1..n of the network trained
on S, frozen. The stitch asks it of the upper layers T already has: a linear map from baseS's
layer-n outputs to baseT's (a 1x1 convolution on conv maps: one map of channels shared by every
position), fitted in closed form by ridge regression on T's training images, then baseT's layers
n+1..L on the mapped outputs of T's test images. Its score is that test top-1: an estimate of the
AnB accuracy itself, not only of its rank (Lenc & Vedaldi 2015 stitched networks this way; Bansal
et al. 2021 train the stitch by the task's loss instead). Where layer n of baseT only ever outputs
values >= 0 (after a ReLU) the mapped outputs are clipped at 0 as well.

What it needs is what the estimate already has, both base networks, and one forward pass of each
over T's training and test images: seconds, where AnB trains the upper layers for the whole budget.
"""

from __future__ import annotations

import torch

from transferscope.analysis.networks import layer_outputs
from transferscope.data.tasks import Task
from transferscope.models import CutNet

#: the ridge, relative to the mean diagonal of the regression's Gram matrix
RIDGE = 1e-3
#: positions (rows of the regression) drawn from the training images, at most
MAX_ROWS = 50_000


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
        out = rows(source.float()) @ self.weight[:-1] + self.weight[-1]
        out = out.clamp_min(0) if self.nonnegative else out
        return unrows(out, source)


@torch.no_grad()
def stitch_scores(source: CutNet, target: CutNet, task: Task, train_x: torch.Tensor, test_x: torch.Tensor,
                  test_y: torch.Tensor, cuts: tuple[int, ...], *, ridge: float = RIDGE, max_rows: int = MAX_ROWS,
                  seed: int = 0, batch_size: int = 256) -> dict[int, float]:
    """Stitched test top-1 at every cut point: the stitch from ``source``'s layer n to ``target``'s
    fitted on ``train_x`` (at most ``max_rows`` positions, a seeded random draw per batch), then
    ``target``'s layers n+1..L on the mapped outputs of ``test_x``. Both networks in eval mode (see
    :func:`~transferscope.analysis.networks.for_inference`); images uint8, normalised with ``task``'s
    statistics."""
    upto = max(cuts)
    stitches = {n: Stitch(ridge) for n in cuts}
    g = torch.Generator().manual_seed(seed)
    for outs_s, outs_t in zip(layer_outputs(source, train_x, task, upto, batch_size),
                              layer_outputs(target, train_x, task, upto, batch_size)):
        for n in cuts:
            xs, xt = rows(outs_s[n - 1]), rows(outs_t[n - 1])
            keep = max(1, round(max_rows * len(outs_s[n - 1]) / len(train_x)))
            if keep < len(xs):
                pick = torch.randperm(len(xs), generator=g)[:keep]
                xs, xt = xs[pick], xt[pick]
            stitches[n].add(xs, xt)
    for s in stitches.values():
        s.fit()
    correct = dict.fromkeys(cuts, 0)
    start = 0
    for outs in layer_outputs(source, test_x, task, upto, batch_size):
        y = test_y[start : start + len(outs[0])]
        start += len(outs[0])
        for n in cuts:
            h = stitches[n](outs[n - 1])
            if h.dim() == 4:
                h = h.contiguous(memory_format=torch.channels_last)
            for block in target.blocks[n:]:
                h = block(h)
            correct[n] += int((h.argmax(1).cpu() == y).sum())
    return {n: correct[n] / max(1, len(test_y)) for n in cuts}
