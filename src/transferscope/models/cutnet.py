"""The one definition of "layer n": a network as an ordered list of blocks.

Block i (1-based) is layer i as the paper counts it: a weight layer together with the ReLU,
pooling and normalisation that follow it. The last block is the classifier, so a network of L
blocks has cut points n = 1..L-1. Every architecture in the registry is built as a :class:`CutNet`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn


class CutNet(nn.Module):
    def __init__(self, blocks: Sequence[nn.Module], names: Sequence[str] | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.block_names = tuple(names) if names is not None else tuple(f"layer{i + 1}" for i in range(len(blocks)))
        if len(self.block_names) != len(self.blocks):
            raise ValueError(f"{len(self.block_names)} names for {len(self.blocks)} blocks")
        #: blocks[:num_frozen] are frozen: no gradients, and always in eval mode (see train()).
        self.num_frozen = 0
        #: for a network regrouped from a library's model (torchvision, timm): each state-dict key ->
        #: the key the same tensor has in that model's ``state_dict()``, so its checkpoints load here
        self.foreign_names: dict[str, str] = {}
        #: the input the library's pretrained weights expect: ``{"input_size": (C, H, W), "mean": ...,
        #: "std": ..., "interpolation": ..., "size_option": ...}``, where ``size_option`` names the
        #: builder option that sets the input side (a study from pretrained weights fills it with
        #: ``input_size``'s side unless the user set it); None for a network of our own
        self.input_config: dict | None = None

    def adopt_foreign_names(self, original: nn.Module) -> None:
        """Set :attr:`foreign_names` from ``original``, the model these blocks were regrouped from
        (sharing its tensors): a key is matched to the original's key of the same tensor object."""
        theirs: dict[int, str] = {}
        for key, t in original.state_dict(keep_vars=True).items():
            theirs.setdefault(id(t), key)
        ours = self.state_dict(keep_vars=True)
        missing = [k for k, t in ours.items() if id(t) not in theirs]
        if missing:
            raise ValueError(f"{len(missing)} tensors are not {type(original).__name__}'s, e.g. {missing[0]!r}")
        self.foreign_names = {k: theirs[id(t)] for k, t in ours.items()}

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def cut_points(self) -> range:
        return range(1, self.num_layers)

    def train(self, mode: bool = True) -> CutNet:
        """Frozen blocks stay in eval mode whatever the caller asks: their BatchNorm keeps its
        running statistics and their dropout stays off for the whole run. (Called every epoch
        and around every evaluation, so a frozen block already in eval mode is left alone.)"""
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        for child in self.children():
            if child is not self.blocks:
                child.train(mode)
        self.blocks.training = mode
        for i, block in enumerate(self.blocks):
            if i >= self.num_frozen:
                block.train(mode)
            elif block.training:
                block.eval()
        return self

    def _range(self, start: int, stop: int) -> Iterator[nn.Module]:
        # indexing, not slicing: a ModuleList slice builds a new Module on every call
        return (self.blocks[i] for i in range(start, min(stop, len(self.blocks))))

    def forward_prefix(self, x: torch.Tensor, n: int) -> torch.Tensor:
        for block in self._range(0, n):
            x = block(x)
        return x

    def forward_suffix(self, h: torch.Tensor, n: int) -> torch.Tensor:
        for block in self._range(n, len(self.blocks)):
            h = block(h)
        return h

    @property
    def prefix_is_constant(self) -> bool:
        """Whether the frozen prefix has no trainable parameter at all (its output then needs
        no gradient, and is the same for the same input throughout a run)."""
        return not any(p.requires_grad for block in self._range(0, self.num_frozen) for p in block.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_frozen and self.prefix_is_constant:
            with torch.no_grad():  # nothing below the frozen prefix needs a gradient
                x = self.forward_prefix(x, self.num_frozen)
            return self.forward_suffix(x, self.num_frozen)
        return self.forward_suffix(self.forward_prefix(x, self.num_frozen), self.num_frozen)
