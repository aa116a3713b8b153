"""Where a network is cut, copied, frozen and re-initialised.

Pure functions: each returns a new module and leaves its inputs untouched. A treatment network is
built as ``freeze(transplant(source, fresh, n), n)``, where ``fresh`` is a network drawn with the
same initialiser the base networks used, so every layer above n is re-initialised that way.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
from torch import nn

from transferscope.errors import UserError
from transferscope.models.cutnet import CutNet


def check_cut(model: CutNet, n: int, arch: str = "network") -> None:
    """A bad n names the valid range."""
    if not isinstance(n, int) or isinstance(n, bool) or n not in model.cut_points:
        raise UserError(f"treatments.cut_points: n={n!r} is out of range for {arch} with {model.num_layers} "
                        f"layers; allowed 1..{model.num_layers - 1}")


def transplant(source: CutNet, target: CutNet, n: int) -> CutNet:
    """A copy of ``target`` whose layers 1..n (weights and buffers, e.g. BatchNorm statistics)
    are copied from ``source``, matched by state-dict key with names and shapes asserted."""
    check_cut(target, n)
    out = copy.deepcopy(target)
    for i in range(n):
        src, dst = source.blocks[i].state_dict(), out.blocks[i].state_dict()
        if src.keys() != dst.keys():
            raise ValueError(f"layer {i + 1}: source and target differ in parameters: {sorted(src.keys() ^ dst.keys())}")
        for key, value in src.items():
            if value.shape != dst[key].shape:
                raise ValueError(f"layer {i + 1} {key}: source shape {tuple(value.shape)} != target {tuple(dst[key].shape)}")
        out.blocks[i].load_state_dict(src)
    return out


def freeze(model: CutNet, n: int, bn_affine: bool = False) -> CutNet:
    """A copy of ``model`` with layers 1..n frozen: no gradients, excluded from the optimizer
    (see :func:`trainable_parameters`), and kept in eval mode by :meth:`CutNet.train`, so
    BatchNorm statistics and dropout stay fixed whatever calls ``model.train()``.

    With ``bn_affine``, the BatchNorm scale and shift of the frozen layers still train (their
    running statistics stay fixed)."""
    if n:
        check_cut(model, n)
    out = copy.deepcopy(model)
    out.num_frozen = n
    for block in out.blocks[:n]:
        block.requires_grad_(False)
        if bn_affine:
            for m in block.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                    m.requires_grad_(True)
    return out.train(model.training)


def reestimate_bn(model: CutNet, n: int, batches: Callable[[], Iterable[torch.Tensor]]) -> CutNet:
    """A copy of ``model`` whose BatchNorm layers in layers 1..n have running statistics
    re-estimated on the images that ``batches()`` yields (network inputs, already normalised):
    AdaBN (Li et al. 2016). Weights and affine parameters are left as they are.

    Exact and bottom-up: one pass over the images per BatchNorm module, in module order, with
    the network in eval mode, so each BatchNorm's statistics are the mean and (unbiased) variance
    over all images of the input it receives at run time, below it normalised by the statistics
    already re-estimated. (A single pass in train mode would normalise every layer's input by its
    batch statistics while estimating the next, and average per-batch variances.) The statistics
    of layer k depend only on layers 1..k, never on n. With no BatchNorm in layers 1..n the copy
    equals ``model``."""
    if n:
        check_cut(model, n)
    out = copy.deepcopy(model)
    was_training = out.training
    out.eval()
    norms = [(i, m) for i in range(n) for m in out.blocks[i].modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for block, bn in norms:
        total: list[torch.Tensor] = []

        def collect(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().to(torch.float64).transpose(0, 1).reshape(args[0].shape[1], -1)
            total.append(torch.stack([torch.full_like(x[:, 0], x.shape[1]), x.sum(1), (x * x).sum(1)]))

        hook = bn.register_forward_pre_hook(collect)
        try:
            with torch.no_grad():
                for x in batches():
                    out.forward_prefix(x, block + 1)
        finally:
            hook.remove()
        if not total:
            raise ValueError("reestimate_bn: no images to estimate BatchNorm statistics on")
        count, s1, s2 = torch.stack(total).sum(0)
        mean = s1 / count
        var = (s2 - count * mean * mean).clamp_min(0) / (count - 1).clamp_min(1)
        bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
        bn.running_var.copy_(var.to(bn.running_var.dtype))
    return out.train(was_training)


def trainable_parameters(model: CutNet) -> list[nn.Parameter]:
    """Exactly the parameters that train, selected by identity (never by value or name)."""
    return [p for p in model.parameters() if p.requires_grad]


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))
