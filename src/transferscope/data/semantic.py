"""The paper's dissimilar split, ``split.kind = "natural-vs-manmade"``: task A natural, B man-made classes.

**ImageNet** (any dataset whose classes are ILSVRC-2012 WordNet ids, e.g. ImageNet itself, a subset
of it, or an imagefolder whose class folders are wnids). Yosinski et al. (2014, section 4.1) sort the
1,000 synsets by wnid and call classes 0-397, 936-958, 970 and 972-998 natural (449 classes), the
other 551 man-made. That is: every animal (0-397, tench .. puffer), fruits, vegetables and fungi
(936-958, head cabbage .. hay), alp (970), and the landforms, people and plants of 972-998 (cliff ..
ear); prepared food and drink (959-969), the bubble (971) and toilet tissue (999) are man-made. The
list of wnids ships with the package (``imagenet_wnids.txt``, with readable names).

**CIFAR-100** (a dataset whose groups are CIFAR-100 superclass names, as the ``cifar100`` loader
gives them, or whose class names are CIFAR-100's fine labels). Living things and landscapes are
natural: aquatic_mammals, fish, flowers, fruit_and_vegetables, insects, large_carnivores,
large_natural_outdoor_scenes, large_omnivores_and_herbivores, medium_mammals,
non-insect_invertebrates, people, reptiles, small_mammals, trees (14 superclasses, 70 classes).
Objects people make are man-made: food_containers, household_electrical_devices,
household_furniture, large_man-made_outdoor_things, vehicles_1, vehicles_2 (6 superclasses,
30 classes). *People* are natural, as in the paper's own ImageNet split, where ballplayer, groom
and scuba diver (981-983) are among the natural classes: people are living things, not artefacts.
*Fruit and vegetables* are natural, as ImageNet's 936-958 are.

Any other dataset: a clear error pointing to ``split.kind = "groups"`` with a groups file.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from transferscope.data.registry import ImageData
from transferscope.errors import UserError

NATURAL, MAN_MADE = "natural", "man-made"

#: Yosinski et al. (2014): natural ILSVRC-2012 classes by index in the wnid-sorted list
IMAGENET_NATURAL_RANGES = ((0, 397), (936, 958), (970, 970), (972, 998))

#: CIFAR-100's 20 superclasses with their fine classes (Krizhevsky 2009), and which are natural
CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
CIFAR100_MAN_MADE = frozenset({"food_containers", "household_electrical_devices", "household_furniture",
                               "large_man-made_outdoor_things", "vehicles_1", "vehicles_2"})
CIFAR100_NATURAL = frozenset(CIFAR100_SUPERCLASSES) - CIFAR100_MAN_MADE

WNID = re.compile(r"n\d{8}")


@cache
def _imagenet_table() -> tuple[tuple[str, str], ...]:
    text = resources.files("transferscope.data").joinpath("imagenet_wnids.txt").read_text(encoding="utf-8")
    rows = tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line and not line.startswith("#"))
    assert len(rows) == 1000, "imagenet_wnids.txt must list the 1,000 ILSVRC-2012 synsets"
    return rows  # type: ignore[return-value]


def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ILSVRC-2012 WordNet ids, sorted (index = the usual class index)."""
    return tuple(w for w, _ in _imagenet_table())


def imagenet_names() -> dict[str, str]:
    """wnid -> a readable name (the first of the synset's names), e.g. n01440764 -> tench."""
    return dict(_imagenet_table())


def imagenet_is_natural(wnid: str) -> bool:
    """The paper's natural/man-made assignment of one ILSVRC-2012 synset."""
    try:
        index = imagenet_wnids().index(wnid)
    except ValueError:
        raise UserError(f"split.kind: {wnid!r} is not one of the 1,000 ILSVRC-2012 synsets") from None
    return any(lo <= index <= hi for lo, hi in IMAGENET_NATURAL_RANGES)


def _leaf(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def natural_vs_manmade(data: ImageData) -> dict[str, str]:
    """Class name -> "natural" or "man-made" for every class of ``data`` (see the module docstring)."""
    names = data.class_names
    groups = data.groups
    if groups and set(groups.values()) <= set(CIFAR100_SUPERCLASSES):
        ungrouped = [c for c in names if c not in groups]
        if ungrouped:
            raise UserError(f"split.kind: natural-vs-manmade: classes without a CIFAR-100 superclass in dataset "
                            f"{data.name}: {', '.join(ungrouped[:5])}")
        return {c: NATURAL if groups[c] in CIFAR100_NATURAL else MAN_MADE for c in names}
    fine = {f: s for s, members in CIFAR100_SUPERCLASSES.items() for f in members}
    if all(_leaf(c) in fine for c in names):
        return {c: NATURAL if fine[_leaf(c)] in CIFAR100_NATURAL else MAN_MADE for c in names}
    if all(WNID.fullmatch(_leaf(c)) for c in names):
        known = set(imagenet_wnids())
        other = [c for c in names if _leaf(c) not in known]
        if other:
            raise UserError(f"split.kind: natural-vs-manmade knows the 1,000 ILSVRC-2012 synsets; these classes of "
                            f"{data.name} are not among them: {', '.join(other[:5])}"
                            f"{' ...' if len(other) > 5 else ''}; use split.kind = 'groups' with a groups_file")
        return {c: NATURAL if imagenet_is_natural(_leaf(c)) else MAN_MADE for c in names}
    raise UserError(f"split.kind: natural-vs-manmade needs CIFAR-100 superclasses or ImageNet wnid classes; dataset "
                    f"{data.name!r} has neither; use split.kind = 'groups' with a groups_file (class -> group)")
