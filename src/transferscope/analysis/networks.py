"""Recorded networks back from a study directory, and their layer outputs on a task's images.

A run's weights are rebuilt into the study's architecture (with the class count of the task it
was trained on) and run in eval mode, float32, on the CPU unless asked otherwise. Images are
normalised with the statistics of the task they come from, as every run of the study does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from copy import copy

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from transferscope.data.augment import normalize
from transferscope.data.tasks import AnyPart, Part, Task
from transferscope.errors import UserError
from transferscope.models import CutNet
from transferscope.store import Store


def weights_absence(store: Store, frame: pd.DataFrame, key: str) -> str | None:
    """Why run ``key`` has no weights file, in words from its record (``frame``: the study's run
    table), or None where the file is there: "r0-baseA diverged", "r0-baseA failed (its error)",
    "r0-baseA is not recorded", "r0-baseA is done but weights/r0-baseA.safetensors is missing"."""
    path = store.weights_path(key)
    if path.is_file():
        return None
    rows = frame.loc[frame["key"] == key] if len(frame) and "key" in frame else frame.iloc[0:0]
    if rows.empty:
        return f"{key} is not recorded"
    row = rows.iloc[0]
    status = str(row.get("status"))
    if status == "done":
        return f"{key} is done but its weights file {path.relative_to(store.root)} is missing"
    error = row.get("error")
    error = error.strip().splitlines()[0] if isinstance(error, str) and error.strip() else ""
    epoch = row.get("diverged_epoch")
    at = f" at epoch {int(epoch)}" if status == "diverged" and epoch is not None and pd.notna(epoch) else ""
    return f"{key} {status}{at}" + (f" ({error})" if error else "")


def load_network(store: Store, study, key: str, replicate: int, task: str,
                 device: str | torch.device = "cpu") -> CutNet:
    """The network recorded as ``key``, trained on ``task`` of ``replicate``, in eval mode."""
    if not store.weights_path(key).is_file():
        raise UserError(f"{store.weights_path(key)}: no weights recorded for {key}")
    net = study.network(replicate, task)
    net.load_state_dict(store.load_weights(key))
    return net.to(device).eval()


def for_inference(net: CutNet) -> CutNet:
    """``net`` (in eval mode) for reading layer outputs: in every ``nn.Sequential`` of its blocks,
    a convolution followed by BatchNorm becomes one convolution (eval-mode BatchNorm is an affine
    map of each channel, folded into the convolution's weights and bias by
    ``torch.nn.utils.fusion.fuse_conv_bn_eval``: the same function to float32 rounding, about 1e-6
    relative, without BatchNorm's pass over memory). Other modules (a ResNet's residual blocks,
    say) run as they are. A shallow copy: ``net`` and its modules are not changed."""
    if net.training:
        raise ValueError("for_inference needs a network in eval mode: a training BatchNorm is not an affine map")
    blocks = [_fold(block) for block in net.blocks]
    if all(new is old for new, old in zip(blocks, net.blocks)):
        return net
    folded = copy(net)
    folded._modules = dict(net._modules)  # the copy's own table of submodules, then its own blocks
    folded.blocks = torch.nn.ModuleList(blocks)
    return folded


def _fold(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with each Conv2d -> BatchNorm2d pair of its (nested) ``nn.Sequential`` folded
    into one convolution: a new container where something was folded, the module itself where not."""
    if not isinstance(module, torch.nn.Sequential):
        return module
    children = [_fold(child) for child in module]
    out: list[torch.nn.Module] = []
    for child in children:
        prev = out[-1] if out else None
        if (isinstance(child, torch.nn.BatchNorm2d) and isinstance(prev, torch.nn.Conv2d)
                and child.running_mean is not None and not getattr(prev, "_folded", False)):
            out[-1] = fuse_conv_bn_eval(prev, child)
            out[-1]._folded = True  # one BatchNorm per convolution
        else:
            out.append(child)
    changed = len(out) != len(children) or any(c is not o for c, o in zip(children, module))
    return torch.nn.Sequential(*out) if changed else module


def random_network(study, replicate: int, task: str, seed: int = 0) -> CutNet:
    """An untrained network of the study's architecture (for controls)."""
    return study.network(replicate, task, init_seed=seed).eval()


def part_images(part: AnyPart, max_images: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A part's images (uint8) and labels; at most ``max_images`` of them, a seeded random subset
    kept in the part's order."""
    count = len(part)
    pick = None
    if max_images is not None and count > max_images:
        pick = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:max_images].sort().values
    if isinstance(part, Part):
        return (part.x, part.y) if pick is None else (part.x[pick], part.y[pick])
    index = torch.arange(count) if pick is None else pick
    images = torch.stack([part.reader.read(int(part.index[i])) for i in index])
    return images, part.y[index]


@torch.no_grad()
def layer_outputs(net: CutNet, x: torch.Tensor, task: Task, upto: int | None = None,
                  batch_size: int = 256) -> Iterator[list[torch.Tensor]]:
    """For each batch of ``x`` (uint8 images), the outputs of layers 1..``upto`` (default: all).
    Images and conv weights go channels-last (float32 still: the same values to about 1e-6, and
    convolution and max-pooling about 1.4x faster on these CPUs than channels-first)."""
    upto = net.num_layers if upto is None else upto
    device = next(net.parameters()).device
    if any(p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last) for p in net.parameters()):
        net = net.to(memory_format=torch.channels_last)  # once: a network read batch by batch is converted already
    for i in range(0, x.shape[0], batch_size):
        h = normalize(x[i : i + batch_size].to(device), task.mean, task.std).contiguous(
            memory_format=torch.channels_last)
        outs = []
        for block in net.blocks[:upto]:
            h = block(h)
            outs.append(h.float())
        yield outs


def reduce_features(h: torch.Tensor, max_features: int) -> torch.Tensor:
    """Layer output (B, ...) as (B, D) rows: flattened when it has at most ``max_features``
    values per image; otherwise a conv map (B, C, H, W) is average-pooled to the largest square
    grid g x g with C g^2 <= max_features (g = 1: global average pooling), and a token sequence
    (B, T, C) is averaged over tokens."""
    per_image = h[0].numel() if h.shape[0] else 0
    if per_image <= max_features or h.ndim < 3:
        return h.reshape(h.shape[0], -1)
    if h.ndim == 4:
        c, height, width = h.shape[1:]
        g = max(1, min(math.isqrt(max_features // c) if c <= max_features else 1, height, width))
        return F.adaptive_avg_pool2d(h, g).reshape(h.shape[0], -1)
    return h.mean(1).reshape(h.shape[0], -1)


def features_at(net: CutNet, x: torch.Tensor, task: Task, cuts: tuple[int, ...], max_features: int,
                batch_size: int = 256) -> dict[int, np.ndarray]:
    """Each cut point's output on images ``x``, reduced by :func:`reduce_features`, as float64."""
    chunks: dict[int, list[torch.Tensor]] = {n: [] for n in cuts}
    for outs in layer_outputs(net, x, task, max(cuts), batch_size):
        for n in cuts:
            chunks[n].append(reduce_features(outs[n - 1], max_features))
    return {n: torch.cat(chunks[n]).double().numpy() for n in cuts}
