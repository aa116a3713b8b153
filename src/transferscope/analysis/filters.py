"""Pictures of the first layer's features: the filters of the first Conv2d in block 1.

Each filter is normalised on its own to [0, 1] (min to max over its weights), so the picture shows
its pattern, not its scale. Filters over three input channels are shown in colour (RGB), others
in grey (the mean over input channels). Fine-tuned networks are shown beside the base network
their layer 1 was copied from, with the relative change of the weights
``|W_finetuned - W_source| / |W_source|``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from transferscope.analysis.networks import load_network
from transferscope.models import CutNet
from transferscope.store import Store
from transferscope.treatments import base_key


def first_conv(net: CutNet) -> nn.Conv2d | None:
    """The first Conv2d of block 1 (None when layer 1 has no convolution, e.g. a ViT's
    patch embedding is found, an MLP's Linear is not)."""
    for module in net.blocks[0].modules():
        if isinstance(module, nn.Conv2d):
            return module
    return None


def filter_grid(weight: torch.Tensor, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """Conv weights (out, in, kh, kw) as one RGB image (H, W, 3) in [0, 1]: a grid of filters,
    each normalised to [0, 1] on its own, separated by ``pad`` white pixels."""
    w = weight.detach().double().cpu()
    if w.ndim != 4:
        raise ValueError(f"expected conv weights (out, in, kh, kw), got shape {tuple(w.shape)}")
    out, cin, kh, kw = w.shape
    w = w if cin == 3 else w.mean(1, keepdim=True).expand(out, 3, kh, kw)
    flat = w.reshape(out, -1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    varies = (hi > lo).view(-1, 1, 1, 1)
    w = torch.where(varies, (w - lo.view(-1, 1, 1, 1)) / span.view(-1, 1, 1, 1), torch.full_like(w, 0.5))
    columns = columns or max(1, math.ceil(math.sqrt(out)))
    rows = math.ceil(out / columns)
    image = np.ones((rows * (kh + pad) + pad, columns * (kw + pad) + pad, 3))
    for i in range(out):
        r, c = divmod(i, columns)
        y, x = pad + r * (kh + pad), pad + c * (kw + pad)
        image[y : y + kh, x : x + kw] = w[i].permute(1, 2, 0).numpy()
    return image


@dataclass(frozen=True)
class FilterPanel:
    label: str  # e.g. "baseA" or "AnB+ n=1 (from baseA, fine-tuned on B)"
    key: str
    image: np.ndarray
    change: float | None  # relative weight change from the source network's filters
    weight: torch.Tensor | None = None  # the conv weights (out, in, kh, kw): a figure may draw a subset


def relative_change(weight: torch.Tensor, source: torch.Tensor) -> float:
    return float((weight - source).norm() / source.norm().clamp_min(1e-12))


def study_filters(store: Store, study, frame: pd.DataFrame, replicate: int = 0) -> list[FilterPanel]:
    """Panels for one replicate: baseA, the fine-tuned networks that copied baseA's layer 1
    (AnB+ at the smallest and largest n among those with weights), then baseB and BnA+ likewise;
    a base network without weights is left out, with its transfers. Empty when layer 1 has no
    Conv2d or neither base network has weights."""
    panels: list[FilterPanel] = []
    done = frame.loc[(frame["status"] == "done") & (frame["replicate"] == replicate)] if len(frame) else frame
    if "target_size" in done:
        done = done.loc[done["target_size"].isna()]
    for source in ("A", "B"):
        key = base_key(replicate, source)
        if not store.weights_path(key).is_file():
            continue
        conv = first_conv(load_network(store, study, key, replicate, source))
        if conv is None:
            return []
        src_w = conv.weight.detach()
        panels.append(FilterPanel(f"base{source}", key, filter_grid(src_w), None, src_w))
        ft = done.loc[(done["role"] == "transfer+") & (done["source"] == source)] if len(done) else done
        ft = ft.loc[[store.weights_path(k).is_file() for k in ft["key"]]] if len(ft) else ft
        if ft.empty:
            continue
        for n in sorted({int(ft["n"].min()), int(ft["n"].max())}):
            row = ft.loc[ft["n"] == n].iloc[0]
            w = first_conv(load_network(store, study, row["key"], replicate, row["target"])).weight.detach()
            panels.append(FilterPanel(f"{row['treatment']} n={n} (layer 1 from base{source}, fine-tuned on "
                                      f"{row['target']})", row["key"], filter_grid(w), relative_change(w, src_w), w))
    return panels
