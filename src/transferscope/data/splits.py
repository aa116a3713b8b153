"""Where a dataset's classes are split into the two tasks A and B.

Three kinds (``[split] kind``): a seeded random split, an explicit split read from a file, and a
grouping split (a class-to-group mapping, with A and B each a set of groups: the form of the
paper's natural vs man-made split).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferscope.config import SplitConfig
from transferscope.data.registry import ImageData
from transferscope.data.semantic import natural_vs_manmade
from transferscope.errors import UserError
from transferscope.seeds import derive_seed


@dataclass(frozen=True)
class ClassSplit:
    """Tasks A and B as sorted tuples of the dataset's class indices."""

    a: tuple[int, ...]
    b: tuple[int, ...]
    class_names: tuple[str, ...]  # all of the dataset's class names
    description: str

    def classes(self, task: str) -> tuple[int, ...]:
        """Task A's classes, or B's (the target T of a study from a pretrained network is B)."""
        return self.a if task == "A" else self.b

    def names(self, task: str) -> tuple[str, ...]:
        return tuple(self.class_names[i] for i in self.classes(task))

    def to_dict(self) -> dict[str, Any]:
        return {"description": self.description, "A": list(self.names("A")), "B": list(self.names("B")),
                "A_indices": list(self.a), "B_indices": list(self.b)}


def _checked(a: list[int], b: list[int], names: tuple[str, ...], what: str, description: str) -> ClassSplit:
    if not a or not b:
        raise UserError(f"{what}: task {'A' if not a else 'B'} has no classes; both tasks need at least one")
    overlap = sorted(set(a) & set(b))
    if overlap:
        raise UserError(f"{what}: classes in both A and B: {', '.join(names[i] for i in overlap)}; the tasks must be disjoint")
    return ClassSplit(tuple(sorted(a)), tuple(sorted(b)), names, description)


def random_split(num_classes: int, names: tuple[str, ...], seed: int, sizes: tuple[int, int] | None,
                 seeded_by: str | None = None) -> ClassSplit:
    """A seeded random partition: the same seed gives the same split on any machine. ``seeded_by``
    says where the seed came from, for the description (default: the seed itself)."""
    if sizes is None:
        sizes = ((num_classes + 1) // 2, num_classes // 2)
    if min(sizes) < 1 or sum(sizes) > num_classes:
        raise UserError(f"split.sizes: {list(sizes)} is not possible with {num_classes} classes; "
                        f"each size must be >= 1 and their sum <= {num_classes}")
    perm = np.random.default_rng(seed).permutation(num_classes).tolist()
    a, b = perm[: sizes[0]], perm[sizes[0] : sizes[0] + sizes[1]]
    return _checked(a, b, names, "split", f"random {sizes[0]}/{sizes[1]} ({seeded_by or f'seed {seed}'})")


def _read_mapping_file(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{what}: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{what}: cannot read {path} ({e})") from None
    try:
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"{what}: {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from None


def _class_index(item: Any, names: tuple[str, ...], what: str) -> int:
    if isinstance(item, int) and not isinstance(item, bool):
        if 0 <= item < len(names):
            return item
        raise UserError(f"{what}: class index {item} out of range; allowed 0..{len(names) - 1}")
    if isinstance(item, str) and item in names:
        return names.index(item)
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    raise UserError(f"{what}: {item!r} is not a class of this dataset; classes are: {shown}")


def file_split(path: Path, names: tuple[str, ...]) -> ClassSplit:
    """``A = [...]`` and ``B = [...]`` in a TOML or JSON file, by class name or index."""
    tree = _read_mapping_file(path, "split.file")
    for task in ("A", "B"):
        if not isinstance(tree.get(task), list):
            raise UserError(f"split.file: {path} needs a list '{task}' of class names or indices")
    a = [_class_index(c, names, f"split.file {path}: A") for c in tree["A"]]
    b = [_class_index(c, names, f"split.file {path}: B") for c in tree["B"]]
    return _checked(a, b, names, f"split.file {path}", f"explicit split from {path.name}")


def group_split(groups: dict[str, str], names: tuple[str, ...], a_groups: tuple[str, ...],
                b_groups: tuple[str, ...], source: str) -> ClassSplit:
    """A = classes whose group is in ``a_groups``, B likewise."""
    for name in groups:
        _class_index(name, names, f"split.groups_file {source}")
    known = sorted(set(groups.values()))
    for g in (*a_groups, *b_groups):
        if g not in known:
            raise UserError(f"split.a_groups/b_groups: unknown group {g!r}; groups in {source}: {', '.join(known)}")
    both = sorted(set(a_groups) & set(b_groups))
    if both:
        raise UserError(f"split.a_groups/b_groups: groups in both A and B: {', '.join(both)}")
    a = [names.index(c) for c, g in groups.items() if g in a_groups]
    b = [names.index(c) for c, g in groups.items() if g in b_groups]
    desc = f"groups {'+'.join(a_groups)} vs {'+'.join(b_groups)}"
    return _checked(a, b, names, "split", desc)


def whole_dataset(data: ImageData) -> ClassSplit:
    """The one target task T of a study from a pretrained network: every class of the dataset (A
    is empty: the source task is the pretrained network's own)."""
    return ClassSplit((), tuple(range(data.num_classes)), data.class_names,
                      f"all {data.num_classes} classes of {data.name}")


def split_seed(cfg: SplitConfig, replicate: int) -> int | None:
    """The seed of replicate ``replicate``'s random split, from the named stream "split" of
    ``split.seed``; None for the other kinds (fixed splits)."""
    return derive_seed("split", cfg.seed, replicate) if cfg.kind == "random" else None


def split_classes(cfg: SplitConfig, data: ImageData, replicate: int) -> ClassSplit:
    """The class split of one replicate. Random splits draw a new split per replicate
    (:func:`split_seed`); file and group splits are the same for every replicate."""
    if cfg.kind == "random":
        return random_split(data.num_classes, data.class_names, split_seed(cfg, replicate), cfg.sizes,  # type: ignore[arg-type]
                            seeded_by=f"split.seed {cfg.seed}, replicate {replicate}")
    if cfg.kind == "natural-vs-manmade":

        return group_split(natural_vs_manmade(data), data.class_names, ("natural",), ("man-made",),
                           f"natural vs man-made classes of {data.name}")
    if cfg.kind == "file":
        return file_split(Path(cfg.file), data.class_names)  # type: ignore[arg-type]
    if cfg.groups_file:
        tree = _read_mapping_file(Path(cfg.groups_file), "split.groups_file")
        mapping = tree.get("groups", tree)
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise UserError(f"split.groups_file: {cfg.groups_file} must map class names to group names")
        return group_split(mapping, data.class_names, cfg.a_groups, cfg.b_groups, cfg.groups_file)
    if not data.groups:
        raise UserError(f"split.groups_file: dataset {data.name!r} has no class groups of its own; "
                        "give a file mapping class names to groups")
    return group_split(data.groups, data.class_names, cfg.a_groups, cfg.b_groups, f"dataset {data.name}")
