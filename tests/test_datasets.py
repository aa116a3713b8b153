"""Dataset loaders: imagefolder layouts, npz, the decode cache, streaming readers, torchvision sets'
missing-file errors, the natural/man-made split, and real data where this machine has it."""

import contextlib
import io
import os
import pickle
import shutil
import subprocess
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferscope.config import DataConfig, SplitConfig
from transferscope.data import imagefolder, images, load_dataset
from transferscope.data.registry import ImageData
from transferscope.data.semantic import (
    CIFAR100_MAN_MADE,
    imagenet_names,
    imagenet_wnids,
    natural_vs_manmade,
)
from transferscope.data.splits import split_classes
from transferscope.data.tasks import make_task
from transferscope.errors import UserError
from conftest import RunsCode

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def cfg(tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(cache_dir=str(tmp_path / "cache"), **kw)


def pixels(seed: int, h: int = 8, w: int = 8, grey: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)


def write(path: Path, arr: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    img.save(path, format=fmt)
    return arr


def tree(root: Path, classes: dict[str, int], size=(8, 8), grey=False, seed=0) -> dict[str, list[np.ndarray]]:
    """``root/<class>/<i>.png`` for each class; returns the pixels written, per class."""
    out = {}
    for c, (name, n) in enumerate(sorted(classes.items())):
        out[name] = [write(root / name / f"{i:03d}.png", pixels(seed * 1000 + c * 100 + i, *size, grey=grey))
                     for i in range(n)]
    return out


# ------------------------------------------------------------------------------------ imagefolder layouts


def test_flat_folder_reads_exact_pixels_in_sorted_class_order(tmp_path):
    written = tree(tmp_path / "d", {"zebra": 3, "ant": 4, "mole": 2})
    data = load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(tmp_path / "d")))
    assert data.class_names == ("ant", "mole", "zebra")
    assert data.x.shape == (9, 3, 8, 8) and data.x.dtype == torch.uint8
    assert data.y.tolist() == [0] * 4 + [1] * 2 + [2] * 3
    assert data.is_test is None and data.groups == {} and data.skipped == ()
    assert data.flip_ok  # colour images: photos
    expected = torch.from_numpy(np.stack(written["ant"] + written["mole"] + written["zebra"])).permute(0, 3, 1, 2)
    assert torch.equal(data.x, expected)


@pytest.mark.parametrize("test_dir", ["test", "val"])
def test_split_folders_mark_the_official_test_images(tmp_path, test_dir):
    tree(tmp_path / "d" / "train", {"a": 5, "b": 4})
    tree(tmp_path / "d" / test_dir, {"a": 2, "b": 1}, seed=1)
    data = load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(tmp_path / "d")))
    assert data.class_names == ("a", "b") and len(data.y) == 12
    assert data.is_test.tolist() == [False] * 9 + [True] * 3
    assert data.y[data.is_test].tolist() == [0, 0, 1]


def test_train_val_and_test_folders_use_test_as_official_and_val_as_training(tmp_path):
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        tree(tmp_path / "d" / split, {"a": n, "b": n}, seed=n)
    data = load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(tmp_path / "d")))
    assert int(data.is_test.sum()) == 2 and len(data.y) == 12


def test_two_level_folders_give_groups_usable_by_a_groups_split(tmp_path):
    root = tmp_path / "alphabets"
    for split, n in (("train", 4), ("test", 2)):
        for g, chars in (("Greek", ("alpha", "beta")), ("Latin", ("a", "b", "c"))):
            for ch in chars:
                tree(root / split / g, {ch: n}, grey=True)
    data = load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(root)))
    assert data.class_names == ("Greek/alpha", "Greek/beta", "Latin/a", "Latin/b", "Latin/c")
    assert data.groups == {"Greek/alpha": "Greek", "Greek/beta": "Greek", "Latin/a": "Latin", "Latin/b": "Latin",
                           "Latin/c": "Latin"}
    assert data.x.shape[1] == 1 and not data.flip_ok  # grey: characters, no flips
    split = split_classes(SplitConfig(kind="groups", a_groups=("Greek",), b_groups=("Latin",)), data, 0)
    assert split.names("A") == ("Greek/alpha", "Greek/beta") and split.names("B") == ("Latin/a", "Latin/b", "Latin/c")


def test_grey_binary_and_colour_images_choose_the_channels(tmp_path):
    root = tmp_path / "d"
    write(root / "a" / "0.png", pixels(0, grey=True), mode="1")  # binary
    write(root / "a" / "1.bmp", pixels(1, grey=True), fmt="BMP")  # grey, another format
    write(root / "b" / "0.jpg", pixels(2, grey=True), fmt="JPEG")
    (root / "b" / "notes.txt").write_text("not an image: ignored")
    grey = load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(root)))
    assert grey.x.shape == (3, 1, 8, 8)
    assert set(grey.x[0].unique().tolist()) <= {0, 255}  # binary stays binary
    write(root / "b" / "1.png", pixels(3))  # one colour image: everything becomes RGB
    rgb = load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(root)))
    assert rgb.x.shape == (4, 3, 8, 8)
    assert torch.equal(rgb.x[1, 0], rgb.x[1, 2])  # the grey BMP, replicated into three channels
    assert torch.equal(rgb.x[1, 0], torch.from_numpy(pixels(1, grey=True)))


def test_mixed_sizes_need_image_size_and_resize_with_it(tmp_path):
    root = tmp_path / "d"
    write(root / "a" / "small.png", pixels(0, 8, 8))
    write(root / "a" / "wide.png", pixels(1, 10, 20))
    write(root / "b" / "tall.png", pixels(2, 30, 12))
    with pytest.raises(UserError, match=r"data\.image_size: .*differ in size .*8x8 .*20x10"):
        load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(root)))
    data = load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(root), image_size=6))
    assert data.x.shape == (3, 3, 6, 6)
    # a flat image resized keeps its mean roughly; a centre crop of a constant image is that constant
    write(root / "b" / "const.png", np.full((12, 30, 3), 77, np.uint8))
    data = load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(root), image_size=6))
    assert (data.x[data.y == 1][0] == 77).all()


@pytest.mark.parametrize("layout, message", [
    ("mixed_depth", r"mixed folder depths .*a/ holds images .*g/ holds folders"),
    ("empty_class", r"folder .*empty has no image files"),
    ("stray_image", r"holds image files directly \(e\.g\. loose\.png\)"),
    ("both", r"holds both images and folders"),
    ("split_classes_differ", r"different classes: only in train/: b"),
    ("too_deep", r"nested too deep"),
])
def test_layout_mistakes_name_the_folder(tmp_path, layout, message):
    root = tmp_path / "d"
    if layout == "split_classes_differ":
        tree(root / "train", {"a": 1, "b": 1})
        tree(root / "test", {"a": 1})
    else:
        tree(root, {"a": 2})
        if layout == "mixed_depth":
            tree(root / "g", {"c": 1})
        elif layout == "empty_class":
            (root / "empty").mkdir()
        elif layout == "stray_image":
            write(root / "loose.png", pixels(0))
        elif layout == "both":
            tree(root / "a", {"sub": 1})
        elif layout == "too_deep":
            tree(root / "g" / "c", {"deeper": 1})
    with pytest.raises(UserError, match=message):
        load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(root)))


def test_root_mistakes(tmp_path):
    with pytest.raises(UserError, match="data.root: imagefolder needs data.root"):
        load_dataset(cfg(tmp_path, dataset="imagefolder"))
    with pytest.raises(UserError, match="data.root: folder not found: .*nowhere"):
        load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(tmp_path / "nowhere")))
    (tmp_path / "f.npz").write_bytes(b"")
    with pytest.raises(UserError, match="is a file; imagefolder needs a folder .*data.dataset = 'npz'"):
        load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(tmp_path / "f.npz")))
    with pytest.raises(UserError, match="data.download: imagefolder .*nothing to download"):
        load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(tmp_path), download=True))


def test_corrupt_images_are_an_error_naming_the_file_or_skipped(tmp_path):
    root = tmp_path / "d"
    tree(root, {"a": 3, "b": 3})
    (root / "a" / "bad.png").write_bytes(b"this is not a png")
    good = root / "b" / "000.png"
    jpeg = write(root / "b" / "cut.jpg", pixels(9, 64, 64), fmt="JPEG")
    (root / "b" / "cut.jpg").write_bytes((root / "b" / "cut.jpg").read_bytes()[:200])  # truncated
    assert jpeg is not None and good.exists()
    with pytest.raises(UserError, match=r"cannot decode image file .*a/bad\.png .*and 1 more.*data\.skip_corrupt"):
        load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(root)))
    data = load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(root), skip_corrupt=True))
    assert len(data.y) == 6 and data.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert sorted(Path(p).name for p in data.skipped) == ["bad.png", "cut.jpg"]


# ------------------------------------------------------------------------------------ cache and streaming


def test_second_load_reads_the_cache_without_decoding(tmp_path, monkeypatch):
    root = tmp_path / "d"
    tree(root / "train", {"a": 3, "b": 3})
    tree(root / "test", {"a": 1, "b": 1}, seed=1)
    c = cfg(tmp_path, dataset="imagefolder", root=str(root))
    first = load_dataset(c)
    cached = sorted(p.suffix for p in (tmp_path / "cache").iterdir())
    assert cached == [".json", ".safetensors"]

    def no_decoding(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(imagefolder, "_decode_all", no_decoding)
    again = load_dataset(c)
    assert torch.equal(first.x, again.x) and torch.equal(first.y, again.y)
    assert torch.equal(first.is_test, again.is_test)
    assert (first.class_names, first.groups, first.flip_ok) == (again.class_names, again.groups, again.flip_ok)
    # a changed file, or another image size, is a new entry: decoded again
    write(root / "train" / "a" / "000.png", pixels(99))
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(c)
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(c.model_copy(update={"image_size": 4}))


def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    tree(tmp_path / "d", {"a": 1, "b": 1})
    monkeypatch.setenv("TRANSFERSCOPE_CACHE", str(tmp_path / "env-cache"))
    load_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path / "d")))
    assert len(list((tmp_path / "env-cache").glob("imagefolder-*.safetensors"))) == 1


def test_parallel_decoding_matches_serial(tmp_path, monkeypatch):
    tree(tmp_path / "d", {"a": 9, "b": 8, "c": 7}, size=(5, 7))
    serial = load_dataset(cfg(tmp_path / "s", dataset="imagefolder", root=str(tmp_path / "d")))
    monkeypatch.setattr(images, "MIN_PARALLEL", 1)
    monkeypatch.setattr(images, "CHUNK", 4)
    parallel = load_dataset(cfg(tmp_path / "p", dataset="imagefolder", root=str(tmp_path / "d")))
    assert parallel.x.shape == (24, 3, 5, 7) and torch.equal(serial.x, parallel.x)


def test_sets_over_the_memory_limit_stream_from_files(tmp_path, monkeypatch):
    root = tmp_path / "d"
    tree(root / "train", {"a": 6, "b": 6}, grey=True)
    tree(root / "test", {"a": 2, "b": 2}, grey=True, seed=1)
    memory = load_dataset(cfg(tmp_path / "m", dataset="imagefolder", root=str(root)))
    c = cfg(tmp_path, dataset="imagefolder", root=str(root), memory_limit_gb=1e-9)
    stream = load_dataset(c)
    assert stream.x is None and stream.image_shape == (1, 8, 8) and len(stream.reader) == 16
    assert torch.equal(stream.is_test, memory.is_test)
    reader = pickle.loads(pickle.dumps(stream.reader))  # DataLoader workers get a copy
    assert torch.equal(torch.stack([reader.read(i) for i in range(16)]), memory.x)
    task = make_task(stream, "A", (0, 1), 0.2, 0.3, seed=0, workers=0)
    xb, yb = next(task.train.batches(4))
    assert xb.shape == (4, 1, 8, 8) and xb.dtype == torch.uint8 and yb.tolist() == [0] * 4
    # seen before: the stream metadata comes from the cache, the headers are not read again
    monkeypatch.setattr(imagefolder, "_probe_all", lambda *a, **k: pytest.fail("probed again"))
    assert load_dataset(c).image_shape == (1, 8, 8)


# ------------------------------------------------------------------------------------ npz


def save_npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW", "float"])
def test_npz_layouts_become_uint8_nchw(tmp_path, layout):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (6, 5, 7, 3), dtype=np.uint8)
    x = {"NHW": base[..., 0], "NHWC": base, "NCHW": base.transpose(0, 3, 1, 2), "float": base / 255.0}[layout]
    path = save_npz(tmp_path / "s.npz", x=x, y=np.array([0, 1, 2, 0, 1, 2]))
    data = load_dataset(cfg(tmp_path, dataset="npz", root=path))
    want = torch.from_numpy(base.transpose(0, 3, 1, 2))[:, :1 if layout == "NHW" else 3]
    assert torch.equal(data.x, want) and data.class_names == ("0", "1", "2")
    assert data.is_test is None


def test_npz_names_groups_and_test_split(tmp_path):
    x = np.zeros((4, 6, 6), np.uint8)
    path = save_npz(tmp_path / "s.npz", x=x, y=np.array([0, 1, 1, 0]), x_test=x[:2], y_test=np.array([1, 0]),
                    class_names=np.array(["cat", "car"]), groups=np.array(["natural", "man-made"]))
    data = load_dataset(cfg(tmp_path, dataset="npz", root=path, image_size=4))
    assert data.class_names == ("cat", "car") and data.groups == {"cat": "natural", "car": "man-made"}
    assert data.is_test.tolist() == [False] * 4 + [True] * 2 and data.y.tolist() == [0, 1, 1, 0, 1, 0]
    assert data.x.shape == (6, 1, 4, 4)
    pairs = save_npz(tmp_path / "p.npz", x=x, y=np.array([0, 1, 1, 0]), class_names=np.array(["cat", "car"]),
                     groups=np.array([["car", "vehicles"]]))
    assert load_dataset(cfg(tmp_path, dataset="npz", root=pairs)).groups == {"car": "vehicles"}
    tiny = load_dataset(cfg(tmp_path, dataset="npz", root=path, image_size=4, memory_limit_gb=1e-9))
    assert tiny.x is None and tiny.image_shape == (1, 4, 4) and tiny.reader.read(0).shape == (1, 4, 4)


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((3, 4, 4), np.uint8)}, r"no array 'y' .*needs x \(images\) and y"),
    ({"x": np.zeros((3, 4, 4, 5), np.uint8), "y": np.zeros(3, int)}, r"x: shape \(3, 4, 4, 5\) has no channel axis"),
    ({"x": np.zeros((3, 4), np.uint8), "y": np.zeros(3, int)}, r"x: shape \(3, 4\) is not an image array"),
    ({"x": np.full((3, 4, 4), 2.0), "y": np.zeros(3, int)}, r"x: float images must lie in \[0, 1\] \(found 2"),
    ({"x": np.zeros((3, 4, 4), np.uint8), "y": np.zeros(2, int)}, r"y: 2 labels for 3 images"),
    ({"x": np.zeros((3, 4, 4), np.uint8), "y": np.array([0.0, 1, 1])}, r"y: labels must be a 1-D integer array"),
    ({"x": np.zeros((3, 4, 4), np.uint8), "y": np.array([0, 2, 2])}, r"y: class\(es\) 1 have no images"),
    ({"x": np.zeros((3, 4, 4), np.uint8), "y": np.array([0, 1, 2]), "class_names": np.array(["a", "b"])},
     r"y: label 2 but only 2 class_names"),
    ({"x": np.zeros((3, 4, 4), np.uint8), "y": np.zeros(3, int), "x_test": np.zeros((1, 4, 4), np.uint8)},
     r"x_test and y_test go together"),
    ({"x": np.zeros((3, 4, 4), np.uint8), "y": np.zeros(3, int), "x_test": np.zeros((1, 5, 5), np.uint8),
          "y_test": np.zeros(1, int)}, r"x_test: images are \(1, 5, 5\)"),
    ({"x": np.zeros((3, 4, 4), np.uint8), "y": np.zeros(3, int), "labels": np.zeros(3)}, r"unknown key 'labels'"),
    ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, 1]), "groups": np.array(["g"])},
     r"groups: 1 group names for 2 classes"),
])
def test_npz_mistakes_name_the_key(tmp_path, arrays, message):
    path = save_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=message):
        load_dataset(cfg(tmp_path, dataset="npz", root=path))


def test_npz_file_mistakes(tmp_path):
    with pytest.raises(UserError, match="data.root: file not found: .*missing.npz"):
        load_dataset(cfg(tmp_path, dataset="npz", root=str(tmp_path / "missing.npz")))
    with pytest.raises(UserError, match="is a folder; npz needs a .npz file"):
        load_dataset(cfg(tmp_path, dataset="npz", root=str(tmp_path)))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match=r"is not a \.npz file \(not a zip archive"):
        load_dataset(cfg(tmp_path, dataset="npz", root=str(tmp_path / "junk.npz")))
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(UserError, match="holds a single array"):
        load_dataset(cfg(tmp_path, dataset="npz", root=str(tmp_path / "one.npy")))


# ------------------------------------------------------------------------------------ torchvision sets


@pytest.mark.parametrize("name, expect", [
    ("cifar10", r"cifar10 files not found in .*cifar-10-batches-py .*data_batch_1.*data\.download = true"),
    ("cifar100", r"cifar100 files not found in .*cifar-100-python .*data\.download = true"),
    ("mnist", r"mnist files not found in .*MNIST/raw .*train-images-idx3-ubyte.*data\.download = true"),
    ("svhn", r"svhn files not found in .*train_32x32\.mat.*data\.download = true.*ufldl"),
    ("imagenet", r"ImageNet files not found in .*ILSVRC2012_devkit_t12\.tar\.gz.*image-net\.org"),
])
def test_missing_files_say_where_and_how_to_get_them(tmp_path, name, expect):
    root = tmp_path / "nothing-here"
    with pytest.raises(UserError, match=expect) as err:
        load_dataset(cfg(tmp_path, dataset=name, root=str(root)))
    assert str(root) in str(err.value)


def test_fashion_mnist_missing_files_and_imagenet_download(tmp_path):
    with pytest.raises(UserError, match=r"fashion-mnist files not found in .*FashionMNIST/raw"):
        load_dataset(cfg(tmp_path, dataset="fashion-mnist", root=str(tmp_path)))
    with pytest.raises(UserError, match=r"data.download: ImageNet cannot be downloaded automatically; download "):
        load_dataset(cfg(tmp_path, dataset="imagenet", root=str(tmp_path), download=True))


def test_download_calls_torchvision_and_reports_its_failure(tmp_path, monkeypatch):
    """The archive is fetched by torchvision's downloader with its checksum (not by constructing
    torchvision's CIFAR10, whose reader unpickles the files unrestricted)."""
    import urllib.error

    import torchvision.datasets.utils
    from torchvision.datasets import CIFAR10

    calls = []

    def offline(url, root, filename=None, md5=None):
        calls.append((url, root, filename, md5))
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    with pytest.raises(UserError, match=r"data\.download: downloading cifar10 into .*dl failed \(URLError: .*Name or "
                                        r"service not known.*\); check the internet connection, or download https://"):
        load_dataset(cfg(tmp_path, dataset="cifar10", root=str(tmp_path / "dl"), download=True))
    assert calls == [(CIFAR10.url, str(tmp_path / "dl"), "cifar-10-python.tar.gz", CIFAR10.tgz_md5)]


def fake_imagenet(root: Path) -> None:
    """torchvision's unpacked ImageNet layout: meta.bin, train/<wnid>/, val/<wnid>/ (two classes)."""
    root.mkdir(parents=True)
    wnids = ("n01440764", "n02687172")
    torch.save(({"n01440764": ("tench", "Tinca tinca"), "n02687172": ("aircraft carrier", "carrier")},
                list(wnids)), root / "meta.bin")
    for split, n in (("train", 3), ("val", 1)):
        for c, w in enumerate(wnids):
            for i in range(n):
                write(root / split / w / f"{w}_{i}.JPEG", pixels(c * 10 + i, 12, 16, grey=i == 0), fmt="JPEG")


def test_imagenet_layout_reads_train_and_val_as_colour(tmp_path):
    fake_imagenet(tmp_path / "imagenet")
    c = cfg(tmp_path, dataset="imagenet", root=str(tmp_path / "imagenet"))
    with pytest.raises(UserError, match=r"data\.image_size: ImageNet images differ in size; set data\.image_size"):
        load_dataset(c)
    data = load_dataset(c.model_copy(update={"image_size": 8}))
    assert data.class_names == ("n01440764", "n02687172") and data.x.shape == (8, 3, 8, 8)  # grey JPEGs as RGB
    assert data.is_test.tolist() == [False] * 6 + [True] * 2 and data.y.tolist() == [0, 0, 0, 1, 1, 1, 0, 1]
    assert data.flip_ok
    stream = load_dataset(c.model_copy(update={"image_size": 8, "memory_limit_gb": 1e-9}))
    assert stream.x is None and torch.equal(torch.stack([stream.reader.read(i) for i in range(8)]), data.x)
    assert len({data.fingerprint, stream.fingerprint}) == 2 and all(len(d.fingerprint) == 24 for d in (data, stream))
    split = split_classes(SplitConfig(kind="natural-vs-manmade"), data, 0)
    assert split.names("A") == ("n01440764",) and split.names("B") == ("n02687172",)


def test_mnist_like_files_are_read_plain_or_gzipped(tmp_path):
    import gzip

    def idx(arr: np.ndarray) -> bytes:
        head = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
        return head + arr.astype(np.uint8).tobytes()

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xtr, xte = rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 256, (10, 28, 28))
    ytr, yte = np.arange(20) % 10, np.arange(10)
    for name, arr in (("train-images-idx3-ubyte", xtr), ("train-labels-idx1-ubyte", ytr),
                      ("t10k-images-idx3-ubyte", xte), ("t10k-labels-idx1-ubyte", yte)):
        data = idx(arr)
        if name.startswith("train"):
            (raw / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (raw / name).write_bytes(data)
    data = load_dataset(cfg(tmp_path, dataset="mnist", root=str(tmp_path)))
    assert data.x.shape == (30, 1, 28, 28) and not data.flip_ok
    assert torch.equal(data.x[:20, 0], torch.from_numpy(xtr.astype(np.uint8)))
    assert data.is_test.sum() == 10 and data.y[20:].tolist() == list(range(10))
    assert load_dataset(cfg(tmp_path, dataset="mnist", root=str(tmp_path))).fingerprint == data.fingerprint  # cached


def test_cifar100_pickles_give_fine_classes_and_superclass_groups(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine = ["apple", "bus", "whale"]
    coarse = ["fruit_and_vegetables", "vehicles_1", "aquatic_mammals"]

    def batch(n):
        labels = [i % 3 for i in range(n)]
        return {"data": np.zeros((n, 3072), np.uint8), "fine_labels": labels, "coarse_labels": labels}

    for name, obj in (("train", batch(9)), ("test", batch(3)),
                      ("meta", {"fine_label_names": fine, "coarse_label_names": coarse})):
        (folder / name).write_bytes(pickle.dumps(obj))
    data = load_dataset(cfg(tmp_path, dataset="cifar100", root=str(tmp_path)))
    assert data.class_names == tuple(fine) and data.groups == dict(zip(fine, coarse))
    assert data.x.shape == (12, 3, 32, 32) and data.flip_ok and int(data.is_test.sum()) == 3
    assert natural_vs_manmade(data) == {"apple": "natural", "bus": "man-made", "whale": "natural"}
    assert len(data.fingerprint) == 24


# ------------------------------------------------------------------------------------ natural vs man-made

#: CIFAR-100's superclasses and fine classes, as published (Krizhevsky 2009), for the test's own fake set
CIFAR100 = {
    "aquatic_mammals": "beaver dolphin otter seal whale", "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip", "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe", "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk", "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman", "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel", "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train", "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}


def fake(names, groups=None) -> ImageData:
    y = torch.arange(len(names))
    return ImageData(y, tuple(names), x=torch.zeros(len(names), 1, 2, 2, dtype=torch.uint8), groups=groups or {},
                     name="fake")


def test_the_wnid_list_is_the_ilsvrc_2012_synsets():
    wnids = imagenet_wnids()
    assert len(wnids) == len(set(wnids)) == 1000 and list(wnids) == sorted(wnids)
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"
    names = imagenet_names()
    assert names["n01440764"] == "tench" and names["n15075141"] == "toilet tissue"
    assert names[wnids[397]] == "puffer" and names[wnids[398]] == "abacus"  # the last animal, the first artefact
    assert [names[w] for w in wnids[936:959:22]] == ["head cabbage", "hay"]
    assert (names[wnids[970]], names[wnids[971]]) == ("alp", "bubble")


def test_imagenet_natural_and_man_made_follow_the_paper():
    mapping = natural_vs_manmade(fake(imagenet_wnids()))
    natural = [w for w, kind in mapping.items() if kind == "natural"]
    assert len(natural) == 449 and len(mapping) - len(natural) == 551  # the paper's 449 / 551
    known = {"n01440764": "natural",  # tench
             "n02687172": "man-made",  # aircraft carrier
             "n07753592": "natural",  # banana
             "n07873807": "man-made",  # pizza
             "n09229709": "man-made",  # bubble
             "n09193705": "natural",  # alp
             "n10148035": "natural",  # groom
             "n15075141": "man-made"}  # toilet tissue
    assert {w: mapping[w] for w in known} == known
    subset = natural_vs_manmade(fake(["n02687172", "n01440764"]))  # any subset, in any order
    assert subset == {"n02687172": "man-made", "n01440764": "natural"}


def test_imagenet_subset_folder_splits_natural_vs_manmade(tmp_path):
    tree(tmp_path / "d", {"n01440764": 2, "n07753592": 2, "n02687172": 2, "n04037443": 2})
    data = load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(tmp_path / "d")))
    split = split_classes(SplitConfig(kind="natural-vs-manmade"), data, 0)
    assert split.names("A") == ("n01440764", "n07753592") and split.names("B") == ("n02687172", "n04037443")


def test_cifar100_superclasses_natural_vs_manmade():
    names = [c for cs in CIFAR100.values() for c in cs.split()]
    groups = {c: g for g, cs in CIFAR100.items() for c in cs.split()}
    mapping = natural_vs_manmade(fake(names, groups))
    assert sum(v == "natural" for v in mapping.values()) == 70
    assert {g for c, g in groups.items() if mapping[c] == "man-made"} == set(CIFAR100_MAN_MADE) == {
        "food_containers", "household_electrical_devices", "household_furniture", "large_man-made_outdoor_things",
        "vehicles_1", "vehicles_2"}
    for c, kind in (("baby", "natural"), ("mushroom", "natural"), ("cloud", "natural"), ("bus", "man-made"),
                    ("cup", "man-made"), ("road", "man-made"), ("whale", "natural")):
        assert mapping[c] == kind
    assert natural_vs_manmade(fake(["rocket", "maple_tree"])) == {"rocket": "man-made", "maple_tree": "natural"}


def test_natural_vs_manmade_refuses_other_datasets():
    with pytest.raises(UserError, match=r"needs CIFAR-100 superclasses or ImageNet wnid classes; dataset 'fake' "
                                        r"has neither; use split.kind = 'groups' with a groups_file"):
        natural_vs_manmade(fake(["0", "1"]))
    with pytest.raises(UserError, match=r"not among them: n99999999"):
        natural_vs_manmade(fake(["n01440764", "n99999999"]))


# ------------------------------------------------------------------------------------ real data, where present


@pytest.fixture(scope="session")
def cifar10_jpeg(tmp_path_factory) -> Path:
    tarball = SHARED / "cifar10-jpeg.tar.gz"
    if not tarball.is_file():
        pytest.skip(f"CIFAR-10 JPEG tarball absent ({tarball})")
    out = tmp_path_factory.mktemp("cifar10")
    if shutil.which("tar"):  # GNU tar: 3 s for the 60,000 files, Python's tarfile takes 20 s
        subprocess.run(["tar", "-xzf", str(tarball), "-C", str(out)], check=True)
    else:
        with tarfile.open(tarball) as tar:
            tar.extractall(out, filter="data")
    return out / "cifar10-jpeg"


def test_cifar10_jpeg_folder(cifar10_jpeg, tmp_path):
    c = cfg(tmp_path, dataset="imagefolder", root=str(cifar10_jpeg))
    start = time.perf_counter()
    data = load_dataset(c)
    decode_s = time.perf_counter() - start
    assert data.class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                "truck")
    assert data.x.shape == (60000, 3, 32, 32) and data.flip_ok
    assert int((~data.is_test).sum()) == 50000 and int(data.is_test.sum()) == 10000
    assert torch.bincount(data.y[data.is_test]).tolist() == [1000] * 10
    start = time.perf_counter()
    again = load_dataset(c)
    cached_s = time.perf_counter() - start
    assert torch.equal(again.x, data.x) and again.fingerprint == data.fingerprint
    print(f"\nCIFAR-10 JPEG: decoded 60,000 images in {decode_s:.1f} s, from the cache in {cached_s:.2f} s")
    assert cached_s < decode_s / 5


def test_fashion_mnist_from_the_debian_package(tmp_path):
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST absent (apt-get install dataset-fashion-mnist puts it in {FASHION})")
    data = load_dataset(cfg(tmp_path, dataset="fashion-mnist"))
    assert data.x.shape == (70000, 1, 28, 28) and int(data.is_test.sum()) == 10000
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert data.y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the published first training labels
    assert torch.bincount(data.y).tolist() == [7000] * 10


def test_omniglot_alphabets_as_groups(tmp_path):
    archive = SHARED / "omniglot-small" / "images_background_small1.zip"
    if not archive.is_file():
        pytest.skip(f"Omniglot small set absent ({archive})")
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path)
    data = load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(tmp_path / "images_background_small1")))
    assert data.x.shape == (2720, 1, 105, 105) and not data.flip_ok and data.is_test is None
    assert len(data.class_names) == 136 and torch.bincount(data.y).tolist() == [20] * 136
    assert sorted(set(data.groups.values())) == ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
    assert data.class_names[0] == "Balinese/character01" and data.groups["Latin/character01"] == "Latin"
    split = split_classes(SplitConfig(kind="groups", a_groups=("Greek", "Latin"), b_groups=("Korean",)), data, 0)
    assert len(split.a) == 24 + 26 and len(split.b) == 40


# ------------------------------------------------------------------------------------ unreadable files and folders

def _chmod_protects() -> bool:
    """Whether a file of mode 000 is unreadable here: not as root (uid 0 with its capabilities)."""
    if os.geteuid() != 0:
        return True
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_text("x")
        probe.chmod(0)
        try:
            probe.read_text()
        except PermissionError:
            return True
        finally:
            probe.chmod(0o600)
    return False


as_root = pytest.mark.skipif(not _chmod_protects(), reason="running as root, which reads every file whatever its "
                                                           "mode: chmod 000 has no effect (run as a normal user)")


@contextlib.contextmanager
def unreadable(path: Path):
    """``path`` with mode 000 inside the block, its old mode restored after it."""
    mode = path.stat().st_mode
    path.chmod(0)
    try:
        yield path
    finally:
        path.chmod(mode)


@as_root
def test_unreadable_root_or_class_folder_is_one_error_naming_it(tmp_path):
    root = tmp_path / "d"
    tree(root, {"a": 2, "b": 2})
    c = cfg(tmp_path, dataset="imagefolder", root=str(root))
    whole = (rf"^data\.root: cannot read folder {root} \(permission denied; make it readable "
             rf"\(e\.g\. chmod -R u\+rX {root}\)\)$")
    with unreadable(root), pytest.raises(UserError, match=whole):
        load_dataset(c)
    one = (rf"data\.root: cannot read class folder {root / 'b'} \(permission denied.*chmod -R u\+rX .*\); "
           r"data\.skip_corrupt skips unreadable image files, not folders")
    for skip in (False, True):  # data.skip_corrupt does not leave out a class: the classes would change
        with unreadable(root / "b"), pytest.raises(UserError, match=one):
            load_dataset(c.model_copy(update={"skip_corrupt": skip}))
    with unreadable(tmp_path):  # a folder above the root that may not be entered: not "not found"
        with pytest.raises(UserError, match=rf"cannot read folder {root} \(permission denied"):
            load_dataset(c)
    assert not (tmp_path / "cache").exists()  # nothing cached from a failed load
    data = load_dataset(c)  # readable again: the whole set, as if nothing had happened
    assert data.y.tolist() == [0, 0, 1, 1] and data.skipped == ()


@as_root
def test_unreadable_image_npz_and_torchvision_files_say_make_it_readable(tmp_path):
    root = tmp_path / "d"
    tree(root, {"a": 2, "b": 2})
    with unreadable(root / "a" / "001.png"):
        with pytest.raises(UserError, match=r"cannot read image file .*a/001\.png \(permission denied\); make it "
                                            r"readable \(e\.g\. chmod u\+r .*001\.png\), or set data\.skip_corrupt"):
            load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(root)))
        assert load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(root), skip_corrupt=True)).skipped == (
            str(root / "a" / "001.png"),)
    path = save_npz(tmp_path / "s.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1]))
    with unreadable(Path(path)), pytest.raises(UserError, match=rf"^data\.root: cannot read file {path} \(permission "
                                                                rf"denied; make it readable \(e\.g\. chmod u\+r "):
        load_dataset(cfg(tmp_path, dataset="npz", root=path))
    folder = tmp_path / "tv" / "cifar-100-python"
    folder.mkdir(parents=True)
    with unreadable(folder), pytest.raises(UserError, match=rf"cannot read folder {folder} \(permission denied"):
        load_dataset(cfg(tmp_path, dataset="cifar100", root=str(tmp_path / "tv")))


# ------------------------------------------------------------------------------------ what the loaders say


def test_cached_in_is_said_only_once_the_cache_is_written(tmp_path, capsys):
    root = tmp_path / "d"
    tree(root, {"a": 2, "b": 2})
    (root / "a" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot decode image file"):
        load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(root)))
    err = capsys.readouterr().err
    assert "decoding 5 images of imagefolder:d ..." in err and "cached" not in err
    assert not (tmp_path / "cache").exists()
    (tmp_path / "file").write_text("a file, not a folder")  # the cache cannot be written there
    load_dataset(DataConfig(dataset="imagefolder", root=str(root), skip_corrupt=True, cache_dir=str(tmp_path / "file")))
    err = capsys.readouterr().err
    assert "cannot write the dataset cache" in err and "cached in" not in err
    load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(root), skip_corrupt=True))
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["transferscope: decoding 5 images of imagefolder:d ...",
                     f"transferscope: decoded 4 images of imagefolder:d; cached in {tmp_path / 'cache'}, so later "
                     "loads skip decoding"]


def test_torchvision_sets_say_cached_only_once_written(tmp_path, capsys):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(b"not a pickle")
    for name in ("test", "meta"):
        (folder / name).write_bytes(pickle.dumps({}))
    with pytest.raises(UserError, match=r"cannot read .*cifar-100-python/train \(UnpicklingError: .*\); the file is "
                                        r"damaged: delete it and fetch it again"):
        load_dataset(cfg(tmp_path, dataset="cifar100", root=str(tmp_path)))
    err = capsys.readouterr().err
    assert "reading cifar100 from" in err and "cached" not in err


# ------------------------------------------------------------------------------------ npz: the real cause


def npz_member(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def zipped(path: Path, **members: bytes) -> str:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return str(path)


X, Y = np.zeros((2, 4, 4), np.uint8), np.array([0, 1])


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"junk"), r"is not a \.npz file \(not a zip archive; a \.npz is a zip archive of \.npy"),
    (lambda p: p.write_bytes(b""), r"is not a \.npz file \(an empty file;"),
    (lambda p: p.write_bytes(pickle.dumps({"x": X, "y": Y})), r"is not a \.npz file \(a Python pickle;"),
    (lambda p: p.write_bytes(npz_member(X)), r"holds a single array \(a \.npy file, as np\.save writes\)"),
    (lambda p: p.write_bytes(Path(save_npz(p, x=X, y=Y)).read_bytes()[:100]), r"is a damaged zip archive"),
    (lambda p: zipped(p, **{"x.npy": npz_member(X)[:-5], "y.npy": npz_member(Y)}),
     r"x: the array is damaged and cannot be read \(ValueError: EOF"),
    (lambda p: zipped(p, **{"x.npy": npz_member(X), "y.npy": b"\x93NUMPY\x01\x00garbage"}),
     r"y: the array is damaged and cannot be read"),
    (lambda p: zipped(p, x=b"hello", **{"y.npy": npz_member(Y)}), r"x: the archive member x is not a NumPy array"),
    (lambda p: np.savez(p, x=np.zeros((2, 0, 4), np.uint8), y=Y), r"x: shape \(2, 0, 4\) has images of zero height"),
])
def test_npz_failures_name_their_real_cause_not_pickle(tmp_path, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    with pytest.raises(UserError, match=message) as err:
        load_dataset(cfg(tmp_path, dataset="npz", root=str(path)))
    assert "pickle" not in str(err.value).replace("a Python pickle", "")  # the old, unrelated allow_pickle hint
    assert str(path) in str(err.value)


def test_npz_object_arrays_are_named_as_such(tmp_path):
    path = save_npz(tmp_path / "o.npz", x=X, y=Y, class_names=np.array(["a", None], dtype=object))
    with pytest.raises(UserError, match=r"class_names: an array of Python objects, which is not read \(it would need "
                                        r"pickle\); .*plain string array"):
        load_dataset(cfg(tmp_path, dataset="npz", root=path))


# ------------------------------------------------------------------------------------ skipped files, cached


def test_a_skipped_file_made_readable_again_is_decoded_again(tmp_path, monkeypatch, capsys):
    root = tmp_path / "d"
    tree(root, {"a": 2, "b": 2})
    good = root / "a" / "001.png"
    png = good.read_bytes()
    stamp = good.stat().st_mtime_ns
    good.write_bytes(b"\0" * len(png))  # unreadable, same size
    os.utime(good, ns=(stamp, stamp))  # and same mtime: the cache key cannot tell (as after a chmod)
    c = cfg(tmp_path, dataset="imagefolder", root=str(root), skip_corrupt=True)
    first = load_dataset(c)
    assert first.skipped == (str(good),) and len(first.y) == 3
    decode_all = imagefolder._decode_all
    monkeypatch.setattr(imagefolder, "_decode_all", lambda *a, **k: pytest.fail("decoded again"))
    hit = load_dataset(c)  # still unreadable: a cache hit, only the skipped file is tried
    assert hit.skipped == first.skipped and hit.fingerprint == first.fingerprint
    good.write_bytes(png)
    os.utime(good, ns=(stamp, stamp))
    monkeypatch.setattr(imagefolder, "_decode_all", decode_all)
    capsys.readouterr()
    healed = load_dataset(c)
    assert healed.skipped == () and healed.y.tolist() == [0, 0, 1, 1] and healed.fingerprint != first.fingerprint
    assert "1 image file(s) of imagefolder:d skipped before as unreadable can be read now" in capsys.readouterr().err
    monkeypatch.setattr(imagefolder, "_decode_all", lambda *a, **k: pytest.fail("decoded again"))
    assert load_dataset(c).skipped == ()  # the healed entry replaced the old one


@as_root
def test_a_file_skipped_while_chmod_000_is_read_after_chmod_back(tmp_path):
    root = tmp_path / "d"
    tree(root, {"a": 2, "b": 2})
    c = cfg(tmp_path, dataset="imagefolder", root=str(root), skip_corrupt=True)
    with unreadable(root / "b" / "000.png"):
        assert len(load_dataset(c).skipped) == 1
    assert load_dataset(c).skipped == () and len(load_dataset(c).y) == 4


# ------------------------------------------------------------------------------------ fingerprints


def test_fingerprint_follows_the_images_not_their_location_or_mtime(tmp_path, monkeypatch):
    root = tmp_path / "d"
    tree(root, {"a": 2, "b": 2})
    first = load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(root)))
    assert len(first.fingerprint) == 24 and int(first.fingerprint, 16) >= 0
    fresh = load_dataset(cfg(tmp_path / "other-cache", dataset="imagefolder", root=str(root)))
    assert fresh.fingerprint == first.fingerprint  # touching nothing keeps it
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, copy_function=shutil.copyfile)  # new location, new modification times
    assert load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(copy))).fingerprint == first.fingerprint
    # a cache hit reads it from the entry, without hashing the images
    from transferscope.data import registry

    monkeypatch.setattr(registry, "tensor_digest", lambda *a: pytest.fail("hashed the images on a cache hit"))
    assert load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(root))).fingerprint == first.fingerprint
    monkeypatch.undo()
    write(root / "b" / "009.png", pixels(77))  # one more image
    added = load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(root)))
    assert len(added.y) == 5 and added.fingerprint != first.fingerprint
    write(root / "b" / "009.png", pixels(78))  # the same files, other pixels
    assert load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(root))).fingerprint != added.fingerprint
    shutil.move(root / "b" / "009.png", root / "a" / "009.png")  # the same pixels, another class
    assert load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(root))).fingerprint != added.fingerprint


def test_streamed_fingerprint_follows_the_files_statistics(tmp_path):
    root = tmp_path / "d"
    tree(root, {"a": 2, "b": 2})
    c = cfg(tmp_path, dataset="imagefolder", root=str(root), memory_limit_gb=1e-9)
    first = load_dataset(c)
    assert first.x is None and len(first.fingerprint) == 24
    again = load_dataset(c)  # from the cache's stream entry
    assert again.fingerprint == first.fingerprint
    assert load_dataset(cfg(tmp_path / "c2", dataset="imagefolder", root=str(root), memory_limit_gb=1e-9)
                        ).fingerprint == first.fingerprint
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)  # copy2 keeps modification times: relative paths, sizes and times agree
    assert load_dataset(cfg(tmp_path, dataset="imagefolder", root=str(copy), memory_limit_gb=1e-9)
                        ).fingerprint == first.fingerprint
    assert load_dataset(c.model_copy(update={"image_size": 4})).fingerprint != first.fingerprint
    stamp = (root / "a" / "000.png").stat().st_mtime_ns
    os.utime(root / "a" / "000.png", ns=(stamp, stamp + 10**9))  # touched: it may have changed
    assert load_dataset(c).fingerprint != first.fingerprint
    write(root / "a" / "009.png", pixels(5))
    assert len(load_dataset(c).y) == 5 and load_dataset(c).fingerprint != first.fingerprint


def test_every_loader_sets_a_fingerprint_and_hand_built_data_gets_one(tmp_path):
    digits = load_dataset("digits")
    assert len(digits.fingerprint) == 24 and load_dataset("digits").fingerprint == digits.fingerprint
    path = save_npz(tmp_path / "s.npz", x=X, y=Y)
    npz = load_dataset(cfg(tmp_path, dataset="npz", root=path))
    moved = tmp_path / "elsewhere.npz"
    shutil.copyfile(path, moved)
    assert load_dataset(cfg(tmp_path, dataset="npz", root=str(moved))).fingerprint == npz.fingerprint
    streamed = load_dataset(cfg(tmp_path, dataset="npz", root=path, image_size=8, memory_limit_gb=1e-9))
    assert streamed.x is None and len(streamed.fingerprint) == 24
    # by hand: computed from the content; labels, test flags, names and groups count
    a = ImageData(torch.tensor([0, 1]), ("a", "b"), x=torch.zeros(2, 1, 2, 2, dtype=torch.uint8))
    assert a.fingerprint == ImageData(torch.tensor([0, 1]), ("a", "b"), x=torch.zeros(2, 1, 2, 2, dtype=torch.uint8),
                                      name="another name").fingerprint
    for other in (ImageData(torch.tensor([0, 1]), ("a", "b"), x=torch.ones(2, 1, 2, 2, dtype=torch.uint8)),
                  ImageData(torch.tensor([1, 0]), ("a", "b"), x=torch.zeros(2, 1, 2, 2, dtype=torch.uint8)),
                  ImageData(torch.tensor([0, 1]), ("b", "a"), x=torch.zeros(2, 1, 2, 2, dtype=torch.uint8)),
                  ImageData(torch.tensor([0, 1]), ("a", "b"), x=torch.zeros(2, 1, 2, 2, dtype=torch.uint8),
                            groups={"a": "g", "b": "g"}),
                  ImageData(torch.tensor([0, 1]), ("a", "b"), x=torch.zeros(2, 1, 2, 2, dtype=torch.uint8),
                            is_test=torch.tensor([False, True]))):
        assert other.fingerprint != a.fingerprint
    assert ImageData(torch.tensor([0, 1]), ("a", "b"), x=a.x, fingerprint="given").fingerprint == "given"

    class Reader:
        shape = (1, 2, 2)

        def __len__(self):
            return 2

        def read(self, i):
            return torch.zeros(self.shape, dtype=torch.uint8)

    with pytest.raises(ValueError, match=r"a reader without a fingerprint\(\) method needs ImageData\(fingerprint="):
        ImageData(torch.tensor([0, 1]), ("a", "b"), reader=Reader())
    reader = images.FileReader([str(p) for p in sorted((tmp_path / "cache").glob("*.json"))], "L", None, (1, 2, 2))
    assert len(ImageData(torch.zeros(len(reader), dtype=torch.long), ("a",), reader=reader).fingerprint) == 24


def test_digits_honour_image_size():
    """data.image_size resizes the bundled digits like any array dataset (it was once ignored)."""
    native, big = load_dataset(DataConfig(dataset="digits")), load_dataset(DataConfig(dataset="digits", image_size=16))
    assert native.x.shape == (1797, 1, 8, 8) and big.x.shape == (1797, 1, 16, 16)
    assert torch.equal(big.y, native.y) and big.fingerprint != native.fingerprint
    # the same resize as every array dataset: torchvision's antialiased bilinear on the native pixels
    assert torch.equal(big.x, images.resize_crop_tensor(native.x, 16))


# ------------------------------------------------------------------------------------ untrusted files stay data


def test_a_cifar_batch_file_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "ran"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        (folder / name).write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]},
                                                 protocol=2))  # as the real files are written
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b"], "payload": RunsCode(marker)}))
    with pytest.raises(UserError) as e:
        load_dataset(cfg(tmp_path, dataset="cifar10", root=str(tmp_path)))
    assert str(e.value) == (f"data.root: {folder / 'batches.meta'} is not a plain CIFAR batch file: it asks to load "
                            "posix.system, which a dataset file never needs (only dicts, lists, strings, bytes, "
                            "numbers and numpy arrays are read); refused without running it. Delete it and fetch "
                            "the dataset again from its source")
    assert not marker.exists()  # the call was never made
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b"]}, protocol=2))
    data = load_dataset(cfg(tmp_path, dataset="cifar10", root=str(tmp_path)))  # the same files, plain: read
    assert data.class_names == ("a", "b") and data.x.shape == (12, 3, 32, 32)
