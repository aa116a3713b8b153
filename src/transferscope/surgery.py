"""Where a network is cut, copied, frozen and re-initialised.

Pure functions: each returns a new module and leaves its inputs untouched. A treatment network is
built as ``freeze(transplant(source, fresh, n), n)``, where ``fresh`` is a network drawn with the
same initialiser the base networks used, so every layer above n is re-initialised that way.
"""

from __future__ import annotations

import copy

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


def trainable_parameters(model: CutNet) -> list[nn.Parameter]:
    """Exactly the parameters that train, selected by identity (never by value or name)."""
    return [p for p in model.parameters() if p.requires_grad]


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))
