import json

import numpy as np
import pytest
import torch

from transferscope.config import SplitConfig
from transferscope.data import ImageData, load_dataset
from transferscope.data.splits import file_split, random_split, split_classes, split_seed
from transferscope.data.tasks import make_task
from transferscope.errors import UserError
from transferscope.seeds import derive_seed

NAMES = tuple(f"c{i}" for i in range(10))


def toy(num_classes=10, per_class=20, groups=None):
    y = torch.arange(num_classes).repeat_interleave(per_class)
    x = (torch.arange(len(y)) % 256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    return ImageData(y, tuple(f"c{i}" for i in range(num_classes)), x=x, groups=groups or {}, name="toy")


@pytest.mark.parametrize("seed", range(5))
def test_random_split_is_a_balanced_disjoint_partition(seed):
    s = random_split(10, NAMES, seed, None)
    assert len(s.a) == len(s.b) == 5
    assert set(s.a).isdisjoint(s.b) and set(s.a) | set(s.b) == set(range(10))
    assert list(s.a) == sorted(s.a)


def test_random_split_same_seed_same_split_and_seeds_differ():
    assert random_split(10, NAMES, 3, None) == random_split(10, NAMES, 3, None)
    splits = {random_split(10, NAMES, s, None).a for s in range(20)}
    assert len(splits) > 10
    # pinned: numpy's PCG64 stream is the same on any machine, so this split is too
    assert random_split(10, NAMES, 0, None).a == tuple(sorted(np.random.default_rng(0).permutation(10)[:5].tolist()))


def test_random_split_given_sizes_and_odd_count():
    s = random_split(10, NAMES, 1, (3, 6))
    assert (len(s.a), len(s.b)) == (3, 6) and set(s.a).isdisjoint(s.b)
    s = random_split(7, NAMES[:7], 0, None)
    assert (len(s.a), len(s.b)) == (4, 3)
    with pytest.raises(UserError, match=r"split.sizes: \[6, 6\] is not possible with 10 classes"):
        random_split(10, NAMES, 0, (6, 6))


def test_replicates_draw_different_random_splits_from_the_named_split_stream():
    data = toy()
    cfg = SplitConfig(seed=4)
    splits = [split_classes(cfg, data, r) for r in range(4)]
    for r, s in enumerate(splits):
        assert split_seed(cfg, r) == derive_seed("split", 4, r)
        assert s == random_split(10, data.class_names, derive_seed("split", 4, r), None,
                                 seeded_by=f"split.seed 4, replicate {r}")
        assert s.description == f"random 5/5 (split.seed 4, replicate {r})"
    assert len({s.a for s in splits}) > 1  # a new split per replicate
    # replicate 1 of seed 4 is not replicate 0 of seed 5 (as it was when a split's seed was seed + replicate)
    assert split_seed(cfg, 1) != split_seed(SplitConfig(seed=5), 0)
    assert split_seed(SplitConfig(kind="file", file="s.toml"), 0) is None


def test_file_split_by_name_and_index(tmp_path):
    f = tmp_path / "split.toml"
    f.write_text('A = ["c0", "c2", 4]\nB = ["c1", 3]\n')
    s = file_split(f, NAMES)
    assert (s.a, s.b) == ((0, 2, 4), (1, 3))
    assert s.to_dict()["A"] == ["c0", "c2", "c4"]
    j = tmp_path / "split.json"
    j.write_text(json.dumps({"A": ["c9"], "B": ["c8"]}))
    assert file_split(j, NAMES).a == (9,)


@pytest.mark.parametrize("text, message", [
    ('A = []\nB = ["c1"]', "task A has no classes"),
    ('A = ["c1", "c2"]\nB = ["c2"]', "classes in both A and B: c2"),
    ('A = ["zebra"]\nB = ["c2"]', "'zebra' is not a class of this dataset; classes are: c0, c1"),
    ('A = [12]\nB = ["c2"]', r"class index 12 out of range; allowed 0..9"),
    ('B = ["c2"]', "needs a list 'A'"),
    ('A = [', "is not valid TOML"),
])
def test_file_split_errors(tmp_path, text, message):
    f = tmp_path / "split.toml"
    f.write_text(text)
    with pytest.raises(UserError, match=message):
        file_split(f, NAMES)


def test_missing_split_file(tmp_path):
    with pytest.raises(UserError, match=r"split.file: file not found: .*nope.toml"):
        file_split(tmp_path / "nope.toml", NAMES)


def test_group_split_from_file_and_from_dataset(tmp_path):
    groups = {f"c{i}": ("natural" if i < 4 else "manmade") for i in range(10)}
    f = tmp_path / "groups.json"
    f.write_text(json.dumps(groups))
    cfg = SplitConfig(kind="groups", groups_file=str(f), a_groups=("natural",), b_groups=("manmade",))
    s = split_classes(cfg, toy(), 0)
    assert (s.a, s.b) == ((0, 1, 2, 3), tuple(range(4, 10)))
    # the dataset's own groups serve when no file is given
    s2 = split_classes(cfg.model_copy(update={"groups_file": None}), toy(groups=groups), 0)
    assert s2 == s
    with pytest.raises(UserError, match="unknown group 'plants'; groups in .*: manmade, natural"):
        split_classes(cfg.model_copy(update={"a_groups": ("plants",)}), toy(), 0)
    with pytest.raises(UserError, match="has no class groups of its own"):
        split_classes(cfg.model_copy(update={"groups_file": None}), toy(), 0)


def test_partition_is_per_class_disjoint_and_seeded():
    data = toy(per_class=20)
    task = make_task(data, "A", (1, 4, 7), 0.25, 0.25, seed=0)
    assert task.class_names == ("c1", "c4", "c7")
    for part, size in ((task.train, 10), (task.val, 5), (task.test, 5)):
        assert torch.bincount(part.y, minlength=3).tolist() == [size] * 3
    # every image appears in exactly one part (pixel value identifies the image in the toy data)
    ids = torch.cat([p.x[:, 0, 0, 0] for p in (task.train, task.val, task.test)])
    assert len(set(ids.tolist())) == 60
    again = make_task(data, "A", (1, 4, 7), 0.25, 0.25, seed=0)
    assert torch.equal(again.test.x, task.test.x)
    other = make_task(data, "A", (1, 4, 7), 0.25, 0.25, seed=1)
    assert not torch.equal(other.test.x, task.test.x)


def test_partition_too_few_images_is_a_clear_error():
    with pytest.raises(UserError, match="class 'c0' has 3 images, too few"):
        make_task(toy(per_class=3), "A", (0,), 0.1, 0.1, seed=0)


def test_digits_is_bundled_and_uint8():
    d = load_dataset("digits")
    assert d.x.shape == (1797, 1, 8, 8) and d.x.dtype == torch.uint8 and d.num_classes == 10
    assert d.x.max() == 255 and d.class_names[3] == "3"
    with pytest.raises(UserError, match="data.dataset: unknown dataset 'nope'; available: .*digits"):
        load_dataset("nope")


def test_train_per_class_takes_a_seeded_subset_of_the_same_partition():
    data = toy(per_class=40)
    full = make_task(data, "A", (0, 1), 0.25, 0.25, seed=3)
    small = make_task(data, "A", (0, 1), 0.25, 0.25, seed=3, train_per_class=5)
    assert torch.bincount(small.train.y).tolist() == [5, 5]
    assert torch.equal(small.test.x, full.test.x) and torch.equal(small.val.x, full.val.x)
    assert set(small.train.x[:, 0, 0, 0].tolist()) <= set(full.train.x[:, 0, 0, 0].tolist())
