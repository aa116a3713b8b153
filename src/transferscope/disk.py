"""How much disk a study writes, and whether it fits where it is asked to go.

The weights dominate: every base network trained on all its data (the sources of every copy) in
float32, and what ``eval.save_weights`` adds in float16 (the networks fine-tuned on all their
target data by default, every run with "all"). Records and the report are small next to them.
The estimate counts each network's parameters and buffers exactly (the model is built on the meta
device: no memory is allocated); records and report are rounded up.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from transferscope.errors import UserError
from transferscope.runner import is_source, keeps_weights
from transferscope.treatments import RunSpec

if TYPE_CHECKING:
    from transferscope.study import Study

#: bytes of one run record: configuration, provenance and split (fixed), one history row per epoch
#: (rounded up: the default study's 260 records of 20 epochs take 5.1 kB each)
RECORD_BYTES, RECORD_EPOCH_BYTES = 4_000, 150
#: a weights file's header (tensor names, shapes, offsets), on top of the values
HEADER_BYTES = 2_000
#: the report: figures (PNG), tables and the HTML page (rounded up: 1.8 MB on the default study)
REPORT_BYTES = 5_000_000
#: a study may use at most this share of the free space (the file system needs room too)
HEADROOM = 0.95


@dataclass
class DiskEstimate:
    """Bytes the runs of a plan write, by kind."""

    source_bytes: int = 0  # base networks, float32
    analysed_bytes: int = 0  # fine-tuned (or all) networks, float16
    record_bytes: int = 0
    report_bytes: int = 0
    networks: Counter = field(default_factory=Counter)  # "sources" / "analysed" -> count

    @property
    def total(self) -> int:
        return self.source_bytes + self.analysed_bytes + self.record_bytes + self.report_bytes

    def describe(self, save_weights: str) -> str:
        parts = [f"{self.networks['sources']} base network(s) {gb(self.source_bytes)} (float32)"]
        if self.networks["analysed"]:
            parts.append(f"{self.networks['analysed']} network(s) kept by eval.save_weights = \"{save_weights}\" "
                         f"{gb(self.analysed_bytes)} (float16)")
        parts.append(f"run records {gb(self.record_bytes)}, report about {gb(self.report_bytes)}")
        return f"about {gb(self.total)}: " + ", ".join(parts)


def gb(n: float) -> str:
    """A byte count for people (decimal units, as df -H)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def network_bytes(study: Study, spec: RunSpec, bytes_per_value: int) -> int:
    """The size of ``spec``'s network's state dict at ``bytes_per_value`` per floating value."""
    with torch.device("meta"):
        net = study.network(spec.replicate, spec.target)
    return HEADER_BYTES + sum(t.numel() * (bytes_per_value if t.is_floating_point() else t.element_size())
                              for t in net.state_dict().values())


def estimate(study: Study, specs: list[RunSpec], report: bool = True) -> DiskEstimate:
    """What training ``specs`` writes (weights, records) and, with ``report``, the report."""
    out = DiskEstimate(report_bytes=REPORT_BYTES if report else 0)
    sizes: dict[tuple[int, bool], int] = {}
    epochs = study.config.train.epochs
    for spec in specs:
        out.record_bytes += RECORD_BYTES + RECORD_EPOCH_BYTES * epochs
        if not keeps_weights(study.config, spec):
            continue
        source = is_source(spec)
        shape_key = (len(study.split(spec.replicate).classes(spec.target)), source)
        if shape_key not in sizes:
            sizes[shape_key] = network_bytes(study, spec, 4 if source else 2)
        if source:
            out.source_bytes += sizes[shape_key]
            out.networks["sources"] += 1
        else:
            out.analysed_bytes += sizes[shape_key]
            out.networks["analysed"] += 1
    return out


def free_bytes(path: Path) -> int:
    """Free space for an unprivileged user on the file system that holds (or will hold) ``path``."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_fits(study: Study, pending: list[RunSpec], root: Path) -> None:
    """Refuse to start when what ``pending`` writes exceeds the free space under ``root``."""
    need = estimate(study, pending)
    free = free_bytes(root)
    if need.total <= HEADROOM * free:
        return
    save = study.config.eval.save_weights
    lighter = ""
    if save != "bases":
        lighter = (f"--set eval.save_weights=bases (about {gb(need.total - need.analysed_bytes)}; no fine-tuned "
                   "networks for the analyses), ")
    raise UserError(f"{root}: the runs still to do write {need.describe(save)}, and {gb(free)} are free there; "
                    f"free some space, or use {lighter}or another --output (eval.save_weights: bases, "
                    "bases+finetuned or all)")
